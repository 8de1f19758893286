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

use std::time::Instant;

use crate::batch_norm::{BatchNorm, BatchNormConfig, BatchNormState};
use crate::check::normalized_error;
use crate::context::{Access, Context, Reduction};
use crate::group_norm::{GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig};
use crate::kernels::{bind, KernelKey, Shader};
use crate::layer_norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use crate::layout::{ChannelView, Layout};
use crate::reference::{self, BatchNormArgs, Fused};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Worst normalized error `--verify` accepts.
pub const VERIFY_TOLERANCE: f64 = crate::check::DEFAULT_TOLERANCE;

/// An op the benchmark can run today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `BatchNorm::forward_eval` (running statistics).
    BnForwardEval,
    /// `BatchNorm::forward_train` (batch statistics, running update).
    BnForwardTrain,
    /// `BatchNorm::backward_train` after a training forward.
    BnBackwardTrain,
    /// `BatchNorm::backward_eval`.
    BnBackwardEval,
    /// `forward_train` then `backward_train`: one training step of the layer.
    BnTrainStep,
    /// `BatchNorm::forward_relu` in training mode.
    BnReluForwardTrain,
    /// `BatchNorm::forward_add_relu` in training mode (z is a second input).
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
}

/// Every op name of the benchmark's contract, in output order.
pub const OPS: &[OpInfo] = &[
    OpInfo { name: "bn_forward_eval", tensors: 2, op: Some(Op::BnForwardEval) },
    OpInfo { name: "bn_forward_train", tensors: 2, op: Some(Op::BnForwardTrain) },
    OpInfo { name: "bn_backward_train", tensors: 3, op: Some(Op::BnBackwardTrain) },
    OpInfo { name: "bn_backward_eval", tensors: 3, op: Some(Op::BnBackwardEval) },
    OpInfo { name: "bn_train_step", tensors: 5, op: Some(Op::BnTrainStep) },
    // Fused BatchNorm: x (+ z) in, y out.
    OpInfo { name: "bn_relu_forward_train", tensors: 2, op: Some(Op::BnReluForwardTrain) },
    OpInfo { name: "bn_add_relu_forward_train", tensors: 3, op: Some(Op::BnAddReluForwardTrain) },
    // The normalization family: forward x -> y, backward x, dy -> dx.
    OpInfo { name: "ln_forward", tensors: 2, op: Some(Op::LnForward) },
    OpInfo { name: "ln_backward", tensors: 3, op: Some(Op::LnBackward) },
    OpInfo { name: "rms_forward", tensors: 2, op: Some(Op::RmsForward) },
    OpInfo { name: "rms_backward", tensors: 3, op: Some(Op::RmsBackward) },
    OpInfo { name: "gn_forward", tensors: 2, op: Some(Op::GnForward) },
    OpInfo { name: "gn_backward", tensors: 3, op: Some(Op::GnBackward) },
    OpInfo { name: "in_forward", tensors: 2, op: Some(Op::InForward) },
    OpInfo { name: "in_backward", tensors: 3, op: Some(Op::InBackward) },
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

    /// Whether the op has a naive baseline (BatchNorm and its fused forms).
    pub fn has_naive(self) -> bool {
        self.kind() == Kind::Bn
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
    /// [`MIN_WARMUP_MS`]).
    pub min_warmup_ms: f64,
    /// Check each op against the f64 reference before timing it.
    pub verify: bool,
}

impl BenchConfig {
    /// Every op, the default shapes, both layouts, 7 runs after 2.
    pub fn default_run() -> BenchConfig {
        BenchConfig {
            ops: all_ops(),
            shapes: parse_shapes(DEFAULT_SHAPES).expect("default shapes parse"),
            layouts: vec![Layout::Nchw, Layout::Nhwc],
            iters: 7,
            warmup: 2,
            min_warmup_ms: MIN_WARMUP_MS,
            verify: false,
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
    /// Bytes the op must move at the least.
    pub bytes: u64,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Median wall clock around submit-and-wait (equal to `median_ms` with
    /// the wall-clock timer); the difference is submission overhead.
    pub wall_ms: f64,
    pub gbps: f64,
    /// Median of the copy kernel over `bytes` (half read, half written).
    pub copy_ms: f64,
    pub copy_gbps: f64,
    /// `gbps / copy_gbps`: the headline.
    pub ratio_to_copy: f64,
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
    /// How the ops' vec4 kernels moved f32 tensors (the copy ceiling's
    /// kernel always moves vec4s of f32).
    pub access: Access,
    pub iters: usize,
    pub warmup: usize,
    pub results: Vec<BenchResult>,
    pub skipped: Vec<Skipped>,
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

/// Runs `config`, calling `progress(done, total, what)` before each step.
pub fn run(ctx: &Context, config: &BenchConfig, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<Report> {
    let timer = if ctx.device().features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        Timer::GpuTimestamp
    } else {
        Timer::WallClock
    };
    let iters = config.iters.clamp(1, MAX_ITERS);
    let clock = Clock::new(ctx, timer, iters)?;
    let info = ctx.adapter_info();
    let mut report = Report {
        adapter: info.name.clone(),
        backend: info.backend.to_str().to_string(),
        timer,
        reduction: ctx.reduction(),
        access: ctx.access(),
        iters,
        warmup: config.warmup,
        results: Vec::new(),
        skipped: Vec::new(),
    };
    let max_binding = ctx.device().limits().max_storage_buffer_binding_size;
    let total = config.shapes.len() * config.layouts.len() * config.ops.len();
    let mut done = 0;
    for shape in &config.shapes {
        for &layout in &config.layouts {
            for &op in &config.ops {
                if op.ignores_layout() && layout != config.layouts[0] {
                    done += 1;
                    continue;
                }
                if let Some(reason) = op.unsupported(shape, layout, max_binding) {
                    report.skipped.push(Skipped { shape: shape.clone(), layout, op: Some(op.name()), reason });
                    done += 1;
                    continue;
                }
                progress(done, total, &format!("{} {} {}", op.name(), layout.name(), shape_name(shape)));
                done += 1;
                let work = Workload::new(ctx, op, shape, layout, 0x5eed ^ done as u64)?;
                let (max_error, naive_max_error) = if config.verify {
                    let (e, n) = work.verify()?;
                    (Some(e), n)
                } else {
                    (None, None)
                };
                let bytes = work.bytes();
                let copy = Copy::new(ctx, bytes)?;
                let (times, wall) = if work.has_naive() {
                    clock.measure(
                        ctx,
                        config.warmup,
                        config.min_warmup_ms,
                        iters,
                        &mut [&mut |e| work.record(e), &mut |e| copy.record(e), &mut |e| work.record_naive(e)],
                    )?
                } else {
                    clock.measure(
                        ctx,
                        config.warmup,
                        config.min_warmup_ms,
                        iters,
                        &mut [&mut |e| work.record(e), &mut |e| copy.record(e)],
                    )?
                };
                let (times, copy_ms, naive_ms) = (&times[0], median(&times[1]), times.get(2).map(|t| median(t)));
                let median_ms = median(times);
                let op_gbps = gbps(bytes, median_ms);
                let copy_gbps = gbps(bytes, copy_ms);
                report.results.push(BenchResult {
                    op: op.name(),
                    layout,
                    shape: shape.clone(),
                    bytes,
                    median_ms,
                    min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
                    wall_ms: median(&wall[0]),
                    gbps: op_gbps,
                    copy_ms,
                    copy_gbps,
                    ratio_to_copy: op_gbps / copy_gbps,
                    naive_ms,
                    speedup_vs_naive: naive_ms.map(|n| n / median_ms),
                    max_error,
                    naive_max_error,
                });
            }
        }
    }
    progress(total, total, "done");
    Ok(report)
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

/// `32x64x56x56`.
pub fn shape_name(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

// ---------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------

/// Times recorded work, with timestamp queries when the device has them.
struct Clock {
    /// Query set of `2 * iters` timestamps and the buffer they resolve into.
    queries: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    period_ns: f64,
}

impl Clock {
    fn new(ctx: &Context, timer: Timer, iters: usize) -> Result<Clock> {
        let queries = if timer == Timer::GpuTimestamp {
            let count = (2 * MEASURED * iters) as u32;
            Some(ctx.scoped(|| {
                let set = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                });
                let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bench timestamps resolved"),
                    size: u64::from(count) * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                Ok((set, buffer))
            })?)
        } else {
            None
        };
        Ok(Clock { queries, period_ns: f64::from(ctx.queue().get_timestamp_period()) })
    }

    /// Runs each of `records` `warmup` times (more while the warm-up is
    /// shorter than `min_warmup_ms`), then `iters` timed rounds in
    /// which each runs once in turn (interleaved, so that load from other
    /// processes falls on all of them alike). Each run is its own
    /// submission, waited for. A recorder whose last warm-up took over
    /// [`SLOW_RUN_MS`] runs in the first [`SLOW_ITERS`] rounds only (the
    /// naive baseline takes up to a second a run on a GPU). Returns the
    /// times in milliseconds, one vector per recorder, and the wall-clock
    /// times around submit-and-wait.
    fn measure(
        &self,
        ctx: &Context,
        warmup: usize,
        min_warmup_ms: f64,
        iters: usize,
        records: &mut [Recorder<'_>],
    ) -> Result<(Times, Times)> {
        let k = records.len();
        let mut slow = vec![false; k];
        let warming = Instant::now();
        let mut round = 0;
        while keep_warming(round, warmup, warming.elapsed().as_secs_f64() * 1e3, min_warmup_ms) {
            for (j, record) in records.iter_mut().enumerate() {
                let start = Instant::now();
                ctx.run(&mut **record)?;
                slow[j] = start.elapsed().as_secs_f64() * 1e3 > SLOW_RUN_MS;
            }
            round += 1;
        }
        let mut wall = vec![Vec::with_capacity(iters); k];
        // The recorder of each pair of timestamps, in the order written.
        let mut owners = Vec::with_capacity(iters * k);
        for i in 0..iters {
            for (j, record) in records.iter_mut().enumerate() {
                if slow[j] && i >= SLOW_ITERS {
                    continue;
                }
                let slot = 2 * owners.len() as u32;
                owners.push(j);
                let commands = ctx.scoped(|| {
                    let mut encoder = ctx
                        .device()
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench iteration") });
                    if let Some((set, _)) = &self.queries {
                        stamp(&mut encoder, set, Some(slot), None);
                    }
                    record(&mut encoder)?;
                    if let Some((set, _)) = &self.queries {
                        stamp(&mut encoder, set, None, Some(slot + 1));
                    }
                    Ok(encoder.finish())
                })?;
                let start = Instant::now();
                let index = ctx.queue().submit([commands]);
                ctx.wait(Some(index))?;
                wall[j].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let Some((set, buffer)) = &self.queries else {
            return Ok((wall.clone(), wall));
        };
        let count = 2 * owners.len();
        ctx.run(|encoder| {
            encoder.resolve_query_set(set, 0..count as u32, buffer, 0);
            Ok(())
        })?;
        let stamps: Vec<u64> = ctx.read(buffer, 0, count)?;
        let mut out = vec![Vec::with_capacity(iters); k];
        for (pair, &j) in stamps.chunks(2).zip(&owners) {
            out[j].push(pair[1].wrapping_sub(pair[0]) as f64 * self.period_ns * 1e-6);
        }
        Ok((out, wall))
    }
}

/// The default run's warm-up goes on past `--warmup` rounds (up to
/// [`MAX_WARMUP_ROUNDS`]) until it has run this long (ms): a GPU left idle while `--verify` ran the
/// f64 reference on the CPU comes back at low clocks, and two warm-up runs
/// of tens of microseconds did not bring it up. On an H100 and an H200,
/// `bn_forward_train` 8192x512 read 0.22–0.26 ms right after verification
/// (its copy and naive baseline 2–3x slow too) and 0.065 ms without it.
const MIN_WARMUP_MS: f64 = 200.0;
const MAX_WARMUP_ROUNDS: usize = 1000;

/// Whether warm-up round `round` (from 0) should run, `elapsed_ms` into it.
fn keep_warming(round: usize, warmup: usize, elapsed_ms: f64, min_ms: f64) -> bool {
    round < warmup || (warmup > 0 && round < MAX_WARMUP_ROUNDS && elapsed_ms < min_ms)
}

/// A run slower than this (ms, the last warm-up's wall clock) is timed in
/// only [`SLOW_ITERS`] rounds.
const SLOW_RUN_MS: f64 = 100.0;
const SLOW_ITERS: usize = 3;

/// Milliseconds, one vector per thing timed.
type Times = Vec<Vec<f64>>;

/// Records one run of something timed.
type Recorder<'a> = &'a mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>;

/// An empty compute pass that writes the given timestamps.
fn stamp(encoder: &mut wgpu::CommandEncoder, set: &wgpu::QuerySet, begin: Option<u32>, end: Option<u32>) {
    let pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("bench timestamp"),
        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: begin,
            end_of_pass_write_index: end,
        }),
    });
    drop(pass);
}

// ---------------------------------------------------------------------------
// The copy ceiling
// ---------------------------------------------------------------------------

/// `copy_vec4` from one buffer into another, `bytes / 2` each: it moves
/// `bytes` bytes. Buffers larger than one storage binding are copied in
/// windows, one dispatch each.
struct Copy {
    groups: Vec<(wgpu::BindGroup, u32)>,
    pipeline: std::sync::Arc<wgpu::ComputePipeline>,
}

impl Copy {
    fn new(ctx: &Context, bytes: u64) -> Result<Copy> {
        let half = (bytes / 2).max(16).div_ceil(16) * 16;
        let src = ctx.zeros("bench copy src", half)?;
        let dst = ctx.zeros("bench copy dst", half)?;
        let window = (ctx.device().limits().max_storage_buffer_binding_size / 256 * 256).max(256);
        ctx.scoped(|| {
            let pipeline = ctx.kernels().get(KernelKey::new(Shader::Bench, "copy_vec4"))?;
            let mut groups = Vec::new();
            let mut offset = 0;
            while offset < half {
                let size = window.min(half - offset);
                let binding = |b| {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset,
                        size: std::num::NonZeroU64::new(size),
                    })
                };
                let group = bind(ctx.device(), &pipeline, &[(6, binding(&src)), (7, binding(&dst))]);
                let vec4s = size / 16;
                groups.push((group, vec4s.div_ceil(256).clamp(1, 4096) as u32));
                offset += size;
            }
            Ok(Copy { groups, pipeline })
        })
    }

    fn record(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench copy"), timestamp_writes: None });
        pass.set_pipeline(&self.pipeline);
        for (group, workgroups) in &self.groups {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*workgroups, 1, 1);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Workloads: an op's layer, tensors and naive baseline
// ---------------------------------------------------------------------------

/// Mirror of `struct BenchParams` in shaders/bench.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BenchParams {
    outer: u32,
    channels: u32,
    inner: u32,
    total: u32,
    count: f32,
    eps: f32,
    mode: u32,
    _pad: u32,
}

const EPS: f32 = 1e-5;
const MOMENTUM: f32 = 0.1;

/// Deterministic pseudo-random numbers (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// The family layer of a family op.
enum FamilyLayer {
    Ln(LayerNorm),
    Rms(RmsNorm),
    Gn(GroupNorm),
    In(InstanceNorm),
}

/// One op on one shape and layout, with its tensors on the GPU, ready to be
/// recorded again and again; also its naive baseline and its verification.
///
/// A BatchNorm layer is made for every op (its random state also gives
/// GroupNorm its weight and bias); family ops add their own layer. The
/// residual input z of `bn_add_relu_forward_train` is the `dy` tensor, which
/// no forward reads otherwise.
pub struct Workload {
    ctx: Context,
    op: Op,
    shape: Vec<usize>,
    /// The layout the tensors are in (`Nchw` for LayerNorm and RMSNorm).
    layout: Layout,
    view: ChannelView,
    bn: BatchNorm,
    state: BatchNormState,
    family: Option<FamilyLayer>,
    /// LayerNorm / RMSNorm weight and bias over the last dimension.
    row_weight: Vec<f32>,
    row_bias: Vec<f32>,
    x_host: Vec<f32>,
    dy_host: Vec<f32>,
    x: Tensor,
    y: Tensor,
    dy: Tensor,
    dx: Tensor,
    naive: Option<Naive>,
}

impl Workload {
    /// Uploads random inputs (seeded by `seed`) and a layer with random
    /// parameters and running statistics. LayerNorm and RMSNorm normalize
    /// over the last dimension and read the tensor row-major: `layout` is
    /// ignored for them. `Err(Parameter)` where [`Op::unsupported`] says so.
    pub fn new(ctx: &Context, op: Op, shape: &[usize], layout: Layout, seed: u64) -> Result<Workload> {
        if let Some(reason) = op.unsupported(shape, layout, ctx.device().limits().max_storage_buffer_binding_size) {
            return Err(Error::Parameter(reason));
        }
        let layout = if op.ignores_layout() { Layout::Nchw } else { layout };
        let view = crate::tensor::check_shape(shape, layout, shape.get(1).copied().unwrap_or(0))?;
        let c = view.channels;
        let mut rng = Rng(seed);
        let offsets = rng.vec(c, -2.0, 2.0);
        let x_host: Vec<f32> = (0..view.len()).map(|i| offsets[view.channel_of(i)] + rng.uniform(-1.5, 1.5)).collect();
        let dy_host = rng.vec(view.len(), -1.0, 1.0);
        let state = BatchNormState {
            weight: rng.vec(c, 0.5, 1.5),
            bias: rng.vec(c, -0.5, 0.5),
            running_mean: offsets.iter().map(|o| o + 0.1).collect(),
            running_var: rng.vec(c, 0.5, 1.5),
            num_batches_tracked: 0,
        };
        let cols = *shape.last().unwrap_or(&1);
        let row_weight = rng.vec(cols, 0.5, 1.5);
        let row_bias = rng.vec(cols, -0.5, 0.5);
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(c).eps(EPS).momentum(Some(MOMENTUM)))?;
        bn.write_state(&state)?;
        let family = match op.kind() {
            Kind::Bn => None,
            Kind::Ln => {
                let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[cols]).eps(EPS))?;
                ln.write_weight(&row_weight)?;
                ln.write_bias(&row_bias)?;
                Some(FamilyLayer::Ln(ln))
            }
            Kind::Rms => {
                // PyTorch's default eps (None: f32::EPSILON).
                let rms = RmsNorm::new(ctx, RmsNormConfig::new(&[cols]))?;
                rms.write_weight(&row_weight)?;
                Some(FamilyLayer::Rms(rms))
            }
            Kind::Gn => {
                let gn = GroupNorm::new(ctx, GroupNormConfig::new(group_count(c), c).eps(EPS))?;
                gn.write_weight(&state.weight)?;
                gn.write_bias(&state.bias)?;
                Some(FamilyLayer::Gn(gn))
            }
            // PyTorch's defaults: affine = false, track_running_stats = false.
            Kind::In => Some(FamilyLayer::In(InstanceNorm::new(ctx, InstanceNormConfig::new(c).eps(EPS))?)),
        };
        let x = Tensor::from_slice(ctx, &x_host, shape, layout)?;
        let y = Tensor::zeros(ctx, shape, layout)?;
        let dy = Tensor::from_slice(ctx, &dy_host, shape, layout)?;
        let dx = Tensor::zeros(ctx, shape, layout)?;
        // The naive kernels bind whole tensors: none above the binding limit.
        let fits = view.len() as u64 * 4 <= ctx.device().limits().max_storage_buffer_binding_size;
        let naive = if op.has_naive() && fits { Some(Naive::new(ctx, view, &state, &x, &y, &dy, &dx)?) } else { None };
        let work = Workload {
            ctx: ctx.clone(),
            op,
            shape: shape.to_vec(),
            layout,
            view,
            bn,
            state,
            family,
            row_weight,
            row_bias,
            x_host,
            dy_host,
            x,
            y,
            dy,
            dx,
            naive,
        };
        if op == Op::BnBackwardTrain {
            // Backward uses the statistics of the forward before it.
            ctx.run(|e| work.bn.forward_train(e, &work.x.view(), &work.y.view()))?;
            if let Some(naive) = &work.naive {
                ctx.run(|e| naive.stats(e))?;
            }
        }
        if op.family_backward() {
            ctx.run(|e| work.family_forward(e))?;
        }
        Ok(work)
    }

    /// The op.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Bytes the op must move at the least.
    pub fn bytes(&self) -> u64 {
        self.op.bytes(self.view.len())
    }

    fn family_forward(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let (x, y) = (self.x.view(), self.y.view());
        match &self.family {
            Some(FamilyLayer::Ln(l)) => l.forward(encoder, &x, &y),
            Some(FamilyLayer::Rms(l)) => l.forward(encoder, &x, &y),
            Some(FamilyLayer::Gn(l)) => l.forward(encoder, &x, &y),
            Some(FamilyLayer::In(l)) => l.forward(encoder, &x, &y, true),
            None => Err(Error::Parameter(format!("{} is not a family op", self.op.name()))),
        }
    }

    fn family_backward(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let (x, dy, dx) = (self.x.view(), self.dy.view(), self.dx.view());
        match &self.family {
            Some(FamilyLayer::Ln(l)) => l.backward(encoder, &x, &dy, &dx),
            Some(FamilyLayer::Rms(l)) => l.backward(encoder, &x, &dy, &dx),
            Some(FamilyLayer::Gn(l)) => l.backward(encoder, &x, &dy, &dx),
            Some(FamilyLayer::In(l)) => l.backward(encoder, &x, &dy, &dx, true),
            None => Err(Error::Parameter(format!("{} is not a family op", self.op.name()))),
        }
    }

    /// Records the op once.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let (x, y, dy, dx) = (self.x.view(), self.y.view(), self.dy.view(), self.dx.view());
        match self.op {
            Op::BnForwardEval => self.bn.forward_eval(encoder, &x, &y),
            Op::BnForwardTrain => self.bn.forward_train(encoder, &x, &y),
            Op::BnBackwardTrain => self.bn.backward_train(encoder, &x, &dy, &dx),
            Op::BnBackwardEval => self.bn.backward_eval(encoder, &x, &dy, &dx),
            Op::BnTrainStep => {
                self.bn.forward_train(encoder, &x, &y)?;
                self.bn.backward_train(encoder, &x, &dy, &dx)
            }
            Op::BnReluForwardTrain => self.bn.forward_relu(encoder, &x, &y, true),
            Op::BnAddReluForwardTrain => self.bn.forward_add_relu(encoder, &x, &dy, &y, true),
            Op::LnForward | Op::RmsForward | Op::GnForward | Op::InForward => self.family_forward(encoder),
            Op::LnBackward | Op::RmsBackward | Op::GnBackward | Op::InBackward => self.family_backward(encoder),
        }
    }

    /// Whether this workload has a naive baseline to time.
    pub fn has_naive(&self) -> bool {
        self.naive.is_some()
    }

    /// Records the naive baseline of the op once; nothing for the ops
    /// without one (see [`Op::has_naive`]).
    pub fn record_naive(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let Some(n) = &self.naive else {
            return Ok(());
        };
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench naive"), timestamp_writes: None });
        match self.op {
            Op::BnForwardEval => n.normalize(&mut pass),
            Op::BnForwardTrain => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
            }
            Op::BnBackwardTrain => n.backward(&mut pass, false),
            Op::BnBackwardEval => n.backward(&mut pass, true),
            Op::BnTrainStep => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
                n.backward(&mut pass, false);
            }
            Op::BnReluForwardTrain => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
                n.relu(&mut pass, false);
            }
            Op::BnAddReluForwardTrain => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
                n.relu(&mut pass, true);
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the op once from the layer's initial random state and compares
    /// every output with the f64 reference (y and running statistics of a
    /// forward; dx, dweight, dbias of a backward); then the naive baseline's
    /// main output (y or dx). Returns (op's worst error, naive's worst
    /// error, `None` without a naive baseline).
    pub fn verify(&self) -> Result<(f64, Option<f64>)> {
        if self.op.kind() != Kind::Bn {
            return self.verify_family().map(|e| (e, None));
        }
        let ctx = &self.ctx;
        self.bn.write_state(&self.state)?;
        let fused = match self.op {
            Op::BnReluForwardTrain => Fused::Relu,
            Op::BnAddReluForwardTrain => Fused::AddRelu,
            _ => Fused::None,
        };
        let z = (fused == Fused::AddRelu).then_some(self.dy_host.as_slice());
        let training = matches!(
            self.op,
            Op::BnForwardTrain
                | Op::BnBackwardTrain
                | Op::BnTrainStep
                | Op::BnReluForwardTrain
                | Op::BnAddReluForwardTrain
        );
        let args = BatchNormArgs {
            shape: &self.shape,
            layout: self.layout,
            weight: Some(&self.state.weight),
            bias: Some(&self.state.bias),
            running_mean: Some(&self.state.running_mean),
            running_var: Some(&self.state.running_var),
            training,
            momentum: Some(f64::from(MOMENTUM)),
            num_batches_tracked: 0,
            eps: f64::from(EPS),
            fused,
        };
        let forward = matches!(
            self.op,
            Op::BnForwardEval
                | Op::BnForwardTrain
                | Op::BnTrainStep
                | Op::BnReluForwardTrain
                | Op::BnAddReluForwardTrain
        );
        let backward = matches!(self.op, Op::BnBackwardTrain | Op::BnBackwardEval | Op::BnTrainStep);
        let (x, y, dy, dx) = (self.x.view(), self.y.view(), self.dy.view(), self.dx.view());
        let mut worst = 0.0f64;
        let mut take = |e: f64| worst = if e > worst || e.is_nan() { e } else { worst };
        let fwd_ref = reference::batch_norm_forward(&args, &self.x_host, z);
        match self.op {
            Op::BnReluForwardTrain => ctx.run(|e| self.bn.forward_relu(e, &x, &y, true))?,
            Op::BnAddReluForwardTrain => ctx.run(|e| self.bn.forward_add_relu(e, &x, &dy, &y, true))?,
            _ if training => ctx.run(|e| self.bn.forward_train(e, &x, &y))?,
            _ if forward => ctx.run(|e| self.bn.forward_eval(e, &x, &y))?,
            _ => {}
        }
        if forward {
            take(normalized_error(&self.y.read(ctx)?, &fwd_ref.y));
        }
        if training {
            let state = self.bn.read_state()?;
            take(normalized_error(&state.running_mean, fwd_ref.running_mean.as_deref().unwrap_or(&[])));
            take(normalized_error(&state.running_var, fwd_ref.running_var.as_deref().unwrap_or(&[])));
        }
        let bwd_ref = backward.then(|| reference::batch_norm_backward(&args, &self.x_host, None, &self.dy_host));
        if let Some(want) = &bwd_ref {
            ctx.run(|e| {
                if training {
                    self.bn.backward_train(e, &x, &dy, &dx)
                } else {
                    self.bn.backward_eval(e, &x, &dy, &dx)
                }
            })?;
            take(normalized_error(&self.dx.read(ctx)?, &want.dx));
            let (dweight, dbias) = self.bn.read_grads()?;
            take(normalized_error(&dweight, &want.dweight));
            take(normalized_error(&dbias, &want.dbias));
        }
        // The naive baseline, from the same inputs (none above the binding limit).
        let naive_error = match &self.naive {
            Some(naive) => {
                naive.reset(ctx, &self.state)?;
                if self.op == Op::BnBackwardTrain {
                    ctx.run(|e| naive.stats(e))?;
                }
                ctx.run(|e| self.record_naive(e))?;
                Some(match &bwd_ref {
                    Some(want) => normalized_error(&self.dx.read(ctx)?, &want.dx),
                    None => normalized_error(&self.y.read(ctx)?, &fwd_ref.y),
                })
            }
            None => None,
        };
        // Leave the layer as timing expects it.
        self.bn.write_state(&self.state)?;
        if self.op == Op::BnBackwardTrain {
            ctx.run(|e| self.bn.forward_train(e, &x, &y))?;
        }
        Ok((worst, naive_error))
    }

    /// [`Self::verify`] of a family op: y of a forward; dx, dweight and dbias
    /// (dweight alone for RMSNorm, which has no bias) of a backward. The
    /// forward runs before a backward either way, which leaves the layer's
    /// saved statistics as timing expects them.
    fn verify_family(&self) -> Result<f64> {
        let ctx = &self.ctx;
        let cols = [*self.shape.last().unwrap_or(&1)];
        let eps = f64::from(EPS);
        // (y, dx, dweight, dbias) of the reference.
        let (y, dx, dweight, dbias) = match self.op.kind() {
            Kind::Ln => {
                let args = reference::LayerNormArgs {
                    shape: &self.shape,
                    normalized_shape: &cols,
                    weight: Some(&self.row_weight),
                    bias: Some(&self.row_bias),
                    eps,
                };
                let f = reference::layer_norm_forward(&args, &self.x_host);
                let b = reference::layer_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, Some(b.dbias))
            }
            Kind::Rms => {
                let args = reference::RmsNormArgs {
                    shape: &self.shape,
                    normalized_shape: &cols,
                    weight: Some(&self.row_weight),
                    eps: None,
                };
                let f = reference::rms_norm_forward(&args, &self.x_host);
                let b = reference::rms_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, None)
            }
            Kind::Gn => {
                let args = reference::GroupNormArgs {
                    shape: &self.shape,
                    layout: self.layout,
                    num_groups: group_count(self.view.channels),
                    weight: Some(&self.state.weight),
                    bias: Some(&self.state.bias),
                    eps,
                };
                let f = reference::group_norm_forward(&args, &self.x_host);
                let b = reference::group_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, Some(b.dbias))
            }
            Kind::In => {
                let args = reference::InstanceNormArgs {
                    shape: &self.shape,
                    layout: self.layout,
                    weight: None,
                    bias: None,
                    running_mean: None,
                    running_var: None,
                    use_input_stats: true,
                    momentum: f64::from(MOMENTUM),
                    eps,
                };
                let f = reference::instance_norm_forward(&args, &self.x_host);
                let b = reference::instance_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, Some(b.dbias))
            }
            Kind::Bn => return Err(Error::Parameter(format!("{} is not a family op", self.op.name()))),
        };
        ctx.run(|e| self.family_forward(e))?;
        if !self.op.family_backward() {
            return Ok(normalized_error(&self.y.read(ctx)?, &y));
        }
        ctx.run(|e| self.family_backward(e))?;
        let (got_dweight, got_dbias) = match &self.family {
            Some(FamilyLayer::Ln(l)) => l.read_grads()?,
            Some(FamilyLayer::Rms(l)) => (l.read_grad_weight()?, Vec::new()),
            Some(FamilyLayer::Gn(l)) => l.read_grads()?,
            Some(FamilyLayer::In(l)) => l.read_grads()?,
            None => unreachable!("family ops have a family layer"),
        };
        let mut worst = normalized_error(&self.dx.read(ctx)?, &dx);
        for e in
            [normalized_error(&got_dweight, &dweight), dbias.map_or(0.0, |want| normalized_error(&got_dbias, &want))]
        {
            if e > worst || e.is_nan() {
                worst = e;
            }
        }
        Ok(worst)
    }
}

