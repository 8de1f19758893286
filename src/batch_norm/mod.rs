//! BatchNorm with `torch.nn.BatchNorm1d/2d/3d` semantics: training forward on
//! batch statistics with the running-statistic update, eval forward on the
//! running statistics, and backward in both modes.
//!
//! Every op validates first, then records into the caller's encoder:
//! partial statistics (reduce.wgsl), a per-channel merge (batch_norm.wgsl),
//! then one elementwise pass. On GPUs a channel one workgroup walks takes
//! one dispatch (forward.rs's `one_pass`), and a longer channel of long
//! runs two, its elementwise pass merging the partials (merged.rs). The
//! eval backward of such channels is two on every device: a walk that
//! writes dx and takes the sums, then their merge (merged.rs).
//! Nothing comes back to the host.

mod backward;
mod finishing;
mod forward;
mod merged;

use crate::affine::Affine;
use crate::context::block_on;
use crate::context::Context;
use crate::kernels::{
    grid_stride, lock, ChannelParams, KernelKey, Shader, FLAG_AFFINE, FLAG_BATCH_STATS, FLAG_CHECK_FINITE,
    FLAG_RUNNING_IN_MERGE, FLAG_UPDATE_RUNNING,
};
use crate::layout::{ChannelView, Layout};
use crate::plans::{Keeper, Plans};
use crate::recording::{Recording, Uniform};
use crate::reduce::{ReduceBindings, ReduceMode, MAX_MERGE_PARTS};
use crate::scratch::Scratch;
use crate::strategy::Reduction;
use crate::tensor::{check_shape_of, DType, TensorView};
use crate::tiling::{Chunks, DX, DY, DZ, X, Y, Z};
use crate::validate::{check_channels, check_eps, check_features_fit, check_momentum};
use crate::{Error, Result};
use std::sync::Mutex;

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
    /// Reject a training batch whose statistics are not finite: running
    /// statistics and `num_batches_tracked` stay as they were, and the
    /// forward's [`BatchNorm::last_batch_rejected`] is true (SyncBatchNorm's
    /// forward returns `Err(NonFinite)`). The outputs still
    /// carry the NaN or Inf, as PyTorch's do. Default false (PyTorch's behaviour).
    pub check_finite: bool,
}

impl BatchNormConfig {
    /// PyTorch's defaults for `num_features` channels.
    pub fn new(num_features: usize) -> BatchNormConfig {
        BatchNormConfig {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
            check_finite: false,
        }
    }

    setters! {
        /// Sets `eps`.
        eps: f32;
        /// Sets `momentum` (`None` = cumulative average).
        momentum: Option<f32>;
        /// Sets `affine`.
        affine: bool;
        /// Sets `track_running_stats`.
        track_running_stats: bool;
        /// Sets `check_finite`.
        check_finite: bool;
    }

    /// `Err(Parameter)` unless `eps` is finite and positive, `momentum` is in
    /// [0, 1] and there is at least one channel.
    pub fn validate(&self) -> Result<()> {
        check_channels(self.num_features)?;
        check_eps(self.eps)?;
        check_momentum(self.momentum)
    }
}

/// BatchNorm's state as host values, with PyTorch's `state_dict` meaning.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormState {
    /// Gamma (`weight`), one per channel.
    pub weight: Vec<f32>,
    /// Beta (`bias`), one per channel.
    pub bias: Vec<f32>,
    /// `running_mean`, one per channel.
    pub running_mean: Vec<f32>,
    /// `running_var` (unbiased), one per channel.
    pub running_var: Vec<f32>,
    /// Training forwards since the statistics were reset.
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
/// change. `Send + Sync`: ops take `&self`. Like a PyTorch module, a layer
/// holds one set of saved batch statistics: a training backward uses those of
/// the last training forward recorded on it, so give each concurrent
/// training sequence its own layer (eval forwards may share one).
pub struct BatchNorm {
    ctx: Context,
    config: BatchNormConfig,
    affine: Affine,
    running_mean: wgpu::Buffer,
    running_var: wgpu::Buffer,
    /// num_batches_tracked as (low, high) u32 words, then 1 when the last
    /// batch was rejected by `check_finite`.
    counter: wgpu::Buffer,
    /// New running statistics between merge_stats and commit_running.
    pending: wgpu::Buffer,
    /// Batch statistics of the last training forward: (mean, invstd, scale, beta) per channel.
    saved: wgpu::Buffer,
    /// Eval-mode coefficients from the running statistics, same layout.
    eval_chan: wgpu::Buffer,
    /// dx coefficients (A, B, mean, C) per channel.
    grad_coef: wgpu::Buffer,
    /// Partial statistics, grown on demand and reused.
    scratch: Scratch,
    /// The wgpu objects of recent ops, for calls that repeat them.
    plans: Plans,
    /// Shape and layout of the input whose statistics `saved` holds.
    saved_for: Mutex<Option<(Vec<usize>, Layout)>>,
    /// Stand-in for output bindings a kernel variant never writes.
    unused: wgpu::Buffer,
    /// The last local partial statistics (count, mean, M2, 0) per channel,
    /// and the last local gradient sums, for SyncBatchNorm's exchange.
    local_stats: wgpu::Buffer,
    local_sums: wgpu::Buffer,
}

