// BatchNorm's training passes where the reduction's partials are merged by
// the pass that consumes them, on GPUs (src/batch_norm/merged.rs says
// when): every workgroup of a runs tiling (one channel a workgroup) merges
// its channel's partials itself, then walks its slices as apply_runs and
// dx_runs do. The channel's first workgroup also stores what merge_stats
// and merge_grads would have: the saved statistics and the running ones,
// or dweight and dbias. One dispatch fewer per op, for a few dozen partials
// a workgroup reads from the cache.
// Appended to elementwise.wgsl, with running.wgsl and merge.wgsl.

@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;
// num_batches_tracked as (low, high) words, as batch_norm.wgsl's.
@group(0) @binding(6) var<storage, read_write> counter: array<u32, 4>;
// apply_runs_merged writes what apply reads elsewhere: the batch's
// statistics, and the running ones it updates.
@group(0) @binding(4) var<storage, read_write> running_mean_rw: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var_rw: array<f32>;
@group(0) @binding(7) var<storage, read_write> saved: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(14) var<storage, read_write> dbias: array<f32>;

// Whether this invocation stores its channel's results: the first of the
// channel's first workgroup.
fn stores(ids: Ids) -> bool {
    return ids.wg.x == 0u && ids.t == 0u;
}

// The training forward's apply, from the statistics' partials; with
// FLAG_UPDATE_RUNNING (a momentum: no counter read, no batch to reject),
// the running statistics too.
@compute @workgroup_size(256)
fn apply_runs_merged(ids: Ids) {
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        let g = p.chan_base + c;
        let s = team_merge_stats(ids.t, WG, g * p.parts, p.parts).xyz;
        let entry = batch_entry(g, s);
        if (stores(ids)) {
            saved[g] = entry;
            if (has(FLAG_UPDATE_RUNNING)) {
                let updated = next_running(vec2<f32>(running_mean_rw[g], running_var_rw[g]), s, p.momentum);
                running_mean_rw[g] = updated.x;
                running_var_rw[g] = updated.y;
                if (g == 0u) {
                    bump_counter();
                }
            }
        }
        let k = splat(entry);
        for (var sl = ids.wg.x; sl < p.slices; sl += ids.nwg.x) {
            for (var r = run_start(sl, ids.t); r.j < r.end; ) {
                let stop = segment_stop(r);
                apply_strided((r.o * p.channels + c) * p.inner + r.i, segment_values(r, stop), 8u, k);
                r = next_segment(r, stop);
            }
        }
    }
}

// The backward's dx (and dz), from the gradient sums' partials and the
// channel's entry in `chan` (saved, or prepare_eval's); dweight and dbias.
@compute @workgroup_size(256)
fn dx_runs_merged(ids: Ids) {
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        let g = p.chan_base + c;
        let sums = team_merge_sums(ids.t, WG, g * p.parts, p.parts);
        let k = chan[g];
        let entry = grad_entry(k, sums);
        if (stores(ids)) {
            dweight[g] = entry.dweight;
            dbias[g] = sums.x;
        }
        let coef = DxCoef(splat(k), splat(entry.coef));
        for (var sl = ids.wg.x; sl < p.slices; sl += ids.nwg.x) {
            for (var r = run_start(sl, ids.t); r.j < r.end; ) {
                let stop = segment_stop(r);
                dx_strided((r.o * p.channels + c) * p.inner + r.i, segment_values(r, stop), 8u, coef);
                r = next_segment(r, stop);
            }
        }
    }
}
