//! The engine behind `wgpu-norm bench`: times every op the crate has over a
//! set of shapes and layouts, next to a plain copy over the same number of
//! bytes (the bandwidth ceiling) and, for BatchNorm and its fused forwards, a
//! naive BatchNorm written the obvious way (the baseline; the fused forms add
//! a separate relu or add+relu pass). The family ops have no naive baseline
//! (`naive_ms` is `None`).
//!
//! - Shapes are logical (N, C, spatial...). LayerNorm and RMSNorm normalize
//!   over the last dimension and read the tensor row-major whatever the
//!   layout, so they run once per shape, reported under the first of
//!   `--layouts`. GroupNorm ([`group_count`] groups) and InstanceNorm
//!   (PyTorch's defaults: no affine, no running statistics) run in both
//!   layouts and need rank >= 3: a rank-2 shape skips them with a note.
//!
//! - Times are medians over `iters` runs after `warmup` runs (and, but for
//!   `--quick`, at least [`MIN_WARMUP_MS`] of them, for GPU clocks), each
//!   run its own submission. With `TIMESTAMP_QUERY` the GPU's own clock is read: an empty
//!   compute pass writes a timestamp before the op's passes and another one
//!   after them. Without it, wall clock around submit-and-wait.
//! - Bandwidth counts the bytes an op must move at the least: each input read
//!   once, each output written once (see [`OpInfo::tensors`]).
//! - The op registry is [`OPS`]: an op the library does not have yet is listed
//!   with `op: None`; adding it is a [`Op`] variant, its entry in [`OPS`] and
//!   its arms in [`Workload`].

mod ceiling;
mod clock;
mod model;
mod naive;
mod output;
mod workload;

use std::time::Instant;

use ceiling::Ceiling;
pub use ceiling::{host_memcpy_gbps, CopyKernel, Walk};
use clock::Clock;
pub use model::{Model, ModelSummary};
pub use output::to_json;
pub use output::{access_name, parse_access, parse_reduction, reduction_name, svg, table};
use wgpu_norm::{Access, Context, Error, Layout, Reduction, Result};
use wgpu_norm_reference::Fused;
pub use workload::Workload;

/// Worst normalized error `--verify` accepts.
pub const VERIFY_TOLERANCE: f64 = wgpu_norm_reference::DEFAULT_TOLERANCE;

/// An op the benchmark can run today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `BatchNorm::forward`, eval mode (running statistics).
    BnForwardEval,
    /// `BatchNorm::forward`, training mode (batch statistics, running update).
    BnForwardTrain,
    /// `BatchNorm::backward`, training mode, after a training forward.
    BnBackwardTrain,
    /// `BatchNorm::backward`, eval mode.
    BnBackwardEval,
    /// `forward` then `backward`, training mode: one training step of the layer.
    BnTrainStep,
    /// `BatchNorm::forward` with `Epilogue::Relu`, training mode.
    BnReluForwardTrain,
    /// `BatchNorm::forward` with `Epilogue::AddRelu`, training mode (z is a second input).
    BnAddReluForwardTrain,
    /// `LayerNorm::forward` over the last dimension.
    LnForward,
    /// `LayerNorm::backward` after a forward.
    LnBackward,
    /// `RmsNorm::forward` over the last dimension.
    RmsForward,
    /// `RmsNorm::backward` after a forward.
    RmsBackward,
    /// `GroupNorm::forward` ([`group_count`] groups).
    GnForward,
    /// `GroupNorm::backward` after a forward.
    GnBackward,
    /// `InstanceNorm::forward` (PyTorch defaults: no affine, no running stats).
    InForward,
    /// `InstanceNorm::backward` after a forward.
    InBackward,
    /// `BatchNorm::forward` with `Epilogue::Relu`, eval mode.
    BnReluForwardEval,
    /// `BatchNorm::forward` with `Epilogue::AddRelu`, eval mode (z is a second input).
    BnAddReluForwardEval,
    /// `forward` then `backward` with `Epilogue::Relu`, training mode.
    BnReluTrainStep,
    /// `forward` then `backward` with `Epilogue::AddRelu` (dx and dz), training mode.
    BnAddReluTrainStep,
}

