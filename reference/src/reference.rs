//! CPU reference ("oracle") for every op of the crate, in `f64` on host slices,
//! with PyTorch's semantics.
//!
//! Inputs are `f32` slices (what a caller hands the GPU); every computation and
//! every output is `f64`, so the result is what PyTorch gives when it runs in
//! float64 on the same float32 inputs (the `golden` cases). Variances are
//! two-pass (mean first, then the centered sum of squares), never
//! `E[x²] - E[x]²`.
//!
//! Tensors are flat slices in physical order: a logical shape `(N, C, spatial…)`
//! with [`Layout::Nhwc`] is stored channels-last (see [`ChannelView`]).
//!
//! **Validation:** this module is a test oracle, not a public entry point for
//! untrusted input. A malformed call (a slice of the wrong length, a rank out
//! of range, a group count that does not divide the channels, training with a
//! single value per channel…) fails an `assert!` and panics with a message
//! saying what is wrong; it never returns an error.

use wgpu_norm::{ChannelView, Layout};

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// `v` as `f64`.
fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| f64::from(a)).collect()
}

/// An optional per-channel (or per-element) parameter as `f64`, `default`
/// everywhere when absent. Panics when present with the wrong length.
fn param_or(p: Option<&[f32]>, len: usize, default: f64, what: &str) -> Vec<f64> {
    match p {
        Some(v) => {
            assert_eq!(v.len(), len, "{what} has {} values, expected {len}", v.len());
            to_f64(v)
        }
        None => vec![default; len],
    }
}

/// Asserts that a tensor slice holds exactly `len` values.
fn check_len(v: &[f32], len: usize, what: &str) {
    assert_eq!(v.len(), len, "{what} has {} values, expected {len}", v.len());
}

/// Product of `dims` (1 for none).
fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Mean and biased variance (two-pass) of `vals`; `(0, 0)` when empty.
fn mean_var(vals: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let mut n = 0usize;
    let mut sum = 0.0;
    for v in vals.clone() {
        sum += v;
        n += 1;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / n as f64;
    let sq: f64 = vals.map(|v| (v - mean) * (v - mean)).sum();
    (mean, sq / n as f64)
}

/// Flat indices of every element of channel `c` in `view`, in memory order.
fn channel_indices(view: ChannelView, c: usize) -> impl Iterator<Item = usize> + Clone {
    (0..view.outer).flat_map(move |o| {
        let base = (o * view.channels + c) * view.inner;
        base..base + view.inner
    })
}

/// Backward of a normalization `xhat = (x - mean) * rstd` over one set of
/// `idx` (whose statistics came from those same values), given the gradient
/// `gx` with respect to `xhat` (already multiplied by gamma). Writes `dx`.
fn normalized_backward(idx: impl Iterator<Item = usize> + Clone, xhat: &[f64], gx: &[f64], rstd: f64, dx: &mut [f64]) {
    let (mut n, mut sum_g, mut sum_gx) = (0usize, 0.0, 0.0);
    for i in idx.clone() {
        n += 1;
        sum_g += gx[i];
        sum_gx += gx[i] * xhat[i];
    }
    if n == 0 {
        return;
    }
    let m = n as f64;
    for i in idx {
        dx[i] = rstd / m * (m * gx[i] - sum_g - xhat[i] * sum_gx);
    }
}

// ---------------------------------------------------------------------------
// BatchNorm
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// LayerNorm and RMSNorm
// ---------------------------------------------------------------------------

/// Forward result of LayerNorm and GroupNorm.
#[derive(Clone, Debug, PartialEq)]
pub struct NormForward {
    /// Output, same shape and layout as `x`.
    pub y: Vec<f64>,
    /// Mean of each normalized set (one per row for LayerNorm, `N * G` in
    /// `(n, g)` order for GroupNorm).
    pub mean: Vec<f64>,
    /// `1 / sqrt(biased var + eps)` of each normalized set, ordered as `mean`.
    pub rstd: Vec<f64>,
}

/// Gradients of LayerNorm, GroupNorm and InstanceNorm.
#[derive(Clone, Debug, PartialEq)]
pub struct NormBackward {
    /// Gradient with respect to `x`, same layout as `x`.
    pub dx: Vec<f64>,
    /// Gradient with respect to the weight (given even without weight: it is
    /// then the gradient for implicit ones).
    pub dweight: Vec<f64>,
    /// Gradient with respect to the bias.
    pub dbias: Vec<f64>,
}

/// One `F.layer_norm` call: normalizes over the trailing `normalized_shape`
/// dimensions of a contiguous (row-major) tensor.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormArgs<'a> {
    /// Full input shape; must end with `normalized_shape`.
    pub shape: &'a [usize],
    /// Trailing dimensions normalized together (at least one).
    pub normalized_shape: &'a [usize],
    /// Elementwise gamma over `normalized_shape`; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Elementwise beta over `normalized_shape`; `None` means zeros.
    pub bias: Option<&'a [f32]>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// `(rows, cols)` of a tensor normalized over trailing `normalized_shape`.
fn rows_cols(shape: &[usize], normalized_shape: &[usize], op: &str) -> (usize, usize) {
    let k = normalized_shape.len();
    assert!(
        k >= 1 && k <= shape.len() && shape[shape.len() - k..] == *normalized_shape,
        "{op}: normalized_shape {normalized_shape:?} is not a trailing part of shape {shape:?}"
    );
    let cols = numel(normalized_shape);
    assert!(cols > 0, "{op}: empty normalized_shape {normalized_shape:?}");
    (numel(&shape[..shape.len() - k]), cols)
}

/// LayerNorm forward: `y = (x - mean) * rstd * weight + bias` per row.
pub fn layer_norm_forward(args: &LayerNormArgs, x: &[f32]) -> NormForward {
    let (rows, cols) = rows_cols(args.shape, args.normalized_shape, "layer_norm");
    check_len(x, rows * cols, "x");
    let w = param_or(args.weight, cols, 1.0, "weight");
    let b = param_or(args.bias, cols, 0.0, "bias");
    let mut y = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let (mu, var) = mean_var(row.iter().map(|&v| f64::from(v)));
        let rs = 1.0 / (var + args.eps).sqrt();
        (mean[r], rstd[r]) = (mu, rs);
        for j in 0..cols {
            y[r * cols + j] = (f64::from(row[j]) - mu) * rs * w[j] + b[j];
        }
    }
    NormForward { y, mean, rstd }
}

