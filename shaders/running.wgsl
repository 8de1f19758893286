// BatchNorm's eval coefficients of channel c, (mean, invstd, scale, beta),
// from the running statistics: prepare_eval (batch_norm.wgsl) stores them,
// the eval forward's apply (elementwise.wgsl) computes them where it needs
// them. Needs `p`, `weight`, `bias`, `running_mean` and `running_var`.
fn running_entry(c: u32) -> vec4<f32> {
    let invstd = 1.0 / sqrt(running_var[c] + p.eps);
    let gamma = select(1.0, weight[c], has(FLAG_AFFINE));
    return vec4<f32>(running_mean[c], invstd, gamma * invstd, select(0.0, bias[c], has(FLAG_AFFINE)));
}
