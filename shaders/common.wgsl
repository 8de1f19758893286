// Parameters shared by every per-channel kernel; mirrored by `ChannelParams`
// in src/kernels.rs (same field order, 116 bytes). A tensor is seen as
// [outer][channels][inner]: element (o, c, i) sits at (o * channels + c) * inner + i.
struct Params {
    outer: u32,
    channels: u32,
    inner: u32,
    // Reductions: number of partial slices per channel / column.
    slices: u32,
    // Reductions: elements (planar) or rows (interleaved) per slice.
    slice_len: u32,
    // Interleaved reduction: columns per workgroup.
    width: u32,
    // Partials per channel the merge kernels combine.
    parts: u32,
    flags: u32,
    // Element offsets of each view inside its bound buffer.
    x_off: u32,
    y_off: u32,
    dy_off: u32,
    dx_off: u32,
    eps: f32,
    // Momentum factor for running statistics; negative = cumulative average.
    momentum: f32,
    // Values per channel (outer * inner), as f32.
    count: f32,
    // Interleaved reduction: first stride of the tree over row groups.
    tree: u32,
    // Element offsets of the residual input z and its gradient dz (fused add).
    z_off: u32,
    dz_off: u32,
    // Reductions over a batch of equal views (grid z = view index): elements
    // between two consecutive views. 0 when there is one view.
    batch_stride: u32,
    // The normalization family (row_norm.wgsl, reduce MODE 2 and 3): a
    // statistic ("stat row") spans the values of one (n, group). In the
    // per-weight view [outer][channels][inner], element (o, c, i) belongs to
    // stat row (o / row_div) * groups + c / cpg; in the stat view, channel c
    // at inner index i multiplies weight (c % groups) * cpg + i / wdiv.
    row_div: u32,
    groups: u32,
    cpg: u32,
    wdiv: u32,
    // Number of stat rows.
    rows: u32,
    // A chunk of a tensor too large for one binding (BatchNorm): its first
    // channel, and where its partials start within each channel's run of
    // `parts`. A partial of channel c goes to c * parts + part_base + local.
    chan_base: u32,
    part_base: u32,
    // The family's part of a sample too large for one binding (a run of
    // groups): its first weight (channel).
    weight_base: u32,
    // With FLAG_LANES_ARE_CHANNELS: the tensor's channels; lane l of view
    // column c holds channel (4c + l) % lane_channels (channels-last rows
    // regrouped in runs of lcm(channels, 4) values when channels % 4 != 0).
    lane_channels: u32,
    // Always 0.0: the value a fused ReLU gives negatives, a zero the shader
    // compiler cannot fold (see apply_at in elementwise.wgsl).
    relu_zero: f32,
}

// The FLAG_* bits of `flags` are defined once, in src/kernels.rs, which puts
// them in front of this file.

// Every shader binds its Params as `p`.
fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// The value a fused ReLU sees: (x - mean) * scale + beta (+ z). Forward and
// backward both call this, so the backward's mask (pre > 0) is bit-for-bit
// the forward's and needs no stored mask or output.
fn fused_pre(v: f32, k: vec4<f32>, residual: f32) -> f32 {
    return fma(v - k.x, k.z, k.w) + residual;
}

// Chan's formula: merges two partial statistics (count, mean, M2, _) exactly;
// an empty partial (count 0) merges as nothing.
fn chan_merge(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    if (b.x == 0.0) {
        return a;
    }
    if (a.x == 0.0) {
        return b;
    }
    let n = a.x + b.x;
    let d = b.y - a.y;
    let fb = b.x / n;
    return vec4<f32>(n, a.y + d * fb, a.z + b.z + d * d * a.x * fb, 0.0);
}

// The ids the 256-invocation entry points take (walks.wgsl's tilings, the
// team kernels of batch_norm.wgsl and row_forward.wgsl).
struct Ids {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
}

// The ids the 64-invocation per-channel and per-row kernels take: they loop
// grid-stride from id.x, as channels or rows may outnumber 64 * 65535.
struct Grid {
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

fn grid_stride(g: Grid) -> u32 {
    return g.nwg.x * 64u;
}

// A workgroup's teams: invocations t of a team of `width` (a power of two
// dividing the workgroup, at most 256) sum `v` through workgroup memory;
// every invocation of the workgroup calls it, in uniform control flow.
var<workgroup> team_sums: array<vec4<f32>, 256>;

fn team_sum(t: u32, width: u32, v: vec4<f32>) -> vec4<f32> {
    team_sums[t] = v;
    workgroupBarrier();
    for (var s = width / 2u; s > 0u; s >>= 1u) {
        if (t % width < s) {
            team_sums[t] += team_sums[t + s];
        }
        workgroupBarrier();
    }
    let total = team_sums[t - t % width];
    workgroupBarrier();
    return total;
}
