// Partial per-channel reductions over a tensor seen as [outer][channels][inner].
// Each workgroup reduces one slice of one channel (planar: long `inner` runs)
// or one slice of rows for a block of columns (interleaved: channels-last or
// short `inner`), and writes one vec4 partial. The merge kernels in
// batch_norm.wgsl combine the partials of a channel in a separate dispatch:
// WGSL cannot synchronise workgroups inside one dispatch.
//
// MODE 0, statistics of x: partial = (count, mean, M2, 0), Welford per
//   invocation and Chan's formula across invocations, never E[x^2] - E[x]^2.
// MODE 1, backward sums: partial = (sum g, sum g * (x - mean_c),
//   sum (x - mean_c), 0) with g = dy and mean_c = chan[c].x. The third sum
//   recovers the rounding of mean_c to f32, which matters when |mean| >> std.
// MODE 2, the same behind a fused ReLU: g = dy where fused_pre(x) > 0, else 0.
// MODE 3, the same behind a fused add + ReLU: g = dy where fused_pre(x) + z > 0.
//
// Needs common.wgsl in front of it.

override MODE: u32 = 0u;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// MODE >= 1 only; MODE 0 binds x here again.
@group(0) @binding(2) var<storage, read> dy: array<f32>;
// MODE >= 1 only: per-channel (mean, invstd, scale, beta); MODE 0 binds any vec4 buffer.
@group(0) @binding(3) var<storage, read> chan: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec4<f32>>;
// MODE 3 only: the residual input; other modes bind x here again.
@group(0) @binding(5) var<storage, read> z: array<f32>;

var<workgroup> shared_acc: array<vec4<f32>, WG>;

// Adds the element at idx (relative to the view) to an invocation's accumulator.
// `k` is the channel's (mean, invstd, scale, beta) in MODE >= 1.
fn accumulate(acc: vec4<f32>, idx: u32, k: vec4<f32>) -> vec4<f32> {
    let v = x[p.x_off + idx];
    if (MODE >= 1u) {
        var g = dy[p.dy_off + idx];
        if (MODE >= 2u) {
            var residual = 0.0;
            if (MODE == 3u) {
                residual = z[p.z_off + idx];
            }
            g = select(0.0, g, fused_pre(v, k, residual) > 0.0);
        }
        let d = v - k.x;
        return acc + vec4<f32>(g, g * d, d, 0.0);
    }
    let n = acc.x + 1.0;
    let d = v - acc.y;
    let mean = acc.y + d / n;
    return vec4<f32>(n, mean, acc.z + d * (v - mean), 0.0);
}

// Combines two partials: Chan's parallel Welford (MODE 0) or a sum.
fn combine(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    if (MODE >= 1u) {
        return a + b;
    }
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

fn channel_coefficients(c: u32) -> vec4<f32> {
    if (MODE >= 1u) {
        return chan[c];
    }
    return vec4<f32>(0.0);
}

// Planar: workgroup (s, c) reduces elements [s * slice_len, (s+1) * slice_len)
// of channel c, counted over (o, i). Used when inner >= WG, so an invocation
// crosses at most one row boundary per step.
@compute @workgroup_size(256)
fn reduce_planar(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let per_channel = p.outer * p.inner;
    let start = wg.x * p.slice_len;
    let end = min(start + p.slice_len, per_channel);
    for (var c = wg.y; c < p.channels; c += nwg.y) {
        let k = channel_coefficients(c);
        var acc = vec4<f32>(0.0);
        var j = start + t;
        var o = j / p.inner;
        var i = j - o * p.inner;
        while (j < end) {
            acc = accumulate(acc, (o * p.channels + c) * p.inner + i, k);
            j += WG;
            i += WG;
            while (i >= p.inner) {
                i -= p.inner;
                o += 1u;
            }
        }
        shared_acc[t] = acc;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (t < s) {
                shared_acc[t] = combine(shared_acc[t], shared_acc[t + s]);
            }
            workgroupBarrier();
        }
        if (t == 0u) {
            partials[c * p.slices + wg.x] = shared_acc[0];
        }
        workgroupBarrier();
    }
}

// Interleaved: the tensor as a matrix of `outer` rows by channels * inner
// columns. Workgroup (b, s) takes `width` adjacent columns (so neighbouring
// invocations read neighbouring addresses) and rows
// [s * slice_len, (s+1) * slice_len), WG / width rows at a time.
// The partial of column k and slice s goes to k * slices + s, so the partials
// of channel c are the contiguous run [c * inner * slices, (c+1) * inner * slices).
@compute @workgroup_size(256)
fn reduce_interleaved(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let cols = p.channels * p.inner;
    let groups = WG / p.width;
    let lane = t % p.width;
    let g = t / p.width;
    let col = wg.x * p.width + lane;
    let row_start = wg.y * p.slice_len;
    let row_end = min(row_start + p.slice_len, p.outer);
    var acc = vec4<f32>(0.0);
    if (g < groups && col < cols) {
        let k = channel_coefficients(col / p.inner);
        for (var r = row_start + g; r < row_end; r += groups) {
            acc = accumulate(acc, r * cols + col, k);
        }
    }
    shared_acc[t] = acc;
    workgroupBarrier();
    for (var s = p.tree; s > 0u; s >>= 1u) {
        if (g < s && g + s < groups) {
            shared_acc[t] = combine(shared_acc[t], shared_acc[t + s * p.width]);
        }
        workgroupBarrier();
    }
    if (g == 0u && col < cols) {
        partials[col * p.slices + wg.y] = shared_acc[t];
    }
}