/// The naive BatchNorm's pipelines and bind groups for one workload.
struct Naive {
    view: ChannelView,
    chan: wgpu::Buffer,
    mean: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
    var: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
    normalize: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
    sums: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
    dx_train: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
    dx_eval: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
    /// `y = relu(y)` in place, and `y = relu(y + z)` with z in `dy`.
    relu: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
    add_relu: (std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
}

impl Naive {
    fn new(
        ctx: &Context,
        view: ChannelView,
        state: &BatchNormState,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<Naive> {
        let c = view.channels;
        let chan = ctx.zeros("bench naive chan", c as u64 * 16)?;
        let grad = ctx.zeros("bench naive grad", c as u64 * 8)?;
        let params = |mode| BenchParams {
            outer: view.outer as u32,
            channels: c as u32,
            inner: view.inner as u32,
            total: view.len() as u32,
            count: view.per_channel() as f32,
            eps: EPS,
            mode,
            _pad: 0,
        };
        let naive = ctx.scoped(|| {
            let device = ctx.device();
            let train = crate::context::create_init(
                device,
                "bench naive params",
                bytemuck::bytes_of(&params(0)),
                wgpu::BufferUsages::UNIFORM,
            )?;
            let eval = crate::context::create_init(
                device,
                "bench naive params",
                bytemuck::bytes_of(&params(1)),
                wgpu::BufferUsages::UNIFORM,
            )?;
            let kernel = |entry: &'static str, params: &wgpu::Buffer, bindings: &[u32]| {
                let pipeline = ctx.kernels().get(KernelKey::new(Shader::Bench, entry))?;
                let entries: Vec<(u32, wgpu::BindingResource<'_>)> = bindings
                    .iter()
                    .map(|&b| {
                        let buffer = match b {
                            0 => params,
                            1 => &x.buffer,
                            2 => &dy.buffer,
                            4 => &chan,
                            5 => &grad,
                            _ => unreachable!(),
                        };
                        (b, buffer.as_entire_binding())
                    })
                    .collect();
                let group = bind(device, &pipeline, &entries);
                Result::Ok((pipeline, group))
            };
            let with_out = |entry: &'static str, params: &wgpu::Buffer, out: &Tensor, bindings: &[u32]| {
                let pipeline = ctx.kernels().get(KernelKey::new(Shader::Bench, entry))?;
                let mut entries: Vec<(u32, wgpu::BindingResource<'_>)> = vec![(3, out.buffer.as_entire_binding())];
                for &b in bindings {
                    let buffer = match b {
                        0 => params,
                        1 => &x.buffer,
                        2 => &dy.buffer,
                        4 => &chan,
                        5 => &grad,
                        _ => unreachable!(),
                    };
                    entries.push((b, buffer.as_entire_binding()));
                }
                let group = bind(device, &pipeline, &entries);
                Result::Ok((pipeline, group))
            };
            Ok(Naive {
                view,
                mean: kernel("naive_mean", &train, &[0, 1, 4])?,
                var: kernel("naive_var", &train, &[0, 1, 4])?,
                normalize: with_out("naive_normalize", &train, y, &[0, 1, 4])?,
                sums: kernel("naive_bwd_sums", &train, &[0, 1, 2, 4, 5])?,
                dx_train: with_out("naive_bwd_dx", &train, dx, &[0, 1, 2, 4, 5])?,
                dx_eval: with_out("naive_bwd_dx", &eval, dx, &[0, 1, 2, 4, 5])?,
                relu: with_out("naive_relu", &train, y, &[0])?,
                add_relu: with_out("naive_add_relu", &train, y, &[0, 2])?,
                chan: chan.clone(),
            })
        })?;
        naive.reset(ctx, state)?;
        Ok(naive)
    }

    /// Per-channel (running mean, running var, gamma, beta).
    fn reset(&self, ctx: &Context, state: &BatchNormState) -> Result<()> {
        let chan: Vec<[f32; 4]> = (0..self.view.channels)
            .map(|c| [state.running_mean[c], state.running_var[c], state.weight[c], state.bias[c]])
            .collect();
        ctx.write(&self.chan, 0, &chan)?;
        Ok(())
    }

    fn per_channel(&self) -> (u32, u32) {
        (self.view.channels.div_ceil(64) as u32, 1)
    }

    fn elementwise(&self) -> (u32, u32) {
        let groups = self.view.len().div_ceil(256).max(1);
        let x = groups.min(65535);
        (x as u32, groups.div_ceil(x) as u32)
    }

    fn go(
        pass: &mut wgpu::ComputePass<'_>,
        k: &(std::sync::Arc<wgpu::ComputePipeline>, wgpu::BindGroup),
        g: (u32, u32),
    ) {
        crate::kernels::dispatch(pass, &k.0, &k.1, g);
    }

    /// Batch mean, then batch variance, into `chan`.
    fn stats(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        self.mean_var(&mut pass);
        Ok(())
    }

    fn mean_var(&self, pass: &mut wgpu::ComputePass<'_>) {
        Self::go(pass, &self.mean, self.per_channel());
        Self::go(pass, &self.var, self.per_channel());
    }

    fn normalize(&self, pass: &mut wgpu::ComputePass<'_>) {
        Self::go(pass, &self.normalize, self.elementwise());
    }

    /// The separate elementwise pass after `normalize` of the fused forwards.
    fn relu(&self, pass: &mut wgpu::ComputePass<'_>, add: bool) {
        Self::go(pass, if add { &self.add_relu } else { &self.relu }, self.elementwise());
    }

    fn backward(&self, pass: &mut wgpu::ComputePass<'_>, eval: bool) {
        Self::go(pass, &self.sums, self.per_channel());
        Self::go(pass, if eval { &self.dx_eval } else { &self.dx_train }, self.elementwise());
    }
}

// ---------------------------------------------------------------------------
// Output: table and chart
// ---------------------------------------------------------------------------

/// The name `--reduction` takes and the output shows.
pub fn reduction_name(reduction: Reduction) -> &'static str {
    match reduction {
        Reduction::Tree => "tree",
        Reduction::PerInvocation => "per-invocation",
    }
}

/// Parses `--reduction`: `tree` or `per-invocation`.
pub fn parse_reduction(s: &str) -> Result<Reduction> {
    match s {
        "tree" => Ok(Reduction::Tree),
        "per-invocation" => Ok(Reduction::PerInvocation),
        _ => Err(Error::Parameter(format!("--reduction {s}: expected tree or per-invocation"))),
    }
}

/// The name `--access` takes and the output shows.
pub fn access_name(access: Access) -> &'static str {
    match access {
        Access::Floats => "floats",
        Access::Words64 => "words64",
    }
}