/// Where a batch-statistics op takes its per-channel values from: its own
/// reduction over x, or values given on the GPU (SyncBatchNorm: merged over
/// every rank), one vec4 per channel in the layout the reduction merges.
#[derive(Clone, Copy)]
pub(crate) enum Source<'b> {
    Reduce,
    /// `count` is the number of values per channel the given values span.
    Given {
        values: &'b wgpu::Buffer,
        count: f32,
    },
}

/// Which statistics an op normalizes with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stats {
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
        // (mean, invstd, scale, beta) per channel is the widest buffer.
        check_features_fit(ctx.limits(), c, 16)?;
        let init = BatchNormState::initial(c);
        let vec4 = (c * 16) as u64;
        let bn = BatchNorm {
            affine: Affine::new(ctx, c, "bn")?,
            running_mean: ctx.upload("bn running_mean", &init.running_mean)?,
            running_var: ctx.upload("bn running_var", &init.running_var)?,
            counter: ctx.upload("bn num_batches_tracked", &[0u32; 4])?,
            pending: ctx.zeros("bn pending running statistics", (c * 12) as u64)?,
            saved: ctx.zeros("bn saved statistics", vec4)?,
            eval_chan: ctx.zeros("bn eval coefficients", vec4)?,
            grad_coef: ctx.zeros("bn dx coefficients", vec4)?,
            scratch: Scratch::new(ctx, "bn"),
            plans: Plans::default(),
            saved_for: Mutex::new(None),
            unused: ctx.zeros("bn unused binding", 16)?,
            local_stats: ctx.zeros("bn local partial statistics", vec4)?,
            local_sums: ctx.zeros("bn local gradient sums", vec4)?,
            ctx: ctx.clone(),
            config,
        };
        Ok(bn)
    }

    /// The context the layer records for.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Per-channel (mean, invstd, scale, beta) from the running statistics,
    /// written by `record_prepare_eval`.
    pub(crate) fn eval_coefficients(&self) -> &wgpu::Buffer {
        &self.eval_chan
    }

    /// The layer's configuration.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// Weight and bias (`num_features` f32 each) and their gradients from
    /// the last backward.
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// The running mean buffer.
    pub fn running_mean(&self) -> &wgpu::Buffer {
        &self.running_mean
    }

    /// The running variance buffer (unbiased, as PyTorch).
    pub fn running_var(&self) -> &wgpu::Buffer {
        &self.running_var
    }

    /// Per-channel (mean, invstd, scale, beta) of the last batch-statistics
    /// forward: 4 f32 per channel. `save_mean` and `save_invstd` in PyTorch.
    pub fn saved_statistics(&self) -> &wgpu::Buffer {
        &self.saved
    }

    /// Reads the state back (blocking).
    pub fn read_state(&self) -> Result<BatchNormState> {
        block_on(self.read_state_async())
    }

    /// [`Self::read_state`] without blocking.
    pub async fn read_state_async(&self) -> Result<BatchNormState> {
        let (ctx, c) = (&self.ctx, self.config.num_features);
        let counter: Vec<u32> = ctx.read_async(&self.counter, 0, 2).await?;
        Ok(BatchNormState {
            weight: ctx.read_async(self.affine.weight(), 0, c).await?,
            bias: ctx.read_async(self.affine.bias(), 0, c).await?,
            running_mean: ctx.read_async(&self.running_mean, 0, c).await?,
            running_var: ctx.read_async(&self.running_var, 0, c).await?,
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
        self.ctx.write(self.affine.weight(), 0, &state.weight)?;
        self.ctx.write(self.affine.bias(), 0, &state.bias)?;
        self.ctx.write(&self.running_mean, 0, &state.running_mean)?;
        self.ctx.write(&self.running_var, 0, &state.running_var)?;
        let n = state.num_batches_tracked;
        self.ctx.write(&self.counter, 0, &[n as u32, (n >> 32) as u32])
    }

    /// True when the last training forward's batch was rejected because its
    /// statistics were not finite (`check_finite`). Blocking read.
    pub fn last_batch_rejected(&self) -> Result<bool> {
        block_on(self.last_batch_rejected_async())
    }

    /// [`Self::last_batch_rejected`] without blocking.
    pub async fn last_batch_rejected_async(&self) -> Result<bool> {
        Ok(self.ctx.read_async::<u32>(&self.counter, 8, 1).await?[0] == 1)
    }

    /// Reads the saved batch mean and inverse std of the last batch-statistics forward (blocking).
    pub fn read_saved(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        block_on(self.read_saved_async())
    }

    /// [`Self::read_saved`] without blocking.
    pub async fn read_saved_async(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let v: Vec<[f32; 4]> = self.ctx.read_async(&self.saved, 0, self.config.num_features).await?;
        Ok((v.iter().map(|s| s[0]).collect(), v.iter().map(|s| s[1]).collect()))
    }

    /// The forward, as cuDNN's `bnOps`: `y = epilogue(bn(x))` in one pass.
    ///
    /// - [`Mode::Training`] normalizes with this batch's statistics, saves
    ///   them for the backward and, when tracking, updates the running
    ///   statistics and `num_batches_tracked`. With `check_finite`, a batch
    ///   whose statistics are not finite leaves them as they were (see
    ///   [`Self::last_batch_rejected`]).
    /// - [`Mode::Eval`] normalizes with the running statistics, or with the
    ///   batch statistics when the layer tracks none (as PyTorch).
    ///
    /// The add-ReLU epilogue takes z (x's shape and layout) and no dz.
    pub fn forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        mode: Mode,
        epilogue: Epilogue,
    ) -> Result<()> {
        if let Epilogue::AddRelu { dz: Some(_), .. } = epilogue {
            return Err(Error::Parameter("dz is written by the add-ReLU backward; the forward takes z alone".into()));
        }
        self.record_forward(encoder, x, y, self.stats_for(mode.is_training(), true), epilogue, Source::Reduce)
    }

    /// The backward of [`Self::forward`] in the same mode and epilogue: dx
    /// into `dx`, dweight and dbias into [`Self::affine`]'s
    /// gradients; after add-ReLU also `dz`, the residual's
    /// gradient (give its view in the epilogue). The ReLU mask is recomputed
    /// from x, so neither y nor a mask is read.
    ///
    /// Training mode (statistics depend on x) uses the statistics saved by
    /// the last batch-statistics forward, which must have had x's shape and
    /// layout. Eval mode treats the running statistics as constants (without
    /// running statistics it is the training backward, as in PyTorch).
    pub fn backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        mode: Mode,
        epilogue: Epilogue,
    ) -> Result<()> {
        self.record_backward(encoder, x, dy, dx, self.stats_for(mode.is_training(), false), epilogue, Source::Reduce)
    }

    /// Which statistics a forward (`forward = true`) or backward in `training`
    /// mode normalizes with.
    pub(crate) fn stats_for(&self, training: bool, forward: bool) -> Stats {
        if training || !self.config.track_running_stats {
            Stats::Batch { update_running: forward && training && self.config.track_running_stats }
        } else {
            Stats::Running
        }
    }

    /// Checks `t` (named `name`) against x's shape and layout. Buffer ranges
    /// are checked when the op is cut into chunks.
    fn check_like(&self, x: &TensorView, t: &TensorView, name: &str) -> Result<()> {
        if t.shape != x.shape || (t.layout != x.layout && x.shape.len() > 2) {
            return Err(Error::Shape(format!(
                "{name} is {:?} {:?}, x is {:?} {:?}",
                t.shape, t.layout, x.shape, x.layout
            )));
        }
        Ok(())
    }

    /// Checks, before a SyncBatchNorm exchange, what the op after it would
    /// refuse: `outputs` against x's shape and layout and apart from the
    /// inputs. A rank that fails here leaves the group before any rank
    /// changes its state.
    pub(crate) fn check_sync_args(
        &self,
        x: &TensorView,
        inputs: &[(&str, &TensorView)],
        outputs: &[(&str, &TensorView)],
    ) -> Result<()> {
        self.check_input(x, true)?;
        for (name, t) in inputs.iter().chain(outputs) {
            self.check_like(x, t, name)?;
        }
        let inputs: Vec<(&str, &wgpu::Buffer)> =
            std::iter::once(("x", x.buffer)).chain(inputs.iter().map(|(n, t)| (*n, t.buffer))).collect();
        let outputs: Vec<(&str, &wgpu::Buffer)> = outputs.iter().map(|(n, t)| (*n, t.buffer)).collect();
        self.check_distinct(&outputs, &inputs)
    }

    /// Checks x against the layer and returns its channel view. An empty x
    /// (a zero-sized dimension) passes only where `allow_empty`: a
    /// SyncBatchNorm rank with no samples still takes part.
    fn check_input(&self, x: &TensorView, allow_empty: bool) -> Result<ChannelView> {
        self.ctx.check_alive()?;
        if x.dtype == DType::F16 && !self.ctx.device().features().contains(wgpu::Features::SHADER_F16) {
            return Err(Error::Unsupported("f16 tensors need a device with SHADER_F16".into()));
        }
        check_shape_of(&x.shape, x.layout, self.config.num_features, allow_empty)
    }

    /// `Err(Buffer)` when an input or output is one of the layer's own
    /// buffers, or an output shares a buffer with an input or another
    /// output: wgpu cannot bind one buffer as both, and the ops do not run
    /// in place.
    fn check_distinct(&self, outputs: &[(&str, &wgpu::Buffer)], inputs: &[(&str, &wgpu::Buffer)]) -> Result<()> {
        for (name, buffer) in outputs.iter().chain(inputs) {
            if self.owns(buffer) {
                return Err(Error::Buffer(format!("{name} is one of the layer's own buffers; pass a tensor of yours")));
            }
        }
        for (i, (name, out)) in outputs.iter().enumerate() {
            if let Some((input, _)) = inputs.iter().find(|(_, b)| b == out) {
                return Err(Error::Buffer(format!(
                    "{name} shares a buffer with {input}; BatchNorm does not run in place"
                )));
            }
            if outputs[..i].iter().any(|(_, other)| other == out) {
                return Err(Error::Buffer(format!("{name} shares a buffer with another output")));
            }
        }
        Ok(())
    }

    /// `Err` unless the saved statistics are those of a forward on x's shape.
    fn check_saved_for(&self, x: &TensorView) -> Result<()> {
        let saved = lock(&self.saved_for).clone();
        if saved.as_ref() != Some(&(x.shape.clone(), x.layout)) {
            return Err(Error::Parameter(format!(
                "training backward needs the statistics of a training forward on the same input; \
                 the last one saw {saved:?}, x is {:?} {:?}",
                x.shape, x.layout
            )));
        }
        Ok(())
    }
}

