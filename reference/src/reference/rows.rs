//! LayerNorm and RMSNorm over trailing dimensions, forward and backward.

use super::*;

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
