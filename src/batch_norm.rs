//! BatchNorm with `torch.nn.BatchNorm1d/2d/3d` semantics: training forward on
//! batch statistics with the running-statistic update, eval forward on the
//! running statistics, and backward in both modes.
//!
//! Every op validates first, then records into the caller's encoder:
//! partial statistics (reduce.wgsl), a per-channel merge (batch_norm.wgsl),
//! then one elementwise pass. Nothing comes back to the host.

use std::sync::Mutex;

use crate::context::Context;
use crate::kernels::{
    bind, dispatch, lock, uniform, ChannelParams, KernelKey, Shader, FLAG_AFFINE, FLAG_BATCH_STATS, FLAG_UPDATE_RUNNING,
};
use crate::layout::{ChannelView, Layout};
use crate::reduce::{self, ReduceBindings, ReduceMode, ReducePlan};
use crate::tensor::{check_shape, TensorView, Window};
use crate::{Error, Result};

/// BatchNorm's hyper-parameters, with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Number of channels (dimension 1 of the input).
    pub num_features: usize,
    /// Added to the variance before the square root. Default 1e-5.
    pub eps: f32,
    /// Weight of the new batch in the running statistics; `None` is a
    /// cumulative average over `num_batches_tracked`. Default `Some(0.1)`.
    pub momentum: Option<f32>,
    /// Learnable weight (gamma) and bias (beta). Default true.
    pub affine: bool,
    /// Keep running statistics and use them in eval mode. Default true.
    pub track_running_stats: bool,
}

impl BatchNormConfig {
    /// PyTorch's defaults for `num_features` channels.
    pub fn new(num_features: usize) -> BatchNormConfig {
        BatchNormConfig { num_features, eps: 1e-5, momentum: Some(0.1), affine: true, track_running_stats: true }
    }

    /// Sets `eps`.
    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets `momentum` (`None` = cumulative average).
    pub fn momentum(mut self, momentum: Option<f32>) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets `affine`.
    pub fn affine(mut self, affine: bool) -> Self {
        self.affine = affine;
        self
    }

    /// Sets `track_running_stats`.
    pub fn track_running_stats(mut self, track: bool) -> Self {
        self.track_running_stats = track;
        self
    }

    /// `Err(Parameter)` unless `eps` is finite and positive, `momentum` is in
    /// [0, 1] and there is at least one channel.
    pub fn validate(&self) -> Result<()> {
        if self.num_features == 0 || self.num_features > u32::MAX as usize {
            return Err(Error::Parameter(format!(
                "num_features = {} is not a usable channel count",
                self.num_features
            )));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::Parameter(format!("eps = {} must be finite and positive", self.eps)));
        }
        if let Some(m) = self.momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(Error::Parameter(format!("momentum = {m} must be within [0, 1]")));
            }
        }
        Ok(())
    }
}

/// BatchNorm's state as host values, with PyTorch's `state_dict` meaning.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormState {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub num_batches_tracked: u64,
}

impl BatchNormState {
    /// PyTorch's initial state: weight 1, bias 0, running mean 0, running var 1.
    pub fn initial(channels: usize) -> BatchNormState {
        BatchNormState {
            weight: vec![1.0; channels],
            bias: vec![0.0; channels],
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            num_batches_tracked: 0,
        }
    }
}

/// A BatchNorm layer whose parameters, running statistics and saved batch
/// statistics live on the GPU.
///
/// Buffers exist for every field whatever the config (a layer without
/// `affine` simply ignores its weight and bias), so the bind layouts never
/// change. `Send + Sync`: ops take `&self`.
pub struct BatchNorm {
    ctx: Context,
    config: BatchNormConfig,
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    running_mean: wgpu::Buffer,
    running_var: wgpu::Buffer,
    /// num_batches_tracked as (low, high) u32 words.
    counter: wgpu::Buffer,
    /// Batch statistics of the last training forward: (mean, invstd, scale, beta) per channel.
    saved: wgpu::Buffer,
    /// Eval-mode coefficients from the running statistics, same layout.
    eval_chan: wgpu::Buffer,
    /// dx coefficients (A, B, mean, C) per channel.
    grad_coef: wgpu::Buffer,
    grad_weight: wgpu::Buffer,
    grad_bias: wgpu::Buffer,
    /// Partial-statistics scratch, grown on demand and reused.
    partials: Mutex<Option<wgpu::Buffer>>,
    /// Shape and layout of the input whose statistics `saved` holds.
    saved_for: Mutex<Option<(Vec<usize>, Layout)>>,
}

