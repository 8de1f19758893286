// The walks and entry points reduce.wgsl (scalar values) and
// reduce_vec4.wgsl (vec4 values) share. Each of those defines what differs:
// the accumulator `Acc`, `empty()`, `accumulate` (one element in) and
// `finish`; a channel's `coefficients`; `store_shared` / `load_shared` and
// `combine` for the tree in workgroup memory; invocation t's share of an
// interleaved column (`interleaved_share`); and where a partial goes
// (`store_partial` for channel c, `store_column` for an interleaved column).

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
fn reduce_planar(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    for (var c = wg.y; c < p.channels; c += nwg.y) {
        store_shared(t, planar_share(wg, t, c));
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (t < s) {
                store_shared(t, combine(load_shared(t), load_shared(t + s)));
            }
            workgroupBarrier();
        }
        if (t == 0u) {
            store_partial(wg.z, c, wg.x, load_shared(0u));
        }
        workgroupBarrier();
    }
}

// Planar, one partial per invocation and no barrier: for CPU adapters, which
// run a workgroup's invocations in SIMD batches and pay every barrier with a
// switch between all of them; the merge kernels take WG times more partials.
@compute @workgroup_size(256)
fn reduce_planar_lanes(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    for (var c = wg.y; c < p.channels; c += nwg.y) {
        store_partial(wg.z, c, wg.x * WG + t, planar_share(wg, t, c));
    }
}

// Interleaved: the tensor as a matrix of `outer` rows by channels * inner
// columns. Workgroup (b, s, z) takes `width` adjacent columns (so
// neighbouring invocations read neighbouring addresses) and rows
// [s * slice_len, (s+1) * slice_len), WG / width rows at a time; the tree
// combines a column's row groups. Where invocation t sits: column_of in
// walks.wgsl.
@compute @workgroup_size(256)
fn reduce_interleaved(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let at = column_of(wg, t);
    store_shared(t, interleaved_share(wg, t));
    workgroupBarrier();
    for (var s = p.tree; s > 0u; s >>= 1u) {
        if (at.g < s && at.g + s < at.groups) {
            store_shared(t, combine(load_shared(t), load_shared(t + s * p.width)));
        }
        workgroupBarrier();
    }
    if (at.g == 0u && at.owned) {
        store_column(wg.z, at.col, wg.y, 1u, 0u, load_shared(t));
    }
}

// Interleaved, one partial per invocation and no barrier (CPU adapters): row
// group g's partial goes to slot * groups + g, slot as reduce_interleaved's.
@compute @workgroup_size(256)
fn reduce_interleaved_lanes(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let at = column_of(wg, t);
    let acc = interleaved_share(wg, t);
    if (at.owned) {
        store_column(wg.z, at.col, wg.y, at.groups, at.g, acc);
    }
}

// Rows: outer == 1 and inner < WG, i.e. many short contiguous channels (the
// family's short rows). `width` lanes (a power of two) reduce one channel, so
// a workgroup takes WG / width channels at once; one partial per channel.
// Workgroup (x, y) is block y * num_workgroups.x + x (rows_channel in
// walks.wgsl).
@compute @workgroup_size(256)
fn reduce_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let lane = t % p.width;
    let c = rows_channel(wg, nwg, t);
    store_shared(t, rows_share(wg, nwg, t));
    workgroupBarrier();
    for (var s = p.width / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            store_shared(t, combine(load_shared(t), load_shared(t + s)));
        }
        workgroupBarrier();
    }
    if (lane == 0u && c < p.channels) {
        store_partial(wg.z, c, 0u, load_shared(t));
    }
}

// Rows, one partial per lane and no barrier (CPU adapters).
@compute @workgroup_size(256)
fn reduce_rows_lanes(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let c = rows_channel(wg, nwg, t);
    let acc = rows_share(wg, nwg, t);
    if (c < p.channels) {
        store_partial(wg.z, c, t % p.width, acc);
    }
}
