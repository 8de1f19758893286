//! The group norms: GroupNorm (`torch.nn.GroupNorm`) and InstanceNorm
//! (`torch.nn.InstanceNorm1d/2d/3d`, GroupNorm with one group per channel
//! plus optional running statistics), in both layouts. Both are the family
//! engine (`src/family/`) with one stat row per (sample, group).

use crate::context::block_on;
use crate::family::{Call, Core, Options, Source};
use crate::geometry::Geometry;
use crate::tensor::{check_shape, TensorView};
use crate::validate::{check_channels, check_eps, check_momentum};
use crate::{Error, Result};

/// GroupNorm's hyper-parameters, with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupNormConfig {
    /// Groups the channels split into; must divide `num_channels`.
    pub num_groups: usize,
    /// Channels (dimension 1 of the input).
    pub num_channels: usize,
    /// Added to the variance before the square root. Default 1e-5.
    pub eps: f32,
    /// Learnable per-channel weight and bias. Default true.
    pub affine: bool,
}

impl GroupNormConfig {
    /// PyTorch's defaults.
    pub fn new(num_groups: usize, num_channels: usize) -> GroupNormConfig {
        GroupNormConfig { num_groups, num_channels, eps: 1e-5, affine: true }
    }

    setters! {
        /// Sets `eps`.
        eps: f32;
        /// Sets `affine`.
        affine: bool;
    }

    /// `Err(Parameter)` unless `num_groups` divides `num_channels` (both
    /// positive) and `eps` is finite and positive.
    pub fn validate(&self) -> Result<()> {
        let (g, c) = (self.num_groups, self.num_channels);
        if g == 0 || c == 0 || c > u32::MAX as usize || !c.is_multiple_of(g) {
            return Err(Error::Parameter(format!("num_channels = {c} must be divisible by num_groups = {g}")));
        }
        check_eps(self.eps)
    }

    fn features(&self) -> Result<usize> {
        self.validate()?;
        Ok(self.num_channels)
    }
}

/// A GroupNorm layer whose weight, bias, saved statistics and gradients live
/// on the GPU. `Send + Sync`: ops take `&self`.
pub struct GroupNorm {
    core: Core,
    config: GroupNormConfig,
}

impl GroupNorm {
    family_layer!(
        GroupNormConfig,
        "A layer with weight 1 and bias 0. `Err(Parameter)` when `num_groups` does not divide `num_channels` or `eps` is bad.",
        "The statistics saved by the last input-statistics forward: (mean, rstd, _, _) per (sample, group), 4 f32 each; `None` before."
    );
    mean_rstd_reads!();

    fn options(&self) -> Options {
        let c = &self.config;
        Options { eps: c.eps, affine: c.affine, bias: c.affine, rms: false, momentum: 0.0 }
    }

    family_ops!(
        "Records `y = GroupNorm(x)` (rank 2 to 5, either layout) and saves each (sample, group)'s mean and rstd.",
        "Records the backward of the last forward (same x): dx into `dx`, dweight and dbias into [`Self::affine`]'s gradients."
    );

    fn call(&self, x: &TensorView) -> Result<Call> {
        check_shape(&x.shape, x.layout, self.config.num_channels)?;
        let geo = Geometry::grouped(&x.shape, x.layout, self.config.num_groups);
        Ok(Call { geo, opt: self.options(), source: Source::Input { update_running: false } })
    }
}

/// InstanceNorm's hyper-parameters, with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNormConfig {
    /// Channels (dimension 1 of the input).
    pub num_features: usize,
    /// Added to the variance before the square root. Default 1e-5.
    pub eps: f32,
    /// Weight of the new batch in the running statistics. Default `Some(0.1)`;
    /// `None` leaves them unchanged, as PyTorch (which passes 0).
    pub momentum: Option<f32>,
    /// Learnable per-channel weight and bias. Default false.
    pub affine: bool,
    /// Keep running statistics and use them in eval mode. Default false.
    pub track_running_stats: bool,
}

impl InstanceNormConfig {
    /// PyTorch's defaults for `num_features` channels.
    pub fn new(num_features: usize) -> InstanceNormConfig {
        InstanceNormConfig { num_features, eps: 1e-5, momentum: Some(0.1), affine: false, track_running_stats: false }
    }

    setters! {
        /// Sets `eps`.
        eps: f32;
        /// Sets `momentum`.
        momentum: Option<f32>;
        /// Sets `affine`.
        affine: bool;
        /// Sets `track_running_stats`.
        track_running_stats: bool;
    }

    /// `Err(Parameter)` unless there is a channel, `eps` is finite and
    /// positive and `momentum` is within [0, 1].
    pub fn validate(&self) -> Result<()> {
        check_channels(self.num_features)?;
        check_momentum(self.momentum)?;
        check_eps(self.eps)
    }

