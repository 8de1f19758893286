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
mod ops;
mod output;
mod workload;

use std::time::Instant;

use ceiling::Ceiling;
pub use ceiling::{host_memcpy_gbps, CopyKernel, Walk};
use clock::Clock;
pub use model::{Model, ModelSummary};
use ops::Kind;
pub use ops::{
    all_ops, available_ops, default_ops, group_count, parse_layouts, parse_ops, parse_shapes, Op, OpInfo, OPS,
};
pub use output::to_json;
pub use output::{access_name, on_off, parse_access, parse_on_off, parse_reduction, reduction_name, svg, table};
use wgpu_norm::{Access, Context, Layout, Reduction, Result};
pub use workload::Workload;

/// Worst normalized error `--verify` accepts.
pub const VERIFY_TOLERANCE: f64 = wgpu_norm_reference::DEFAULT_TOLERANCE;

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
    /// The copy kernels that compete for the ceiling, by name (`None`:
    /// all of them). One name pins the ceiling to that copy, to compare
    /// with reports measured against it.
    pub copy_kernels: Option<Vec<String>>,
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
            copy_kernels: None,
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
    /// nothing submitted), in microseconds: a call that repeats an earlier
    /// one's buffers, whose wgpu objects its layer kept.
    pub record_us: f64,
    /// The same with the plan cache off: what a call with buffers its
    /// layer has not kept costs.
    pub record_fresh_us: f64,
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
    /// Whether reductions' last workgroups merged where an op allows.
    pub last_merge: bool,
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
    let mut copies = Ceiling::new(ctx, config.copy_kernels.as_deref())?;
    let info = ctx.adapter_info();
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let mut report = Report {
        adapter: info.name.clone(),
        backend: info.backend.to_str().to_string(),
        timer,
        reduction: ctx.reduction(),
        access: ctx.access(),
        last_merge: ctx.last_workgroup_merges(),
        iters,
        warmup: config.warmup,
        copy_kernels: copies.kernels().iter().map(|k| k.name()).collect(),
        host_memcpy_gbps: cpu.then(host_memcpy_gbps),
        results: Vec::new(),
        skipped: Vec::new(),
        model: None,
    };
    let limits = ctx.device().limits();
    let jobs = config.jobs();
    let total = jobs.len();
    for (done, job) in jobs.into_iter().enumerate() {
        let Job { op, shape, layout, layer } = job;
        if let Some(reason) = op.unsupported(&shape, layout, &limits) {
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
        ctx.set_plan_cache(false);
        let fresh = record_cost(ctx, &work);
        ctx.set_plan_cache(true);
        let record_fresh_us = fresh?.0;
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
            record_fresh_us,
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