/// The layer an op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bn,
    Ln,
    Rms,
    Gn,
    In,
}

/// One entry of the op registry.
#[derive(Clone, Copy, Debug)]
pub struct OpInfo {
    /// The name used by `--ops` and in the JSON output (a contract).
    pub name: &'static str,
    /// Whole tensors the op must move at the least: inputs read once plus
    /// outputs written once. Bytes moved = `tensors * elements * 4`.
    pub tensors: u64,
    /// The op, or `None` while the library does not have it.
    pub op: Option<Op>,
    /// Whether the default run (no `--ops`) includes it; `--ops all` runs
    /// every op.
    pub default: bool,
}

/// Every op name of the benchmark's contract, in output order.
pub const OPS: &[OpInfo] = &[
    OpInfo { name: "bn_forward_eval", tensors: 2, op: Some(Op::BnForwardEval), default: true },
    OpInfo { name: "bn_forward_train", tensors: 2, op: Some(Op::BnForwardTrain), default: true },
    OpInfo { name: "bn_backward_train", tensors: 3, op: Some(Op::BnBackwardTrain), default: true },
    OpInfo { name: "bn_backward_eval", tensors: 3, op: Some(Op::BnBackwardEval), default: true },
    OpInfo { name: "bn_train_step", tensors: 5, op: Some(Op::BnTrainStep), default: true },
    // Fused BatchNorm: x (+ z) in, y out.
    OpInfo { name: "bn_relu_forward_train", tensors: 2, op: Some(Op::BnReluForwardTrain), default: true },
    OpInfo { name: "bn_add_relu_forward_train", tensors: 3, op: Some(Op::BnAddReluForwardTrain), default: true },
    // The normalization family: forward x -> y, backward x, dy -> dx.
    OpInfo { name: "ln_forward", tensors: 2, op: Some(Op::LnForward), default: true },
    OpInfo { name: "ln_backward", tensors: 3, op: Some(Op::LnBackward), default: true },
    OpInfo { name: "rms_forward", tensors: 2, op: Some(Op::RmsForward), default: true },
    OpInfo { name: "rms_backward", tensors: 3, op: Some(Op::RmsBackward), default: true },
    OpInfo { name: "gn_forward", tensors: 2, op: Some(Op::GnForward), default: true },
    OpInfo { name: "gn_backward", tensors: 3, op: Some(Op::GnBackward), default: true },
    OpInfo { name: "in_forward", tensors: 2, op: Some(Op::InForward), default: true },
    OpInfo { name: "in_backward", tensors: 3, op: Some(Op::InBackward), default: true },
    // The fused forms a residual network runs (`--model resnet50`): eval
    // forwards, and training steps whose backward reads x, (z,) dy and
    // writes dx (and dz).
    OpInfo { name: "bn_relu_forward_eval", tensors: 2, op: Some(Op::BnReluForwardEval), default: false },
    OpInfo { name: "bn_add_relu_forward_eval", tensors: 3, op: Some(Op::BnAddReluForwardEval), default: false },
    OpInfo { name: "bn_relu_train_step", tensors: 5, op: Some(Op::BnReluTrainStep), default: false },
    OpInfo { name: "bn_add_relu_train_step", tensors: 8, op: Some(Op::BnAddReluTrainStep), default: false },
];

/// GroupNorm's group count for `channels`: 32 (the usual choice, as in
/// ResNet/UNet GroupNorm layers) when 32 divides the channels, else the
/// largest divisor of the channels not above 32 (3 channels: 3 groups).
pub fn group_count(channels: usize) -> usize {
    (1..=channels.min(32)).rev().find(|&g| channels.is_multiple_of(g)).unwrap_or(1)
}

