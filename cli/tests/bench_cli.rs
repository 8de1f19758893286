//! `wgpu-norm bench`: the `--json` contract that scripts parse, `--verify`
//! of all fifteen ops, `--plot`, layouts and skips of the family ops, and the
//! error for unknown ops.

use std::process::{Command, Output};

fn wgpu_norm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpu-norm")).args(args).output().expect("could not run wgpu-norm")
}

/// `bench` over `args` with `--json`, which must succeed: the report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = wgpu_norm(&[&["bench", "--json"], args].concat());
    assert!(out.status.success(), "bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
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
    let v = bench_json(&["--quick", "--verify", "--plot", plot.to_str().unwrap()]);
    assert!(v["adapter"].is_string());
    assert!(v["backend"].is_string());
    let timer = v["timer"].as_str().unwrap();
    assert!(timer == "gpu-timestamp" || timer == "wall-clock", "timer {timer}");
    let reduction = v["reduction"].as_str().unwrap();
    assert!(reduction == "tree" || reduction == "per-invocation", "reduction {reduction}");
    let access = v["access"].as_str().unwrap();
    assert!(access == "floats" || access == "words64", "access {access}");
    assert!(v["last_merge"].is_boolean());
    let kernels: Vec<&str> = v["copy_kernels"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert!(kernels.len() >= 8, "grid-stride and spans, vec4 and words, two workgroup sizes: {kernels:?}");
    let cpu = v["adapter"].as_str().unwrap().contains("llvmpipe");
    if cpu {
        let host = v["host_memcpy_gbps"].as_f64().unwrap();
        assert!(host > 0.0 && host.is_finite());
    }
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
        assert!(kernels.contains(&r["copy_kernel"].as_str().unwrap()), "{op}: copy_kernel in {r}");
        let record_us = r["record_us"].as_f64().unwrap();
        assert!(record_us > 0.0 && record_us < 1e6, "{op}: record_us {record_us}");
        let dispatches = r["dispatches"].as_u64().unwrap();
        assert!((1..=64).contains(&dispatches), "{op}: {dispatches} dispatches");
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
    // A step records what its forward and backward record.
    let dispatches = |op: &str, layout: &str| {
        let r = results.iter().find(|r| r["op"] == op && r["layout"] == layout && r["shape"][0] == 8).unwrap();
        r["dispatches"].as_u64().unwrap()
    };
    for layout in ["nchw", "nhwc"] {
        let (fwd, bwd) = (dispatches("bn_forward_train", layout), dispatches("bn_backward_train", layout));
        assert_eq!(dispatches("bn_train_step", layout), fwd + bwd, "{layout}");
    }
    let svg = std::fs::read_to_string(&plot).expect("--plot wrote the chart");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("bn_train_step") && svg.contains("in_backward"));
}

