//! BatchNorm: training and eval forward with the running-statistic update, backward, and the fused epilogues.

use super::*;
use wgpu_norm::{Epilogue, TensorView};

/// An activation fused after BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Fused {
    /// Plain BatchNorm: `y = bn(x)`.
    #[default]
    None,
    /// `y = relu(bn(x))`.
    Relu,
    /// `y = relu(bn(x) + z)` with a residual input `z` of the same shape as `x`.
    AddRelu,
}

impl Fused {
    /// Parses `none`, `relu`, `add_relu` (any case; `-` for `_` too).
    pub fn parse(s: &str) -> Option<Fused> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "none" => Some(Fused::None),
            "relu" => Some(Fused::Relu),
            "add_relu" | "addrelu" => Some(Fused::AddRelu),
            _ => None,
        }
    }

    /// The library's epilogue for this form. Add-ReLU takes the residual
    /// `z` and, in a backward, `dz`; `None` for an add-ReLU without a `z`.
    pub fn epilogue<'v, 'a>(
        self,
        z: Option<&'v TensorView<'a>>,
        dz: Option<&'v TensorView<'a>>,
    ) -> Option<Epilogue<'v, 'a>> {
        match self {
            Fused::None => Some(Epilogue::None),
            Fused::Relu => Some(Epilogue::Relu),
            Fused::AddRelu => z.map(|z| Epilogue::AddRelu { z, dz }),
        }
    }

    /// The lower-case name used in case files (`none`, `relu`, `add_relu`).
    pub fn name(self) -> &'static str {
        match self {
            Fused::None => "none",
            Fused::Relu => "relu",
            Fused::AddRelu => "add_relu",
        }
    }
}

/// Everything but the tensors of one `F.batch_norm` call.
///
/// Batch statistics are used when `training` is true or when no running
/// statistics are given (`track_running_stats=False`); otherwise the running
/// statistics normalize and are constants for the backward pass.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormArgs<'a> {
    /// Logical shape `(N, C, spatial…)`, rank 2 to 5, whatever the layout.
    pub shape: &'a [usize],
    /// Memory order of `x`, `z`, `dy` and of the outputs.
    pub layout: Layout,
    /// Gamma, `C` values; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Beta, `C` values; `None` means zeros.
    pub bias: Option<&'a [f32]>,
    /// Running mean before the call, `C` values; `None` when not tracked.
    pub running_mean: Option<&'a [f32]>,
    /// Running variance before the call, `C` values; given iff `running_mean` is.
    pub running_var: Option<&'a [f32]>,
    /// Training mode: batch statistics, and running statistics updated.
    pub training: bool,
    /// Running-average factor; `None` is the cumulative average
    /// `1 / (num_batches_tracked + 1)`.
    pub momentum: Option<f64>,
    /// `num_batches_tracked` before the call.
    pub num_batches_tracked: u64,
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Activation fused after the normalization.
    pub fused: Fused,
}

impl<'a> BatchNormArgs<'a> {
    /// PyTorch's defaults for `shape`/`layout`: training, no affine, no running
    /// statistics, `momentum = 0.1`, `eps = 1e-5`, nothing fused.
    pub fn new(shape: &'a [usize], layout: Layout) -> Self {
        BatchNormArgs {
            shape,
            layout,
            weight: None,
            bias: None,
            running_mean: None,
            running_var: None,
            training: true,
            momentum: Some(0.1),
            num_batches_tracked: 0,
            eps: 1e-5,
            fused: Fused::None,
        }
    }

    /// True when the batch's own statistics normalize (training, or no running stats).
    pub fn uses_batch_stats(&self) -> bool {
        self.training || self.running_mean.is_none()
    }
}

/// What a BatchNorm forward produces.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormForward {
    /// Output, same shape and layout as `x`.
    pub y: Vec<f64>,
    /// Per channel, the mean that normalized: the batch mean when batch
    /// statistics are used, otherwise the running mean (a choice of this
    /// oracle: PyTorch's CPU kernel returns empty tensors there).
    pub save_mean: Vec<f64>,
    /// Per channel, `1 / sqrt(var + eps)` with the variance that normalized:
    /// the biased batch variance, or the running variance in eval mode.
    pub save_invstd: Vec<f64>,
    /// Running mean after the call (`None` when not tracked; unchanged in eval mode).
    pub running_mean: Option<Vec<f64>>,
    /// Running variance after the call (updated with the *unbiased* batch variance).
    pub running_var: Option<Vec<f64>>,
    /// `num_batches_tracked` after the call: incremented in training when tracking.
    pub num_batches_tracked: u64,
}

