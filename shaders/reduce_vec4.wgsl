// Partial reductions four values at a time (vec4 loads): BatchNorm's, for
// views where the elementwise passes also run in vec4 (see elementwise.wgsl),
// the family's statistics, and GroupNorm's and InstanceNorm's backward sums
// per instance. The view in Params is in vec4 units. Same tilings (planar, interleaved, rows; grid z over a batch of views, as
// reduce.wgsl), partial layout and modes as reduce.wgsl (0 statistics, 1
// backward sums, 4 and 5 behind a fused ReLU / add + ReLU), so the merge
// kernels take either.
//
// Accumulators are per lane: four streams of shifted sums (statistics) or
// sums that share their count. Lanes are channels (channels-last,
// FLAG_LANES_ARE_CHANNELS): each invocation writes four partials. Lanes of
// one channel (inner % 4 == 0): the four streams are folded into one
// partial with Chan's formula when it is written.
// Values sit in memory as S (vec4<f32>, two 64-bit words holding four f32
// on CPU adapters, or vec4<f16> for half precision), read through
// from_memory; every sum is f32. Needs common.wgsl and a prelude (alias S,
// fn from_memory; src/kernels.rs) in front of it, and reduce_entries.wgsl
// (appended).

// Per-lane accumulators: statistics (n, sum d, sum d^2, pivot) while
// accumulating, (n, mean, M2, 0) after `finish`, or sums (s1, s2, s3); `n`
// is shared by the lanes (every row adds one value to each).
struct Acc {
    n: f32,
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
}

var<workgroup> shared_n: array<f32, WG>;
var<workgroup> shared_a: array<vec4<f32>, WG>;
var<workgroup> shared_b: array<vec4<f32>, WG>;
var<workgroup> shared_c: array<vec4<f32>, WG>;

// A channel's coefficients (mean, invstd, scale, beta), each spread over lanes.
struct Coef {
    mean: vec4<f32>,
    scale: vec4<f32>,
    beta: vec4<f32>,
}

// Channel c of view z (view z's channels follow view z - 1's, as their
// partials do: GroupNorm's backward reduces each sample's instances).
fn coefficients(z: u32, c: u32) -> Coef {
    if (MODE == 0u) {
        return Coef(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    }
    let b = view_first(z);
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        let l = b + lane_channels4(c);
        let k0 = channel_entry(l.x);
        let k1 = channel_entry(l.y);
        let k2 = channel_entry(l.z);
        let k3 = channel_entry(l.w);
        return Coef(vec4<f32>(k0.x, k1.x, k2.x, k3.x), vec4<f32>(k0.z, k1.z, k2.z, k3.z), vec4<f32>(k0.w, k1.w, k2.w, k3.w));
    }
    let k = channel_entry(b + c);
    return Coef(vec4<f32>(k.x), vec4<f32>(k.z), vec4<f32>(k.w));
}

// The first partial channel of view z: views hold `channels` channels, or
// lane_channels when lanes are channels.
fn view_first(z: u32) -> u32 {
    let lanes = (p.flags & FLAG_LANES_ARE_CHANNELS) != 0u;
    return p.chan_base + z * select(p.channels, p.lane_channels, lanes);
}

// The upstream gradient behind the fused ReLU's mask, as reduce.wgsl computes it.
fn masked_gradient(idx: u32, v: vec4<f32>, k: Coef) -> vec4<f32> {
    let g = from_memory(dy[p.dy_off + idx]);
    if (MODE < 4u) {
        return g;
    }
    var residual = vec4<f32>(0.0);
    if (MODE == 5u) {
        residual = from_memory(z[p.z_off + idx]);
    }
    return select(vec4<f32>(0.0), g, fma(v - k.mean, k.scale, k.beta) + residual > vec4<f32>(0.0));
}

