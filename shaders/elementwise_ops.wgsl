// The elementwise passes' shared walks, written once for every op: a
// template that src/kernels.rs appends once per op (OP = apply, dx, and
// BatchNorm's eval), after a shader (elementwise.wgsl, row_norm.wgsl) that
// defines for each op its coefficients per view channel (`OP_channel(c) ->
// OP_Chan`), their form for the values of outer index o (`OP_segment(k, o)
// -> OP_Coef`) and the pass over value e (`OP_at(e, k: OP_Coef)`).

// Values first, first + stride, ... (n of them), four a loop iteration: on
// lavapipe an iteration's bookkeeping costs about as much as a load.
fn OP_strided(first: u32, n: u32, stride: u32, k: OP_Coef) {
    var e = first;
    var m = 0u;
    for (; m + 4u <= n; m += 4u) {
        OP_at(e, k);
        OP_at(e + stride, k);
        OP_at(e + 2u * stride, k);
        OP_at(e + 3u * stride, k);
        e += 4u * stride;
    }
    for (; m < n; m++) {
        OP_at(e, k);
        e += stride;
    }
}

// Runs (long inner runs): workgroup (x, c) walks slices x, x + nwg.x, ...
// of channel c (walks.wgsl), segment by segment (an outer index each).
@compute @workgroup_size(256)
fn OP_runs(ids: Ids) {
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        OP_channel_runs(ids, c, OP_channel(c));
    }
}

// Workgroup (x, _)'s slices of channel c, with the channel's coefficients
// k (also the walk of merged.wgsl's passes, which take k their own way).
fn OP_channel_runs(ids: Ids, c: u32, k: OP_Chan) {
    for (var s = ids.wg.x; s < p.slices; s += ids.nwg.x) {
        for (var r = run_start(s, ids.t); r.j < r.end; ) {
            let stop = segment_stop(r);
            OP_strided((r.o * p.channels + c) * p.inner + r.i, segment_values(r, stop), 8u, OP_segment(k, r.o));
            r = next_segment(r, stop);
        }
    }
}