/// LayerNorm backward: `dweight`/`dbias` have `normalized_shape`'s size.
pub fn layer_norm_backward(args: &LayerNormArgs, x: &[f32], dy: &[f32]) -> NormBackward {
    let fwd = layer_norm_forward(args, x);
    let (rows, cols) = rows_cols(args.shape, args.normalized_shape, "layer_norm");
    check_len(dy, x.len(), "dy");
    let w = param_or(args.weight, cols, 1.0, "weight");
    let mut xhat = vec![0.0; x.len()];
    let mut gx = vec![0.0; x.len()];
    let mut dweight = vec![0.0; cols];
    let mut dbias = vec![0.0; cols];
    for r in 0..rows {
        for j in 0..cols {
            let i = r * cols + j;
            xhat[i] = (f64::from(x[i]) - fwd.mean[r]) * fwd.rstd[r];
            let d = f64::from(dy[i]);
            gx[i] = d * w[j];
            dweight[j] += d * xhat[i];
            dbias[j] += d;
        }
    }
    let mut dx = vec![0.0; x.len()];
    for r in 0..rows {
        normalized_backward(r * cols..(r + 1) * cols, &xhat, &gx, fwd.rstd[r], &mut dx);
    }
    NormBackward { dx, dweight, dbias }
}

/// One `F.rms_norm` call: `y = x / sqrt(mean(x²) + eps) * weight` over the
/// trailing `normalized_shape` dimensions of a contiguous tensor.
#[derive(Clone, Copy, Debug)]
pub struct RmsNormArgs<'a> {
    /// Full input shape; must end with `normalized_shape`.
    pub shape: &'a [usize],
    /// Trailing dimensions normalized together (at least one).
    pub normalized_shape: &'a [usize],
    /// Elementwise gamma over `normalized_shape`; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Added to the mean square; `None` is PyTorch's default for float32
    /// inputs, `f32::EPSILON` (see [`RmsNormArgs::eps_value`]).
    pub eps: Option<f64>,
}

impl RmsNormArgs<'_> {
    /// The epsilon used: `eps`, or `f32::EPSILON` (`torch.finfo(float32).eps`)
    /// when `None`, since the inputs are float32.
    pub fn eps_value(&self) -> f64 {
        self.eps.unwrap_or(f64::from(f32::EPSILON))
    }
}

