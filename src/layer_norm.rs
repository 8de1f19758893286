//! The row norms: LayerNorm (`torch.nn.LayerNorm`) and RMSNorm
//! (`torch.nn.RMSNorm`), normalizing over the trailing `normalized_shape`
//! dimensions of a row-major tensor. Both are the family engine
//! (`src/family/`) with one stat row per leading index.

use crate::context::block_on;
use crate::family::{Call, Core, Options, Source};
use crate::geometry::Geometry;
use crate::layout::Layout;
use crate::tensor::{element_count, TensorView};
use crate::validate::check_eps;
use crate::{Error, Result};

/// `Err(Parameter)` unless `normalized_shape` is non-empty with no zero
/// dimension and fits the kernels' 32-bit indices.
fn validate_normalized(normalized_shape: &[usize], eps: f32) -> Result<usize> {
    match element_count(normalized_shape).ok() {
        Some(n) if !normalized_shape.is_empty() && n > 0 && n <= u32::MAX as usize => {
            check_eps(eps)?;
            Ok(n)
        }
        _ => Err(Error::Parameter(format!("normalized_shape {normalized_shape:?} must be non-empty, without zeros"))),
    }
}

/// The row geometry of `x` for `normalized_shape`: `Err(Shape)` unless its
/// shape ends with `normalized_shape`, has no zero dimension and is read
/// LayerNorm's or RMSNorm's call on x: rows over the trailing `normalized`
/// dimensions, on the input's own statistics.
fn rows_call(x: &TensorView, normalized: &[usize], opt: Options) -> Result<Call> {
    Ok(Call { geo: rows_of(x, normalized)?, opt, source: Source::Input { update_running: false } })
}

/// row-major (layout `Nchw`, the default, when its rank exceeds 2).
fn rows_of(x: &TensorView, normalized_shape: &[usize]) -> Result<Geometry> {
    let (shape, k) = (&x.shape, normalized_shape.len());
    if k > shape.len() || shape[shape.len() - k..] != *normalized_shape {
        return Err(Error::Shape(format!(
            "normalized_shape {normalized_shape:?} is not the trailing part of {shape:?}"
        )));
    }
    if shape.contains(&0) {
        return Err(Error::Shape(format!("{shape:?} has a zero-sized dimension")));
    }
    if x.layout != Layout::Nchw && shape.len() > 2 {
        return Err(Error::Shape(format!("{shape:?}: row norms read the tensor row-major (layout Nchw)")));
    }
    if element_count(shape).map_or(true, |n| n > u32::MAX as usize) {
        return Err(Error::Shape(format!("{shape:?} has more than 2^32 elements")));
    }
    let cols: usize = normalized_shape.iter().product();
    Ok(Geometry::trailing(x.len() / cols, cols))
}

/// LayerNorm's hyper-parameters, with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormConfig {
    /// Trailing dimensions normalized together.
    pub normalized_shape: Vec<usize>,
    /// Added to the variance before the square root. Default 1e-5.
    pub eps: f32,
    /// Learnable per-element weight (and bias, see `bias`). Default true.
    pub elementwise_affine: bool,
    /// Learnable bias, when `elementwise_affine`. Default true.
    pub bias: bool,
}

impl LayerNormConfig {
    /// PyTorch's defaults for `normalized_shape`.
    pub fn new(normalized_shape: &[usize]) -> LayerNormConfig {
        LayerNormConfig { normalized_shape: normalized_shape.to_vec(), eps: 1e-5, elementwise_affine: true, bias: true }
    }

    setters! {
        /// Sets `eps`.
        eps: f32;
        /// Sets `elementwise_affine`.
        elementwise_affine: bool;
        /// Sets `bias`.
        bias: bool;
    }

    fn options(&self) -> Options {
        Options {
            eps: self.eps,
            affine: self.elementwise_affine,
            bias: self.elementwise_affine && self.bias,
            rms: false,
            momentum: 0.0,
        }
    }

    fn features(&self) -> Result<usize> {
        validate_normalized(&self.normalized_shape, self.eps)
    }
}

/// A LayerNorm layer whose weight, bias, saved statistics and gradients live
/// on the GPU. Weight and bias buffers exist whatever the config (ones and
/// zeros, ignored when off). `Send + Sync`: ops take `&self`.
pub struct LayerNorm {
    core: Core,
    config: LayerNormConfig,
}

impl LayerNorm {
    family_layer!(
        LayerNormConfig,
        "A layer with weight 1 and bias 0. `Err(Parameter)` on an empty or zero-sized `normalized_shape` or a bad `eps`.",
        "The per-row statistics saved by the last forward: (mean, rstd, _, _) per row, 4 f32 each; `None` before the first forward."
    );
    mean_rstd_reads!();

    family_ops!(
        "Records `y = LayerNorm(x)` and saves each row's mean and rstd.",
        "Records the backward of the last forward (same x): dx into `dx`, dweight and dbias into [`Self::affine`]'s gradients."
    );

    fn call(&self, x: &TensorView) -> Result<Call> {
        rows_call(x, &self.config.normalized_shape, self.config.options())
    }
}

/// RMSNorm's hyper-parameters, with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNormConfig {
    /// Trailing dimensions normalized together.
    pub normalized_shape: Vec<usize>,
    /// Added to the mean square; `None` (the default) is PyTorch's
    /// `torch.finfo(float32).eps` = `f32::EPSILON`.
    pub eps: Option<f32>,
    /// Learnable per-element weight. Default true.
    pub elementwise_affine: bool,
}

impl RmsNormConfig {
    /// PyTorch's defaults for `normalized_shape`.
    pub fn new(normalized_shape: &[usize]) -> RmsNormConfig {
        RmsNormConfig { normalized_shape: normalized_shape.to_vec(), eps: None, elementwise_affine: true }
    }

    setters! {
        /// Sets `eps` (`None` = `f32::EPSILON`).
        eps: Option<f32>;
        /// Sets `elementwise_affine`.
        elementwise_affine: bool;
    }

    /// The epsilon used.
    pub fn eps_value(&self) -> f32 {
        self.eps.unwrap_or(f32::EPSILON)
    }

    fn options(&self) -> Options {
        Options { eps: self.eps_value(), affine: self.elementwise_affine, bias: false, rms: true, momentum: 0.0 }
    }

    fn features(&self) -> Result<usize> {
        validate_normalized(&self.normalized_shape, self.eps_value())
    }
}

/// An RMSNorm layer: `y = x / sqrt(mean(x²) + eps) * weight` per row.
pub struct RmsNorm {
    core: Core,
    config: RmsNormConfig,
}

impl RmsNorm {
    family_layer!(
        RmsNormConfig,
        "A layer with weight 1. `Err(Parameter)` on an empty or zero-sized `normalized_shape` or a bad `eps`.",
        "The per-row statistics saved by the last forward: (0, rstd, _, _) per row; `None` before the first forward."
    );

    /// Reads rstd = 1 / sqrt(mean(x²) + eps) per row of the last forward (blocking).
    pub fn read_saved(&self) -> Result<Vec<f32>> {
        block_on(self.read_saved_async())
    }

    /// [`Self::read_saved`] without blocking.
    pub async fn read_saved_async(&self) -> Result<Vec<f32>> {
        Ok(self.core.read_saved().await?.1)
    }

    family_ops!(
        "Records `y = RMSNorm(x)` and saves each row's rstd.",
        "Records the backward of the last forward (same x): dx into `dx`, dweight into [`Self::affine`]'s gradient."
    );

    fn call(&self, x: &TensorView) -> Result<Call> {
        rows_call(x, &self.config.normalized_shape, self.config.options())
    }
}
