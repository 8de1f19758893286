// BatchNorm's per-channel kernels (one invocation per channel) and the
// folding kernels. Per-channel coefficients live in vec4 buffers:
//   chan[c]  = (mean, invstd, scale, beta)   with y = (x - mean) * scale + beta
// (centred on the mean rather than folded into one shift, so inputs far from
// zero keep their digits: the shift would round at the input's magnitude)
//   grad[c]  = (A, B, mean, C)               with dx = A * dy + B * (x - mean) + C
// The elementwise passes (apply, dx) live in elementwise.wgsl.
// Needs common.wgsl in front of it and merge.wgsl (appended).

// channel_forward's and channel_backward's epilogue: 0 none, 1 relu(bn(x)),
// 2 relu(bn(x) + z).
override MODE: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
// num_batches_tracked as (low, high) words of a u64, then a word set to 1
// when commit_running rejected the last batch (FLAG_CHECK_FINITE).
@group(0) @binding(6) var<storage, read_write> counter: array<u32, 4>;
@group(0) @binding(7) var<storage, read_write> chan: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> x: array<f32>;
@group(0) @binding(9) var<storage, read_write> y: array<f32>;
@group(0) @binding(12) var<storage, read_write> grad: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(14) var<storage, read_write> dbias: array<f32>;
// channel_forward's and channel_backward's tensors (f32): the upstream
// gradient, dx, and with MODE 2 the residual input and its gradient.
@group(0) @binding(10) var<storage, read> dy: array<f32>;
@group(0) @binding(11) var<storage, read_write> dx: array<f32>;
@group(0) @binding(15) var<storage, read> z: array<f32>;
@group(0) @binding(16) var<storage, read_write> dz: array<f32>;
// New running statistics waiting for commit_running: mean[C], var[C], and
// per channel 1.0 when both are finite.
@group(0) @binding(17) var<storage, read_write> pending: array<f32>;
// A channel's merged partials, for SyncBatchNorm to exchange between ranks.
@group(0) @binding(18) var<storage, read_write> local_out: array<vec4<f32>>;

// Channel c's partials merged into one (CPU adapters: one invocation a
// channel).
fn merge_channel(c: u32, welford: bool) -> vec4<f32> {
    return merge_partials(c * p.parts, p.parts, welford);
}

// Training statistics: merge the partials of channel c and store its
// entry (commit_stats).
@compute @workgroup_size(64)
fn merge_stats(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        commit_stats(c, merge_channel(c, true).xyz);
    }
}

// Channel c's entry from its batch's (count, mean, M2); when asked, the new
// running statistics (PyTorch rules: normalize with the biased variance,
// track the unbiased one) into `pending` for commit_running, or, with
// FLAG_RUNNING_IN_MERGE, into the running statistics themselves.
fn commit_stats(c: u32, s: vec3<f32>) {
    chan[c] = batch_entry(c, s);
    if (has(FLAG_UPDATE_RUNNING)) {
        if (has(FLAG_RUNNING_IN_MERGE)) {
            commit_running_alone(c, s);
            return;
        }
        var f = p.momentum;
        if (f < 0.0) {
            // Cumulative average: commit_running bumps the counter afterwards.
            let batches = f32(counter[0]) + f32(counter[1]) * 4294967296.0;
            f = 1.0 / (batches + 1.0);
        }
        let updated = next_running(vec2<f32>(running_mean[c], running_var[c]), s, f);
        let finite = abs(s.y) <= 3.4e38 && abs(non_negative(s.z / s.x)) <= 3.4e38;
        pending[c] = updated.x;
        pending[p.channels + c] = updated.y;
        pending[2u * p.channels + c] = select(0.0, 1.0, finite);
    }
}

// SyncBatchNorm's first half: channel c's partial statistics merged into
// one (count, mean, M2, 0), without normalizing anything.
@compute @workgroup_size(64)
fn gather_stats(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        local_out[c] = merge_channel(c, true);
    }
}

