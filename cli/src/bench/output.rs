//! The output of `wgpu-norm bench`: the table, the SVG chart and the JSON
//! report (the `--json` contract), and the names its options take.

use wgpu_norm::{Access, Error, Reduction, Result};

use super::clock::{SLOW_ITERS, SLOW_RUN_MS};
use super::{shape_name, ModelSummary, Report};

/// The name `--reduction` takes and the output shows.
pub fn reduction_name(reduction: Reduction) -> &'static str {
    reduction.name()
}

/// Parses `--reduction`: `tree` or `per-invocation`.
pub fn parse_reduction(s: &str) -> Result<Reduction> {
    Reduction::from_name(s).ok_or_else(|| Error::Parameter(format!("--reduction {s}: expected tree or per-invocation")))
}

/// The name `--access` takes and the output shows.
/// `on` or `off`, as `--last-merge` takes them.
pub fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// The value of an `on` / `off` option.
pub fn parse_on_off(option: &str, s: &str) -> Result<bool> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(Error::Parameter(format!("{option} {s}: expected on or off"))),
    }
}

pub fn access_name(access: Access) -> &'static str {
    access.name()
}

/// Parses `--access`: `floats` or `words64`.
pub fn parse_access(s: &str) -> Result<Access> {
    Access::from_name(s).ok_or_else(|| Error::Parameter(format!("--access {s}: expected floats or words64")))
}

/// The human-readable table.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "adapter: {} ({}), timer: {}, reduction: {}, access: {}, last merge: {}, median of {} runs after {} warm-up ({} of runs over {} ms)\n",
        report.adapter,
        report.backend,
        report.timer.name(),
        reduction_name(report.reduction),
        access_name(report.access),
        on_off(report.last_merge),
        report.iters,
        report.warmup,
        SLOW_ITERS.min(report.iters),
        SLOW_RUN_MS
    );
    out += &ceiling_line(report);
    let verify = report.results.iter().any(|r| r.max_error.is_some());
    let layers = report.results.iter().any(|r| r.layer.is_some());
    out += &format!("{:<25} {:<6} {:<14} ", "op", "layout", "shape");
    if layers {
        out += &format!("{:<22} ", "layer");
    }
    out += &format!(
        "{:>10} {:>8} {:>8} {:>6} {:>9} {:>4} {:>10} {:>8} {:<27}",
        "median_ms", "GB/s", "copyGB/s", "ratio", "record_us", "disp", "naive_ms", "speedup", "copy_kernel"
    );
    if verify {
        out += &format!(" {:>9}", "max_err");
    }
    out.push('\n');
    for r in &report.results {
        out += &format!("{:<25} {:<6} {:<14} ", r.op, r.layout.name(), shape_name(&r.shape));
        if layers {
            out += &format!("{:<22} ", r.layer.as_deref().unwrap_or("-"));
        }
        out += &format!(
            "{:>10.3} {:>8.2} {:>8.2} {:>6.2} {:>9.1} {:>4} {:>10} {:>8} {:<27}",
            r.median_ms,
            r.gbps,
            r.copy_gbps,
            r.ratio_to_copy,
            r.record_us,
            r.dispatches,
            r.naive_ms.map_or("-".to_string(), |n| format!("{n:.3}")),
            r.speedup_vs_naive.map_or("-".to_string(), |s| format!("{s:.2}x")),
            r.copy_kernel,
        );
        if let Some(e) = r.max_error {
            out += &format!(" {e:>9.2e}");
        }
        out.push('\n');
    }
    for s in &report.skipped {
        out += &format!("skipped {} {}: {}\n", shape_name(&s.shape), s.layout.name(), s.reason);
    }
    if let Some(m) = &report.model {
        out += &model_lines(m);
    }
    out
}

/// What the ceiling is: the copy kernels that competed and those that won,
/// and the host's memcpy on CPU adapters.
fn ceiling_line(report: &Report) -> String {
    let mut won: Vec<&str> = Vec::new();
    for r in &report.results {
        if !won.contains(&r.copy_kernel.as_str()) {
            won.push(&r.copy_kernel);
        }
    }
    let mut line = format!(
        "ceiling: the fastest of {} copy kernels over each op's bytes (fastest here: {})",
        report.copy_kernels.len(),
        if won.is_empty() { "-".to_string() } else { won.join(", ") }
    );
    if let Some(host) = report.host_memcpy_gbps {
        line += &format!("; host memcpy {host:.2} GB/s");
    }
    line + "\n"
}

/// The model's totals, one line per layout.
fn model_lines(m: &ModelSummary) -> String {
    let mut out = String::new();
    for t in &m.totals {
        out += &format!(
            "model {} ({} {}, {} layers{}) {}: training step {:.3} ms (copy {:.3} ms), eval {:.3} ms (copy {:.3} ms), \
             step recorded in {:.0} us, {} dispatches\n",
            m.name,
            m.size_name,
            m.size,
            m.layers,
            if t.complete { "" } else { ", some skipped" },
            t.layout.name(),
            t.train_step_ms,
            t.train_step_copy_ms,
            t.eval_ms,
            t.eval_copy_ms,
            t.record_us,
            t.dispatches,
        );
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
    // Model rows carry the layer's name in their label.
    let label_w = if report.results.iter().any(|r| r.layer.is_some()) { 480.0 } else { 330.0 };
    let (bar_w, row_h, top) = (560.0, 22.0, 56.0);
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
            r.layer.as_deref().map_or(r.op.to_string(), |layer| format!("{layer} {}", r.op)),
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
                "copy_kernel": r.copy_kernel,
                "record_us": num(r.record_us),
                "record_fresh_us": num(r.record_fresh_us),
                "dispatches": r.dispatches,
            });
            if let Some(layer) = &r.layer {
                o["layer"] = json!(layer);
            }
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
        "last_merge": report.last_merge,
        "iters": report.iters,
        "warmup": report.warmup,
        "copy_kernels": report.copy_kernels,
        "results": results,
        "skipped": skipped,
    });
    if let Some(worst) = report.worst_error() {
        out["worst_error"] = num(worst);
    }
    if let Some(host) = report.host_memcpy_gbps {
        out["host_memcpy_gbps"] = num(host);
    }
    if let Some(m) = &report.model {
        let totals = |t: &super::model::LayoutTotals| {
            json!({
                "layout": t.layout.name(),
                "train_step_ms": num(t.train_step_ms),
                "eval_ms": num(t.eval_ms),
                "train_step_copy_ms": num(t.train_step_copy_ms),
                "eval_copy_ms": num(t.eval_copy_ms),
                "train_step_record_us": num(t.record_us),
                "train_step_dispatches": t.dispatches,
                "complete": t.complete,
            })
        };
        // The first layout's totals at the top; every layout's in `layouts`.
        let mut o = m.totals.first().map_or_else(|| json!({}), totals);
        o["name"] = json!(m.name);
        o[m.size_name] = json!(m.size);
        o["layers"] = json!(m.layers);
        o["layouts"] = m.totals.iter().map(totals).collect();
        out["model"] = o;
    }
    out
}
