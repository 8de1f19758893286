// BatchNorm's training passes where the reduction's partials are merged by
// the pass that consumes them, on GPUs (src/batch_norm/merged.rs says
// when): every workgroup of a runs tiling (one channel a workgroup) merges
// its channel's partials itself, then walks its slices as apply_runs and
// dx_runs do (apply_channel_runs, dx_channel_runs). The channel's first
// workgroup also stores what merge_stats and merge_grads would have: the
// saved statistics and the running ones, or dweight and dbias. One
// dispatch fewer per op, for a few dozen partials a workgroup reads from
// the cache.
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
        apply_channel_runs(ids, c, splat(entry));
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
        dx_channel_runs(ids, c, DxCoef(splat(k), splat(entry.coef)));
    }
}

// BatchNorm's eval backward in one walk where a workgroup walks one
// channel: dx (and dz) from the running statistics' entry, which does not
// wait for any sum, and the channel's sum g and sum g * (x - mean) (as
// reduce MODE 1, 4 and 5 take them) on the way, into partials that merge_grads_eval turns
// into dweight and dbias. x and dy are read once. Partials: one a
// workgroup on GPUs (dx_eval_runs_team: a team sum), one an invocation on
// CPU adapters (dx_eval_runs_lanes: no barrier, which lavapipe pays for
// across the whole kernel); `p.parts` a channel either way.
@group(0) @binding(1) var<storage, read_write> partials_out: array<vec4<f32>>;

// sum g and sum g * (x - mean) (the eval backward needs no sum (x - mean)).
struct GradAcc {
    g: V,
    gd: V,
}

fn eval_grads_walk(ids: Ids, c: u32, k: vec4<f32>) -> vec4<f32> {
    let coef = DxCoef(splat(k), splat(vec4<f32>(k.z, 0.0, k.x, 0.0)));
    var acc = GradAcc(V(0.0), V(0.0));
    for (var sl = ids.wg.x; sl < p.slices; sl += ids.nwg.x) {
        for (var r = run_start(sl, ids.t); r.j < r.end; ) {
            let stop = segment_stop(r);
            var e = (r.o * p.channels + c) * p.inner + r.i;
            for (var m = segment_values(r, stop); m > 0u; m--) {
                let v = from_memory(x[p.x_off + e]);
                var g = from_memory(dy[p.dy_off + e]);
                if (MODE != 0u) {
                    g = select(V(0.0), g, pre_activation(v, coef.k, e) > V(0.0));
                    if (MODE == 2u) {
                        dz[p.dz_off + e] = to_memory(g);
                    }
                }
                dx[p.dx_off + e] = to_memory(coef.g.a * g);
                acc.g += g;
                acc.gd += g * (v - coef.k.a);
                e += 8u;
            }
            r = next_segment(r, stop);
        }
    }
    return vec4<f32>(lanes_total(acc.g), lanes_total(acc.gd), 0.0, 0.0);
}

@compute @workgroup_size(256)
fn dx_eval_runs_team(ids: Ids) {
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        let g = p.chan_base + c;
        let sums = team_sum(ids.t, WG, eval_grads_walk(ids, c, running_entry(g)));
        if (ids.t == 0u) {
            partials_out[g * p.parts + ids.wg.x] = sums;
        }
    }
}

@compute @workgroup_size(256)
fn dx_eval_runs_lanes(ids: Ids) {
    for (var c = ids.wg.y; c < p.channels; c += ids.nwg.y) {
        let g = p.chan_base + c;
        partials_out[g * p.parts + ids.wg.x * WG + ids.t] = eval_grads_walk(ids, c, running_entry(g));
    }
}
