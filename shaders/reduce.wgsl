// Partial per-channel reductions over a tensor seen as [outer][channels][inner].
// Each workgroup reduces one slice of one channel (planar: long `inner` runs),
// one slice of rows for a block of columns (interleaved: channels-last or
// short `inner`), or whole short channels (rows: outer == 1, a few lanes per
// channel), and writes one vec4 partial per channel through a tree in
// workgroup memory, or, in the `_lanes` entry points (CPU adapters, see
// `Reduction` in src/strategy.rs), one per invocation with no barrier. The
// merge kernels in batch_norm.wgsl and row_norm.wgsl combine the partials of
// a channel in a separate dispatch: WGSL cannot synchronise workgroups inside
// one dispatch.
//
// BatchNorm's channels are the family's "stat rows": LayerNorm's R rows of D
// values are the view [1][R][D], GroupNorm's (n, g) groups [1][N*G][cpg*HW]
// (channels second) or, per sample, [HW][G][cpg] (channels last). A grid with
// z > 1 reduces a batch of such views, `batch_stride` elements apart; view z's
// channel c is then channel z * channels + c of `chan` and of the partials.
//
// MODE 0, statistics of x: partial = (count, mean, M2, 0), from sums shifted
//   by the invocation's first value (see `accumulate`) and Chan's formula
//   across invocations, never E[x^2] - E[x]^2.
// MODE 1, backward sums: partial = (sum dy, sum dy * (x - mean_c),
//   sum (x - mean_c), 0) with mean_c = chan[c].x. The third sum recovers the
//   rounding of mean_c to f32, which matters when |mean| >> std.
// MODE 2, MODE 1 with g = dy * gamma in place of dy, gamma per element of the
//   stat row (the family's backward row sums; `weight` is gamma).
// MODE 3, the family's dweight / dbias column sums over the per-weight view:
//   partial = (sum dy * xhat, sum dy, 0, 0) where element (o, c, i) belongs to
//   stat row s = (o / row_div) * groups + c / cpg and xhat = (x - chan[s].x -
//   chan[s].z) * chan[s].y.
// MODE 4, MODE 1 behind a fused ReLU: g = dy where fused_pre(x) > 0, else 0.
// MODE 5, MODE 1 behind a fused add + ReLU: g = dy where fused_pre(x) + z > 0.
//
// Needs common.wgsl and a prelude (alias S) in front of it, and
// reduce_entries.wgsl (appended).

// MODE 2 and 3 over LayerNorm's and RMSNorm's geometry (groups == 1,
// wdiv == 1, row_div == 1): gamma of value i is weight i and the stat row of
// (o, c, i) is o, with no division per value (each is eight scalar
// divisions per SIMD batch on lavapipe). An override, because a branch on
// the uniform inside the loop costs both sides there.
override TRAILING: bool = false;
// The bindings the two reduce shaders share are in reduce_entries.wgsl.
// MODE 2 only: gamma; other modes bind any f32 buffer.
@group(0) @binding(5) var<storage, read> weight: array<f32>;

var<workgroup> shared_acc: array<vec4<f32>, WG>;

fn gamma_at(c: u32, i: u32) -> f32 {
    if ((p.flags & FLAG_AFFINE) == 0u) {
        return 1.0;
    }
    if (TRAILING) {
        return weight[p.weight_base + i];
    }
    return weight[p.weight_base + (c % p.groups) * p.cpg + i / p.wdiv];
}

// Adds the element at idx (relative to the bound x, batch offset included),
// at (o, c, i) of its view, to an invocation's accumulator. `k` is the
// channel's chan entry (its mean first) in MODE 1, 2, 4, 5.
fn accumulate(acc: vec4<f32>, idx: u32, o: u32, c: u32, i: u32, k: vec4<f32>) -> vec4<f32> {
    let v = f32(x[p.x_off + idx]);
    if (MODE == 1u || MODE == 2u || MODE >= 4u) {
        var g = f32(dy[p.dy_off + idx]);
        if (MODE == 2u) {
            g *= gamma_at(c, i);
        }
        if (MODE >= 4u) {
            var residual = 0.0;
            if (MODE == 5u) {
                residual = f32(z[p.z_off + idx]);
            }
            g = select(0.0, g, fused_pre(v, k, residual) > 0.0);
        }
        let d = v - k.x;
        return acc + vec4<f32>(g, g * d, d, 0.0);
    }
    if (MODE == 3u) {
        var row = o;
        if (!TRAILING) {
            row = (o / p.row_div) * p.groups + c / p.cpg;
        }
        let s = chan[row];
        let g = f32(dy[p.dy_off + idx]);
        return acc + vec4<f32>(g * ((v - s.x - s.z) * s.y), g, 0.0, 0.0);
    }
    // Shifted sums (n, pivot, sum d, sum d^2) with d = v - pivot and the
    // pivot the invocation's first value: no division per value, and no
    // cancellation while the values stay near the pivot. `finish` turns
    // them into (n, mean, M2).
    let pivot = select(acc.y, v, acc.x == 0.0);
    let d = v - pivot;
    return vec4<f32>(acc.x + 1.0, pivot, acc.z + d, acc.w + d * d);
}

