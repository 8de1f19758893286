// The normalization family's per-row and elementwise kernels: LayerNorm,
// RMSNorm, GroupNorm and InstanceNorm differ only in which values one
// statistic spans (a "stat row": a trailing block for LayerNorm/RMSNorm, an
// (n, group) for GroupNorm, an (n, channel) for InstanceNorm). Their
// reductions are reduce.wgsl's (MODE 0 statistics, MODE 2 row sums, MODE 3
// column sums); what is left is one invocation per row or per weight, and
// two elementwise passes over the per-weight view [outer][channels][inner],
// where element (o, c, i) uses weight c and stat row
// (o / row_div) * groups + c / cpg.
//
//   rows[r]    = (centre, rstd, delta, var)  y = (x - centre) * rstd * w + b
//     centre is the mean (0 for RMSNorm), var the biased variance, delta the
//     f32 rounding of the mean that backward recovers (0 after forward).
//   rows_dx[r] = (rstd, B, C, centre)        dx = rstd * dy * w + B * (x - centre) + C
// Needs common.wgsl in front of it and merge.wgsl (appended).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(6) var<storage, read_write> rows: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> rows_dx: array<vec4<f32>>;
// Tensors in memory as S (prelude): f32, or f16 for half precision; the
// arithmetic is f32 either way.
@group(0) @binding(8) var<storage, read> x: array<S>;
@group(0) @binding(9) var<storage, read_write> y: array<S>;
@group(0) @binding(10) var<storage, read> dy: array<S>;
@group(0) @binding(11) var<storage, read_write> dx: array<S>;
@group(0) @binding(12) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(13) var<storage, read_write> dbias: array<f32>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

fn gamma(c: u32) -> f32 {
    return select(1.0, weight[p.weight_base + c], has(FLAG_AFFINE));
}

fn beta(c: u32) -> f32 {
    return select(0.0, bias[p.weight_base + c], has(FLAG_BIAS));
}


// The per-row and per-weight kernels loop grid-stride: rows may outnumber
// 64 * 65535.

// Statistics of row r from its MODE 0 partials. RMSNorm's mean square is
// M2 / n + mean^2: two non-negative terms, no cancellation.
@compute @workgroup_size(64)
fn merge_rows(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var r = id.x; r < p.rows; r += nwg.x * 64u) {
        let acc = merge_partials(r * p.parts, p.parts, true);
        let var_biased = max(acc.z / acc.x, 0.0);
        if (has(FLAG_RMS)) {
            rows[r] = vec4<f32>(0.0, 1.0 / sqrt(var_biased + acc.y * acc.y + p.eps), 0.0, var_biased);
        } else {
            rows[r] = vec4<f32>(acc.y, 1.0 / sqrt(var_biased + p.eps), 0.0, var_biased);
        }
    }
}

// InstanceNorm's running statistics, one invocation per channel (rows are
// (n, c), `groups` = C): the mean over samples of each instance's mean and
// unbiased variance, as PyTorch.
@compute @workgroup_size(64)
fn update_running(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c = id.x; c < p.groups; c += nwg.x * 64u) {
        let samples = p.rows / p.groups;
        let unbias = p.count / max(p.count - 1.0, 1.0);
        var sum_mean = 0.0;
        var sum_var = 0.0;
        for (var n = 0u; n < samples; n++) {
            let s = rows[n * p.groups + c];
            sum_mean += s.x;
            sum_var += s.w * unbias;
        }
        let f = p.momentum;
        running_mean[c] = (1.0 - f) * running_mean[c] + f * sum_mean / f32(samples);
        running_var[c] = (1.0 - f) * running_var[c] + f * sum_var / f32(samples);
    }
}

// InstanceNorm in eval mode with running statistics: every (n, c) row takes
// channel c's.
@compute @workgroup_size(64)
fn prepare_running(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var r = id.x; r < p.rows; r += nwg.x * 64u) {
        let c = p.weight_base + r % p.groups;
        rows[r] = vec4<f32>(running_mean[c], 1.0 / sqrt(running_var[c] + p.eps), 0.0, running_var[c]);
    }
}

// Backward, one invocation per row: from the MODE 2 sums (sum g, sum g * (x -
// centre), sum (x - centre)) with g = dy * w, the dx coefficients. With
// xhat = (x - mean) * rstd and m values per row:
//   LayerNorm/GroupNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:             dx = rstd * (g - xhat * mean(g * xhat))
// Without FLAG_BATCH_STATS the statistics are constants: dx = rstd * g.
@compute @workgroup_size(64)
fn merge_row_grads(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var r = id.x; r < p.rows; r += nwg.x * 64u) {
        let sums = merge_partials(r * p.parts, p.parts, false);
        let s = rows[r];
        let rstd = s.y;
        let inv_m = 1.0 / p.count;
        var delta = 0.0;
        var b = 0.0;
        var c = 0.0;
        if (has(FLAG_BATCH_STATS)) {
            if (has(FLAG_RMS)) {
                b = -rstd * rstd * rstd * sums.y * inv_m;
            } else {
                // The centre is the mean rounded to f32; the exact one is centre + delta.
                delta = sums.z * inv_m;
                let sum_gx = sums.y - delta * sums.x;
                b = -rstd * rstd * rstd * sum_gx * inv_m;
                c = -rstd * sums.x * inv_m - b * delta;
            }
        }
        rows[r] = vec4<f32>(s.x, rstd, delta, s.w);
        rows_dx[r] = vec4<f32>(rstd, b, c, s.x);
    }
}

// dweight and dbias of weight c from its MODE 3 partials.
@compute @workgroup_size(64)
fn merge_columns(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var c = id.x; c < p.channels; c += nwg.x * 64u) {
        let sums = merge_partials(c * p.parts, p.parts, false);
        dweight[c] = sums.x;
        dbias[c] = sums.y;
    }
}