// Per-lane statistics or per-lane sums.
fn add_lanes(acc: Acc, idx: u32, k: Coef) -> Acc {
    let v = from_memory(x[p.x_off + idx]);
    if (MODE != 0u) {
        let g = masked_gradient(idx, v, k);
        let d = v - k.mean;
        return Acc(acc.n, acc.a + g, acc.b + g * d, acc.c + d);
    }
    // Shifted sums per lane, (n, sum d, sum d^2, pivot) with d = v - pivot
    // and the pivot the lane's first value, as reduce.wgsl's MODE 0: no
    // division per value (Welford's took a sixth of the pass on lavapipe).
    // `finish` turns them into (n, mean, M2).
    let pivot = select(acc.c, v, acc.n == 0.0);
    let d = v - pivot;
    return Acc(acc.n + 1.0, acc.a + d, acc.b + d * d, pivot);
}

// add_lanes over values first, first + stride, ... (n of them), four a loop
// iteration: on lavapipe an iteration's bookkeeping costs about as much as
// a load.
fn add_strided(acc: Acc, first: u32, n: u32, stride: u32, k: Coef) -> Acc {
    var a = acc;
    var e = first;
    var m = 0u;
    for (; m + 4u <= n; m += 4u) {
        a = add_lanes(a, e, k);
        a = add_lanes(a, e + stride, k);
        a = add_lanes(a, e + 2u * stride, k);
        a = add_lanes(a, e + 3u * stride, k);
        e += 4u * stride;
    }
    for (; m < n; m++) {
        a = add_lanes(a, e, k);
        e += stride;
    }
    return a;
}

// An invocation's accumulator in the form `combine` and the partials take:
// MODE 0's shifted sums as per-lane (n, mean, M2); the sums as they are.
fn finish(acc: Acc) -> Acc {
    if (MODE != 0u || acc.n == 0.0) {
        return acc;
    }
    let shift = acc.a / acc.n;
    return Acc(acc.n, acc.c + shift, max(acc.b - acc.a * shift, vec4<f32>(0.0)), vec4<f32>(0.0));
}

// Chan's formula per lane (statistics) or sums.
fn combine(x0: Acc, x1: Acc) -> Acc {
    if (MODE != 0u) {
        return Acc(x0.n, x0.a + x1.a, x0.b + x1.b, x0.c + x1.c);
    }
    if (x1.n == 0.0) {
        return x0;
    }
    if (x0.n == 0.0) {
        return x1;
    }
    let n = x0.n + x1.n;
    let d = x1.a - x0.a;
    let f = x1.n / n;
    return Acc(n, x0.a + d * f, x0.b + x1.b + d * d * (x0.n * f), vec4<f32>(0.0));
}

fn store_shared(t: u32, acc: Acc) {
    shared_n[t] = acc.n;
    shared_a[t] = acc.a;
    shared_b[t] = acc.b;
    shared_c[t] = acc.c;
}

fn load_shared(t: u32) -> Acc {
    return Acc(shared_n[t], shared_a[t], shared_b[t], shared_c[t]);
}

// Lane l of an accumulator as a partial: (n, mean, M2, 0) or (s1, s2, s3, 0).
fn partial_of(acc: Acc, l: u32) -> vec4<f32> {
    if (MODE != 0u) {
        return vec4<f32>(acc.a[l], acc.b[l], acc.c[l], 0.0);
    }
    return vec4<f32>(acc.n, acc.a[l], acc.b[l], 0.0);
}

// The four lanes of one channel as one partial: sums, or Chan's formula for
// four streams of equal count.
fn folded_partial(acc: Acc) -> vec4<f32> {
    if (MODE != 0u) {
        return vec4<f32>(
            (acc.a.x + acc.a.y) + (acc.a.z + acc.a.w),
            (acc.b.x + acc.b.y) + (acc.b.z + acc.b.w),
            (acc.c.x + acc.c.y) + (acc.c.z + acc.c.w),
            0.0,
        );
    }
    let mean = ((acc.a.x + acc.a.y) + (acc.a.z + acc.a.w)) * 0.25;
    let d = acc.a - vec4<f32>(mean);
    let m2 = (acc.b.x + acc.b.y) + (acc.b.z + acc.b.w) + acc.n * dot(d, d);
    return vec4<f32>(4.0 * acc.n, mean, m2, 0.0);
}