/// Gradients of a BatchNorm call.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormBackward {
    /// Gradient with respect to `x`, same layout as `x`.
    pub dx: Vec<f64>,
    /// Per-channel gradient with respect to gamma (given even without weight:
    /// it is then the gradient for implicit ones).
    pub dweight: Vec<f64>,
    /// Per-channel gradient with respect to beta.
    pub dbias: Vec<f64>,
    /// Gradient with respect to `z` (`Fused::AddRelu` only).
    pub dz: Option<Vec<f64>>,
}

/// The statistics a BatchNorm call normalizes with, and its affine parameters.
struct BnPlan {
    view: ChannelView,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    /// Biased batch variance (batch statistics only).
    batch_var: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    batch_stats: bool,
}

impl BnPlan {
    fn new(args: &BatchNormArgs, x: &[f32], z: Option<&[f32]>) -> BnPlan {
        let rank = args.shape.len();
        assert!((2..=5).contains(&rank), "batch_norm needs rank 2..=5, got shape {:?}", args.shape);
        let view = ChannelView::of(args.shape, args.layout);
        let c = view.channels;
        assert!(!view.is_empty(), "batch_norm needs a non-empty input, got shape {:?}", args.shape);
        check_len(x, view.len(), "x");
        match (args.fused, z) {
            (Fused::AddRelu, Some(z)) => check_len(z, view.len(), "z"),
            (Fused::AddRelu, None) => panic!("Fused::AddRelu needs z"),
            (_, Some(_)) => panic!("z is only used by Fused::AddRelu"),
            (_, None) => {}
        }
        assert_eq!(
            args.running_mean.is_some(),
            args.running_var.is_some(),
            "running_mean and running_var must be given together"
        );
        let weight = param_or(args.weight, c, 1.0, "weight");
        let bias = param_or(args.bias, c, 0.0, "bias");
        let batch_stats = args.uses_batch_stats();
        if args.training {
            assert!(
                view.per_channel() > 1,
                "expected more than 1 value per channel when training, got shape {:?}",
                args.shape
            );
        }
        let (mean, invstd, batch_var) = if batch_stats {
            let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
            for ch in 0..c {
                (mean[ch], var[ch]) = mean_var(channel_indices(view, ch).map(|i| f64::from(x[i])));
            }
            let invstd = var.iter().map(|v| 1.0 / (v + args.eps).sqrt()).collect();
            (mean, invstd, var)
        } else {
            let rm = param_or(args.running_mean, c, 0.0, "running_mean");
            let rv = param_or(args.running_var, c, 1.0, "running_var");
            let invstd = rv.iter().map(|v| 1.0 / (v + args.eps).sqrt()).collect();
            (rm, invstd, Vec::new())
        };
        BnPlan { view, mean, invstd, batch_var, weight, bias, batch_stats }
    }

    /// Normalized input `xhat` and the pre-activation output
    /// (`xhat * gamma + beta`, plus `z` for `AddRelu`).
    fn normalize(&self, x: &[f32], z: Option<&[f32]>) -> (Vec<f64>, Vec<f64>) {
        let mut xhat = vec![0.0; x.len()];
        let mut pre = vec![0.0; x.len()];
        for (i, &xi) in x.iter().enumerate() {
            let c = self.view.channel_of(i);
            xhat[i] = (f64::from(xi) - self.mean[c]) * self.invstd[c];
            pre[i] = xhat[i] * self.weight[c] + self.bias[c] + z.map_or(0.0, |z| f64::from(z[i]));
        }
        (xhat, pre)
    }
}

/// The mask of the fused ReLU (`args.fused` Relu or AddRelu) per value:
/// `Some(pre > 0)` where the f64 pre-activation is clear of zero, `None`
/// where it lies within f32 rounding of zero (1e-5 of its terms), where an
/// f32 implementation may round it either way and only its own forward
/// says which (PyTorch takes the mask from its f32 output, y > 0).
pub fn relu_mask(args: &BatchNormArgs, x: &[f32], z: Option<&[f32]>) -> Vec<Option<bool>> {
    let plan = BnPlan::new(args, x, z);
    let (xhat, pre) = plan.normalize(x, z);
    (0..x.len())
        .map(|i| {
            let c = plan.view.channel_of(i);
            let terms = (xhat[i] * plan.weight[c]).abs()
                + plan.bias[c].abs()
                + z.map_or(0.0, |z| f64::from(z[i]).abs())
                + (plan.mean[c] * plan.invstd[c] * plan.weight[c]).abs();
            (pre[i].abs() > 1e-5 * terms).then_some(pre[i] > 0.0)
        })
        .collect()
}

