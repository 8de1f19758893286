//! The `wgpu-norm` command: `info`, and `check` on a case it has never seen,
//! on a tampered case (it must fail), and on a malformed file.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::Rng;
use safetensors::tensor::TensorView as StView;
use safetensors::Dtype;
use wgpu_norm::Layout;
use wgpu_norm_reference::reference::{self, BatchNormArgs};

fn wgpu_norm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpu-norm")).args(args).output().expect("could not run wgpu-norm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-norm-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a channels-last training case computed by the f64 reference, in
/// the golden format; `tamper` shifts one expected value of `y`.
/// A BatchNorm case whose expected y[0] is shifted by `tamper`, if given.
fn write_case(path: &Path, tamper: Option<f64>) {
    let shape = [5usize, 3, 7];
    let mut rng = Rng(42);
    let len = 5 * 3 * 7;
    let x = rng.normal_vec(len, 2.0, 3.0);
    let dy = rng.normal_vec(len, 0.0, 1.0);
    let weight = rng.normal_vec(3, 1.0, 0.3);
    let bias = rng.normal_vec(3, 0.0, 0.3);
    let rm = vec![0.5f32; 3];
    let rv = vec![2.0f32; 3];
    let args = BatchNormArgs {
        weight: Some(&weight),
        bias: Some(&bias),
        running_mean: Some(&rm),
        running_var: Some(&rv),
        training: true,
        momentum: None,
        num_batches_tracked: 3,
        ..BatchNormArgs::new(&shape, Layout::Nhwc)
    };
    let f = reference::batch_norm_forward(&args, &x, None);
    let b = reference::batch_norm_backward(&args, &x, None, &dy);
    let mut y = f.y.clone();
    if let Some(shift) = tamper {
        y[0] += shift;
    }
    let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    let f64s = |v: &[f64]| bytemuck::cast_slice::<f64, u8>(v).to_vec();
    let nhwc = vec![5, 7, 3];
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("x", Dtype::F32, nhwc.clone(), f32s(&x)),
        ("dy", Dtype::F32, nhwc.clone(), f32s(&dy)),
        ("weight", Dtype::F32, vec![3], f32s(&weight)),
        ("bias", Dtype::F32, vec![3], f32s(&bias)),
        ("running_mean", Dtype::F32, vec![3], f32s(&rm)),
        ("running_var", Dtype::F32, vec![3], f32s(&rv)),
        ("y", Dtype::F64, nhwc.clone(), f64s(&y)),
        ("dx", Dtype::F64, nhwc, f64s(&b.dx)),
        ("dweight", Dtype::F64, vec![3], f64s(&b.dweight)),
        ("dbias", Dtype::F64, vec![3], f64s(&b.dbias)),
        ("save_mean", Dtype::F64, vec![3], f64s(&f.save_mean)),
        ("save_invstd", Dtype::F64, vec![3], f64s(&f.save_invstd)),
        ("running_mean_out", Dtype::F64, vec![3], f64s(f.running_mean.as_ref().unwrap())),
        ("running_var_out", Dtype::F64, vec![3], f64s(f.running_var.as_ref().unwrap())),
    ];
    let views: Vec<(&str, StView)> =
        tensors.iter().map(|(n, d, s, b)| (*n, StView::new(*d, s.clone(), b).unwrap())).collect();
    let meta: HashMap<String, String> = [
        ("op", "batch_norm"),
        ("layout", "NHWC"),
        ("shape", "5,3,7"),
        ("channels", "3"),
        ("training", "true"),
        ("eps", "1e-05"),
        ("momentum", "none"),
        ("num_batches_tracked", "3"),
        ("affine", "true"),
        ("track_running_stats", "true"),
        ("fused", "none"),
        ("reference", "wgpu-norm f64 reference"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn info_names_the_adapter() {
    let out = wgpu_norm(&["info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    for key in
        ["adapter:", "backend:", "driver:", "features:", "max_storage_buffer_binding_size", "reduction:", "access:"]
    {
        assert!(text.contains(key), "info lacks {key}: {text}");
    }
}

/// `wgpu-norm info | head -n 1`: a reader that closes the pipe early must
/// end the program quietly, not with a panic (CI once failed on exactly this).
#[test]
fn info_into_a_closed_pipe_exits_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgpu-norm"))
        .arg("info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("could not run wgpu-norm");
    // Closed before the adapter is even open, so the first write meets it.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}, stderr:\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_passes_an_unseen_case_and_reports_json() {
    let dir = temp_dir("unseen");
    write_case(&dir.join("unseen_nhwc.safetensors"), None);
    let out = wgpu_norm(&["check", dir.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l.starts_with("PASS unseen_nhwc ")), "{text}");
    assert_eq!(text.lines().last(), Some("1 passed, 0 failed"));

    let out = wgpu_norm(&["check", "--json", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], 1);
    assert_eq!(v["cases"][0]["status"], "pass");
    for t in ["y", "dx", "dweight", "dbias", "save_mean", "save_invstd", "running_mean_out", "running_var_out"] {
        assert!(v["cases"][0]["errors"][t].as_f64().unwrap() < 1e-3, "{t}: {v}");
    }
}

#[test]
fn check_fails_a_tampered_case() {
    let dir = temp_dir("tampered");
    write_case(&dir.join("tampered.safetensors"), Some(0.5));
    let out = wgpu_norm(&["check", dir.join("tampered.safetensors").to_str().unwrap()]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("FAIL tampered y ")), "{text}");
    assert_eq!(text.lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn check_names_a_malformed_file_and_fails() {
    let dir = temp_dir("malformed");
    let bad = dir.join("garbage.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all").unwrap();
    let out = wgpu_norm(&["check", bad.to_str().unwrap(), dir.join("missing.safetensors").to_str().unwrap()]);
    assert!(!out.status.success());
    let text = stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("garbage.safetensors"), "{err}");
    assert!(err.contains("missing.safetensors"), "{err}");
    assert_eq!(text.lines().last(), Some("0 passed, 2 failed"), "{text}");
}

#[test]
fn check_runs_the_bundled_golden_cases() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let out = wgpu_norm(&["check", golden.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.lines().last().unwrap().contains(" 0 failed"), "{text}");
}

/// An expected NaN where the GPU gives a number fails with the value named.
#[test]
fn check_says_why_a_non_finite_comparison_fails() {
    let dir = temp_dir("nan");
    let path = dir.join("bn_nan.safetensors");
    write_case(&path, Some(f64::NAN));
    let out = wgpu_norm(&["check", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("FAIL bn_nan y inf"), "{}", stdout(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("value 0 is") && stderr.contains("NaN"), "names the value: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Options that cannot mean anything are refused before any work, and an
/// empty folder says so.
#[test]
fn bad_options_are_refused_up_front() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let golden = golden.to_str().unwrap();
    for (args, expected) in [
        (vec!["check", "--tol", "nan", golden], "--tol"),
        (vec!["check", "--tol=-1", golden], "--tol"),
        (vec!["check", "--tol", "inf", golden], "--tol"),
        (vec!["bench", "--quick", "--iters", "0"], "--iters"),
        (vec!["bench", "--quick", "--warmup", "1000000000"], "--warmup"),
        (vec!["bench", "--quick", "--plot", "/no/such/folder/chart.svg"], "does not exist"),
    ] {
        let out = wgpu_norm(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} ran: {}", stdout(&out));
    }
    let empty = temp_dir("empty");
    let out = wgpu_norm(&["check", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no case files"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&empty);
}