impl Op {
    /// The registry entry of this op.
    pub fn info(self) -> &'static OpInfo {
        OPS.iter().find(|i| i.op == Some(self)).expect("every Op has a registry entry")
    }

    /// The contract name (`bn_forward_eval`, ...).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Bytes the op must move at the least on a tensor of `elements` f32.
    pub fn bytes(self, elements: usize) -> u64 {
        self.info().tensors * elements as u64 * 4
    }

    fn kind(self) -> Kind {
        match self {
            Op::LnForward | Op::LnBackward => Kind::Ln,
            Op::RmsForward | Op::RmsBackward => Kind::Rms,
            Op::GnForward | Op::GnBackward => Kind::Gn,
            Op::InForward | Op::InBackward => Kind::In,
            _ => Kind::Bn,
        }
    }

    /// Family ops timed as a backward (after one forward in setup).
    fn family_backward(self) -> bool {
        matches!(self, Op::LnBackward | Op::RmsBackward | Op::GnBackward | Op::InBackward)
    }

    /// LayerNorm and RMSNorm read their input row-major whatever the layout:
    /// the bench runs them once per shape, under the first of `--layouts`.
    pub fn ignores_layout(self) -> bool {
        matches!(self.kind(), Kind::Ln | Kind::Rms)
    }

    /// Whether the op has a naive baseline (BatchNorm, and its fused
    /// training forwards).
    pub fn has_naive(self) -> bool {
        self.kind() == Kind::Bn
            && !matches!(
                self,
                Op::BnReluForwardEval | Op::BnAddReluForwardEval | Op::BnReluTrainStep | Op::BnAddReluTrainStep
            )
    }

    /// The epilogue of a BatchNorm op.
    fn fused(self) -> Fused {
        match self {
            Op::BnReluForwardTrain | Op::BnReluForwardEval | Op::BnReluTrainStep => Fused::Relu,
            Op::BnAddReluForwardTrain | Op::BnAddReluForwardEval | Op::BnAddReluTrainStep => Fused::AddRelu,
            _ => Fused::None,
        }
    }

    /// BatchNorm ops on batch statistics.
    fn training(self) -> bool {
        matches!(
            self,
            Op::BnForwardTrain
                | Op::BnBackwardTrain
                | Op::BnTrainStep
                | Op::BnReluForwardTrain
                | Op::BnAddReluForwardTrain
                | Op::BnReluTrainStep
                | Op::BnAddReluTrainStep
        )
    }

    /// BatchNorm ops whose output y is checked.
    fn runs_forward(self) -> bool {
        self.kind() == Kind::Bn && !matches!(self, Op::BnBackwardTrain | Op::BnBackwardEval)
    }

    /// BatchNorm ops whose gradients are checked.
    fn runs_backward(self) -> bool {
        matches!(
            self,
            Op::BnBackwardTrain | Op::BnBackwardEval | Op::BnTrainStep | Op::BnReluTrainStep | Op::BnAddReluTrainStep
        )
    }

    /// Why the op does not run on `shape` in `layout`, if it does not:
    /// GroupNorm and InstanceNorm need spatial dimensions (rank >= 3).
    /// Tensors above the device's storage binding limit are cut into
    /// chunks: BatchNorm's anywhere; the family's into whole samples (rows
    /// for LayerNorm and RMSNorm) or, channels-second, whole groups of one
    /// sample, so one such unit must fit a binding.
    pub fn unsupported(self, shape: &[usize], layout: Layout, max_binding: u64) -> Option<String> {
        let sample: u64 = shape.iter().skip(1).product::<usize>() as u64 * 4;
        let channels = shape.get(1).copied().unwrap_or(1).max(1) as u64;
        let unit_bytes = match self.kind() {
            Kind::Bn => 0,
            Kind::Ln | Kind::Rms => shape.last().copied().unwrap_or(0) as u64 * 4,
            Kind::Gn if layout == Layout::Nchw => sample / group_count(channels as usize) as u64,
            Kind::In if layout == Layout::Nchw => sample / channels,
            _ => sample,
        };
        match self.kind() {
            Kind::Gn | Kind::In if shape.len() < 3 => {
                Some(format!("{}: needs rank >= 3 (N, C, spatial...), got rank {}", self.name(), shape.len()))
            }
            // A part's binding also spans its offset's alignment (up to 256 bytes).
            _ if unit_bytes > 0 && unit_bytes + 260 > max_binding => Some(format!(
                "{}: {unit_bytes} bytes in one unit the op cannot cut (a sample, row or group) exceed the \
                 storage binding limit of {max_binding} bytes",
                self.name()
            )),
            _ => None,
        }
    }
}