/// BatchNorm forward with PyTorch's `F.batch_norm` semantics (see
/// [`BatchNormArgs`]), with the activation in `args.fused` applied after it.
///
/// `z` is the residual input, required for [`Fused::AddRelu`] and refused
/// otherwise. Running statistics, when given and in training, are updated with
/// `factor = momentum` (or `1 / (num_batches_tracked + 1)` when `momentum` is
/// `None`): `rm = (1 - f) rm + f mean`, `rv = (1 - f) rv + f var * m / (m - 1)`.
pub fn batch_norm_forward(args: &BatchNormArgs, x: &[f32], z: Option<&[f32]>) -> BatchNormForward {
    let plan = BnPlan::new(args, x, z);
    let (_, pre) = plan.normalize(x, z);
    let y = match args.fused {
        Fused::None => pre,
        Fused::Relu | Fused::AddRelu => pre.into_iter().map(|v| v.max(0.0)).collect(),
    };
    let c = plan.view.channels;
    let tracking = args.running_mean.is_some();
    let (running_mean, running_var, num_batches_tracked) = if tracking && args.training {
        let nbt = args.num_batches_tracked + 1;
        let f = args.momentum.unwrap_or(1.0 / nbt as f64);
        let m = plan.view.per_channel() as f64;
        let rm = param_or(args.running_mean, c, 0.0, "running_mean");
        let rv = param_or(args.running_var, c, 1.0, "running_var");
        let new_rm = (0..c).map(|ch| (1.0 - f) * rm[ch] + f * plan.mean[ch]).collect();
        let new_rv = (0..c).map(|ch| (1.0 - f) * rv[ch] + f * plan.batch_var[ch] * m / (m - 1.0)).collect();
        (Some(new_rm), Some(new_rv), nbt)
    } else {
        (args.running_mean.map(to_f64), args.running_var.map(to_f64), args.num_batches_tracked)
    };
    BatchNormForward {
        y,
        save_mean: plan.mean,
        save_invstd: plan.invstd,
        running_mean,
        running_var,
        num_batches_tracked,
    }
}

/// BatchNorm backward for upstream gradient `dy` (same layout as `x`).
///
/// With a fused ReLU the gradient is first masked, `g = dy * (pre > 0)` where
/// `pre` is `bn(x)` (or `bn(x) + z`), and `dz = g`. Then, with batch
/// statistics, `dx = gamma invstd / m (m g - Σg - xhat Σ(g xhat))`; with
/// running statistics (eval mode) they are constants and `dx = gamma invstd g`.
/// `dweight = Σ g xhat`, `dbias = Σ g` per channel.
pub fn batch_norm_backward(args: &BatchNormArgs, x: &[f32], z: Option<&[f32]>, dy: &[f32]) -> BatchNormBackward {
    let plan = BnPlan::new(args, x, z);
    check_len(dy, x.len(), "dy");
    let (xhat, pre) = plan.normalize(x, z);
    let g: Vec<f64> = dy
        .iter()
        .zip(&pre)
        .map(|(&d, &p)| match args.fused {
            Fused::None => f64::from(d),
            Fused::Relu | Fused::AddRelu => {
                if p > 0.0 {
                    f64::from(d)
                } else {
                    0.0
                }
            }
        })
        .collect();
    let view = plan.view;
    let c = view.channels;
    let mut dweight = vec![0.0; c];
    let mut dbias = vec![0.0; c];
    let mut dx = vec![0.0; x.len()];
    for ch in 0..c {
        let idx = channel_indices(view, ch);
        for i in idx.clone() {
            dweight[ch] += g[i] * xhat[i];
            dbias[ch] += g[i];
        }
        let scale = plan.weight[ch] * plan.invstd[ch];
        if plan.batch_stats {
            let m = view.per_channel() as f64;
            for i in idx {
                dx[i] = scale / m * (m * g[i] - dbias[ch] - xhat[i] * dweight[ch]);
            }
        } else {
            for i in idx {
                dx[i] = scale * g[i];
            }
        }
    }
    let dz = (args.fused == Fused::AddRelu).then(|| g.clone());
    BatchNormBackward { dx, dweight, dbias, dz }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pre_activation_at_zero_is_left_to_the_implementation() {
        // One channel of x = [-1, 0, 1]: mean 0, so x = 0 normalizes to 0
        // exactly; with z = [0, 0, 0.5] the third stays clear of zero.
        let x = [-1.0, 0.0, 1.0];
        let z = [0.0, 0.0, 0.5];
        let args = BatchNormArgs { training: true, fused: Fused::AddRelu, ..BatchNormArgs::new(&[3, 1], Layout::Nchw) };
        assert_eq!(relu_mask(&args, &x, Some(&z)), vec![Some(false), None, Some(true)]);
    }
}