#[test]
fn ops_option_selects_and_rejects() {
    let v = bench_json(&[
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
    ]);
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
    let v = bench_json(&[
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
    ]);
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
    use wgpu_norm_cli::bench::{self, BenchConfig, Op, Timer};
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
        let args = ["--ops", ops, "--shapes", "4,8,20,20", "--layouts", layouts];
        let v = bench_json(&[&args[..], &["--iters", "1", "--warmup", "0", "--verify", &flag, value]].concat());
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

#[test]
fn the_last_merge_can_be_turned_off() {
    // The GPUs' path over channels-last: a reduction whose last workgroup
    // merges, then the apply; or a reduction, a merge kernel and the apply.
    for (value, dispatches) in [("on", 2), ("off", 3)] {
        let gpu_path = ["--reduction", "tree", "--access", "floats", "--last-merge", value];
        let args = ["--ops", "bn_forward_train", "--shapes", "4,8,20,20", "--layouts", "nhwc", "--iters", "1"];
        let v = bench_json(&[&args[..], &["--warmup", "0", "--verify"], &gpu_path[..]].concat());
        assert_eq!(v["last_merge"], value == "on");
        assert_eq!(v["results"][0]["dispatches"], dispatches, "--last-merge {value}");
        assert!(v["worst_error"].as_f64().unwrap() <= 1e-3);
    }
    let out = wgpu_norm(&["bench", "--quick", "--last-merge", "sometimes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected on or off"));
}

/// A model's totals are the sums of its layers' medians: `train` ops for the
/// step, `eval` ops for inference.
fn assert_totals(model: &serde_json::Value, results: &[serde_json::Value], train: &[&str], eval: &[&str]) {
    let sum = |ops: &[&str], key: &str| -> f64 {
        results.iter().filter(|r| ops.contains(&r["op"].as_str().unwrap())).map(|r| r[key].as_f64().unwrap()).sum()
    };
    for (total, ops, key) in [
        ("train_step_ms", train, "median_ms"),
        ("eval_ms", eval, "median_ms"),
        ("train_step_copy_ms", train, "copy_ms"),
        ("eval_copy_ms", eval, "copy_ms"),
    ] {
        let (got, want) = (model[total].as_f64().unwrap(), sum(ops, key));
        assert!(want > 0.0 && (got - want).abs() <= 1e-9 * want, "{total}: {got} against {want}");
    }
    assert_eq!(model["complete"], true);
}

#[test]
fn resnet50_preset_runs_its_53_layers_verified() {
    let v = bench_json(&[
        "--model",
        "resnet50",
        "--batch",
        "1",
        "--layouts",
        "nhwc",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--verify",
    ]);
    let model = &v["model"];
    assert_eq!(
        (model["name"].as_str(), model["batch"].as_u64(), model["layers"].as_u64()),
        (Some("resnet50"), Some(1), Some(53))
    );
    assert_eq!(model["layout"], "nhwc");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * 53, "a training step and an eval forward per layer");
    let layers: std::collections::BTreeSet<&str> = results.iter().map(|r| r["layer"].as_str().unwrap()).collect();
    assert_eq!(layers.len(), 53);
    for name in ["bn1", "layer1.0.downsample.1", "layer3.5.bn2", "layer4.2.bn3"] {
        assert!(layers.contains(name), "no layer {name}");
    }
    let op_of = |layer: &str, eval: bool| {
        let r = results.iter().find(|r| r["layer"] == layer && r["op"].as_str().unwrap().contains("eval") == eval);
        r.unwrap()["op"].as_str().unwrap().to_string()
    };
    assert_eq!(op_of("layer2.1.bn1", false), "bn_relu_train_step");
    assert_eq!(op_of("layer2.1.bn3", false), "bn_add_relu_train_step");
    assert_eq!(op_of("layer2.1.bn3", true), "bn_add_relu_forward_eval");
    assert_eq!(op_of("layer2.0.downsample.1", true), "bn_forward_eval");
    let r = results.iter().find(|r| r["layer"] == "layer4.0.bn2" && r["op"] == "bn_relu_train_step").unwrap();
    assert_eq!(r["shape"], serde_json::json!([1, 512, 7, 7]));
    // bn_add_relu_train_step moves x, z, y, then x, z, dy, dx, dz.
    let r = results.iter().find(|r| r["layer"] == "layer4.2.bn3" && r["op"] == "bn_add_relu_train_step").unwrap();
    assert_eq!(r["bytes"].as_u64().unwrap(), 8 * 2048 * 49 * 4);
    for r in results {
        assert!(r["max_error"].as_f64().unwrap() <= 1e-3, "{r}");
    }
    let train = ["bn_train_step", "bn_relu_train_step", "bn_add_relu_train_step"];
    let eval = ["bn_forward_eval", "bn_relu_forward_eval", "bn_add_relu_forward_eval"];
    assert_totals(model, results, &train, &eval);
}

#[test]
fn transformer_preset_runs_layer_norm_and_rms_norm_verified() {
    let v = bench_json(&["--model", "transformer", "--tokens", "16", "--iters", "1", "--warmup", "0", "--verify"]);
    let model = &v["model"];
    assert_eq!(
        (model["name"].as_str(), model["tokens"].as_u64(), model["layers"].as_u64()),
        (Some("transformer"), Some(16), Some(6))
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 12, "LayerNorm and RMSNorm, forward and backward, three widths, one layout");
    for hidden in [768, 1024, 4096] {
        for op in ["ln_forward", "ln_backward", "rms_forward", "rms_backward"] {
            let r = results.iter().find(|r| r["op"] == op && r["shape"] == serde_json::json!([16, hidden]));
            let r = r.unwrap_or_else(|| panic!("no {op} over [16, {hidden}]"));
            assert!(r["layer"].as_str().unwrap().ends_with(&hidden.to_string()), "{r}");
            assert!(r["max_error"].as_f64().unwrap() <= 1e-3, "{r}");
        }
    }
    let forward = ["ln_forward", "rms_forward"];
    assert_totals(model, results, &["ln_forward", "ln_backward", "rms_forward", "rms_backward"], &forward);
}

#[test]
fn model_options_are_checked() {
    for (args, expected) in [
        (&["--model", "vgg16"][..], "unknown model"),
        (&["--model", "transformer", "--batch", "4"][..], "--batch is for --model resnet50"),
        (&["--model", "resnet50", "--batch", "0"][..], "at least 1"),
        (&["--model", "resnet50", "--shapes", "4,8"][..], "cannot be used with"),
        (&["--batch", "4"][..], "--model"),
    ] {
        let out = wgpu_norm(&[&["bench"], args].concat());
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// `--copy-kernels` narrows the ceiling's candidates; one name pins it (to
/// compare with reports measured against the old grid-stride copy).
#[test]
fn the_copy_kernels_can_be_named() {
    let one = "grid-stride-vec4-wg256";
    let v = bench_json(&[
        "--ops",
        "bn_forward_eval,ln_forward",
        "--shapes",
        "4,8,20,20",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--copy-kernels",
        one,
    ]);
    assert_eq!(v["copy_kernels"], serde_json::json!([one]));
    let results = v["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        assert_eq!(r["copy_kernel"], one, "{r}");
    }
    let out = wgpu_norm(&["bench", "--quick", "--copy-kernels", "memcpy-by-hand"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memcpy-by-hand") && stderr.contains(one), "names the kernels there are: {stderr}");
}