// An invocation's accumulator as a partial: MODE 0's shifted sums as
// (n, mean, M2, 0); the sums of the other modes as they are.
// The pivot costs precision only by the factor (mean - pivot)^2 / var, at
// most the invocation's count of values, since the pivot is one of them.
fn finish(acc: vec4<f32>) -> vec4<f32> {
    if (MODE != 0u) {
        return acc;
    }
    if (acc.x == 0.0) {
        return vec4<f32>(0.0);
    }
    let shift = acc.z / acc.x;
    return vec4<f32>(acc.x, acc.y + shift, max(acc.w - acc.z * shift, 0.0), 0.0);
}

// Combines two partials: Chan's parallel Welford (MODE 0) or a sum.
fn combine(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    if (MODE != 0u) {
        return a + b;
    }
    return chan_merge(a, b);
}

// The accumulator, and the hooks of reduce_entries.wgsl over it.
alias Acc = vec4<f32>;

fn empty() -> Acc {
    return vec4<f32>(0.0);
}

fn store_shared(t: u32, acc: Acc) {
    shared_acc[t] = acc;
}

fn load_shared(t: u32) -> Acc {
    return shared_acc[t];
}

// Channel c of view z's partial in `slot` of its run.
fn store_partial(z: u32, c: u32, slot: u32, acc: Acc) {
    partials[(p.chan_base + z * p.channels + c) * p.parts + p.part_base + slot] = acc;
}

// Column `col`'s partial of slice `s`: each (column, slice) owns `per`
// consecutive slots (1 with the tree, `groups` per invocation) and this is
// slot `k` of them. The partials of channel c are the contiguous run
// [c * inner * slices * per, (c+1) * inner * slices * per).
fn store_column(z: u32, col: u32, s: u32, per: u32, k: u32, acc: Acc) {
    let c = col / p.inner;
    store_partial(z, c, ((col - c * p.inner) * p.slices + s) * per + k, acc);
}

// The chan entry of channel c of view `view` (MODE 1, 2, 4, 5).
fn coefficients(view: u32, c: u32) -> vec4<f32> {
    if (MODE == 1u || MODE == 2u || MODE >= 4u) {
        return channel_entry(p.chan_base + view * p.channels + c);
    }
    return vec4<f32>(0.0);
}

// The values of one segment of a run (reduce_runs_lanes), from first to
// stop, eight apart, four a loop iteration.
fn accumulate_segment(acc: Acc, base: u32, r: Run, stop: u32, c: u32, k: vec4<f32>) -> Acc {
    var a = acc;
    let e = base + (r.o * p.channels + c) * p.inner;
    var i = r.i;
    let last = r.i + stop - r.j;
    for (; i + 24u < last; i += 32u) {
        a = accumulate(a, e + i, r.o, c, i, k);
        a = accumulate(a, e + i + 8u, r.o, c, i + 8u, k);
        a = accumulate(a, e + i + 16u, r.o, c, i + 16u, k);
        a = accumulate(a, e + i + 24u, r.o, c, i + 24u, k);
    }
    for (; i < last; i += 8u) {
        a = accumulate(a, e + i, r.o, c, i, k);
    }
    return a;
}

// Interleaved: the tensor as a matrix of `outer` rows by channels * inner
// columns. Workgroup (b, s, z) takes `width` adjacent columns (so neighbouring
// invocations read neighbouring addresses) and rows
// [s * slice_len, (s+1) * slice_len), WG / width rows at a time.
// The partial of column k and slice s goes to k * slices + s, so the partials
// of channel c are the contiguous run [c * inner * slices, (c+1) * inner * slices).
// Where invocation t sits: column_of in walks.wgsl.

// Invocation t's share: its column, row group g's rows (group_rows) of the
// workgroup's slice.
fn interleaved_share(wg: vec3<u32>, t: u32) -> vec4<f32> {
    let at = column_of(wg, t);
    let cols = p.channels * p.inner;
    let base = wg.z * p.batch_stride;
    var acc = empty();
    if (at.owned) {
        let c = at.col / p.inner;
        let i = at.col - c * p.inner;
        let k = coefficients(wg.z, c);
        let rows = group_rows(wg.y, at.g, at.groups);
        var r = rows.x;
        for (; r + 4u <= rows.y; r += 4u) {
            let e = base + r * cols + at.col;
            acc = accumulate(acc, e, r, c, i, k);
            acc = accumulate(acc, e + cols, r + 1u, c, i, k);
            acc = accumulate(acc, e + 2u * cols, r + 2u, c, i, k);
            acc = accumulate(acc, e + 3u * cols, r + 3u, c, i, k);
        }
        for (; r < rows.y; r++) {
            acc = accumulate(acc, base + r * cols + at.col, r, c, i, k);
        }
    }
    return finish(acc);
}