// The same for the backward's sums (sum dy, sum dy * (x - mean), sum (x - mean)).
@compute @workgroup_size(64)
fn gather_sums(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        local_out[c] = merge_channel(c, false);
    }
}

// The same four kernels on GPUs: a team of MERGE_TEAM invocations a
// channel, eight channels a workgroup (team_merge_*, merge.wgsl), where one
// invocation merging a channel's partials in a chain is a long serial
// latency (8x3x512x512 channels-last leaves 768 a channel).
const MERGE_TEAM: u32 = 32u;
const TEAMS: u32 = 256u / MERGE_TEAM;

// The channel a team stores in block b, where it exists and t leads its team.
fn team_stores(ids: Ids, b: u32) -> bool {
    return b * TEAMS + ids.t / MERGE_TEAM < p.channels && ids.t % MERGE_TEAM == 0u;
}

@compute @workgroup_size(256)
fn merge_stats_teams(ids: Ids) {
    for (var b = ids.wg.x; b * TEAMS < p.channels; b += ids.nwg.x) {
        let s = team_merge_stats(ids.t, MERGE_TEAM, team_first(ids, b), p.parts);
        if (team_stores(ids, b)) {
            commit_stats(b * TEAMS + ids.t / MERGE_TEAM, s.xyz);
        }
    }
}

@compute @workgroup_size(256)
fn merge_grads_teams(ids: Ids) {
    for (var b = ids.wg.x; b * TEAMS < p.channels; b += ids.nwg.x) {
        let sums = team_merge_sums(ids.t, MERGE_TEAM, team_first(ids, b), p.parts);
        if (team_stores(ids, b)) {
            commit_grads(b * TEAMS + ids.t / MERGE_TEAM, sums);
        }
    }
}

@compute @workgroup_size(256)
fn gather_stats_teams(ids: Ids) {
    for (var b = ids.wg.x; b * TEAMS < p.channels; b += ids.nwg.x) {
        let s = team_merge_stats(ids.t, MERGE_TEAM, team_first(ids, b), p.parts);
        if (team_stores(ids, b)) {
            local_out[b * TEAMS + ids.t / MERGE_TEAM] = s;
        }
    }
}

@compute @workgroup_size(256)
fn gather_sums_teams(ids: Ids) {
    for (var b = ids.wg.x; b * TEAMS < p.channels; b += ids.nwg.x) {
        let sums = team_merge_sums(ids.t, MERGE_TEAM, team_first(ids, b), p.parts);
        if (team_stores(ids, b)) {
            local_out[b * TEAMS + ids.t / MERGE_TEAM] = sums;
        }
    }
}

// The first partial of t's channel in block b (the last channel's for
// teams past the end, which merge and store nothing).
fn team_first(ids: Ids, b: u32) -> u32 {
    return min(b * TEAMS + ids.t / MERGE_TEAM, p.channels - 1u) * p.parts;
}

var<workgroup> all_finite: atomic<u32>;

// Commits the pending running statistics and bumps num_batches_tracked, or,
// with FLAG_CHECK_FINITE and a channel whose statistics are not finite,
// rejects the whole batch: running statistics and counter stay as they were.
// One workgroup, so the all-channels decision needs no second dispatch.
@compute @workgroup_size(256)
fn commit_running(@builtin(local_invocation_index) t: u32) {
    if (t == 0u) {
        atomicStore(&all_finite, 1u);
    }
    workgroupBarrier();
    if (has(FLAG_CHECK_FINITE)) {
        for (var c = t; c < p.channels; c += 256u) {
            if (pending[2u * p.channels + c] == 0.0) {
                atomicStore(&all_finite, 0u);
            }
        }
    }
    let accept = workgroupUniformLoad(&all_finite) == 1u;
    if (!accept) {
        if (t == 0u) {
            counter[2] = 1u;
        }
        return;
    }
    for (var c = t; c < p.channels; c += 256u) {
        running_mean[c] = pending[c];
        running_var[c] = pending[p.channels + c];
    }
    if (t == 0u) {
        bump_counter();
    }
}