/// Which statistics a BatchNorm call normalizes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// This batch's statistics (PyTorch's `model.train()`).
    Training,
    /// The running statistics (PyTorch's `model.eval()`).
    Eval,
}

impl Mode {
    /// `Training` when `training`, else `Eval`.
    pub fn from_training(training: bool) -> Mode {
        if training {
            Mode::Training
        } else {
            Mode::Eval
        }
    }

    /// Whether this is `Training`.
    pub fn is_training(self) -> bool {
        self == Mode::Training
    }
}

impl Keeper for BatchNorm {
    fn plans(&self) -> &Plans {
        &self.plans
    }

    /// Its statistics, coefficients, counter and scratch: no method hands
    /// them out (the parameters, gradients and running statistics it does).
    fn private(&self, buffer: &wgpu::Buffer) -> bool {
        let private = [
            &self.counter,
            &self.pending,
            &self.saved,
            &self.eval_chan,
            &self.grad_coef,
            &self.unused,
            &self.local_stats,
            &self.local_sums,
        ];
        private.contains(&buffer) || self.scratch.owns(buffer)
    }
}

/// What follows the normalization in the same pass (cuDNN's `bnOps`).
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'v, 'a> {
    /// `y = bn(x)`.
    None,
    /// `y = relu(bn(x))`.
    Relu,
    /// `y = relu(bn(x) + z)`, a residual block's tail; z has x's shape and
    /// layout. `dz`, the residual's gradient, is the backward's output: the
    /// backward needs it, the forward refuses it.
    AddRelu {
        /// The residual input.
        z: &'v TensorView<'a>,
        /// Where the backward writes the residual's gradient.
        dz: Option<&'v TensorView<'a>>,
    },
}

impl Epilogue<'_, '_> {
    fn z(&self) -> Option<&TensorView<'_>> {
        match self {
            Epilogue::AddRelu { z, .. } => Some(z),
            _ => None,
        }
    }

    /// `MODE` of elementwise.wgsl's apply and dx kernels.
    fn apply_mode(&self) -> u32 {
        match self {
            Epilogue::None => 0,
            Epilogue::Relu => 1,
            Epilogue::AddRelu { .. } => 2,
        }
    }

    fn grad_mode(&self) -> ReduceMode {
        match self {
            Epilogue::None => ReduceMode::GradSums,
            Epilogue::Relu => ReduceMode::GradSumsRelu,
            Epilogue::AddRelu { .. } => ReduceMode::GradSumsAddRelu,
        }
    }
}
