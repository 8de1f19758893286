// The forward in one pass for stat rows that are contiguous runs (a stat
// view with outer 1: LayerNorm's and RMSNorm's rows, GroupNorm's and
// InstanceNorm's channels-first groups) of up to 8,192 values, on GPUs
// (src/family/forward.rs says which): a team of p.width invocations (a
// power of two up to the workgroup) takes its row's mean, then the
// variance about it, writes the row's entry as merge_rows does, then y as
// apply does (weight (r % groups) * cpg + i / wdiv of value i).
// Appended to row_norm.wgsl in its scalar variant (V = f32) only, with
// group_backward and row_backward below.
const ROW_WG: u32 = 256u;

@compute @workgroup_size(256)
fn row_forward(ids: Ids) {
    let t = ids.t;
    let teams = ROW_WG / p.width;
    let lane = t % p.width;
    for (var first = ids.wg.x * teams; first < p.channels; first += ids.nwg.x * teams) {
        let r = first + t / p.width;
        let live = r < p.channels;
        let base = r * p.inner;
        var sum = 0.0;
        if (live) {
            for (var i = lane; i < p.inner; i += p.width) {
                sum += from_memory(x[p.x_off + base + i]);
            }
        }
        let mean = team_sum(t, p.width, vec4<f32>(sum)).x / p.count;
        var squares = 0.0;
        if (live) {
            for (var i = lane; i < p.inner; i += p.width) {
                let d = from_memory(x[p.x_off + base + i]) - mean;
                squares += d * d;
            }
        }
        let var_biased = team_sum(t, p.width, vec4<f32>(squares)).x / p.count;
        let entry = row_entry(mean, var_biased);
        if (live) {
            if (lane == 0u) {
                rows[r] = entry;
            }
            for (var i = lane; i < p.inner; i += p.width) {
                let w = (r % p.groups) * p.cpg + i / p.wdiv;
                let v = from_memory(x[p.x_off + base + i]);
                y[p.y_off + base + i] = to_memory(fma((v - entry.x) * entry.y, gamma(w), beta(w)));
            }
        }
    }
}

// GroupNorm's and InstanceNorm's backward in one pass for the stat rows
// row_forward takes (channels-first groups, p.cpg channels of p.inner /
// p.cpg values each): the row's team sums each channel's (dy, dy * (x -
// centre), x - centre) into `instances` (as group_row_grads leaves them
// for instance_columns), adds them weighted into the row's sums, takes the
// row's dx coefficients as merge_row_grads does, then writes dx.
@compute @workgroup_size(256)
fn group_backward(ids: Ids) {
    let t = ids.t;
    let teams = ROW_WG / p.width;
    let lane = t % p.width;
    let channels = p.groups * p.cpg;
    let run = p.inner / p.cpg;
    for (var first = ids.wg.x * teams; first < p.channels; first += ids.nwg.x * teams) {
        let r = first + t / p.width;
        let live = r < p.channels;
        let s = rows[min(r, p.channels - 1u)];
        var row_sums = vec4<f32>(0.0);
        for (var k = 0u; k < p.cpg; k++) {
            var acc = vec4<f32>(0.0);
            if (live) {
                let base = r * p.inner + k * run;
                for (var i = lane; i < run; i += p.width) {
                    let d = from_memory(x[p.x_off + base + i]) - s.x;
                    let g = from_memory(dy[p.dy_off + base + i]);
                    acc += vec4<f32>(g, g * d, d, 0.0);
                }
            }
            let sums = team_sum(t, p.width, acc);
            let instance = r * p.cpg + k;
            if (live && lane == 0u) {
                instances[instance] = sums;
            }
            let w = gamma(instance % channels);
            row_sums += vec4<f32>(w * sums.x, w * sums.y, sums.z, 0.0);
        }
        if (live) {
            let k = grads_of(s, row_sums);
            if (lane == 0u) {
                rows[r] = k.stats;
            }
            let base = r * p.inner;
            for (var i = lane; i < p.inner; i += p.width) {
                let v = from_memory(x[p.x_off + base + i]);
                let g = from_memory(dy[p.dy_off + base + i]);
                let w = (r % p.groups) * p.cpg + i / p.wdiv;
                dx[p.dx_off + base + i] = to_memory(k.dx.x * g * gamma(w) + k.dx.y * (v - k.dx.w) + k.dx.z);
            }
        }
    }
}

// LayerNorm's and RMSNorm's backward (any stat rows row_forward takes,
// whose instances are not summed apart) in one pass: the row's team sums
// (gamma dy, gamma dy * (x - centre), x - centre) as reduce MODE 2 does,
// takes the row's dx coefficients and its entry's delta as merge_row_grads
// does, then writes dx. dweight and dbias follow from the column sums,
// which read the delta.
@compute @workgroup_size(256)
fn row_backward(ids: Ids) {
    let t = ids.t;
    let teams = ROW_WG / p.width;
    let lane = t % p.width;
    for (var first = ids.wg.x * teams; first < p.channels; first += ids.nwg.x * teams) {
        let r = first + t / p.width;
        let live = r < p.channels;
        let s = rows[min(r, p.channels - 1u)];
        let base = r * p.inner;
        var acc = vec4<f32>(0.0);
        if (live) {
            for (var i = lane; i < p.inner; i += p.width) {
                let d = from_memory(x[p.x_off + base + i]) - s.x;
                let g = from_memory(dy[p.dy_off + base + i]) * gamma((r % p.groups) * p.cpg + i / p.wdiv);
                acc += vec4<f32>(g, g * d, d, 0.0);
            }
        }
        let sums = team_sum(t, p.width, acc);
        if (live) {
            let k = grads_of(s, sums);
            if (lane == 0u) {
                rows[r] = k.stats;
            }
            for (var i = lane; i < p.inner; i += p.width) {
                let v = from_memory(x[p.x_off + base + i]);
                let g = from_memory(dy[p.dy_off + base + i]);
                let w = (r % p.groups) * p.cpg + i / p.wdiv;
                dx[p.dx_off + base + i] = to_memory(k.dx.x * g * gamma(w) + k.dx.y * (v - k.dx.w) + k.dx.z);
            }
        }
    }
}