// Eval statistics: coefficients from the running statistics.
@compute @workgroup_size(64)
fn prepare_eval(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        chan[c] = running_entry(c);
    }
}

// Backward: merge channel c's gradient sums (commit_grads).
@compute @workgroup_size(64)
fn merge_grads(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        commit_grads(c, merge_channel(c, false));
    }
}

// The eval backward's dweight and dbias from gradient sums taken about
// the running mean (merged.wgsl's dx_eval_runs_*, which wrote dx).
@compute @workgroup_size(64)
fn merge_grads_eval(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        commit_eval_grads(c, merge_channel(c, false));
    }
}

@compute @workgroup_size(256)
fn merge_grads_eval_teams(ids: Ids) {
    for (var b = ids.wg.x; b * TEAMS < p.channels; b += ids.nwg.x) {
        let sums = team_merge_sums(ids.t, MERGE_TEAM, team_first(ids, b), p.parts);
        if (team_stores(ids, b)) {
            commit_eval_grads(b * TEAMS + ids.t / MERGE_TEAM, sums);
        }
    }
}

fn commit_eval_grads(c: u32, sums: vec4<f32>) {
    dweight[c] = grad_entry(running_entry(c), sums).dweight;
    dbias[c] = sums.x;
}

// dweight, dbias and the dx coefficients of channel c (grad_entry,
// running.wgsl).
fn commit_grads(c: u32, sums: vec4<f32>) {
    let e = grad_entry(chan[c], sums);
    dweight[c] = e.dweight;
    dbias[c] = sums.x;
    grad[c] = e.coef;
}

// The training forward in one pass, for channels whose values one workgroup
// walks (src/batch_norm/forward.rs says which, and why GPUs only): the
// workgroup of channel c takes its mean, then its variance about that mean
// (two exact passes over values its caches still hold), writes the
// channel's coefficients and, with FLAG_UPDATE_RUNNING (always with a
// momentum: see merge_stats), its running statistics, then y as apply does.
const CHANNEL_WG: u32 = 256u;

// An invocation's place in a channel's values: run o (of `outer`), value i
// of the run (of `inner`). Invocations start at their index and step the
// workgroup's size at a time, without a division per value.
struct Cursor {
    o: u32,
    i: u32,
}

fn cursor(first: u32) -> Cursor {
    let o = first / p.inner;
    return Cursor(o, first - o * p.inner);
}

fn next(at: Cursor) -> Cursor {
    var n = Cursor(at.o, at.i + CHANNEL_WG);
    while (n.i >= p.inner) {
        n.i -= p.inner;
        n.o += 1u;
    }
    return n;
}

// The view index of channel c's value at `at`.
fn index_of(c: u32, at: Cursor) -> u32 {
    return (at.o * p.channels + c) * p.inner + at.i;
}

@compute @workgroup_size(CHANNEL_WG)
fn channel_forward(ids: Ids) {
    let t = ids.t;
    for (var c = ids.wg.x; c < p.channels; c += ids.nwg.x) {
        var sum = 0.0;
        for (var at = cursor(t); at.o < p.outer; at = next(at)) {
            sum += x[p.x_off + index_of(c, at)];
        }
        let mean = team_sum(t, CHANNEL_WG, vec4<f32>(sum)).x / p.count;
        var squares = 0.0;
        for (var at = cursor(t); at.o < p.outer; at = next(at)) {
            let d = x[p.x_off + index_of(c, at)] - mean;
            squares += d * d;
        }
        let s = vec3<f32>(p.count, mean, team_sum(t, CHANNEL_WG, vec4<f32>(squares)).x);
        let k = batch_entry(c, s);
        if (t == 0u) {
            chan[c] = k;
            if (has(FLAG_UPDATE_RUNNING)) {
                commit_running_alone(c, s);
            }
        }
        for (var at = cursor(t); at.o < p.outer; at = next(at)) {
            let e = index_of(c, at);
            var v = fma(x[p.x_off + e] - k.x, k.z, k.w);
            if (MODE == 2u) {
                v += z[p.z_off + e];
            }
            if (MODE != 0u) {
                // ReLU that keeps NaN, as apply's.
                v = select(v, p.relu_zero, v <= 0.0);
            }
            y[p.y_off + e] = v;
        }
    }
}