/// Names of the ops the crate has today.
pub fn available_ops() -> Vec<&'static str> {
    OPS.iter().filter(|i| i.op.is_some()).map(|i| i.name).collect()
}

/// Every available op, in registry order.
pub fn all_ops() -> Vec<Op> {
    OPS.iter().filter_map(|i| i.op).collect()
}

/// The ops of the default run, in registry order.
pub fn default_ops() -> Vec<Op> {
    OPS.iter().filter(|i| i.default).filter_map(|i| i.op).collect()
}

/// Parses `--ops` (comma-separated names, or `all`).
pub fn parse_ops(s: &str) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "all" {
            ops.extend(all_ops());
            continue;
        }
        match OPS.iter().find(|i| i.name == name) {
            Some(OpInfo { op: Some(op), .. }) => ops.push(*op),
            Some(OpInfo { op: None, .. }) => {
                return Err(Error::Parameter(format!(
                    "op {name:?} is not implemented in this crate yet; available ops: {}",
                    available_ops().join(", ")
                )))
            }
            None => {
                return Err(Error::Parameter(format!(
                    "unknown op {name:?}; available ops: {}",
                    available_ops().join(", ")
                )))
            }
        }
    }
    if ops.is_empty() {
        return Err(Error::Parameter(format!("no op given; available ops: {}", available_ops().join(", "))));
    }
    let mut unique: Vec<Op> = Vec::new();
    for op in ops {
        if !unique.contains(&op) {
            unique.push(op);
        }
    }
    Ok(unique)
}

/// Parses `--shapes`: shapes separated by `;`, dimensions by `,` (or `x`),
/// in logical order (N, C, spatial...).
pub fn parse_shapes(s: &str) -> Result<Vec<Vec<usize>>> {
    let mut shapes = Vec::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let dims: std::result::Result<Vec<usize>, _> =
            part.split([',', 'x']).map(|d| d.trim().parse::<usize>()).collect();
        let dims = dims.map_err(|e| Error::Parameter(format!("shape {part:?}: {e}")))?;
        if !(2..=5).contains(&dims.len()) || dims.contains(&0) {
            return Err(Error::Parameter(format!(
                "shape {part:?}: expected 2 to 5 non-zero dimensions (N, C, spatial...)"
            )));
        }
        shapes.push(dims);
    }
    if shapes.is_empty() {
        return Err(Error::Parameter("no shape given".into()));
    }
    Ok(shapes)
}

/// Parses `--layouts` (`nchw`, `nhwc`, comma-separated).
pub fn parse_layouts(s: &str) -> Result<Vec<Layout>> {
    let mut layouts = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let layout = match name.to_ascii_lowercase().as_str() {
            "nchw" => Layout::Nchw,
            "nhwc" => Layout::Nhwc,
            _ => return Err(Error::Parameter(format!("unknown layout {name:?}; layouts: nchw, nhwc"))),
        };
        if !layouts.contains(&layout) {
            layouts.push(layout);
        }
    }
    if layouts.is_empty() {
        return Err(Error::Parameter("no layout given; layouts: nchw, nhwc".into()));
    }
    Ok(layouts)
}

/// Shapes from real networks: ResNet-50's first-stage BatchNorm (batch 32),
/// its last-stage 7x7 layer, transformer LayerNorm rows (8192 tokens of 512),
/// and a few-channel high-resolution image.
pub const DEFAULT_SHAPES: &str = "32,64,56,56;32,2048,7,7;8192,512;8,3,512,512";
/// Shapes of `--quick`: small, for CI smoke tests.
pub const QUICK_SHAPES: &str = "8,32,28,28;2048,256";

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub ops: Vec<Op>,
    pub shapes: Vec<Vec<usize>>,
    pub layouts: Vec<Layout>,
    /// Timed runs per measurement (at most [`MAX_ITERS`]).
    pub iters: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// ...and at least this long (ms) of them, when `warmup` > 0 (see
    /// [`clock::MIN_WARMUP_MS`]).
    pub min_warmup_ms: f64,
    /// Check each op against the f64 reference before timing it.
    pub verify: bool,
    /// A network's layers at their real shapes (`--model`) instead of
    /// `ops` over `shapes`.
    pub model: Option<Model>,
}

