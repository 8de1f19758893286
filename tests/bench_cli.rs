//! `wgpu-norm bench`: the `--json` contract that scripts parse, `--verify`
//! of all fifteen ops, `--plot`, layouts and skips of the family ops, and the
//! error for unknown ops.

use std::process::{Command, Output};

fn wgpu_norm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpu-norm")).args(args).output().expect("could not run wgpu-norm")
}

/// Ops with a naive baseline.
const BN_OPS: [&str; 7] = [
    "bn_forward_eval",
    "bn_forward_train",
    "bn_backward_train",
    "bn_backward_eval",
    "bn_train_step",
    "bn_relu_forward_train",
    "bn_add_relu_forward_train",
];
/// LayerNorm and RMSNorm: run once per shape, under the first layout.
const ROW_OPS: [&str; 4] = ["ln_forward", "ln_backward", "rms_forward", "rms_backward"];
/// GroupNorm and InstanceNorm: both layouts, rank >= 3 only.
const GROUP_OPS: [&str; 4] = ["gn_forward", "gn_backward", "in_forward", "in_backward"];

#[test]
fn quick_verify_json_follows_the_contract() {
    let plot = std::env::temp_dir().join(format!("wgpu-norm-bench-{}.svg", std::process::id()));
    let out = wgpu_norm(&["bench", "--quick", "--verify", "--json", "--plot", plot.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert!(v["adapter"].is_string());
    assert!(v["backend"].is_string());
    let timer = v["timer"].as_str().unwrap();
    assert!(timer == "gpu-timestamp" || timer == "wall-clock", "timer {timer}");
    let reduction = v["reduction"].as_str().unwrap();
    assert!(reduction == "tree" || reduction == "per-invocation", "reduction {reduction}");
    let access = v["access"].as_str().unwrap();
    assert!(access == "floats" || access == "words64", "access {access}");
    let results = v["results"].as_array().unwrap();
    // The quick shapes are 8x32x28x28 and 2048x256 (default layouts nchw,nhwc).
    let has = |op: &str, layout: &str, rank: usize| {
        results.iter().any(|r| r["op"] == op && r["layout"] == layout && r["shape"].as_array().unwrap().len() == rank)
    };
    for op in BN_OPS {
        for layout in ["nchw", "nhwc"] {
            for rank in [2, 4] {
                assert!(has(op, layout, rank), "no result for {op} {layout} rank {rank}");
            }
        }
    }
    for op in ROW_OPS {
        for rank in [2, 4] {
            assert!(has(op, "nchw", rank), "no result for {op} rank {rank}");
            assert!(!has(op, "nhwc", rank), "{op} ignores the layout and runs once per shape");
        }
    }
    for op in GROUP_OPS {
        for layout in ["nchw", "nhwc"] {
            assert!(has(op, layout, 4), "no result for {op} {layout}");
            assert!(!has(op, layout, 2), "{op} needs rank >= 3");
            assert!(
                v["skipped"].as_array().unwrap().iter().any(|s| s["op"] == op
                    && s["layout"] == layout
                    && s["shape"] == serde_json::json!([2048, 256])
                    && s["reason"].as_str().unwrap().contains("rank")),
                "no skip note for {op} {layout} 2048x256: {}",
                v["skipped"]
            );
        }
    }
    assert_eq!(results.len(), 7 * 4 + 4 * 2 + 4 * 2);
    for r in results {
        let op = r["op"].as_str().unwrap();
        assert!(BN_OPS.contains(&op) || ROW_OPS.contains(&op) || GROUP_OPS.contains(&op), "unexpected op {op}");
        let shape: Vec<u64> = r["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert!(shape.len() >= 2);
        let naive = BN_OPS.contains(&op);
        let mut keys = vec!["median_ms", "gbps", "copy_gbps", "ratio_to_copy"];
        if naive {
            keys.extend(["naive_ms", "speedup_vs_naive"]);
        } else {
            assert!(r.get("naive_ms").is_none() && r.get("naive_max_error").is_none(), "{op} has no naive: {r}");
        }
        for key in keys {
            let x = r[key].as_f64().unwrap_or_else(|| panic!("{op}: {key} missing in {r}"));
            assert!(x > 0.0 && x.is_finite(), "{op}: {key} = {x}");
        }
        let elements: u64 = shape.iter().product();
        let tensors = match op {
            "bn_train_step" => 5,
            "bn_add_relu_forward_train" => 3,
            _ if op.contains("backward") => 3,
            _ => 2,
        };
        assert_eq!(r["bytes"].as_u64().unwrap(), tensors * elements * 4, "{op}: bytes");
        let ratio = r["ratio_to_copy"].as_f64().unwrap();
        let expect = r["gbps"].as_f64().unwrap() / r["copy_gbps"].as_f64().unwrap();
        assert!((ratio - expect).abs() <= 1e-9 * expect.max(1.0), "{op}: ratio {ratio} vs {expect}");
        let err = r["max_error"].as_f64().unwrap_or_else(|| panic!("{op}: max_error missing"));
        assert!(err <= 1e-3, "{op} {}: max_error {err}", r["layout"]);
        if naive {
            let naive = r["naive_max_error"].as_f64().unwrap();
            assert!(naive <= 1e-3, "{op} naive baseline: error {naive}");
        }
    }
    assert!(v["worst_error"].as_f64().unwrap() <= 1e-3);
    let svg = std::fs::read_to_string(&plot).expect("--plot wrote the chart");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("bn_train_step") && svg.contains("in_backward"));
}

#[test]
fn ops_option_selects_and_rejects() {
    let out = wgpu_norm(&[
        "bench",
        "--ops",
        "bn_forward_eval",
        "--shapes",
        "4,8,5,5",
        "--layouts",
        "nhwc",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["op"], "bn_forward_eval");
    assert_eq!(results[0]["layout"], "nhwc");
    assert_eq!(results[0]["shape"], serde_json::json!([4, 8, 5, 5]));
    assert!(results[0].get("max_error").is_none(), "max_error only with --verify");

    for ops in ["bn_frobnicate", "ln_forward,bn_frobnicate"] {
        let out = wgpu_norm(&["bench", "--quick", "--ops", ops]);
        assert!(!out.status.success(), "--ops {ops} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("unknown op") && stderr.contains("bn_frobnicate"), "--ops {ops}: {stderr}");
        assert!(stderr.contains("bn_forward_eval") && stderr.contains("in_backward"), "lists available ops: {stderr}");
    }
}

/// LayerNorm runs once per shape, under the first of `--layouts`; GroupNorm
/// runs in each; 32 channels make 32 groups and 48 make 24 (checked by the
/// reference in `--verify`).
#[test]
fn family_layouts() {
    let out = wgpu_norm(&[
        "bench",
        "--ops",
        "ln_forward,gn_backward",
        "--shapes",
        "2,32,5,6;2,48,7",
        "--layouts",
        "nhwc,nchw",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--verify",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(String, String, usize)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let op = r["op"].as_str().unwrap().to_string();
            (op, r["layout"].as_str().unwrap().to_string(), r["shape"].as_array().unwrap().len())
        })
        .collect();
    let want: Vec<(String, String, usize)> = [
        ("ln_forward", "nhwc", 4),
        ("gn_backward", "nhwc", 4),
        ("gn_backward", "nchw", 4),
        ("ln_forward", "nhwc", 3),
        ("gn_backward", "nhwc", 3),
        ("gn_backward", "nchw", 3),
    ]
    .iter()
    .map(|(o, l, r)| (o.to_string(), l.to_string(), *r))
    .collect();
    assert_eq!(got, want);
    assert!(v["worst_error"].as_f64().unwrap() <= 1e-3);
}

#[test]
fn shapes_over_the_binding_limit_are_skipped_with_a_note() {
    // 40 M floats = 160 MB per tensor, over the default 128 MiB binding;
    // devices with a larger binding run it, so only check what is printed.
    let out = wgpu_norm(&[
        "bench",
        "--ops",
        "bn_forward_eval",
        "--shapes",
        "4,8,5,5;40,1000,1000",
        "--layouts",
        "nchw",
        "--iters",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4x8x5x5"), "{stdout}");
    assert!(stdout.contains("40x1000x1000"), "{stdout}");
}

/// Without `TIMESTAMP_QUERY` the engine falls back to wall clock around
/// submit-and-wait.
#[test]
fn wall_clock_without_timestamp_queries() {
    use wgpu_norm::bench::{self, BenchConfig, Op, Timer};
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .or_else(|_| {
                pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                    force_fallback_adapter: true,
                    ..Default::default()
                }))
            })
            .expect("no adapter");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            required_features: wgpu::Features::empty(),
            ..Default::default()
        }))
        .expect("no device");
    let ctx = wgpu_norm::Context::from_device(device, queue);
    let config = BenchConfig {
        ops: vec![Op::BnTrainStep],
        shapes: vec![vec![4, 8, 6, 6]],
        iters: 2,
        warmup: 1,
        verify: true,
        ..BenchConfig::quick()
    };
    let report = bench::run(&ctx, &config, &mut |_, _, _| {}).unwrap();
    assert_eq!(report.timer, Timer::WallClock);
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        assert!(r.median_ms > 0.0 && r.copy_gbps > 0.0 && r.ratio_to_copy > 0.0, "{r:?}");
        assert!(r.max_error.unwrap() <= bench::VERIFY_TOLERANCE);
    }
}

