//! Folding an eval-mode BatchNorm into the layer before it.

use super::*;

/// The eval-mode BatchNorm folded by [`fold_batch_norm`].
#[derive(Clone, Copy, Debug)]
pub struct FoldBn<'a> {
    /// Running mean, one value per output channel of the layer.
    pub running_mean: &'a [f32],
    /// Running variance, one value per output channel.
    pub running_var: &'a [f32],
    /// Gamma; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Beta; `None` means zeros.
    pub bias: Option<&'a [f32]>,
    /// The BatchNorm's epsilon.
    pub eps: f64,
}

/// Folds an eval-mode BatchNorm into the conv/linear layer before it, as
/// `torch.nn.utils.fusion.fuse_conv_bn_weights` / `fuse_linear_bn_weights`:
/// with `s = gamma / sqrt(running_var + eps)` per output channel,
/// `W' = W * s` along `out_axis` and `b' = (b - running_mean) * s + beta`
/// (`b` = zeros when the layer has no bias).
///
/// `weight_shape` is the layer's weight shape; `out_axis` is the axis of the
/// output channels: 0 for conv and linear, 1 for conv-transpose. Returns
/// `(folded_weight, folded_bias)`, the weight in `layer_weight`'s order.
pub fn fold_batch_norm(
    layer_weight: &[f32],
    layer_bias: Option<&[f32]>,
    weight_shape: &[usize],
    out_axis: usize,
    bn: FoldBn,
) -> (Vec<f64>, Vec<f64>) {
    assert!(out_axis < weight_shape.len(), "out_axis {out_axis} out of range for weight shape {weight_shape:?}");
    check_len(layer_weight, numel(weight_shape), "layer_weight");
    let out = weight_shape[out_axis];
    let inner = numel(&weight_shape[out_axis + 1..]);
    check_len(bn.running_mean, out, "running_mean");
    check_len(bn.running_var, out, "running_var");
    let gamma = param_or(bn.weight, out, 1.0, "weight");
    let beta = param_or(bn.bias, out, 0.0, "bias");
    let lb = param_or(layer_bias, out, 0.0, "layer_bias");
    let scale: Vec<f64> = (0..out).map(|o| gamma[o] / (f64::from(bn.running_var[o]) + bn.eps).sqrt()).collect();
    let weight =
        layer_weight.iter().enumerate().map(|(i, &w)| f64::from(w) * scale[(i / inner.max(1)) % out]).collect();
    let bias = (0..out).map(|o| (lb[o] - f64::from(bn.running_mean[o])) * scale[o] + beta[o]).collect();
    (weight, bias)
}