/// Parses `--access`: `floats` or `words64`.
pub fn parse_access(s: &str) -> Result<Access> {
    match s {
        "floats" => Ok(Access::Floats),
        "words64" => Ok(Access::Words64),
        _ => Err(Error::Parameter(format!("--access {s}: expected floats or words64"))),
    }
}

/// The human-readable table.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "adapter: {} ({}), timer: {}, reduction: {}, access: {}, median of {} runs after {} warm-up ({} of runs over {} ms)\n",
        report.adapter,
        report.backend,
        report.timer.name(),
        reduction_name(report.reduction),
        access_name(report.access),
        report.iters,
        report.warmup,
        SLOW_ITERS.min(report.iters),
        SLOW_RUN_MS
    );
    let verify = report.results.iter().any(|r| r.max_error.is_some());
    out += &format!(
        "{:<25} {:<6} {:<14} {:>10} {:>8} {:>8} {:>6} {:>10} {:>8}",
        "op", "layout", "shape", "median_ms", "GB/s", "copyGB/s", "ratio", "naive_ms", "speedup"
    );
    if verify {
        out += &format!(" {:>9}", "max_err");
    }
    out.push('\n');
    for r in &report.results {
        out += &format!(
            "{:<25} {:<6} {:<14} {:>10.3} {:>8.2} {:>8.2} {:>6.2} {:>10} {:>8}",
            r.op,
            r.layout.name(),
            shape_name(&r.shape),
            r.median_ms,
            r.gbps,
            r.copy_gbps,
            r.ratio_to_copy,
            r.naive_ms.map_or("-".to_string(), |n| format!("{n:.3}")),
            r.speedup_vs_naive.map_or("-".to_string(), |s| format!("{s:.2}x")),
        );
        if let Some(e) = r.max_error {
            out += &format!(" {e:>9.2e}");
        }
        out.push('\n');
    }
    for s in &report.skipped {
        out += &format!("skipped {} {}: {}\n", shape_name(&s.shape), s.layout.name(), s.reason);
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG chart: one bar per result (its GB/s), a red tick at the copy
/// kernel's GB/s over the same bytes, and the ratio at the bar's end.
pub fn svg(report: &Report) -> String {
    let rows = report.results.len().max(1);
    let (label_w, bar_w, row_h, top) = (330.0, 560.0, 22.0, 56.0);
    let width = label_w + bar_w + 190.0;
    let height = top + rows as f64 * row_h + 30.0;
    let max = report.results.iter().map(|r| r.gbps.max(r.copy_gbps)).filter(|v| v.is_finite()).fold(1e-9, f64::max);
    let scale = bar_w / (max * 1.05);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"monospace\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">wgpu-norm bench: {} ({}), {}</text>\n\
         <text x=\"10\" y=\"40\">bar: op GB/s; red tick: copy kernel GB/s over the same bytes; label: ratio</text>\n",
        xml_escape(&report.adapter),
        xml_escape(&report.backend),
        report.timer.name()
    );
    for (i, r) in report.results.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let colour = match r.op {
            op if op.contains("backward") => "#4c78a8",
            op if op.contains("step") => "#54a24b",
            _ => "#f58518",
        };
        let bar = (r.gbps * scale).max(0.0);
        let tick = label_w + r.copy_gbps * scale;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} {} {}</text>\n\
             <rect x=\"{label_w}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\n\
             <line x1=\"{tick:.1}\" y1=\"{:.1}\" x2=\"{tick:.1}\" y2=\"{:.1}\" stroke=\"red\" stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{:.2} GB/s ({:.2}x)</text>\n",
            label_w - 6.0,
            y + 15.0,
            r.op,
            r.layout.name(),
            shape_name(&r.shape),
            y + 3.0,
            row_h - 6.0,
            y + 1.0,
            y + row_h - 1.0,
            label_w + bar.max(r.copy_gbps * scale) + 6.0,
            y + 15.0,
            r.gbps,
            r.ratio_to_copy,
        );
    }
    let axis_y = top + rows as f64 * row_h + 4.0;
    s += &format!(
        "<line x1=\"{label_w}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"black\"/>\n\
         <text x=\"{label_w}\" y=\"{:.1}\">0</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.2} GB/s</text>\n",
        label_w + bar_w,
        axis_y + 16.0,
        label_w + max * scale,
        axis_y + 16.0,
        max
    );
    s += "</svg>\n";
    s
}

