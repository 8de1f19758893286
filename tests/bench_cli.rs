//! `wgpu-norm bench`: the `--json` contract that scripts parse, `--verify`,
//! `--plot`, and the error for ops the crate does not have.

use std::process::{Command, Output};

fn wgpu_norm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpu-norm")).args(args).output().expect("could not run wgpu-norm")
}

const BN_OPS: [&str; 5] =
    ["bn_forward_eval", "bn_forward_train", "bn_backward_train", "bn_backward_eval", "bn_train_step"];

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
    let results = v["results"].as_array().unwrap();
    // Every available op, in both layouts, on each of the quick shapes.
    for op in BN_OPS {
        for layout in ["nchw", "nhwc"] {
            assert!(results.iter().any(|r| r["op"] == op && r["layout"] == layout), "no result for {op} {layout}");
        }
    }
    for r in results {
        let op = r["op"].as_str().unwrap();
        assert!(BN_OPS.contains(&op), "unexpected op {op}");
        let shape: Vec<u64> = r["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert!(shape.len() >= 2);
        for key in ["median_ms", "gbps", "copy_gbps", "ratio_to_copy", "naive_ms", "speedup_vs_naive"] {
            let x = r[key].as_f64().unwrap_or_else(|| panic!("{op}: {key} missing in {r}"));
            assert!(x > 0.0 && x.is_finite(), "{op}: {key} = {x}");
        }
        let ratio = r["ratio_to_copy"].as_f64().unwrap();
        let expect = r["gbps"].as_f64().unwrap() / r["copy_gbps"].as_f64().unwrap();
        assert!((ratio - expect).abs() <= 1e-9 * expect.max(1.0), "{op}: ratio {ratio} vs {expect}");
        let err = r["max_error"].as_f64().unwrap_or_else(|| panic!("{op}: max_error missing"));
        assert!(err <= 1e-3, "{op} {}: max_error {err}", r["layout"]);
        let naive = r["naive_max_error"].as_f64().unwrap();
        assert!(naive <= 1e-3, "{op} naive baseline: error {naive}");
    }
    let svg = std::fs::read_to_string(&plot).expect("--plot wrote the chart");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("bn_train_step"));
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

    for (op, words) in [("bn_frobnicate", "unknown op"), ("ln_forward", "not implemented")] {
        let out = wgpu_norm(&["bench", "--quick", "--ops", op]);
        assert!(!out.status.success(), "--ops {op} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(words) && stderr.contains(op), "--ops {op}: {stderr}");
        assert!(
            stderr.contains("bn_forward_eval") && stderr.contains("bn_train_step"),
            "lists available ops: {stderr}"
        );
    }
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