impl BenchConfig {
    /// The default ops and shapes, both layouts, 7 runs after 2.
    pub fn default_run() -> BenchConfig {
        BenchConfig {
            ops: default_ops(),
            shapes: parse_shapes(DEFAULT_SHAPES).expect("default shapes parse"),
            layouts: vec![Layout::Nchw, Layout::Nhwc],
            iters: 7,
            warmup: 2,
            min_warmup_ms: clock::MIN_WARMUP_MS,
            verify: false,
            model: None,
        }
    }

    /// A small run for smoke tests (no warm-up by time).
    pub fn quick() -> BenchConfig {
        BenchConfig {
            shapes: parse_shapes(QUICK_SHAPES).expect("quick shapes parse"),
            iters: 3,
            warmup: 1,
            min_warmup_ms: 0.0,
            ..BenchConfig::default_run()
        }
    }

    /// What runs, in order: the model's layers, or every op over every
    /// shape and layout (LayerNorm and RMSNorm under the first layout only).
    fn jobs(&self) -> Vec<Job> {
        if let Some(model) = &self.model {
            return model.jobs(&self.layouts);
        }
        let mut jobs = Vec::new();
        for shape in &self.shapes {
            for &layout in &self.layouts {
                for &op in &self.ops {
                    if !(op.ignores_layout() && layout != self.layouts[0]) {
                        jobs.push(Job { op, shape: shape.clone(), layout, layer: None });
                    }
                }
            }
        }
        jobs
    }
}

/// One op on one shape and layout, of a model's layer or not.
#[derive(Clone, Debug)]
struct Job {
    op: Op,
    shape: Vec<usize>,
    layout: Layout,
    layer: Option<String>,
}

/// How times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// GPU timestamp queries around the op's passes.
    GpuTimestamp,
    /// Host wall clock around submit-and-wait.
    WallClock,
}

impl Timer {
    /// `gpu-timestamp` or `wall-clock`.
    pub fn name(self) -> &'static str {
        match self {
            Timer::GpuTimestamp => "gpu-timestamp",
            Timer::WallClock => "wall-clock",
        }
    }
}

/// One op on one shape and layout.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub op: &'static str,
    pub layout: Layout,
    pub shape: Vec<usize>,
    /// The model layer it is (`layer1.0.bn1`), with `--model`.
    pub layer: Option<String>,
    /// Bytes the op must move at the least.
    pub bytes: u64,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Median wall clock around submit-and-wait (equal to `median_ms` with
    /// the wall-clock timer); the difference is submission overhead.
    pub wall_ms: f64,
    pub gbps: f64,
    /// Median of the ceiling's copy over `bytes` (half read, half written):
    /// the fastest of the copy kernels on these bytes.
    pub copy_ms: f64,
    pub copy_gbps: f64,
    /// The copy kernel that was fastest on these bytes.
    pub copy_kernel: String,
    /// `gbps / copy_gbps`: the headline.
    pub ratio_to_copy: f64,
    /// Median host time to record the op into an encoder (pipelines warm,
    /// nothing submitted), in microseconds.
    pub record_us: f64,
    /// Compute dispatches one recording of the op makes.
    pub dispatches: u64,
    /// Median of the naive baseline, where the op has one.
    pub naive_ms: Option<f64>,
    /// `naive_ms / median_ms`.
    pub speedup_vs_naive: Option<f64>,
    /// With `verify`: worst normalized error of the op's outputs.
    pub max_error: Option<f64>,
    /// With `verify`: worst normalized error of the naive baseline's main output.
    pub naive_max_error: Option<f64>,
}