// The elementwise passes walk the per-weight view with the reductions'
// tilings (src/reduce.rs): planar, workgroup (slice, c) over long inner runs,
// or interleaved, one column per invocation down its rows. The weight and
// the stat row are looked up per workgroup, per invocation or per row, never
// with divisions per element.

// `w` = (gamma, beta) of the element's weight, looked up once per channel
// (the dx passes bind no bias and read only gamma).
fn apply_at(e: u32, w: vec2<f32>, s: vec4<f32>) {
    y[p.y_off + e] = S(fma((f32(x[p.x_off + e]) - s.x) * s.y, w.x, w.y));
}

fn dx_at(e: u32, w: vec2<f32>, k: vec4<f32>) {
    dx[p.dx_off + e] = S(k.x * f32(dy[p.dy_off + e]) * w.x + k.y * (f32(x[p.x_off + e]) - k.w) + k.z);
}

fn weights_of(c: u32) -> vec2<f32> {
    return vec2<f32>(gamma(c), beta(c));
}

// Stat row of outer index o (quotient q = o / row_div) and channel group cg.
fn stat_row(q: u32, cg: u32) -> u32 {
    return q * p.groups + cg;
}

fn apply_planar_walk(wg: vec3<u32>, nwg: vec3<u32>, t: u32) {
    let end = min((wg.x + 1u) * p.slice_len, p.outer * p.inner);
    for (var c = wg.y; c < p.channels; c += nwg.y) {
        let cg = c / p.cpg;
        let w = weights_of(c);
        var j = wg.x * p.slice_len + t;
        var o = j / p.inner;
        var i = j - o * p.inner;
        var row = stat_row(o / p.row_div, cg);
        while (j < end) {
            let e = (o * p.channels + c) * p.inner + i;
            apply_at(e, w, rows[row]);
            j += 256u;
            i += 256u;
            if (i >= p.inner) {
                while (i >= p.inner) {
                    i -= p.inner;
                    o += 1u;
                }
                row = stat_row(o / p.row_div, cg);
            }
        }
    }
}

fn apply_interleaved_walk(wg: vec3<u32>, t: u32) {
    let cols = p.channels * p.inner;
    let groups = 256u / p.width;
    let g = t / p.width;
    let col = wg.x * p.width + (t - g * p.width);
    if (g >= groups || col >= cols) {
        return;
    }
    let c = col / p.inner;
    let cg = c / p.cpg;
    let w = weights_of(c);
    let row_end = min((wg.y + 1u) * p.slice_len, p.outer);
    var r = wg.y * p.slice_len + g;
    // q = r / row_div kept up to date by steps of `groups` rows, without a
    // division per step: each adds dq and dr, and at most one carry.
    var q = r / p.row_div;
    var rem = r - q * p.row_div;
    let dq = groups / p.row_div;
    let dr = groups - dq * p.row_div;
    for (; r < row_end; r += groups) {
        apply_at(r * cols + col, w, rows[stat_row(q, cg)]);
        q += dq;
        rem += dr;
        if (rem >= p.row_div) {
            rem -= p.row_div;
            q += 1u;
        }
    }
}

fn dx_planar_walk(wg: vec3<u32>, nwg: vec3<u32>, t: u32) {
    let end = min((wg.x + 1u) * p.slice_len, p.outer * p.inner);
    for (var c = wg.y; c < p.channels; c += nwg.y) {
        let cg = c / p.cpg;
        let w = vec2<f32>(gamma(c), 0.0);
        var j = wg.x * p.slice_len + t;
        var o = j / p.inner;
        var i = j - o * p.inner;
        var row = stat_row(o / p.row_div, cg);
        while (j < end) {
            let e = (o * p.channels + c) * p.inner + i;
            dx_at(e, w, rows_dx[row]);
            j += 256u;
            i += 256u;
            if (i >= p.inner) {
                while (i >= p.inner) {
                    i -= p.inner;
                    o += 1u;
                }
                row = stat_row(o / p.row_div, cg);
            }
        }
    }
}

fn dx_interleaved_walk(wg: vec3<u32>, t: u32) {
    let cols = p.channels * p.inner;
    let groups = 256u / p.width;
    let g = t / p.width;
    let col = wg.x * p.width + (t - g * p.width);
    if (g >= groups || col >= cols) {
        return;
    }
    let c = col / p.inner;
    let cg = c / p.cpg;
    let w = vec2<f32>(gamma(c), 0.0);
    let row_end = min((wg.y + 1u) * p.slice_len, p.outer);
    var r = wg.y * p.slice_len + g;
    // q = r / row_div, kept up to date as in apply_interleaved_walk.
    var q = r / p.row_div;
    var rem = r - q * p.row_div;
    let dq = groups / p.row_div;
    let dr = groups - dq * p.row_div;
    for (; r < row_end; r += groups) {
        dx_at(r * cols + col, w, rows_dx[stat_row(q, cg)]);
        q += dq;
        rem += dr;
        if (rem >= p.row_div) {
            rem -= p.row_div;
            q += 1u;
        }
    }
}

@compute @workgroup_size(256)
fn apply_planar(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    apply_planar_walk(wg, nwg, t);
}

@compute @workgroup_size(256)
fn apply_interleaved(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    apply_interleaved_walk(wg, t);
}

// dx = rstd * dy * w + B * (x - centre) + C over the per-weight view.
@compute @workgroup_size(256)
fn dx_planar(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    dx_planar_walk(wg, nwg, t);
}

@compute @workgroup_size(256)
fn dx_interleaved(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    dx_interleaved_walk(wg, t);
}
