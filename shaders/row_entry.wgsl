// A stat row's saved entry (centre, rstd, 0, var) from its mean and biased
// variance: RMSNorm's centre is 0 and its mean square var + mean^2 (two
// non-negative terms, no cancellation). Written once for every kernel that
// saves rows: merge_rows, row_forward, the one-pass kernels
// (src/resident.rs) and the reductions whose last workgroup merges
// (finish_rows.wgsl).
fn row_entry(mean: f32, var_biased: f32) -> vec4<f32> {
    if (has(FLAG_RMS)) {
        return vec4<f32>(0.0, 1.0 / sqrt(var_biased + mean * mean + p.eps), 0.0, var_biased);
    }
    return vec4<f32>(mean, 1.0 / sqrt(var_biased + p.eps), 0.0, var_biased);
}