/// A shape (and layout) the run left out, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub shape: Vec<usize>,
    pub layout: Layout,
    /// The op left out, or `None` when every op was.
    pub op: Option<&'static str>,
    pub reason: String,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub adapter: String,
    pub backend: String,
    pub timer: Timer,
    /// The reduction strategy the ops ran with.
    pub reduction: Reduction,
    /// How the ops' vec4 kernels moved f32 tensors.
    pub access: Access,
    pub iters: usize,
    pub warmup: usize,
    /// The copy kernels that competed for the ceiling.
    pub copy_kernels: Vec<String>,
    /// On CPU adapters: the host's one-thread `memcpy` bandwidth, counted
    /// as `copy_gbps` is (bytes read plus bytes written).
    pub host_memcpy_gbps: Option<f64>,
    pub results: Vec<BenchResult>,
    pub skipped: Vec<Skipped>,
    /// The model's totals, with `--model`.
    pub model: Option<ModelSummary>,
}

impl Report {
    /// The worst `max_error` over the results (`None` without verification).
    pub fn worst_error(&self) -> Option<f64> {
        self.results.iter().filter_map(|r| r.max_error).fold(None, |w, e| {
            Some(match w {
                Some(w) if w >= e || e.is_nan() => w,
                _ => e,
            })
        })
    }
}

/// Things timed side by side: the op, its naive baseline, the copy.
const MEASURED: usize = 3;
/// Most timed rounds per measurement (the query set holds 4096 timestamps).
pub const MAX_ITERS: usize = wgpu::QUERY_SET_MAX_QUERIES as usize / (2 * MEASURED);
/// Recordings timed for `record_us`.
const RECORD_RUNS: usize = 25;

/// Runs `config`, calling `progress(done, total, what)` before each step.
pub fn run(ctx: &Context, config: &BenchConfig, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<Report> {
    let timer = if ctx.device().features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        Timer::GpuTimestamp
    } else {
        Timer::WallClock
    };
    let iters = config.iters.clamp(1, MAX_ITERS);
    let clock = Clock::new(ctx, timer, iters)?;
    let mut copies = Ceiling::new(ctx);
    let info = ctx.adapter_info();
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let mut report = Report {
        adapter: info.name.clone(),
        backend: info.backend.to_str().to_string(),
        timer,
        reduction: ctx.reduction(),
        access: ctx.access(),
        iters,
        warmup: config.warmup,
        copy_kernels: copies.kernels().iter().map(|k| k.name()).collect(),
        host_memcpy_gbps: cpu.then(host_memcpy_gbps),
        results: Vec::new(),
        skipped: Vec::new(),
        model: None,
    };
    let max_binding = ctx.device().limits().max_storage_buffer_binding_size;
    let jobs = config.jobs();
    let total = jobs.len();
    for (done, job) in jobs.into_iter().enumerate() {
        let Job { op, shape, layout, layer } = job;
        if let Some(reason) = op.unsupported(&shape, layout, max_binding) {
            report.skipped.push(Skipped { shape, layout, op: Some(op.name()), reason });
            continue;
        }
        let what = format!("{} {} {}", op.name(), layout.name(), shape_name(&shape));
        progress(done, total, &what);
        let work = Workload::new(ctx, op, &shape, layout, 0x5eed ^ (done as u64 + 1))?;
        let (max_error, naive_max_error) = if config.verify {
            let (e, n) = work.verify()?;
            (Some(e), n)
        } else {
            (None, None)
        };
        let bytes = work.bytes();
        progress(done, total, &format!("{what}: fastest copy"));
        let copy = copies.fastest(ctx, bytes, &mut |copy| {
            let (times, _) = clock.measure(ctx, 1, 0.0, ceiling::TRIALS, &mut [&mut |e| copy.record(e)])?;
            Ok(times.into_iter().next().unwrap_or_default())
        })?;
        progress(done, total, &what);
        let (warmup, min_warmup_ms) = (config.warmup, config.min_warmup_ms);
        let (times, wall) = if work.has_naive() {
            clock.measure(
                ctx,
                warmup,
                min_warmup_ms,
                iters,
                &mut [&mut |e| work.record(e), &mut |e| copy.record(e), &mut |e| work.record_naive(e)],
            )?
        } else {
            clock.measure(ctx, warmup, min_warmup_ms, iters, &mut [&mut |e| work.record(e), &mut |e| copy.record(e)])?
        };
        let (record_us, dispatches) = record_cost(ctx, &work)?;
        let (times, copy_ms, naive_ms) = (&times[0], median(&times[1]), times.get(2).map(|t| median(t)));
        let median_ms = median(times);
        let op_gbps = gbps(bytes, median_ms);
        let copy_gbps = gbps(bytes, copy_ms);
        report.results.push(BenchResult {
            op: op.name(),
            layout,
            shape,
            layer,
            bytes,
            median_ms,
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            wall_ms: median(&wall[0]),
            gbps: op_gbps,
            copy_ms,
            copy_gbps,
            copy_kernel: copy.kernel.name(),
            ratio_to_copy: op_gbps / copy_gbps,
            record_us,
            dispatches,
            naive_ms,
            speedup_vs_naive: naive_ms.map(|n| n / median_ms),
            max_error,
            naive_max_error,
        });
    }
    report.model = config.model.as_ref().map(|m| m.summarize(&report.results, &config.layouts));
    progress(total, total, "done");
    Ok(report)
}