fn empty() -> Acc {
    return Acc(0.0, vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

// One vec4 element into the accumulator, as reduce_entries.wgsl's walks
// call it (the position in the view is for reduce.wgsl's per-element
// weights; vec4 views take no weight).
fn accumulate(acc: Acc, idx: u32, o: u32, c: u32, i: u32, k: Coef) -> Acc {
    return add_lanes(acc, idx, k);
}

// Channel c of view z's partial in `slot` of its run (reduce_entries.wgsl):
// the four lanes folded into one.
fn store_partial(z: u32, c: u32, slot: u32, acc: Acc) {
    partials[(view_first(z) + c) * p.parts + p.part_base + slot] = folded_partial(acc);
}

// The values of one segment of a run (reduce_runs_lanes).
fn accumulate_segment(acc: Acc, base: u32, r: Run, stop: u32, c: u32, k: Coef) -> Acc {
    return add_strided(acc, base + (r.o * p.channels + c) * p.inner + r.i, segment_values(r, stop), 8u, k);
}

// Interleaved: an invocation owns one vec4 column and walks its rows. With
// FLAG_LANES_ARE_CHANNELS the column is four channels and gets four partials
// (channel lane_channel(col, l), at lane_stream(col, l) * slices + s);
// otherwise its four values share one channel and it gets one partial, at
// col * slices + s.
// Where invocation t sits: column_of in walks.wgsl.

// Invocation t's share: its column, row group g's rows (group_rows) of the slice.
fn interleaved_share(wg: vec3<u32>, t: u32) -> Acc {
    let at = column_of(wg, t);
    let cols = p.channels * p.inner;
    var acc = empty();
    if (at.owned) {
        let k = coefficients(wg.z, at.col / p.inner);
        let base = wg.z * p.batch_stride;
        let rows = group_rows(wg.y, at.g, at.groups);
        if (MODE == 0u) {
            return finish(column_stats(base + at.col, rows, cols));
        }
        acc = add_strided(acc, base + rows.x * cols + at.col, rows.y - min(rows.x, rows.y), cols, k);
    }
    return finish(acc);
}

// MODE 0 down rows [rows.x, rows.y) of one column (`first` its row-0
// element, rows `cols` apart): add_lanes's shifted sums with the pivot, the
// column's first value, loaded before the loop, and four rows a step in two
// accumulators (sums about one pivot add).
fn column_stats(first: u32, rows: vec2<u32>, cols: u32) -> Acc {
    if (rows.x >= rows.y) {
        return empty();
    }
    var idx = p.x_off + first + rows.x * cols;
    let pivot = from_memory(x[idx]);
    var a0 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var b1 = vec4<f32>(0.0);
    var r = rows.x;
    for (; r + 4u <= rows.y; r += 4u) {
        let d0 = from_memory(x[idx]) - pivot;
        let d1 = from_memory(x[idx + cols]) - pivot;
        let d2 = from_memory(x[idx + 2u * cols]) - pivot;
        let d3 = from_memory(x[idx + 3u * cols]) - pivot;
        a0 += d0 + d2;
        b0 += d0 * d0 + d2 * d2;
        a1 += d1 + d3;
        b1 += d1 * d1 + d3 * d3;
        idx += 4u * cols;
    }
    for (; r < rows.y; r++) {
        let d = from_memory(x[idx]) - pivot;
        a0 += d;
        b0 += d * d;
        idx += cols;
    }
    return Acc(f32(rows.y - rows.x), a0 + a1, b0 + b1, pivot);
}

// Stores column `col`'s accumulator of slice `s`: four partials (one per
// channel) when lanes are channels, else one. Each (column, slice) owns
// `per` consecutive slots (1 with the tree, `groups` per invocation) and
// this is slot `k` of them.
fn store_column(z: u32, col: u32, s: u32, per: u32, k: u32, acc: Acc) {
    let first = view_first(z);
    if ((p.flags & FLAG_LANES_ARE_CHANNELS) != 0u) {
        // A channel's streams (lanes of several columns) each own a run of
        // slices * per slots.
        for (var l = 0u; l < 4u; l++) {
            let slot = (lane_stream(col, l) * p.slices + s) * per + k;
            partials[(first + lane_channel(col, l)) * p.parts + p.part_base + slot] = partial_of(acc, l);
        }
    } else {
        let c = col / p.inner;
        store_partial(z, c, ((col - c * p.inner) * p.slices + s) * per + k, acc);
    }
}

