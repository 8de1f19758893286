// BatchNorm's per-channel arithmetic, shared by its merge kernels
// (batch_norm.wgsl) and the elementwise passes that merge the partials
// themselves (merged.wgsl): entries from running or batch statistics, the
// running statistics' update, and the backward's dx coefficients. Needs
// `p`, `weight`, `bias`, `running_mean`, `running_var` and `counter`.

// Clamps a rounding-negative variance to 0 but keeps NaN (max() may not).
fn non_negative(v: f32) -> f32 {
    return select(v, 0.0, v < 0.0);
}

fn gamma(c: u32) -> f32 {
    return select(1.0, weight[c], has(FLAG_AFFINE));
}

fn beta(c: u32) -> f32 {
    return select(0.0, bias[c], has(FLAG_AFFINE));
}

// Channel c's eval entry, (mean, invstd, scale, beta), from the running
// statistics: prepare_eval stores it, the eval forward's apply computes it
// where it needs it.
fn running_entry(c: u32) -> vec4<f32> {
    let invstd = 1.0 / sqrt(running_var[c] + p.eps);
    return vec4<f32>(running_mean[c], invstd, gamma(c) * invstd, beta(c));
}

// Channel c's training entry from its batch's (count, mean, M2): normalized
// with the biased variance.
fn batch_entry(c: u32, s: vec3<f32>) -> vec4<f32> {
    let invstd = 1.0 / sqrt(non_negative(s.z / s.x) + p.eps);
    return vec4<f32>(s.y, invstd, gamma(c) * invstd, beta(c));
}

// The running (mean, var) after a batch of (count, mean, M2) with factor f:
// PyTorch tracks the unbiased variance.
fn next_running(old: vec2<f32>, s: vec3<f32>, f: f32) -> vec2<f32> {
    let var_unbiased = non_negative(s.z / max(s.x - 1.0, 1.0));
    return (1.0 - f) * old + f * vec2<f32>(s.y, var_unbiased);
}

// num_batches_tracked + 1 (a 64-bit count in two words), and the last batch
// was accepted.
fn bump_counter() {
    let low = counter[0] + 1u;
    counter[0] = low;
    if (low == 0u) {
        counter[1] = counter[1] + 1u;
    }
    counter[2] = 0u;
}

// A channel's backward from its entry k and its gradient sums (sum g,
// sum g * (x - mean), sum (x - mean)): the dx coefficients (A, B, mean, C)
// with dx = A * g + B * (x - mean) + C, and dweight. With batch statistics
// (FLAG_BATCH_STATS) the mean and variance depend on x; otherwise they are
// constants (eval).
struct GradEntry {
    coef: vec4<f32>,
    dweight: f32,
}

fn grad_entry(k: vec4<f32>, sums: vec4<f32>) -> GradEntry {
    if (!has(FLAG_BATCH_STATS)) {
        return GradEntry(vec4<f32>(k.z, 0.0, k.x, 0.0), sums.y * k.y);
    }
    // k.x is the batch mean rounded to f32; the exact one is k.x + delta.
    let inv_m = 1.0 / p.count;
    let delta = sums.z * inv_m;
    let dw = (sums.y - delta * sums.x) * k.y;
    let b = -k.z * k.y * dw * inv_m;
    return GradEntry(vec4<f32>(k.z, b, k.x, -k.z * sums.x * inv_m - b * delta), dw);
}