/// The host's cost of one op: the median time to record it into a fresh
/// encoder (pipelines warm, nothing submitted; the encoder is dropped), in
/// microseconds, and the dispatches one recording makes.
fn record_cost(ctx: &Context, work: &Workload) -> Result<(f64, u64)> {
    let mut times = Vec::with_capacity(RECORD_RUNS);
    let mut dispatches = 0;
    for _ in 0..RECORD_RUNS {
        let mut encoder =
            ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench record") });
        let before = wgpu_norm::recorded_dispatches();
        let start = Instant::now();
        work.record(&mut encoder)?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
        dispatches = wgpu_norm::recorded_dispatches() - before;
        drop(encoder);
    }
    Ok((median(&times), dispatches))
}

fn gbps(bytes: u64, ms: f64) -> f64 {
    bytes as f64 / (ms * 1e-3) / 1e9
}

/// Median of `v` (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// A compute pipeline for `entry` of `module`, its layout from the shader.
fn pipeline(device: &wgpu::Device, module: &wgpu::ShaderModule, entry: &str) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// A bind group for `pipeline`'s group 0 from `(binding, resource)` pairs.
fn bind(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    entries: &[(u32, wgpu::BindingResource<'_>)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
        .iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding: *binding, resource: resource.clone() })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// `32x64x56x56`.
pub fn shape_name(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_counts() {
        for (c, g) in [(64, 32), (2048, 32), (32, 32), (3, 3), (48, 24), (40, 20), (33, 11), (37, 1), (1, 1)] {
            assert_eq!(group_count(c), g, "{c} channels");
        }
    }

    #[test]
    fn every_op_is_available() {
        assert_eq!(all_ops().len(), OPS.len());
        for info in OPS {
            assert_eq!(parse_ops(info.name).unwrap(), vec![info.op.unwrap()]);
        }
        let limit = 1 << 20;
        let (nchw, nhwc) = (Layout::Nchw, Layout::Nhwc);
        assert!(Op::GnForward.unsupported(&[8, 4], nchw, limit).is_some());
        assert!(Op::InBackward.unsupported(&[8, 4, 2], nchw, limit).is_none());
        assert!(Op::LnForward.unsupported(&[8, 4], nchw, limit).is_none());
        // Above the binding limit every op runs in chunks, the family's of
        // whole samples, or groups channels-second; one row above it does not.
        assert!(Op::LnForward.unsupported(&[1024, 1024], nchw, limit).is_none());
        assert!(Op::LnForward.unsupported(&[4, 1 << 19], nchw, limit).is_some());
        assert!(Op::GnForward.unsupported(&[2, 4, 256, 512], nchw, limit).is_none());
        assert!(Op::GnForward.unsupported(&[2, 4, 256, 512], nhwc, limit).is_some());
        assert!(Op::InForward.unsupported(&[2, 4, 1024, 1024], nchw, limit).is_some());
        assert!(Op::BnTrainStep.unsupported(&[2, 4, 512, 512], nhwc, limit).is_none());
    }
}
