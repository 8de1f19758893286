//! Folding an eval-mode BatchNorm into the layer before it, for inference,
//! as `torch.nn.utils.fusion` does: `w' = w * gamma / sqrt(var + eps)` along
//! the layer's output-channel axis, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`.

use crate::batch_norm::{BatchNorm, BatchNormState};
use crate::cut::{self, Units};
use crate::kernels::{grid_stride, KernelKey, Shader, FLAG_LAYER_BIAS};
use crate::layout::ChannelView;
use crate::recording::Recording;
use crate::tensor::{DType, TensorView};
use crate::validate::check_eps;
use crate::{Error, Result};

/// The kind of layer a BatchNorm follows; it says where the output channels
/// sit in the layer's weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Conv1d/2d/3d: weight `[out, in / groups, k...]`.
    Conv,
    /// ConvTranspose1d/2d/3d: weight `[in, out / groups, k...]` (groups = 1).
    ConvTranspose,
    /// Linear: weight `[out, in]`.
    Linear,
}

impl LayerKind {
    /// Axis of the weight that holds the output channels.
    pub fn out_axis(self) -> usize {
        match self {
            LayerKind::Conv | LayerKind::Linear => 0,
            LayerKind::ConvTranspose => 1,
        }
    }

    /// Parses the case format's `layer` (`conv1d`, `conv2d`, `conv3d`,
    /// `conv_transpose2d`, `linear`, ...).
    pub fn parse(s: &str) -> Option<LayerKind> {
        let s = s.to_ascii_lowercase().replace(['_', '-'], "");
        match s.as_str() {
            "conv" | "conv1d" | "conv2d" | "conv3d" => Some(LayerKind::Conv),
            "convtranspose" | "convtranspose1d" | "convtranspose2d" | "convtranspose3d" => {
                Some(LayerKind::ConvTranspose)
            }
            "linear" => Some(LayerKind::Linear),
            _ => None,
        }
    }

    /// The weight of `shape` seen as `[outer][out channels][inner]`;
    /// `Err(Shape)` when the shape cannot be this kind's weight.
    fn view(self, shape: &[usize]) -> Result<ChannelView> {
        let rank_ok = match self {
            LayerKind::Linear => shape.len() == 2,
            LayerKind::Conv | LayerKind::ConvTranspose => (3..=5).contains(&shape.len()),
        };
        if !rank_ok || shape.contains(&0) {
            return Err(Error::Shape(format!("{shape:?} is not a {self:?} weight shape")));
        }
        let axis = self.out_axis();
        // Every product checked: the view's length is their product too.
        crate::tensor::element_count(shape)?;
        Ok(ChannelView {
            outer: shape[..axis].iter().product(),
            channels: shape[axis],
            inner: shape[axis + 1..].iter().product(),
        })
    }
}

/// Host folding on slices: returns `(weight', bias')`. A missing layer bias is
/// zeros. `Err(Shape)` when the weight, bias or state disagree on the channel count.
pub fn fold_host(
    kind: LayerKind,
    weight: &[f32],
    weight_shape: &[usize],
    bias: Option<&[f32]>,
    bn: &BatchNormState,
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let view = kind.view(weight_shape)?;
    let c = view.channels;
    if weight.len() != view.len() {
        return Err(Error::Shape(format!(
            "weight has {} values, shape {weight_shape:?} needs {}",
            weight.len(),
            view.len()
        )));
    }
    for (name, len) in [
        ("layer bias", bias.map_or(c, <[f32]>::len)),
        ("BatchNorm weight", bn.weight.len()),
        ("BatchNorm bias", bn.bias.len()),
        ("running_mean", bn.running_mean.len()),
        ("running_var", bn.running_var.len()),
    ] {
        if len != c {
            return Err(Error::Shape(format!("{name} has {len} values, the layer has {c} output channels")));
        }
    }
    check_eps(eps)?;
    // In f64, rounded once: s = gamma / sqrt(var + eps) per output channel.
    let scale: Vec<f64> =
        (0..c).map(|o| f64::from(bn.weight[o]) / (f64::from(bn.running_var[o]) + f64::from(eps)).sqrt()).collect();
    let folded_weight = weight.iter().enumerate().map(|(i, &w)| (f64::from(w) * scale[view.channel_of(i)]) as f32);
    let folded_bias = (0..c).map(|o| {
        let b = bias.map_or(0.0, |b| f64::from(b[o]));
        ((b - f64::from(bn.running_mean[o])) * scale[o] + f64::from(bn.bias[o])) as f32
    });
    Ok((folded_weight.collect(), folded_bias.collect()))
}