/// The machine-readable report (the `--json` contract).
#[cfg(feature = "cli")]
pub fn to_json(report: &Report) -> serde_json::Value {
    use serde_json::json;
    let num = |v: f64| if v.is_finite() { json!(v) } else { serde_json::Value::Null };
    let results: Vec<serde_json::Value> = report
        .results
        .iter()
        .map(|r| {
            let mut o = json!({
                "op": r.op,
                "layout": r.layout.name(),
                "shape": r.shape,
                "bytes": r.bytes,
                "median_ms": num(r.median_ms),
                "min_ms": num(r.min_ms),
                "wall_ms": num(r.wall_ms),
                "gbps": num(r.gbps),
                "copy_ms": num(r.copy_ms),
                "copy_gbps": num(r.copy_gbps),
                "ratio_to_copy": num(r.ratio_to_copy),
            });
            if let (Some(n), Some(s)) = (r.naive_ms, r.speedup_vs_naive) {
                o["naive_ms"] = num(n);
                o["speedup_vs_naive"] = num(s);
            }
            if let Some(e) = r.max_error {
                o["max_error"] = num(e);
            }
            if let Some(e) = r.naive_max_error {
                o["naive_max_error"] = num(e);
            }
            o
        })
        .collect();
    let skipped: Vec<serde_json::Value> = report
        .skipped
        .iter()
        .map(|s| {
            let mut o = json!({ "shape": s.shape, "layout": s.layout.name(), "reason": s.reason });
            if let Some(op) = s.op {
                o["op"] = json!(op);
            }
            o
        })
        .collect();
    let mut out = json!({
        "adapter": report.adapter,
        "backend": report.backend,
        "timer": report.timer.name(),
        "reduction": reduction_name(report.reduction),
        "access": access_name(report.access),
        "iters": report.iters,
        "warmup": report.warmup,
        "results": results,
        "skipped": skipped,
    });
    if let Some(worst) = report.worst_error() {
        out["worst_error"] = num(worst);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_runs_its_rounds_then_until_its_time() {
        // The rounds asked for, however long they take.
        assert!(keep_warming(1, 2, 1e6, 200.0));
        assert!(!keep_warming(2, 2, 1e6, 200.0));
        // Then more while short of the time, up to the cap.
        assert!(keep_warming(2, 2, 10.0, 200.0));
        assert!(!keep_warming(MAX_WARMUP_ROUNDS, 2, 10.0, 200.0));
        // No time floor without one, nor when no warm-up was asked for.
        assert!(!keep_warming(2, 2, 10.0, 0.0));
        assert!(!keep_warming(0, 0, 0.0, 200.0));
    }

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