// The backward in one pass, for the channels channel_forward takes: the
// workgroup of channel c sums g, g * (x - mean) and x - mean over the
// channel (as reduce.wgsl's MODE 1, 4 and 5), merges them as merge_grads
// into dweight and dbias, then writes dx (and dz) as the dx pass does, with
// k the channel's (mean, invstd, scale, beta): the saved ones
// (channel_backward, with FLAG_BATCH_STATS) or the running statistics'
// (channel_backward_eval). Two entry points, so that each binds only what
// it reads (devices may allow as few as eight storage buffers).
fn backward_channel(t: u32, c: u32, k: vec4<f32>) {
    var sums = vec4<f32>(0.0);
    for (var at = cursor(t); at.o < p.outer; at = next(at)) {
        let e = index_of(c, at);
        let d = x[p.x_off + e] - k.x;
        let g = masked_grad(e, d, k);
        sums += vec4<f32>(g, g * d, d, 0.0);
    }
    sums = team_sum(t, CHANNEL_WG, sums);
    let entry = grad_entry(k, sums);
    if (t == 0u) {
        dweight[c] = entry.dweight;
        dbias[c] = sums.x;
    }
    for (var at = cursor(t); at.o < p.outer; at = next(at)) {
        let e = index_of(c, at);
        let v = x[p.x_off + e];
        let g = masked_grad(e, v - k.x, k);
        if (MODE == 2u) {
            dz[p.dz_off + e] = g;
        }
        let coef = entry.coef;
        dx[p.dx_off + e] = coef.x * g + coef.y * (v - coef.z) + coef.w;
    }
}

@compute @workgroup_size(CHANNEL_WG)
fn channel_backward(ids: Ids) {
    for (var c = ids.wg.x; c < p.channels; c += ids.nwg.x) {
        backward_channel(ids.t, c, chan[c]);
    }
}

@compute @workgroup_size(CHANNEL_WG)
fn channel_backward_eval(ids: Ids) {
    for (var c = ids.wg.x; c < p.channels; c += ids.nwg.x) {
        backward_channel(ids.t, c, running_entry(c));
    }
}

// dy at e behind the epilogue's ReLU (d = x - mean, k the channel's entry).
fn masked_grad(e: u32, d: f32, k: vec4<f32>) -> f32 {
    let g = dy[p.dy_off + e];
    if (MODE == 0u) {
        return g;
    }
    var pre = fma(d, k.z, k.w);
    if (MODE == 2u) {
        pre += z[p.z_off + e];
    }
    return select(0.0, g, pre > 0.0);
}

fn channel_of(e: u32) -> u32 {
    return (e / p.inner) % p.channels;
}

// Folding into the preceding layer: weight' = weight * scale[c] over the
// layer's weight seen as [outer][channels][inner] (c = its output channel;
// a piece of a weight too large for one binding starts at channel chan_base).
@compute @workgroup_size(256)
fn fold_weight(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let total = p.outer * p.channels * p.inner;
    let stride = nwg.x * 256u;
    for (var e = id.x; e < total; e += stride) {
        y[p.y_off + e] = x[p.x_off + e] * chan[p.chan_base + channel_of(e)].z;
    }
}

// bias' = (bias - mean) * scale + beta per output channel; `x` holds the
// layer's bias when FLAG_LAYER_BIAS is set (a missing bias is zeros).
@compute @workgroup_size(64)
fn fold_bias(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        let k = chan[c];
        var b = 0.0;
        if (has(FLAG_LAYER_BIAS)) {
            b = x[p.x_off + c];
        }
        y[p.y_off + c] = (b - k.x) * k.z + k.w;
    }
}
