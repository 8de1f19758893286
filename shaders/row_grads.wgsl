// A stat row's dx coefficients from its backward sums, written once for
// row_norm.wgsl's merges, row_forward.wgsl's team backwards and
// finish_instances.wgsl (GroupNorm's and InstanceNorm's reduction whose
// last workgroups take them). Needs `p` (Params) and `has` (common.wgsl).

// A stat row's entry again (its delta filled in) and its dx coefficients
// (rstd, B, C, centre), from its entry `s` and its sums.
struct RowGrads {
    stats: vec4<f32>,
    dx: vec4<f32>,
}

fn grads_of(s: vec4<f32>, sums: vec4<f32>) -> RowGrads {
    let rstd = s.y;
    let inv_m = 1.0 / p.count;
    var delta = 0.0;
    var b = 0.0;
    var c = 0.0;
    if (has(FLAG_BATCH_STATS)) {
        if (has(FLAG_RMS)) {
            b = -rstd * rstd * rstd * sums.y * inv_m;
        } else {
            // The centre is the mean rounded to f32; the exact one is centre + delta.
            delta = sums.z * inv_m;
            let sum_gx = sums.y - delta * sums.x;
            b = -rstd * rstd * rstd * sum_gx * inv_m;
            c = -rstd * sums.x * inv_m - b * delta;
        }
    }
    return RowGrads(vec4<f32>(s.x, rstd, delta, s.w), vec4<f32>(rstd, b, c, s.x));
}