/// RMSNorm forward result.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNormForward {
    /// Output, same shape as `x`.
    pub y: Vec<f64>,
    /// `1 / sqrt(mean(x²) + eps)` per row.
    pub rstd: Vec<f64>,
}

/// RMSNorm gradients (RMSNorm has no bias).
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNormBackward {
    /// Gradient with respect to `x`.
    pub dx: Vec<f64>,
    /// Gradient with respect to the weight, `normalized_shape`'s size (given
    /// even without weight: it is then the gradient for implicit ones).
    pub dweight: Vec<f64>,
}

/// RMSNorm forward.
pub fn rms_norm_forward(args: &RmsNormArgs, x: &[f32]) -> RmsNormForward {
    let (rows, cols) = rows_cols(args.shape, args.normalized_shape, "rms_norm");
    check_len(x, rows * cols, "x");
    let w = param_or(args.weight, cols, 1.0, "weight");
    let eps = args.eps_value();
    let mut y = vec![0.0; x.len()];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let ms = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / cols as f64;
        let rs = 1.0 / (ms + eps).sqrt();
        rstd[r] = rs;
        for j in 0..cols {
            y[r * cols + j] = f64::from(row[j]) * rs * w[j];
        }
    }
    RmsNormForward { y, rstd }
}

/// RMSNorm backward: with `g = dy * weight` and `r = rstd`,
/// `dx = r (g - x r² mean(g x))`, `dweight = Σ_rows dy x r`.
pub fn rms_norm_backward(args: &RmsNormArgs, x: &[f32], dy: &[f32]) -> RmsNormBackward {
    let fwd = rms_norm_forward(args, x);
    let (rows, cols) = rows_cols(args.shape, args.normalized_shape, "rms_norm");
    check_len(dy, x.len(), "dy");
    let w = param_or(args.weight, cols, 1.0, "weight");
    let mut dx = vec![0.0; x.len()];
    let mut dweight = vec![0.0; cols];
    for r in 0..rows {
        let rs = fwd.rstd[r];
        let base = r * cols;
        let mut sum_gx = 0.0;
        for j in 0..cols {
            let (xi, d) = (f64::from(x[base + j]), f64::from(dy[base + j]));
            sum_gx += d * w[j] * xi;
            dweight[j] += d * xi * rs;
        }
        let mean_gx = sum_gx / cols as f64;
        for j in 0..cols {
            let (xi, d) = (f64::from(x[base + j]), f64::from(dy[base + j]));
            dx[base + j] = rs * (d * w[j] - xi * rs * rs * mean_gx);
        }
    }
    RmsNormBackward { dx, dweight }
}

// ---------------------------------------------------------------------------
// GroupNorm and InstanceNorm
// ---------------------------------------------------------------------------

/// One `F.group_norm` call: per sample, the channels split into `num_groups`
/// consecutive groups, each normalized over its channels and all positions.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormArgs<'a> {
    /// Logical shape `(N, C, spatial…)`, rank >= 2.
    pub shape: &'a [usize],
    /// Memory order of `x`, `dy` and the outputs.
    pub layout: Layout,
    /// Number of groups; must divide `C`.
    pub num_groups: usize,
    /// Per-channel gamma; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Per-channel beta; `None` means zeros.
    pub bias: Option<&'a [f32]>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// Geometry of a group norm: the channel view and the group sizes.
struct Groups {
    view: ChannelView,
    n: usize,
    groups: usize,
    /// Channels per group.
    cpg: usize,
}

impl Groups {
    fn new(shape: &[usize], layout: Layout, groups: usize) -> Groups {
        assert!(shape.len() >= 2, "group_norm needs rank >= 2, got shape {shape:?}");
        let view = ChannelView::of(shape, layout);
        assert!(!view.is_empty(), "group_norm needs a non-empty input, got shape {shape:?}");
        assert!(
            groups > 0 && view.channels.is_multiple_of(groups),
            "num_groups {groups} does not divide {} channels",
            view.channels
        );
        Groups { view, n: shape[0], groups, cpg: view.channels / groups }
    }

