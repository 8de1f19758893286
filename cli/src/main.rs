//! The `wgpu-norm` command: `info`, `check` and `bench` (their engines are
//! [`wgpu_norm_reference::check`] and [`wgpu_norm_cli::bench`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use wgpu_norm::Context;
use wgpu_norm_cli::bench::{self, BenchConfig};
use wgpu_norm_reference::check::{self, CaseReport, Outcome};
use wgpu_norm_reference::golden::collect_case_files;

/// `print!` that ends the program quietly when stdout is a closed pipe
/// (`wgpu-norm info | head -n 2`), as Unix tools do, instead of panicking
/// like `print!`; any other write error ends it with a message.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))
    };
}

/// `println!` through [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        out!("{}\n", format_args!($($arg)*))
    };
}

fn write_stdout(text: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("wgpu-norm: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

#[derive(Parser)]
#[command(name = "wgpu-norm", version, about = "Batch normalization and its family on any GPU through wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the adapter, backend, driver, and the features and limits in use.
    Info {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run reference cases (safetensors files or folders of them) on the GPU
    /// and compare every expected tensor.
    Check {
        /// Case files and folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A tensor passes when max|got - want| <= tol * max(1, max|want|).
        #[arg(long, default_value_t = check::DEFAULT_TOLERANCE)]
        tol: f64,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time every op over shapes from real networks, next to the fastest of
    /// several copy kernels over the same bytes (the ceiling) and a naive
    /// BatchNorm (the baseline), with each op's host recording cost and
    /// dispatch count.
    Bench(Box<BenchArgs>),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Ops to run, comma-separated, or `all` (default: every op but the
    /// fused eval forwards and fused training steps that --model resnet50 runs).
    #[arg(long)]
    ops: Option<String>,
    /// Shapes in logical order (N, C, spatial...), separated by ';',
    /// e.g. "32,64,56,56;8192,512".
    #[arg(long)]
    shapes: Option<String>,
    /// Run a network's normalization layers at their real shapes instead of
    /// --ops over --shapes: `resnet50` (torchvision's 53 BatchNorm layers at
    /// 224x224, fused where it applies ReLU or adds the residual; a training
    /// step and an eval forward each) or `transformer` (LayerNorm and RMSNorm
    /// forward and backward over [tokens, 768 | 1024 | 4096]).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["ops", "shapes"])]
    model: Option<String>,
    /// Batch size of --model resnet50 (default 32).
    #[arg(long, requires = "model")]
    batch: Option<usize>,
    /// Tokens of --model transformer (default 8192).
    #[arg(long, requires = "model")]
    tokens: Option<usize>,
    /// Copy kernels that compete for the ceiling, comma-separated (default:
    /// all; `copy_kernels` in the JSON lists them). One name pins the
    /// ceiling, e.g. grid-stride-vec4-wg256, the ceiling of reports before
    /// 0.2.0.
    #[arg(long, value_name = "NAMES")]
    copy_kernels: Option<String>,
    /// Memory orders, comma-separated: nchw, nhwc.
    #[arg(long, default_value = "nchw,nhwc")]
    layouts: String,
    /// Timed runs per measurement; the median is reported (default 7, 3 with --quick).
    #[arg(long)]
    iters: Option<usize>,
    /// Untimed runs before the timed ones (default 2, 1 with --quick).
    #[arg(long)]
    warmup: Option<usize>,
    /// A small run for CI smoke tests: small shapes, few runs.
    #[arg(long)]
    quick: bool,
    /// Check each op against the f64 reference before timing it; fails when
    /// the worst normalized error is above 1e-3.
    #[arg(long)]
    verify: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of each op's GB/s against the copy ceiling.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// How reductions combine a workgroup's values: tree or per-invocation
    /// (default: per-invocation on CPU adapters, tree on GPUs).
    #[arg(long)]
    reduction: Option<String>,
    /// How vec4 kernels move f32 tensors: floats or words64 (default:
    /// words64 on CPU adapters with 64-bit integers, floats elsewhere).
    #[arg(long)]
    access: Option<String>,
    /// Whether a reduction's last workgroup merges its partials where an op
    /// allows, on or off (default: on where the device can: Vulkan or DX12
    /// with coherent storage).
    #[arg(long, value_name = "ON|OFF")]
    last_merge: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => info(json),
        Command::Check { paths, tol, json } => run_check(&paths, tol, json),
        Command::Bench(args) => run_bench(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wgpu-norm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info(as_json: bool) -> wgpu_norm::Result<ExitCode> {
    let ctx = Context::new()?;
    let a = ctx.adapter_info();
    let features: Vec<String> = ctx.device().features().iter_names().map(|(n, _)| n.to_string()).collect();
    let l = ctx.device().limits();
    let limits = [
        ("max_storage_buffer_binding_size", l.max_storage_buffer_binding_size),
        ("max_buffer_size", l.max_buffer_size),
        ("max_storage_buffers_per_shader_stage", u64::from(l.max_storage_buffers_per_shader_stage)),
        ("max_compute_workgroups_per_dimension", u64::from(l.max_compute_workgroups_per_dimension)),
        ("max_compute_invocations_per_workgroup", u64::from(l.max_compute_invocations_per_workgroup)),
        ("max_compute_workgroup_storage_size", u64::from(l.max_compute_workgroup_storage_size)),
        ("min_storage_buffer_offset_alignment", u64::from(l.min_storage_buffer_offset_alignment)),
    ];
    if as_json {
        let limits: serde_json::Map<String, serde_json::Value> =
            limits.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let out = json!({
            "adapter": a.name,
            "backend": a.backend.to_str(),
            "device_type": format!("{:?}", a.device_type),
            "driver": a.driver,
            "driver_info": a.driver_info,
            "features": features,
            "limits": limits,
            "reduction": bench::reduction_name(ctx.reduction()),
            "access": bench::access_name(ctx.access()),
            "last_merge": ctx.last_workgroup_merges(),
        });
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        outln!("adapter:     {}", a.name);
        outln!("backend:     {}", a.backend.to_str());
        outln!("device type: {:?}", a.device_type);
        outln!("driver:      {} ({})", a.driver, a.driver_info);
        outln!("features:    {}", if features.is_empty() { "none".to_string() } else { features.join(", ") });
        outln!("reduction:   {}", bench::reduction_name(ctx.reduction()));
        outln!("access:      {}", bench::access_name(ctx.access()));
        outln!("last merge:  {}", bench::on_off(ctx.last_workgroup_merges()));
        outln!("limits:");
        for (k, v) in limits {
            outln!("  {k:<40} {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Most warm-up runs `--warmup` takes (each op runs that many times before
/// it is timed).
const MAX_WARMUP: usize = 10_000;

fn run_bench(args: &BenchArgs) -> wgpu_norm::Result<ExitCode> {
    let bad = |m: String| Err(wgpu_norm::Error::Parameter(m));
    if args.iters.is_some_and(|n| !(1..=bench::MAX_ITERS).contains(&n)) {
        return bad(format!("--iters must be 1 to {} (timed runs per measurement)", bench::MAX_ITERS));
    }
    if args.warmup.is_some_and(|n| n > MAX_WARMUP) {
        return bad(format!("--warmup must be at most {MAX_WARMUP}"));
    }
    if let Some(plot) = &args.plot {
        let folder = plot.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !folder.is_dir() {
            return bad(format!("--plot {}: the folder {} does not exist", plot.display(), folder.display()));
        }
    }
    let mut config = if args.quick { BenchConfig::quick() } else { BenchConfig::default_run() };
    if let Some(ops) = &args.ops {
        config.ops = bench::parse_ops(ops)?;
    }
    if let Some(shapes) = &args.shapes {
        config.shapes = bench::parse_shapes(shapes)?;
    }
    if let Some(model) = &args.model {
        config.model = Some(bench::Model::parse(model, args.batch, args.tokens)?);
    }
    config.layouts = bench::parse_layouts(&args.layouts)?;
    config.copy_kernels = args
        .copy_kernels
        .as_ref()
        .map(|s| s.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect());
    config.iters = args.iters.unwrap_or(config.iters);
    config.warmup = args.warmup.unwrap_or(config.warmup);
    config.verify = args.verify;
    let ctx = Context::new()?;
    if let Some(reduction) = &args.reduction {
        ctx.set_reduction(bench::parse_reduction(reduction)?);
    }
    if let Some(on) = &args.last_merge {
        ctx.set_last_workgroup_merges(bench::parse_on_off("--last-merge", on)?)?;
    }
    if let Some(access) = &args.access {
        ctx.set_access(bench::parse_access(access)?)?;
    }
    let report = bench::run(&ctx, &config, &mut progress_bar)?;
    eprint!("\r{:79}\r", "");
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&bench::to_json(&report)).unwrap_or_default());
    } else {
        out!("{}", bench::table(&report));
    }
    for s in &report.skipped {
        if args.json {
            eprintln!("note: skipped {}: {}", bench::shape_name(&s.shape), s.reason);
        }
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, bench::svg(&report))
            .map_err(|e| wgpu_norm::Error::Parameter(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(worst) = report.worst_error() {
        if worst.is_nan() || worst > bench::VERIFY_TOLERANCE {
            eprintln!("wgpu-norm: verification failed: worst error {worst:.3e} > {:.0e}", bench::VERIFY_TOLERANCE);
            return Ok(ExitCode::FAILURE);
        }
        if !args.json {
            outln!("verified: worst error {worst:.3e} <= {:.0e}", bench::VERIFY_TOLERANCE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `[#####     ] 3/20 op layout shape` on one stderr line.
fn progress_bar(done: usize, total: usize, what: &str) {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let line = format!("[{}{}] {done}/{total} {what}", "#".repeat(filled), " ".repeat(WIDTH - filled));
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{line:79.79}");
    let _ = err.flush();
}

fn run_check(paths: &[PathBuf], tol: f64, as_json: bool) -> wgpu_norm::Result<ExitCode> {
    if !(tol.is_finite() && tol > 0.0) {
        return Err(wgpu_norm::Error::Parameter(format!("--tol {tol}: expected a finite tolerance above 0")));
    }
    let ctx = Context::new()?;
    let mut reports: Vec<CaseReport> = Vec::new();
    for file in collect_case_files(paths) {
        let report = match file {
            Ok(path) => check::check_file(&ctx, &path, tol),
            Err(e) => {
                // The path names the case; the message says what is wrong with it.
                let (name, message) = match e {
                    wgpu_norm::Error::Io { path, source } => (path, source.to_string()),
                    e => (String::from("-"), e.to_string()),
                };
                CaseReport {
                    path: name.clone(),
                    name,
                    op: String::new(),
                    outcome: Outcome::Fail { tensor: "-".into(), error: f64::INFINITY, message: Some(message) },
                    errors: Default::default(),
                }
            }
        };
        if !as_json {
            print_line(&report);
        }
        reports.push(report);
    }
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    let passed = count(|o| matches!(o, Outcome::Pass { .. }));
    let failed = count(|o| matches!(o, Outcome::Fail { .. }));
    let skipped = count(|o| matches!(o, Outcome::Skipped { .. }));
    if as_json {
        let cases: Vec<serde_json::Value> = reports.iter().map(report_json).collect();
        let a = ctx.adapter_info();
        let out = json!({
            "adapter": a.name,
            "backend": a.backend.to_str(),
            "tolerance": tol,
            "cases": cases,
            "passed": passed,
            "failed": failed,
            "skipped": skipped,
        });
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if skipped > 0 {
        outln!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        outln!("{passed} passed, {failed} failed");
    }
    if reports.is_empty() {
        let given: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!("wgpu-norm: no case files (*.safetensors) found in {}", given.join(", "));
    }
    Ok(if failed > 0 || reports.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_line(r: &CaseReport) {
    match &r.outcome {
        Outcome::Pass { worst } => outln!("PASS {} {worst:.3e}", r.name),
        Outcome::Fail { tensor, error, message } => {
            outln!("FAIL {} {tensor} {error:.3e}", r.name);
            if let Some(m) = message {
                eprintln!("  {}: {m}", r.name);
            }
        }
        Outcome::Skipped { reason } => outln!("SKIP {} {}: {reason}", r.name, r.op),
    }
}

/// JSON numbers cannot be infinite or NaN: those become null.
fn number(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

fn report_json(r: &CaseReport) -> serde_json::Value {
    let errors: serde_json::Map<String, serde_json::Value> =
        r.errors.iter().map(|(k, &v)| (k.clone(), number(v))).collect();
    let mut out = json!({ "name": r.name, "path": r.path, "op": r.op, "errors": errors });
    match &r.outcome {
        Outcome::Pass { worst } => {
            out["status"] = json!("pass");
            out["worst_error"] = number(*worst);
        }
        Outcome::Fail { tensor, error, message } => {
            out["status"] = json!("fail");
            out["tensor"] = json!(tensor);
            out["worst_error"] = number(*error);
            out["message"] = json!(message);
        }
        Outcome::Skipped { reason } => {
            out["status"] = json!("skip");
            out["message"] = json!(reason);
        }
    }
    out
}