impl BatchNorm {
    /// Folds this layer, in eval mode, into the preceding layer's weights held
    /// in buffers: `folded_weight` gets `weight`'s shape, `folded_bias` one
    /// value per output channel (`bias` `None` = zeros). Nothing leaves the GPU.
    #[allow(clippy::too_many_arguments)]
    pub fn fold_into<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kind: LayerKind,
        weight: &TensorView<'a>,
        bias: Option<&TensorView>,
        folded_weight: &TensorView<'a>,
        folded_bias: &TensorView,
    ) -> Result<()> {
        let ctx = self.context();
        ctx.check_alive()?;
        if !self.config().track_running_stats {
            return Err(Error::Parameter("folding needs running statistics (track_running_stats)".into()));
        }
        let view = kind.view(&weight.shape)?;
        let c = self.config().num_features;
        if view.channels != c {
            return Err(Error::Shape(format!(
                "the {kind:?} weight {:?} has {} output channels, the BatchNorm {c}",
                weight.shape, view.channels
            )));
        }
        if folded_weight.shape != weight.shape {
            return Err(Error::Shape(format!("folded_weight is {:?}, weight {:?}", folded_weight.shape, weight.shape)));
        }
        for (name, t) in [("bias", bias), ("folded_bias", Some(folded_bias))] {
            if let Some(t) = t {
                if t.len() != c {
                    return Err(Error::Shape(format!(
                        "{name} has {} values, the layer has {c} output channels",
                        t.len()
                    )));
                }
            }
        }
        let outputs = [folded_weight.buffer, folded_bias.buffer];
        if outputs[0] == outputs[1] || [Some(weight), bias].into_iter().flatten().any(|t| outputs.contains(&t.buffer)) {
            return Err(Error::Buffer("folding does not run in place: outputs need their own buffers".into()));
        }
        let limits = ctx.limits();
        for (t, name) in [(weight, "weight"), (folded_weight, "folded_weight")] {
            if t.dtype != DType::F32 {
                return Err(Error::Unsupported(format!("{name}: {:?} tensors are not supported here", t.dtype)));
            }
        }
        // The weights in pieces that each fit one binding (whole output
        // rows, or runs of output channels of one), all checked first.
        let units = Units {
            units: view.outer,
            subs: view.channels,
            sub_len: view.inner,
            split_subs: true,
            split_values: false,
        };
        let cuts = units.cut(cut::max_values(limits, 4))?;
        let windows = cut::windows(&cuts, &[(weight, "weight"), (folded_weight, "folded_weight")], limits)?;
        let mut pieces = Vec::with_capacity(cuts.len());
        for (piece, windows) in cuts.iter().zip(windows) {
            let (ww, fww) = (windows[0].clone(), windows[1].clone());
            let view = ChannelView { outer: piece.units.len(), channels: piece.subs.len(), inner: piece.values.len() };
            let mut params = self.channel_params(view);
            params.x_off = ww.elem_offset;
            params.y_off = fww.elem_offset;
            params.chan_base = piece.subs.start as u32;
            pieces.push((ww, fww, params));
        }
        let bw = bias.map(|b| b.window_f32("bias", limits)).transpose()?;
        let fbw = folded_bias.window_f32("folded_bias", limits)?;

        let mut bias_params = self.channel_params(ChannelView { outer: 1, channels: c, inner: 1 });
        bias_params.x_off = bw.as_ref().map_or(0, |w| w.elem_offset);
        bias_params.y_off = fbw.elem_offset;
        if bias.is_some() {
            bias_params.flags |= FLAG_LAYER_BIAS;
        }
        Recording::run(ctx, None, encoder, "fold batch_norm", |rec| {
            let bias_buf = rec.uniform(&bias_params);
            let eval_chan = self.eval_coefficients();
            self.record_prepare_eval(rec, &bias_buf)?;
            for (ww, fww, params) in &pieces {
                let params_buf = rec.uniform(params);
                let entries = [
                    (0, params_buf.as_entire_binding()),
                    (7, eval_chan.as_entire_binding()),
                    (8, ww.resource()),
                    (9, fww.resource()),
                ];
                let len = (params.outer * params.channels * params.inner) as usize;
                rec.dispatch(KernelKey::new(Shader::BatchNorm, "fold_weight"), &entries, elementwise_workgroups(len))?;
            }
            let entries = [
                (0, bias_buf.as_entire_binding()),
                (7, eval_chan.as_entire_binding()),
                (8, bw.as_ref().unwrap_or(&pieces[0].0).resource()),
                (9, fbw.resource()),
            ];
            rec.dispatch(KernelKey::new(Shader::BatchNorm, "fold_bias"), &entries, grid_stride(c))
        })
    }
}

/// Workgroups for fold_weight's grid-stride pass over `len` values: about
/// four values per invocation, within one dispatch dimension.
fn elementwise_workgroups(len: usize) -> (u32, u32) {
    (len.div_ceil(256 * 4).clamp(1, 65535) as u32, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_kinds_are_named_exactly() {
        for (name, kind) in [
            ("conv2d", LayerKind::Conv),
            ("Conv3d", LayerKind::Conv),
            ("conv_transpose2d", LayerKind::ConvTranspose),
            ("ConvTranspose1d", LayerKind::ConvTranspose),
            ("linear", LayerKind::Linear),
        ] {
            assert_eq!(LayerKind::parse(name), Some(kind), "{name}");
        }
        for name in ["conv9d_transposed", "conv4d", "convolution", "linear2", "", "transpose"] {
            assert_eq!(LayerKind::parse(name), None, "{name}");
        }
    }
}