    /// Flat indices of group `g` of sample `n`.
    fn indices(&self, n: usize, g: usize) -> impl Iterator<Item = usize> + Clone {
        let view = self.view;
        let per_sample = view.outer / self.n;
        let chans = g * self.cpg..(g + 1) * self.cpg;
        (n * per_sample..(n + 1) * per_sample).flat_map(move |o| {
            chans.clone().flat_map(move |c| {
                let base = (o * view.channels + c) * view.inner;
                base..base + view.inner
            })
        })
    }
}

/// GroupNorm forward; `mean`/`rstd` are `N * num_groups`, `(n, g)` order.
pub fn group_norm_forward(args: &GroupNormArgs, x: &[f32]) -> NormForward {
    let gs = Groups::new(args.shape, args.layout, args.num_groups);
    check_len(x, gs.view.len(), "x");
    let c = gs.view.channels;
    let w = param_or(args.weight, c, 1.0, "weight");
    let b = param_or(args.bias, c, 0.0, "bias");
    let mut y = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (Vec::new(), Vec::new());
    for n in 0..gs.n {
        for g in 0..gs.groups {
            let idx = gs.indices(n, g);
            let (mu, var) = mean_var(idx.clone().map(|i| f64::from(x[i])));
            let rs = 1.0 / (var + args.eps).sqrt();
            for i in idx {
                let ch = gs.view.channel_of(i);
                y[i] = (f64::from(x[i]) - mu) * rs * w[ch] + b[ch];
            }
            mean.push(mu);
            rstd.push(rs);
        }
    }
    NormForward { y, mean, rstd }
}

/// GroupNorm backward; `dweight`/`dbias` per channel.
pub fn group_norm_backward(args: &GroupNormArgs, x: &[f32], dy: &[f32]) -> NormBackward {
    let fwd = group_norm_forward(args, x);
    let gs = Groups::new(args.shape, args.layout, args.num_groups);
    check_len(dy, x.len(), "dy");
    let c = gs.view.channels;
    let w = param_or(args.weight, c, 1.0, "weight");
    let mut xhat = vec![0.0; x.len()];
    let mut gx = vec![0.0; x.len()];
    let mut dweight = vec![0.0; c];
    let mut dbias = vec![0.0; c];
    let mut dx = vec![0.0; x.len()];
    for n in 0..gs.n {
        for g in 0..gs.groups {
            let k = n * gs.groups + g;
            let idx = gs.indices(n, g);
            for i in idx.clone() {
                let ch = gs.view.channel_of(i);
                let d = f64::from(dy[i]);
                xhat[i] = (f64::from(x[i]) - fwd.mean[k]) * fwd.rstd[k];
                gx[i] = d * w[ch];
                dweight[ch] += d * xhat[i];
                dbias[ch] += d;
            }
            normalized_backward(idx, &xhat, &gx, fwd.rstd[k], &mut dx);
        }
    }
    NormBackward { dx, dweight, dbias }
}

