//! The `wgpu-norm` command: `info`, `check` and (later) `bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use wgpu_norm::check::{self, CaseReport, Outcome};
use wgpu_norm::golden::collect_case_files;
use wgpu_norm::Context;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => info(json),
        Command::Check { paths, tol, json } => run_check(&paths, tol, json),
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
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("adapter:     {}", a.name);
        println!("backend:     {}", a.backend.to_str());
        println!("device type: {:?}", a.device_type);
        println!("driver:      {} ({})", a.driver, a.driver_info);
        println!("features:    {}", if features.is_empty() { "none".to_string() } else { features.join(", ") });
        println!("limits:");
        for (k, v) in limits {
            println!("  {k:<40} {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_check(paths: &[PathBuf], tol: f64, as_json: bool) -> wgpu_norm::Result<ExitCode> {
    let ctx = Context::new()?;
    let mut reports: Vec<CaseReport> = Vec::new();
    for file in collect_case_files(paths) {
        let report = match file {
            Ok(path) => check::check_file(&ctx, &path, tol),
            Err(e) => CaseReport {
                name: e.to_string(),
                path: String::new(),
                op: String::new(),
                outcome: Outcome::Fail { tensor: "-".into(), error: f64::INFINITY, message: Some(e.to_string()) },
                errors: Default::default(),
            },
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
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed > 0 || reports.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_line(r: &CaseReport) {
    match &r.outcome {
        Outcome::Pass { worst } => println!("PASS {} {worst:.3e}", r.name),
        Outcome::Fail { tensor, error, message } => {
            println!("FAIL {} {tensor} {error:.3e}", r.name);
            if let Some(m) = message {
                eprintln!("  {}: {m}", r.name);
            }
        }
        Outcome::Skipped { reason } => println!("SKIP {} {}: {reason}", r.name, r.op),
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