/// Which statistics an op normalizes with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stats {
    /// Of this batch (training, or eval without running statistics).
    Batch { update_running: bool },
    /// The running statistics (eval).
    Running,
}

impl BatchNorm {
    /// A layer in PyTorch's initial state.
    pub fn new(ctx: &Context, config: BatchNormConfig) -> Result<BatchNorm> {
        config.validate()?;
        let c = config.num_features;
        let init = BatchNormState::initial(c);
        let vec4 = (c * 16) as u64;
        let bn = BatchNorm {
            weight: ctx.upload("bn weight", &init.weight)?,
            bias: ctx.upload("bn bias", &init.bias)?,
            running_mean: ctx.upload("bn running_mean", &init.running_mean)?,
            running_var: ctx.upload("bn running_var", &init.running_var)?,
            counter: ctx.upload("bn num_batches_tracked", &[0u32, 0u32])?,
            saved: ctx.zeros("bn saved statistics", vec4)?,
            eval_chan: ctx.zeros("bn eval coefficients", vec4)?,
            grad_coef: ctx.zeros("bn dx coefficients", vec4)?,
            grad_weight: ctx.zeros("bn grad weight", c as u64 * 4)?,
            grad_bias: ctx.zeros("bn grad bias", c as u64 * 4)?,
            partials: Mutex::new(None),
            saved_for: Mutex::new(None),
            ctx: ctx.clone(),
            config,
        };
        Ok(bn)
    }

    /// The layer's configuration.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// The weight (gamma) buffer, `num_features` f32.
    pub fn weight(&self) -> &wgpu::Buffer {
        &self.weight
    }

    /// The bias (beta) buffer.
    pub fn bias(&self) -> &wgpu::Buffer {
        &self.bias
    }

    /// The running mean buffer.
    pub fn running_mean(&self) -> &wgpu::Buffer {
        &self.running_mean
    }

    /// The running variance buffer (unbiased, as PyTorch).
    pub fn running_var(&self) -> &wgpu::Buffer {
        &self.running_var
    }

    /// dweight of the last backward, `num_features` f32.
    pub fn grad_weight(&self) -> &wgpu::Buffer {
        &self.grad_weight
    }

    /// dbias of the last backward.
    pub fn grad_bias(&self) -> &wgpu::Buffer {
        &self.grad_bias
    }

    /// Per-channel (mean, invstd, scale, beta) of the last batch-statistics
    /// forward: 4 f32 per channel. `save_mean` and `save_invstd` in PyTorch.
    pub fn saved_statistics(&self) -> &wgpu::Buffer {
        &self.saved
    }

    /// Reads the state back (blocking).
    pub fn read_state(&self) -> Result<BatchNormState> {
        let c = self.config.num_features;
        let counter: Vec<u32> = self.ctx.read(&self.counter, 0, 2)?;
        Ok(BatchNormState {
            weight: self.ctx.read(&self.weight, 0, c)?,
            bias: self.ctx.read(&self.bias, 0, c)?,
            running_mean: self.ctx.read(&self.running_mean, 0, c)?,
            running_var: self.ctx.read(&self.running_var, 0, c)?,
            num_batches_tracked: u64::from(counter[0]) | (u64::from(counter[1]) << 32),
        })
    }

    /// Writes the whole state. `Err(Shape)`, writing nothing, if a vector's
    /// length is not `num_features`.
    pub fn write_state(&self, state: &BatchNormState) -> Result<()> {
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
        self.ctx.write(&self.weight, 0, &state.weight)?;
        self.ctx.write(&self.bias, 0, &state.bias)?;
        self.ctx.write(&self.running_mean, 0, &state.running_mean)?;
        self.ctx.write(&self.running_var, 0, &state.running_var)?;
        let n = state.num_batches_tracked;
        self.ctx.write(&self.counter, 0, &[n as u32, (n >> 32) as u32])
    }

    /// Reads dweight and dbias of the last backward (blocking).
    pub fn read_grads(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = self.config.num_features;
        Ok((self.ctx.read(&self.grad_weight, 0, c)?, self.ctx.read(&self.grad_bias, 0, c)?))
    }