/// One `F.instance_norm` call: GroupNorm with one group per channel, plus
/// optional running statistics as `nn.InstanceNorm*d(track_running_stats=True)`.
#[derive(Clone, Copy, Debug)]
pub struct InstanceNormArgs<'a> {
    /// Logical shape `(N, C, spatial…)`, rank >= 3 in practice (>= 2 accepted).
    pub shape: &'a [usize],
    /// Memory order of `x`, `dy` and the outputs.
    pub layout: Layout,
    /// Per-channel gamma; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Per-channel beta; `None` means zeros.
    pub bias: Option<&'a [f32]>,
    /// Running mean before the call, `C` values; `None` when not tracked.
    pub running_mean: Option<&'a [f32]>,
    /// Running variance before the call; given iff `running_mean` is.
    pub running_var: Option<&'a [f32]>,
    /// Normalize with each instance's own statistics (`training or not
    /// track_running_stats` in `nn.InstanceNorm`); false uses the running
    /// statistics, which must then be given.
    pub use_input_stats: bool,
    /// Running-average factor (`nn.InstanceNorm` passes 0 for `momentum=None`).
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// InstanceNorm forward result.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNormForward {
    /// Output, same shape and layout as `x`.
    pub y: Vec<f64>,
    /// Mean that normalized each `(n, c)`, `N * C` values (the running mean,
    /// repeated per sample, when `use_input_stats` is false).
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` per `(n, c)`, ordered as `mean`.
    pub rstd: Vec<f64>,
    /// Running mean after the call (`None` when not tracked).
    pub running_mean: Option<Vec<f64>>,
    /// Running variance after the call (`None` when not tracked).
    pub running_var: Option<Vec<f64>>,
}

impl<'a> InstanceNormArgs<'a> {
    fn group_args(&self) -> GroupNormArgs<'a> {
        assert!(self.shape.len() >= 2, "instance_norm needs rank >= 2, got {:?}", self.shape);
        GroupNormArgs {
            shape: self.shape,
            layout: self.layout,
            num_groups: self.shape[1],
            weight: self.weight,
            bias: self.bias,
            eps: self.eps,
        }
    }

    /// Eval mode with running statistics is exactly BatchNorm in eval mode.
    fn batch_norm_eval_args(&self) -> BatchNormArgs<'a> {
        assert!(
            self.running_mean.is_some() && self.running_var.is_some(),
            "instance_norm without input stats needs running_mean and running_var"
        );
        BatchNormArgs {
            weight: self.weight,
            bias: self.bias,
            running_mean: self.running_mean,
            running_var: self.running_var,
            training: false,
            eps: self.eps,
            ..BatchNormArgs::new(self.shape, self.layout)
        }
    }
}

/// InstanceNorm forward. With input statistics and running stats given, the
/// running stats move as PyTorch's: `rm = (1 - m) rm + m mean_n(mean_nc)`,
/// `rv = (1 - m) rv + m mean_n(unbiased var_nc)`.
pub fn instance_norm_forward(args: &InstanceNormArgs, x: &[f32]) -> InstanceNormForward {
    assert_eq!(
        args.running_mean.is_some(),
        args.running_var.is_some(),
        "running_mean and running_var must be given together"
    );
    if !args.use_input_stats {
        let bn = batch_norm_forward(&args.batch_norm_eval_args(), x, None);
        let n = args.shape[0];
        return InstanceNormForward {
            y: bn.y,
            mean: bn.save_mean.repeat(n),
            rstd: bn.save_invstd.repeat(n),
            running_mean: bn.running_mean,
            running_var: bn.running_var,
        };
    }
    let gargs = args.group_args();
    let gs = Groups::new(gargs.shape, gargs.layout, gargs.num_groups);
    let fwd = group_norm_forward(&gargs, x);
    let (n, c) = (gs.n, gs.view.channels);
    let (running_mean, running_var) = match (args.running_mean, args.running_var) {
        (Some(rm), Some(rv)) => {
            check_len(rm, c, "running_mean");
            check_len(rv, c, "running_var");
            let k = gs.view.per_channel() / n;
            assert!(k > 1, "expected more than 1 spatial element when training, got {:?}", args.shape);
            let f = args.momentum;
            let mut new_rm = to_f64(rm);
            let mut new_rv = to_f64(rv);
            for ch in 0..c {
                let (mut sum_mean, mut sum_var) = (0.0, 0.0);
                for s in 0..n {
                    // The variance again from the data: rstd has eps folded in.
                    let (mu, var) = mean_var(gs.indices(s, ch).map(|i| f64::from(x[i])));
                    sum_mean += mu;
                    sum_var += var * k as f64 / (k as f64 - 1.0);
                }
                new_rm[ch] = (1.0 - f) * new_rm[ch] + f * sum_mean / n as f64;
                new_rv[ch] = (1.0 - f) * new_rv[ch] + f * sum_var / n as f64;
            }
            (Some(new_rm), Some(new_rv))
        }
        _ => (None, None),
    };
    InstanceNormForward { y: fwd.y, mean: fwd.mean, rstd: fwd.rstd, running_mean, running_var }
}

/// InstanceNorm backward: GroupNorm's with one group per channel, or, when
/// the running statistics normalized, BatchNorm's eval-mode backward.
pub fn instance_norm_backward(args: &InstanceNormArgs, x: &[f32], dy: &[f32]) -> NormBackward {
    if args.use_input_stats {
        group_norm_backward(&args.group_args(), x, dy)
    } else {
        let bn = batch_norm_backward(&args.batch_norm_eval_args(), x, None, dy);
        NormBackward { dx: bn.dx, dweight: bn.dweight, dbias: bn.dbias }
    }
}

// ---------------------------------------------------------------------------
// Folding an eval-mode BatchNorm into the preceding layer
// ---------------------------------------------------------------------------

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
