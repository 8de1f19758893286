// The modes, bindings, walks and entry points reduce.wgsl (scalar values) and
// reduce_vec4.wgsl (vec4 values) share. Each of those defines what differs:
// the accumulator `Acc`, `empty()`, `accumulate` (one element in),
// `accumulate_segment` (a run's segment in) and `finish`; a channel's
// `coefficients`; `store_shared` / `load_shared` and `combine` for the tree
// in workgroup memory; invocation t's share of an
// interleaved column (`interleaved_share`); and where a partial goes
// (`store_partial` for channel c, `store_column` for an interleaved column).

override MODE: u32 = 0u;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
// S is the type in memory (prelude): f32, or f16 for half-precision tensors.
@group(0) @binding(1) var<storage, read> x: array<S>;
// MODE >= 1; MODE 0 binds x here again.
@group(0) @binding(2) var<storage, read> dy: array<S>;
// MODE 1, 4, 5: per-channel (mean, invstd, scale, beta); MODE 2 and 3: per stat row
// (centre, rstd, mean correction, var); MODE 0 binds any vec4 buffer.
@group(0) @binding(3) var<storage, read> chan: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec4<f32>>;
// MODE 5 only: the residual input; other modes bind x here again.
@group(0) @binding(6) var<storage, read> z: array<S>;

// The workgroups whose partials cover the same channels, for a tree
// reduction whose last workgroup merges them (finish.wgsl; elsewhere
// finish_reduction does nothing): its count's index, how many workgroups
// count in, and its channels first, first + step, ... below end. The
// per-invocation entries have no such form: on lavapipe a barrier anywhere
// in them slowed their walk several times over (PERF_NOTES.md).
struct Block {
    index: u32,
    members: u32,
    first: u32,
    step: u32,
    end: u32,
    // The view (grid z) the channels are of.
    view: u32,
    // Its place among its view's blocks, how many a view has, and the
    // views.
    across: u32,
    per_view: u32,
    views: u32,
    // Its channels are the run [first, end) that the blocks with equal
    // `across` take in every view (column blocks).
    recurs: bool,
}

// Planar: the workgroups of one grid row take the same channels.
fn row_block(ids: Ids) -> Block {
    let index = ids.wg.z * ids.nwg.y + ids.wg.y;
    return Block(index, ids.nwg.x, ids.wg.y, ids.nwg.y, p.channels, ids.wg.z, ids.wg.y, ids.nwg.y, ids.nwg.z, false);
}

// Interleaved: the workgroups of one column block take its columns'
// channels; with lanes of channels-last channels, four a column, or all
// where one block takes every column (src/batch_norm/finishing.rs picks
// only tilings whose channels lie in one block each).
fn column_block(ids: Ids) -> Block {
    let lo = ids.wg.x * p.width;
    let hi = min(lo + p.width, p.channels * p.inner);
    let index = ids.wg.z * ids.nwg.x + ids.wg.x;
    let across = vec3<u32>(ids.wg.x, ids.nwg.x, ids.nwg.z);
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        if (ids.nwg.x == 1u) {
            return Block(index, ids.nwg.y, 0u, 1u, p.lane_channels, ids.wg.z, across.x, across.y, across.z, true);
        }
        return Block(index, ids.nwg.y, 4u * lo, 1u, 4u * hi, ids.wg.z, across.x, across.y, across.z, true);
    }
    let first = lo / p.inner;
    let end = (hi + p.inner - 1u) / p.inner;
    return Block(index, ids.nwg.y, first, 1u, end, ids.wg.z, across.x, across.y, across.z, true);
}

// Rows: a workgroup reduces its channels whole (rows_channel in walks.wgsl).
fn rows_block(ids: Ids) -> Block {
    let per_view = ids.nwg.x * ids.nwg.y;
    let across = ids.wg.y * ids.nwg.x + ids.wg.x;
    let first = across * (WG / p.width);
    let end = min(first + WG / p.width, p.channels);
    return Block(ids.wg.z * per_view + across, 1u, first, 1u, end, ids.wg.z, across, per_view, ids.nwg.z, false);
}

// Planar: long contiguous runs, workgroup (slice, channel, view). Walks
// element j of channel c of view z, counted over (o, i). Used when inner >=
// WG, so an invocation crosses at most one row boundary per step. This is
// invocation t's share.
fn planar_share(wg: vec3<u32>, t: u32, c: u32) -> Acc {
    let end = min((wg.x + 1u) * p.slice_len, p.outer * p.inner);
    let base = wg.z * p.batch_stride;
    let k = coefficients(wg.z, c);
    var acc = empty();
    var j = wg.x * p.slice_len + t;
    var o = j / p.inner;
    var i = j - o * p.inner;
    while (j < end) {
        acc = accumulate(acc, base + (o * p.channels + c) * p.inner + i, o, c, i, k);
        j += WG;
        i += WG;
        while (i >= p.inner) {
            i -= p.inner;
            o += 1u;
        }
    }
    return finish(acc);
}

// Rows: invocation t's share of its short channel (rows_channel in
// walks.wgsl), `width` lanes a channel.
fn rows_share(wg: vec3<u32>, nwg: vec3<u32>, t: u32) -> Acc {
    let c = rows_channel(wg, nwg, t);
    var acc = empty();
    if (c < p.channels) {
        let k = coefficients(wg.z, c);
        for (var i = t % p.width; i < p.inner; i += p.width) {
            acc = accumulate(acc, wg.z * p.batch_stride + c * p.inner + i, 0u, c, i, k);
        }
    }
    return finish(acc);
}