    fn features(&self) -> Result<usize> {
        self.validate()?;
        Ok(self.num_features)
    }
}

/// InstanceNorm's state as host values, with PyTorch's `state_dict` meaning.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNormState {
    /// Gamma (`weight`), one per channel.
    pub weight: Vec<f32>,
    /// Beta (`bias`), one per channel.
    pub bias: Vec<f32>,
    /// `running_mean`, one per channel.
    pub running_mean: Vec<f32>,
    /// `running_var` (unbiased), one per channel.
    pub running_var: Vec<f32>,
}

impl InstanceNormState {
    /// PyTorch's initial state: weight 1, bias 0, running mean 0, running var 1.
    pub fn initial(channels: usize) -> InstanceNormState {
        InstanceNormState {
            weight: vec![1.0; channels],
            bias: vec![0.0; channels],
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
        }
    }
}

/// An InstanceNorm layer (1d, 2d and 3d alike: the rank comes from the input).
pub struct InstanceNorm {
    core: Core,
    config: InstanceNormConfig,
}

impl InstanceNorm {
    family_layer!(
        InstanceNormConfig,
        "A layer in PyTorch's initial state.",
        "The statistics saved by the last input-statistics forward: (mean, rstd, _, _) per (sample, group), 4 f32 each; `None` before."
    );
    mean_rstd_reads!();

    /// The running mean buffer.
    pub fn running_mean(&self) -> &wgpu::Buffer {
        &self.core.running_mean
    }

    /// The running variance buffer (unbiased, as PyTorch).
    pub fn running_var(&self) -> &wgpu::Buffer {
        &self.core.running_var
    }

    /// Reads the state back (blocking).
    pub fn read_state(&self) -> Result<InstanceNormState> {
        block_on(self.read_state_async())
    }

    /// [`Self::read_state`] without blocking.
    pub async fn read_state_async(&self) -> Result<InstanceNormState> {
        let c = &self.core;
        Ok(InstanceNormState {
            weight: c.read_vec(c.affine.weight()).await?,
            bias: c.read_vec(c.affine.bias()).await?,
            running_mean: c.read_vec(&c.running_mean).await?,
            running_var: c.read_vec(&c.running_var).await?,
        })
    }

    /// Writes the whole state. `Err(Shape)`, writing nothing, if a vector's
    /// length is not `num_features`.
    pub fn write_state(&self, state: &InstanceNormState) -> Result<()> {
        let c = self.config.num_features;
        for (name, v) in [
            ("weight", &state.weight),
            ("bias", &state.bias),
            ("running_mean", &state.running_mean),
            ("running_var", &state.running_var),
        ] {
            if v.len() != c {
                return Err(Error::Shape(format!("state {name} has {} values, the layer has {c} channels", v.len())));
            }
        }
        let core = &self.core;
        core.write_vec(core.affine.weight(), &state.weight, "weight")?;
        core.write_vec(core.affine.bias(), &state.bias, "bias")?;
        core.write_vec(&core.running_mean, &state.running_mean, "running_mean")?;
        core.write_vec(&core.running_var, &state.running_var, "running_var")
    }

    fn options(&self) -> Options {
        let c = &self.config;
        Options { eps: c.eps, affine: c.affine, bias: c.affine, rms: false, momentum: c.momentum.unwrap_or(0.0) }
    }

    /// Statistics source and geometry of a call in `training` mode, as
    /// `nn.InstanceNorm`: the input's own statistics unless tracking in eval.
    fn plan(&self, x: &TensorView, training: bool) -> Result<(Geometry, Source)> {
        let view = check_shape(&x.shape, x.layout, self.config.num_features)?;
        let track = self.config.track_running_stats;
        let source =
            if training || !track { Source::Input { update_running: training && track } } else { Source::Running };
        if matches!(source, Source::Input { .. }) && view.per_channel() / x.shape[0] < 2 {
            return Err(Error::OneValuePerChannel(x.shape.clone()));
        }
        Ok((Geometry::grouped(&x.shape, x.layout, self.config.num_features), source))
    }

    /// Records `y = InstanceNorm(x)`. Training with `track_running_stats`
    /// also updates the running statistics; eval with them normalizes by them.
    pub fn forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        training: bool,
    ) -> Result<()> {
        let (geo, source) = self.plan(x, training)?;
        self.core.record_forward(encoder, x, y, &Call { geo, opt: self.options(), source })
    }

    /// Records the backward in `training` mode: with input statistics it
    /// needs the last forward to have seen the same input; with running
    /// statistics (eval, tracking) they are constants.
    pub fn backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        training: bool,
    ) -> Result<()> {
        let (geo, source) = self.plan(x, training)?;
        let source = match source {
            Source::Input { .. } => Source::Input { update_running: false },
            Source::Running => Source::Running,
        };
        self.core.record_backward(encoder, x, dy, dx, &Call { geo, opt: self.options(), source })
    }
}