/// `bench --{option} V` for each of `values` over `ops` passes --verify and
/// reports V under `option`; `--{option} {bad}` fails naming `expected`.
fn option_can_be_chosen(option: &str, values: &[&str], ops: &str, layouts: &str, bad: &str, expected: &str) {
    let flag = format!("--{option}");
    for &value in values {
        let args = ["bench", "--ops", ops, "--shapes", "4,8,20,20", "--layouts", layouts];
        let out =
            wgpu_norm(&[&args[..], &["--iters", "1", "--warmup", "0", "--verify", "--json", &flag, value]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[option], value);
        assert!(v["worst_error"].as_f64().unwrap() <= 1e-3);
    }
    let out = wgpu_norm(&["bench", "--quick", &flag, bad]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(expected));
}

#[test]
fn the_reduction_strategy_can_be_chosen() {
    let values = ["tree", "per-invocation"];
    option_can_be_chosen("reduction", &values, "bn_train_step", "nchw", "sideways", "tree or per-invocation");
}

#[test]
fn the_memory_access_can_be_chosen() {
    // lavapipe offers 64-bit integers, so both run there.
    let ops = "bn_train_step,bn_forward_eval";
    option_can_be_chosen("access", &["floats", "words64"], ops, "nchw,nhwc", "bytes", "floats or words64");
}