// Planar: workgroup (slice, channel, view) reduces one slice of a channel's
// long contiguous runs to one partial through a tree in workgroup memory.
@compute @workgroup_size(256)
fn reduce_planar(ids: Ids) {
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        store_shared(ids.t, planar_share(ids.wg, ids.t, c));
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (ids.t < s) {
                store_shared(ids.t, combine(load_shared(ids.t), load_shared(ids.t + s)));
            }
            workgroupBarrier();
        }
        if (ids.t == 0u) {
            store_partial(ids.wg.z, c, ids.wg.x, load_shared(0u));
        }
        workgroupBarrier();
    }
    finish_reduction(row_block(ids), ids.t);
}

// Planar, one partial per invocation and no barrier: for CPU adapters, which
// run a workgroup's invocations in SIMD batches and pay every barrier with a
// switch between all of them; the merge kernels take WG times more partials.
@compute @workgroup_size(256)
fn reduce_planar_lanes(ids: Ids) {
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        store_partial(ids.wg.z, c, ids.wg.x * WG + ids.t, planar_share(ids.wg, ids.t, c));
    }
}

// Interleaved: the tensor as a matrix of `outer` rows by channels * inner
// columns. Workgroup (b, s, z) takes `width` adjacent columns (so
// neighbouring invocations read neighbouring addresses) and rows
// [s * slice_len, (s+1) * slice_len), WG / width rows at a time; the tree
// combines a column's row groups. Where invocation t sits: column_of in
// walks.wgsl.
@compute @workgroup_size(256)
fn reduce_interleaved(ids: Ids) {
    let at = column_of(ids.wg, ids.t);
    store_shared(ids.t, interleaved_share(ids.wg, ids.t));
    workgroupBarrier();
    for (var s = p.tree; s > 0u; s >>= 1u) {
        if (at.g < s && at.g + s < at.groups) {
            store_shared(ids.t, combine(load_shared(ids.t), load_shared(ids.t + s * p.width)));
        }
        workgroupBarrier();
    }
    if (at.g == 0u && at.owned) {
        store_column(ids.wg.z, at.col, ids.wg.y, 1u, 0u, load_shared(ids.t));
    }
    finish_reduction(column_block(ids), ids.t);
}

// Interleaved, one partial per invocation and no barrier (CPU adapters): row
// group g's partial goes to slot * groups + g, slot as reduce_interleaved's.
@compute @workgroup_size(256)
fn reduce_interleaved_lanes(ids: Ids) {
    let at = column_of(ids.wg, ids.t);
    let acc = interleaved_share(ids.wg, ids.t);
    if (at.owned) {
        store_column(ids.wg.z, at.col, ids.wg.y, at.groups, at.g, acc);
    }
}

// Rows: outer == 1 and inner < WG, i.e. many short contiguous channels (the
// family's short rows). `width` lanes (a power of two) reduce one channel, so
// a workgroup takes WG / width channels at once; one partial per channel.
// Workgroup (x, y) is block y * num_workgroups.x + x (rows_channel in
// walks.wgsl).
@compute @workgroup_size(256)
fn reduce_rows(ids: Ids) {
    let lane = ids.t % p.width;
    let c = rows_channel(ids.wg, ids.nwg, ids.t);
    store_shared(ids.t, rows_share(ids.wg, ids.nwg, ids.t));
    workgroupBarrier();
    for (var s = p.width / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            store_shared(ids.t, combine(load_shared(ids.t), load_shared(ids.t + s)));
        }
        workgroupBarrier();
    }
    if (lane == 0u && c < p.channels) {
        store_partial(ids.wg.z, c, 0u, load_shared(ids.t));
    }
    finish_reduction(rows_block(ids), ids.t);
}

// Runs (Shape::Runs, CPU adapters): workgroup (x, c, z) walks slices x,
// x + nwg.x, ... of channel c (walks.wgsl) and each invocation writes its
// partial over all of them to slot x * WG + t, as reduce_planar_lanes.
@compute @workgroup_size(256)
fn reduce_runs_lanes(ids: Ids) {
    let base = ids.wg.z * p.batch_stride;
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        let k = coefficients(ids.wg.z, c);
        var acc = empty();
        for (var s = ids.wg.x; s < p.slices; s += ids.nwg.x) {
            for (var r = run_start(s, ids.t); r.j < r.end; ) {
                let stop = segment_stop(r);
                acc = accumulate_segment(acc, base, r, stop, c, k);
                r = next_segment(r, stop);
            }
        }
        store_partial(ids.wg.z, c, ids.wg.x * WG + ids.t, finish(acc));
    }
}

// Rows, one partial per lane and no barrier (CPU adapters).
@compute @workgroup_size(256)
fn reduce_rows_lanes(ids: Ids) {
    let c = rows_channel(ids.wg, ids.nwg, ids.t);
    let acc = rows_share(ids.wg, ids.nwg, ids.t);
    if (c < p.channels) {
        store_partial(ids.wg.z, c, ids.t % p.width, acc);
    }
}