    /// Reads the saved batch mean and inverse std of the last batch-statistics forward (blocking).
    pub fn read_saved(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let v: Vec<[f32; 4]> = self.ctx.read(&self.saved, 0, self.config.num_features)?;
        Ok((v.iter().map(|s| s[0]).collect(), v.iter().map(|s| s[1]).collect()))
    }

    /// Forward in training (`true`) or eval mode; see [`Self::forward_train`]
    /// and [`Self::forward_eval`].
    pub fn forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        training: bool,
    ) -> Result<()> {
        if training {
            self.forward_train(encoder, x, y)
        } else {
            self.forward_eval(encoder, x, y)
        }
    }

    /// Training forward: normalizes with this batch's statistics, saves them
    /// for backward and, when tracking, updates the running statistics and
    /// `num_batches_tracked`.
    pub fn forward_train(&self, encoder: &mut wgpu::CommandEncoder, x: &TensorView, y: &TensorView) -> Result<()> {
        let update_running = self.config.track_running_stats;
        self.record_forward(encoder, x, y, Stats::Batch { update_running })
    }

    /// Eval forward: normalizes with the running statistics, or with the
    /// batch statistics when the layer does not track any (as PyTorch).
    pub fn forward_eval(&self, encoder: &mut wgpu::CommandEncoder, x: &TensorView, y: &TensorView) -> Result<()> {
        if self.config.track_running_stats {
            self.record_forward(encoder, x, y, Stats::Running)
        } else {
            self.record_forward(encoder, x, y, Stats::Batch { update_running: false })
        }
    }

    /// Backward of the last forward's mode: see [`Self::backward_train`] and
    /// [`Self::backward_eval`].
    pub fn backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        training: bool,
    ) -> Result<()> {
        if training {
            self.backward_train(encoder, x, dy, dx)
        } else {
            self.backward_eval(encoder, x, dy, dx)
        }
    }

    /// Training backward (statistics depend on x): dx into `dx`, dweight and
    /// dbias into [`Self::grad_weight`] / [`Self::grad_bias`]. Uses the
    /// statistics saved by the last batch-statistics forward, which must have
    /// had the same shape and layout.
    pub fn backward_train(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
    ) -> Result<()> {
        self.record_backward(encoder, x, dy, dx, Stats::Batch { update_running: false })
    }

    /// Eval backward (running statistics are constants). Without running
    /// statistics this is the training backward, as in PyTorch.
    pub fn backward_eval(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
    ) -> Result<()> {
        let stats =
            if self.config.track_running_stats { Stats::Running } else { Stats::Batch { update_running: false } };
        self.record_backward(encoder, x, dy, dx, stats)
    }

    /// Blocking [`Self::forward`]: records, submits and waits.
    pub fn forward_sync(&self, x: &TensorView, y: &TensorView, training: bool) -> Result<()> {
        self.ctx.run(|e| self.forward(e, x, y, training))
    }

    /// Blocking [`Self::backward`]: records, submits and waits.
    pub fn backward_sync(&self, x: &TensorView, dy: &TensorView, dx: &TensorView, training: bool) -> Result<()> {
        self.ctx.run(|e| self.backward(e, x, dy, dx, training))
    }

    /// Checks x against the layer and `other` (y, dy or dx) against x, and
    /// returns their windows and channel view.
    fn check_pair<'a>(
        &self,
        x: &TensorView<'a>,
        other: &TensorView<'a>,
        other_name: &str,
    ) -> Result<(ChannelView, Window<'a>, Window<'a>)> {
        self.ctx.check_alive()?;
        let view = check_shape(&x.shape, x.layout, self.config.num_features)?;
        if other.shape != x.shape || (other.layout != x.layout && x.shape.len() > 2) {
            return Err(Error::Shape(format!(
                "{other_name} is {:?} {:?}, x is {:?} {:?}",
                other.shape, other.layout, x.shape, x.layout
            )));
        }
        let limits = self.ctx.device().limits();
        Ok((view, x.window("x", &limits)?, other.window(other_name, &limits)?))
    }

    /// The partial-statistics scratch, at least `bytes` long.
    fn partials(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let mut slot = lock(&self.partials);
        match slot.as_ref() {
            Some(b) if b.size() >= bytes => Ok(b.clone()),
            _ => {
                let b = self.ctx.zeros("bn partials", bytes)?;
                *slot = Some(b.clone());
                Ok(b)
            }
        }
    }

    fn params(&self, view: ChannelView) -> ChannelParams {
        let mut flags = 0;
        if self.config.affine {
            flags |= FLAG_AFFINE;
        }
        ChannelParams {
            outer: view.outer as u32,
            channels: view.channels as u32,
            inner: view.inner as u32,
            flags,
            eps: self.config.eps,
            momentum: self.config.momentum.unwrap_or(-1.0),
            count: view.per_channel() as f32,
            ..Default::default()
        }
    }

    fn workgroups_elementwise(view: ChannelView) -> (u32, u32) {
        (view.len().div_ceil(256 * 4).clamp(1, 65535) as u32, 1)
    }

    fn per_channel_workgroups(&self) -> (u32, u32) {
        (self.config.num_features.div_ceil(64) as u32, 1)
    }

    fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        stats: Stats,
    ) -> Result<()> {
        let (view, xw, yw) = self.check_pair(x, y, "y")?;
        if x.buffer == y.buffer {
            return Err(Error::Buffer("x and y share a buffer; BatchNorm does not run in place".into()));
        }
        let batch = matches!(stats, Stats::Batch { .. });
        if batch && view.per_channel() < 2 {
            return Err(Error::OneValuePerChannel(x.shape.clone()));
        }
        let mut params = self.params(view);
        params.x_off = xw.elem_offset;
        params.y_off = yw.elem_offset;
        let plan = ReducePlan::new(view)?;
        plan.fill(&mut params);
        let update_running = matches!(stats, Stats::Batch { update_running: true });
        if update_running {
            params.flags |= FLAG_UPDATE_RUNNING;
        }
        let partials =
            if batch { Some(self.partials(u64::from(plan.parts) * view.channels as u64 * 16)?) } else { None };

        let device = self.ctx.device();
        self.ctx.scoped(|| {
            let kernels = self.ctx.kernels();
            let params_buf = uniform(device, &params)?;
            let chan = if batch { &self.saved } else { &self.eval_chan };
            let apply = kernels.get(KernelKey::new(Shader::BatchNorm, "apply"))?;
            let apply_group = bind(
                device,
                &apply,
                &[
                    (0, params_buf.as_entire_binding()),
                    (7, chan.as_entire_binding()),
                    (8, xw.resource()),
                    (9, yw.resource()),
                ],
            );
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("batch_norm forward"),
                timestamp_writes: None,
            });
            if let Some(partials) = &partials {
                let reduce = reduce::pipeline(&self.ctx, &plan, ReduceMode::Stats)?;
                reduce::record(
                    device,
                    &mut pass,
                    &reduce,
                    &plan,
                    ReduceBindings {
                        params: params_buf.as_entire_binding(),
                        x: xw.resource(),
                        dy: xw.resource(),
                        chan: self.saved.as_entire_binding(),
                        partials: partials.as_entire_binding(),
                        weight: None,
                    },
                );
                let merge = kernels.get(KernelKey::new(Shader::BatchNorm, "merge_stats"))?;
                let group = bind(
                    device,
                    &merge,
                    &[
                        (0, params_buf.as_entire_binding()),
                        (1, partials.as_entire_binding()),
                        (2, self.weight.as_entire_binding()),
                        (3, self.bias.as_entire_binding()),
                        (4, self.running_mean.as_entire_binding()),
                        (5, self.running_var.as_entire_binding()),
                        (6, self.counter.as_entire_binding()),
                        (7, self.saved.as_entire_binding()),
                    ],
                );
                dispatch(&mut pass, &merge, &group, self.per_channel_workgroups());
                if update_running {
                    let bump = kernels.get(KernelKey::new(Shader::BatchNorm, "bump_counter"))?;
                    let group = bind(device, &bump, &[(6, self.counter.as_entire_binding())]);
                    dispatch(&mut pass, &bump, &group, (1, 1));
                }
            } else {
                self.record_prepare_eval(&mut pass, &params_buf)?;
            }
            dispatch(&mut pass, &apply, &apply_group, Self::workgroups_elementwise(view));
            Ok(())
        })?;
        if batch {
            *lock(&self.saved_for) = Some((x.shape.clone(), x.layout));
        }
        Ok(())
    }

    /// Eval coefficients from the running statistics into `eval_chan`.
    fn record_prepare_eval(&self, pass: &mut wgpu::ComputePass<'_>, params: &wgpu::Buffer) -> Result<()> {
        let device = self.ctx.device();
        let prepare = self.ctx.kernels().get(KernelKey::new(Shader::BatchNorm, "prepare_eval"))?;
        let group = bind(
            device,
            &prepare,
            &[
                (0, params.as_entire_binding()),
                (2, self.weight.as_entire_binding()),
                (3, self.bias.as_entire_binding()),
                (4, self.running_mean.as_entire_binding()),
                (5, self.running_var.as_entire_binding()),
                (7, self.eval_chan.as_entire_binding()),
            ],
        );
        dispatch(pass, &prepare, &group, self.per_channel_workgroups());
        Ok(())
    }

    fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        stats: Stats,
    ) -> Result<()> {
        let (view, xw, dyw) = self.check_pair(x, dy, "dy")?;
        let (_, _, dxw) = self.check_pair(x, dx, "dx")?;
        if dx.buffer == x.buffer || dx.buffer == dy.buffer {
            return Err(Error::Buffer("dx shares a buffer with x or dy; backward does not run in place".into()));
        }
        let batch = matches!(stats, Stats::Batch { .. });
        if batch {
            if view.per_channel() < 2 {
                return Err(Error::OneValuePerChannel(x.shape.clone()));
            }
            let saved = lock(&self.saved_for).clone();
            if saved.as_ref() != Some(&(x.shape.clone(), x.layout)) {
                return Err(Error::Parameter(format!(
                    "training backward needs the statistics of a training forward on the same input; \
                     the last one saw {saved:?}, x is {:?} {:?}",
                    x.shape, x.layout
                )));
            }
        }
        let mut params = self.params(view);
        params.x_off = xw.elem_offset;
        params.dy_off = dyw.elem_offset;
        params.dx_off = dxw.elem_offset;
        if batch {
            params.flags |= FLAG_BATCH_STATS;
        }
        let plan = ReducePlan::new(view)?;
        plan.fill(&mut params);
        let partials = self.partials(u64::from(plan.parts) * view.channels as u64 * 16)?;
        let chan = if batch { &self.saved } else { &self.eval_chan };

        let device = self.ctx.device();
        self.ctx.scoped(|| {
            let kernels = self.ctx.kernels();
            let params_buf = uniform(device, &params)?;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("batch_norm backward"),
                timestamp_writes: None,
            });
            if !batch {
                self.record_prepare_eval(&mut pass, &params_buf)?;
            }
            let reduce = reduce::pipeline(&self.ctx, &plan, ReduceMode::GradSums)?;
            reduce::record(
                device,
                &mut pass,
                &reduce,
                &plan,
                ReduceBindings {
                    params: params_buf.as_entire_binding(),
                    x: xw.resource(),
                    dy: dyw.resource(),
                    chan: chan.as_entire_binding(),
                    partials: partials.as_entire_binding(),
                    weight: None,
                },
            );
            let merge = kernels.get(KernelKey::new(Shader::BatchNorm, "merge_grads"))?;
            let group = bind(
                device,
                &merge,
                &[
                    (0, params_buf.as_entire_binding()),
                    (1, partials.as_entire_binding()),
                    (2, self.weight.as_entire_binding()),
                    (7, chan.as_entire_binding()),
                    (12, self.grad_coef.as_entire_binding()),
                    (13, self.grad_weight.as_entire_binding()),
                    (14, self.grad_bias.as_entire_binding()),
                ],
            );
            dispatch(&mut pass, &merge, &group, self.per_channel_workgroups());
            let dx_kernel = kernels.get(KernelKey::new(Shader::BatchNorm, "backward_dx"))?;
            let group = bind(
                device,
                &dx_kernel,
                &[
                    (0, params_buf.as_entire_binding()),
                    (8, xw.resource()),
                    (10, dyw.resource()),
                    (11, dxw.resource()),
                    (12, self.grad_coef.as_entire_binding()),
                ],
            );
            dispatch(&mut pass, &dx_kernel, &group, Self::workgroups_elementwise(view));
            Ok(())
        })
    }
}
