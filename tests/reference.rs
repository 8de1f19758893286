//! The CPU reference (`wgpu_norm_reference::reference`) against every golden case in
//! `tests/golden`, plus checks of the reference where the golden set is
//! silent (finite-difference gradients, layouts, running stats of
//! InstanceNorm, conv-transpose folding) and of `golden`'s error paths.
//!
//! CPU only; no GPU is touched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use wgpu_norm::{Error, Layout};
use wgpu_norm_reference::golden::{self, Case};
use wgpu_norm_reference::reference::{self as r, BatchNormArgs, Fused};

// ---------------------------------------------------------------------------
// Golden cases
// ---------------------------------------------------------------------------

/// The ops the golden format defines.
const OPS: &[&str] = &["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "fold_batch_norm"];

/// Relative tolerance against the largest expected magnitude. The reference
/// and PyTorch both compute in float64 from the same float32 inputs, so they
/// differ only by float64 rounding: observed worst 7e-13 (`bn_train_large_offset`,
/// whose reductions cancel ~1e4 offsets), 1e-15 elsewhere. 1e-9 leaves room for
/// summation order and still catches semantic slips as small as biased vs
/// unbiased running variance on 131072 values per channel (~8e-7).
const REL_TOL: f64 = 1e-9;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

/// Every case in `tests/golden`; panics naming any file that fails to load.
fn load_all() -> Vec<Case> {
    golden::collect_case_files(&[golden_dir()])
        .into_iter()
        .map(|p| {
            let p = p.unwrap_or_else(|e| panic!("listing golden cases: {e}"));
            Case::load(&p).unwrap_or_else(|e| panic!("loading a golden case: {e}"))
        })
        .collect()
}

/// Checks the reference against every expected tensor of every case of `op`;
/// returns how many cases were checked and panics listing every disagreement.
fn check_op(op: &str) -> usize {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in load_all().iter().filter(|c| c.op() == op) {
        let got = match golden::reference_outputs(case) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        let mut names = 0;
        let mut worst = 0.0f64;
        for name in case.expected_names() {
            names += 1;
            let want = case.expected(name).expect("listed expected tensor");
            let Some(g) = got.get(name) else {
                failures.push(format!("{}: no reference output for expected {name}", case.name));
                continue;
            };
            if g.len() != want.data.len() {
                failures.push(format!(
                    "{}: {name} has {} values, reference gives {}",
                    case.name,
                    want.data.len(),
                    g.len()
                ));
                continue;
            }
            let scale = want.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let tol = REL_TOL * scale;
            let (mut max_err, mut at) = (0.0f64, 0);
            for (i, (a, b)) in g.iter().zip(&want.data).enumerate() {
                let err = (a - b).abs();
                if err.is_nan() || err > max_err {
                    (max_err, at) = (err, i);
                }
                if max_err.is_nan() {
                    break;
                }
            }
            worst = worst.max(max_err / scale);
            if max_err.is_nan() || max_err > tol {
                failures.push(format!(
                    "{}: {name}[{at}] = {} but expected {} (|err| {max_err:e} > tol {tol:e})",
                    case.name, g[at], want.data[at]
                ));
            }
        }
        if names == 0 {
            failures.push(format!("{}: no expected tensor at all", case.name));
        }
        println!("{op} {}: {names} tensors, worst relative error {worst:e}", case.name);
        checked += 1;
    }
    assert!(failures.is_empty(), "{op}: {} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 0, "no {op} case in {}", golden_dir().display());
    checked
}

#[test]
fn golden_batch_norm() {
    check_op("batch_norm");
}

#[test]
fn golden_layer_norm() {
    check_op("layer_norm");
}

#[test]
fn golden_rms_norm() {
    check_op("rms_norm");
}

#[test]
fn golden_group_norm() {
    check_op("group_norm");
}

#[test]
fn golden_instance_norm() {
    check_op("instance_norm");
}

#[test]
fn golden_fold_batch_norm() {
    check_op("fold_batch_norm");
}

/// No case escapes the per-op tests: every file loads and has a known op.
#[test]
fn golden_every_case_has_a_known_op() {
    let files = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "safetensors"))
        .count();
    let cases = load_all();
    assert_eq!(cases.len(), files);
    assert!(cases.len() >= 28, "golden set shrank to {} cases", cases.len());
    for case in &cases {
        assert!(OPS.contains(&case.op()), "{}: unknown op {:?}", case.name, case.op());
        assert!(case.meta.contains_key("reference"), "{}: no `reference` key", case.name);
    }
}

/// The metadata formats the golden files use parse as documented.
#[test]
fn golden_metadata_formats() {
    let case = Case::load(&golden_dir().join("bn_train_cumulative_momentum.safetensors")).unwrap();
    assert_eq!(case.name, "bn_train_cumulative_momentum");
    assert_eq!(case.op(), "batch_norm");
    assert_eq!(case.meta_shape("shape").unwrap(), vec![8, 6, 5, 5]);
    assert_eq!(case.meta_usize("num_batches_tracked").unwrap(), 5);
    assert_eq!(case.meta_f64("eps").unwrap(), 1e-5);
    assert!(case.meta_bool("training").unwrap());
    let bn = golden::BatchNormCase::from_case(&case).unwrap();
    assert_eq!(bn.momentum, None);
    assert_eq!(bn.layout, Layout::Nchw);
    assert_eq!(bn.fused, Fused::None);
    assert!(case.expected("x").is_none(), "inputs are not expected tensors");
    assert_eq!(case.expected("y").unwrap().dtype, "F64");
    assert_eq!(case.tensor("x").unwrap().dtype, "F32");

    let nhwc = Case::load(&golden_dir().join("bn_add_relu_eval_nhwc.safetensors")).unwrap();
    let bn = golden::BatchNormCase::from_case(&nhwc).unwrap();
    assert_eq!((bn.layout, bn.fused, bn.training), (Layout::Nhwc, Fused::AddRelu, false));
    assert_eq!(bn.shape, vec![2, 16, 4, 4]);
    assert_eq!(nhwc.tensor("x").unwrap().shape, vec![2, 4, 4, 16], "stored channels-last");

    let ln = Case::load(&golden_dir().join("ln_last_two.safetensors")).unwrap();
    assert_eq!(ln.meta_shape("normalized_shape").unwrap(), vec![16, 64]);
    let err = ln.meta_str("nope").unwrap_err().to_string();
    assert!(err.contains("missing metadata key nope"), "{err}");
    let err = ln.meta_usize("eps").unwrap_err().to_string();
    assert!(err.contains("eps"), "{err}");
    let err = ln.input_f32("x", Some(3)).unwrap_err().to_string();
    assert!(err.contains("tensor x has 4096 values, expected 3"), "{err}");
    let err = ln.input_f32("nope", None).unwrap_err().to_string();
    assert!(err.contains("missing tensor nope"), "{err}");
    let err = ln.input_f32("y", None).unwrap_err().to_string();
    assert!(err.contains("inputs must be F32"), "{err}");
}

// ---------------------------------------------------------------------------
// golden error paths
// ---------------------------------------------------------------------------

/// A fresh path in the temp dir, unique per process and call.
fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("wgpu-norm-test-{}-{n}-{tag}.safetensors", std::process::id()))
}

/// A safetensors file with `header` (JSON) and `data`, written by hand.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes `bytes` to a temp file, loads it, removes it, and checks the load
/// failed with an `Error::Case` naming the file and containing `needle`.
fn assert_case_error(tag: &str, bytes: &[u8], needle: &str) {
    let path = temp_path(tag);
    std::fs::write(&path, bytes).unwrap();
    let result = Case::load(&path);
    std::fs::remove_file(&path).unwrap();
    match result {
        Err(Error::Case { file, message }) => {
            assert_eq!(file, path.display().to_string());
            assert!(message.contains(needle), "{tag}: {message:?} lacks {needle:?}");
        }
        Err(other) => panic!("{tag}: expected Error::Case, got {other:?}"),
        Ok(case) => panic!("{tag}: loaded {} tensors from a bad file", case.tensor_names().count()),
    }
}

#[test]
fn load_truncated_file() {
    let bytes = std::fs::read(golden_dir().join("bn_train_two_values.safetensors")).unwrap();
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        assert_case_error("truncated", &bytes[..cut], "not a safetensors file");
    }
}

#[test]
fn load_garbage_file() {
    assert_case_error("garbage", b"this is not a safetensors file at all", "not a safetensors file");
    assert_case_error("huge-header", &[0xff; 16], "not a safetensors file");
    assert_case_error("bad-json", &safetensors_bytes("{not json", &[]), "not a safetensors file");
    let bad_offsets = r#"{"__metadata__":{"op":"batch_norm"},"x":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
    assert_case_error("bad-offsets", &safetensors_bytes(bad_offsets, &[0; 8]), "not a safetensors file");
}

#[test]
fn load_file_without_op() {
    let header = r#"{"__metadata__":{"shape":"2"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert_case_error("no-op", &safetensors_bytes(header, &[0; 8]), "no `op` key");
    let header = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert_case_error("no-metadata", &safetensors_bytes(header, &[0; 8]), "no metadata");
}

#[test]
fn load_file_with_wrong_dtype() {
    let header = r#"{"__metadata__":{"op":"batch_norm"},"x":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
    assert_case_error("i32", &safetensors_bytes(header, &[0; 8]), "tensor x has dtype I32");
}

#[test]
fn load_missing_file() {
    let path = temp_path("missing");
    match Case::load(&path) {
        Err(Error::Case { file, message }) => {
            assert_eq!(file, path.display().to_string());
            assert!(message.contains("cannot read"), "{message}");
        }
        other => panic!("expected Error::Case, got {other:?}"),
    }
}

#[test]
fn loads_a_minimal_file_and_reports_missing_inputs() {
    // A well-formed file whose case lacks `x`: loading works, the op's
    // inputs then fail with a message naming the tensor.
    let header = r#"{"__metadata__":{"op":"layer_norm","shape":"[1, 2]","normalized_shape":"(2,)","eps":"1e-5","affine":"false"},"y":{"dtype":"F64","shape":[1,2],"data_offsets":[0,16]}}"#;
    let path = temp_path("minimal");
    std::fs::write(&path, safetensors_bytes(header, &[0; 16])).unwrap();
    let case = Case::load(&path);
    std::fs::remove_file(&path).unwrap();
    let case = case.unwrap();
    assert_eq!(case.meta_shape("shape").unwrap(), vec![1, 2]);
    assert_eq!(case.meta_shape("normalized_shape").unwrap(), vec![2]);
    assert_eq!(case.expected("y").unwrap().data, vec![0.0, 0.0]);
    match golden::reference_outputs(&case) {
        Err(Error::Case { message, .. }) => {
            assert!(message.contains("missing tensor x"), "{message}")
        }
        other => panic!("expected a missing-tensor error, got {other:?}"),
    }
}

#[test]
fn collect_case_files_expands_folders_and_reports_missing_paths() {
    let missing = temp_path("no-such-dir");
    let file = golden_dir().join("ln_rows.safetensors");
    let got = golden::collect_case_files(&[file.clone(), missing.clone(), golden_dir()]);
    assert_eq!(got[0].as_ref().unwrap(), &file);
    match &got[1] {
        Err(e) => assert!(e.to_string().contains(&missing.display().to_string()), "{e}"),
        Ok(p) => panic!("missing path listed as {}", p.display()),
    }
    let listed: Vec<&PathBuf> = got[2..].iter().map(|p| p.as_ref().unwrap()).collect();
    assert!(listed.len() >= 28);
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert!(listed.iter().all(|p| p.extension().unwrap() == "safetensors"), "no README.md");
}

// ---------------------------------------------------------------------------
// The reference where the golden set is silent
// ---------------------------------------------------------------------------

/// Deterministic values in about `[-2, 2)` (xorshift).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // 16 random bits: exact in f32, and x ± 2^-10 stays exact.
            ((s >> 48) as f32 / 65536.0) * 4.0 - 2.0
        })
        .collect()
}

/// Positive values in about `[0.5, 1.5)`.
fn positive(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed).into_iter().map(|v| 1.0 + v / 4.0).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{what}[{i}]: {a} vs {b}");
    }
}

/// Checks `dx` against central differences of `loss(x) = Σ f(x) · dy`.
fn check_dx(x: &[f32], dy: &[f32], f: impl Fn(&[f32]) -> Vec<f64>, dx: &[f64], what: &str) {
    let h = 1.0 / 1024.0;
    let loss = |x: &[f32]| -> f64 { f(x).iter().zip(dy).map(|(y, &d)| y * f64::from(d)).sum() };
    let mut numeric = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let mut xp = x.to_vec();
        let mut xm = x.to_vec();
        xp[i] += h;
        xm[i] -= h;
        let step = f64::from(xp[i]) - f64::from(xm[i]);
        numeric.push((loss(&xp) - loss(&xm)) / step);
    }
    assert_close(dx, &numeric, 1e-4, what);
}

/// Checks a parameter gradient the same way, perturbing the parameter.
fn check_dparam(p: &[f32], dy: &[f32], f: impl Fn(&[f32]) -> Vec<f64>, dp: &[f64], what: &str) {
    check_dx(p, dy, f, dp, what);
}

/// NCHW → NHWC for a logical `(N, C, spatial…)` shape.
fn to_nhwc(x: &[f32], shape: &[usize]) -> Vec<f32> {
    let (n, c) = (shape[0], shape[1]);
    let s: usize = shape[2..].iter().product();
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for i in 0..s {
                out[(b * s + i) * c + ch] = x[(b * c + ch) * s + i];
            }
        }
    }
    out
}

fn to_nhwc64(x: &[f64], shape: &[usize]) -> Vec<f64> {
    let as32: Vec<f32> = (0..x.len()).map(|i| i as f32).collect();
    to_nhwc(&as32, shape).iter().map(|&i| x[i as usize]).collect()
}

#[test]
fn batch_norm_gradients_match_finite_differences() {
    let shape = [3, 2, 5];
    let (x, z, dy) = (values(30, 1), values(30, 2), values(30, 3));
    let (w, b) = (values(2, 4), values(2, 5));
    let (rm, rv) = (values(2, 6), positive(2, 7));
    for (training, tracking, fused) in [
        (true, true, Fused::None),
        (true, false, Fused::Relu),
        (false, false, Fused::None),
        (false, true, Fused::AddRelu),
        (true, true, Fused::AddRelu),
    ] {
        let args = BatchNormArgs {
            weight: Some(&w),
            bias: Some(&b),
            running_mean: tracking.then_some(&rm[..]),
            running_var: tracking.then_some(&rv[..]),
            training,
            fused,
            ..BatchNormArgs::new(&shape, Layout::Nchw)
        };
        let z = (fused == Fused::AddRelu).then_some(&z[..]);
        let what = format!("bn training={training} tracking={tracking} {fused:?}");
        let g = r::batch_norm_backward(&args, &x, z, &dy);
        let fwd = |x: &[f32]| r::batch_norm_forward(&args, x, z).y;
        check_dx(&x, &dy, fwd, &g.dx, &format!("{what} dx"));
        let fw = |w: &[f32]| r::batch_norm_forward(&BatchNormArgs { weight: Some(w), ..args }, &x, z).y;
        check_dparam(&w, &dy, fw, &g.dweight, &format!("{what} dweight"));
        let fb = |b: &[f32]| r::batch_norm_forward(&BatchNormArgs { bias: Some(b), ..args }, &x, z).y;
        check_dparam(&b, &dy, fb, &g.dbias, &format!("{what} dbias"));
        if let Some(z) = z {
            let fz = |z: &[f32]| r::batch_norm_forward(&args, &x, Some(z)).y;
            check_dx(z, &dy, fz, g.dz.as_ref().unwrap(), &format!("{what} dz"));
        } else {
            assert!(g.dz.is_none());
        }
    }
}

#[test]
fn batch_norm_running_stats_and_modes() {
    let shape = [4, 3];
    let x = values(12, 11);
    let (rm, rv) = (values(3, 12), positive(3, 13));
    let train = BatchNormArgs {
        running_mean: Some(&rm),
        running_var: Some(&rv),
        momentum: None,
        num_batches_tracked: 3,
        ..BatchNormArgs::new(&shape, Layout::Nchw)
    };
    let f = r::batch_norm_forward(&train, &x, None);
    assert_eq!(f.num_batches_tracked, 4);
    for c in 0..3 {
        let col: Vec<f64> = (0..4).map(|n| f64::from(x[n * 3 + c])).collect();
        let mean = col.iter().sum::<f64>() / 4.0;
        let unbiased = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0;
        let want_rm = 0.75 * f64::from(rm[c]) + 0.25 * mean;
        let want_rv = 0.75 * f64::from(rv[c]) + 0.25 * unbiased;
        assert!((f.running_mean.as_ref().unwrap()[c] - want_rm).abs() < 1e-12);
        assert!((f.running_var.as_ref().unwrap()[c] - want_rv).abs() < 1e-12);
        assert!((f.save_mean[c] - mean).abs() < 1e-12);
    }
    // Eval with running stats: unchanged stats, save_* are the running ones.
    let eval = BatchNormArgs { training: false, ..train };
    let f = r::batch_norm_forward(&eval, &x, None);
    assert_eq!(f.num_batches_tracked, 3);
    assert_eq!(f.running_mean.unwrap(), rm.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    assert_eq!(f.save_invstd[0], 1.0 / (f64::from(rv[0]) + 1e-5).sqrt());
    // Not tracking: batch statistics in both modes, nothing to update.
    let untracked = BatchNormArgs::new(&shape, Layout::Nchw);
    let a = r::batch_norm_forward(&untracked, &x, None);
    let b = r::batch_norm_forward(&BatchNormArgs { training: false, ..untracked }, &x, None);
    assert_eq!(a.y, b.y);
    assert_eq!((a.running_mean, a.num_batches_tracked), (None, 0));
}

#[test]
fn batch_norm_and_group_norm_layouts_agree() {
    let shape = [2, 4, 3, 5];
    let x = values(120, 21);
    let dy = values(120, 22);
    let (xh, dyh) = (to_nhwc(&x, &shape), to_nhwc(&dy, &shape));
    let w = values(4, 23);
    let nchw = BatchNormArgs { weight: Some(&w), ..BatchNormArgs::new(&shape, Layout::Nchw) };
    let nhwc = BatchNormArgs { layout: Layout::Nhwc, ..nchw };
    let a = r::batch_norm_forward(&nchw, &x, None);
    let b = r::batch_norm_forward(&nhwc, &xh, None);
    assert_close(&b.y, &to_nhwc64(&a.y, &shape), 1e-14, "bn nhwc y");
    assert_close(&b.save_invstd, &a.save_invstd, 1e-14, "bn nhwc invstd");
    let ga = r::batch_norm_backward(&nchw, &x, None, &dy);
    let gb = r::batch_norm_backward(&nhwc, &xh, None, &dyh);
    assert_close(&gb.dx, &to_nhwc64(&ga.dx, &shape), 1e-13, "bn nhwc dx");
    assert_close(&gb.dweight, &ga.dweight, 1e-13, "bn nhwc dweight");

    let gn = r::GroupNormArgs {
        shape: &shape,
        layout: Layout::Nchw,
        num_groups: 2,
        weight: Some(&w),
        bias: None,
        eps: 1e-5,
    };
    let gnh = r::GroupNormArgs { layout: Layout::Nhwc, ..gn };
    let a = r::group_norm_forward(&gn, &x);
    let b = r::group_norm_forward(&gnh, &xh);
    assert_close(&b.y, &to_nhwc64(&a.y, &shape), 1e-14, "gn nhwc y");
    assert_close(&b.rstd, &a.rstd, 1e-14, "gn nhwc rstd");
    let ga = r::group_norm_backward(&gn, &x, &dy);
    let gb = r::group_norm_backward(&gnh, &xh, &dyh);
    assert_close(&gb.dx, &to_nhwc64(&ga.dx, &shape), 1e-13, "gn nhwc dx");
    assert_close(&gb.dbias, &ga.dbias, 1e-13, "gn nhwc dbias");
}

#[test]
fn norm_family_gradients_match_finite_differences() {
    let x = values(24, 31);
    let dy = values(24, 32);
    let (w, b) = (values(6, 33), values(6, 34));

    let ln = r::LayerNormArgs { shape: &[2, 2, 6], normalized_shape: &[2, 6], weight: None, bias: None, eps: 1e-5 };
    let w12 = values(12, 35);
    let ln = r::LayerNormArgs { weight: Some(&w12), ..ln };
    let g = r::layer_norm_backward(&ln, &x, &dy);
    check_dx(&x, &dy, |x| r::layer_norm_forward(&ln, x).y, &g.dx, "ln dx");
    let fw = |w: &[f32]| r::layer_norm_forward(&r::LayerNormArgs { weight: Some(w), ..ln }, &x).y;
    check_dparam(&w12, &dy, fw, &g.dweight, "ln dweight");

    for weight in [None, Some(&w[..])] {
        let rms = r::RmsNormArgs { shape: &[4, 6], normalized_shape: &[6], weight, eps: None };
        let g = r::rms_norm_backward(&rms, &x, &dy);
        check_dx(&x, &dy, |x| r::rms_norm_forward(&rms, x).y, &g.dx, "rms dx");
        let fw = |w: &[f32]| r::rms_norm_forward(&r::RmsNormArgs { weight: Some(w), ..rms }, &x).y;
        let ones = vec![1.0f32; 6];
        check_dparam(weight.unwrap_or(&ones), &dy, fw, &g.dweight, "rms dweight");
    }

    for layout in [Layout::Nchw, Layout::Nhwc] {
        let gn =
            r::GroupNormArgs { shape: &[2, 6, 2], layout, num_groups: 3, weight: Some(&w), bias: Some(&b), eps: 1e-5 };
        let g = r::group_norm_backward(&gn, &x, &dy);
        check_dx(&x, &dy, |x| r::group_norm_forward(&gn, x).y, &g.dx, "gn dx");
        let fw = |w: &[f32]| r::group_norm_forward(&r::GroupNormArgs { weight: Some(w), ..gn }, &x).y;
        check_dparam(&w, &dy, fw, &g.dweight, "gn dweight");
        let fb = |b: &[f32]| r::group_norm_forward(&r::GroupNormArgs { bias: Some(b), ..gn }, &x).y;
        check_dparam(&b, &dy, fb, &g.dbias, "gn dbias");
    }
}

#[test]
fn rms_norm_default_eps_is_f32_epsilon() {
    let x = values(8, 41);
    let args = r::RmsNormArgs { shape: &[2, 4], normalized_shape: &[4], weight: None, eps: None };
    assert_eq!(args.eps_value(), f64::from(f32::EPSILON));
    let explicit = r::RmsNormArgs { eps: Some(f64::from(f32::EPSILON)), ..args };
    assert_eq!(r::rms_norm_forward(&args, &x), r::rms_norm_forward(&explicit, &x));
}

/// PyTorch's `instance_norm` is `batch_norm` on the input seen as
/// `(1, N*C, spatial)` with the running stats repeated `N` times, the new
/// running stats then averaged over `N`; check against exactly that.
#[test]
fn instance_norm_matches_batch_norm_on_reshaped_input() {
    let (n, c, s) = (3, 4, 5);
    let shape = [n, c, s];
    let x = values(n * c * s, 51);
    let dy = values(n * c * s, 52);
    let (rm, rv) = (values(c, 53), positive(c, 54));
    let w = values(c, 55);
    let args = r::InstanceNormArgs {
        shape: &shape,
        layout: Layout::Nchw,
        weight: Some(&w),
        bias: None,
        running_mean: Some(&rm),
        running_var: Some(&rv),
        use_input_stats: true,
        momentum: 0.1,
        eps: 1e-5,
    };
    let f = r::instance_norm_forward(&args, &x);
    let (rm_rep, rv_rep) = (rm.repeat(n), rv.repeat(n));
    let bn_shape = [1, n * c, s];
    let bn = BatchNormArgs {
        running_mean: Some(&rm_rep),
        running_var: Some(&rv_rep),
        ..BatchNormArgs::new(&bn_shape, Layout::Nchw)
    };
    let want = r::batch_norm_forward(&bn, &x, None);
    let w_rep = w.repeat(n);
    let want_y = r::batch_norm_forward(&BatchNormArgs { weight: Some(&w_rep), ..bn }, &x, None).y;
    assert_close(&f.y, &want_y, 1e-14, "in y");
    assert_close(&f.mean, &want.save_mean, 1e-14, "in mean");
    assert_close(&f.rstd, &want.save_invstd, 1e-14, "in rstd");
    let avg =
        |v: &[f64]| -> Vec<f64> { (0..c).map(|ch| (0..n).map(|b| v[b * c + ch]).sum::<f64>() / n as f64).collect() };
    assert_close(f.running_mean.as_ref().unwrap(), &avg(want.running_mean.as_ref().unwrap()), 1e-14, "in rm");
    assert_close(f.running_var.as_ref().unwrap(), &avg(want.running_var.as_ref().unwrap()), 1e-14, "in rv");

    let g = r::instance_norm_backward(&args, &x, &dy);
    check_dx(&x, &dy, |x| r::instance_norm_forward(&args, x).y, &g.dx, "in dx");

    // Eval with running stats is BatchNorm in eval mode.
    let eval = r::InstanceNormArgs { use_input_stats: false, ..args };
    let f = r::instance_norm_forward(&eval, &x);
    let bn_eval = BatchNormArgs {
        weight: Some(&w),
        running_mean: Some(&rm),
        running_var: Some(&rv),
        training: false,
        ..BatchNormArgs::new(&shape, Layout::Nchw)
    };
    assert_eq!(f.y, r::batch_norm_forward(&bn_eval, &x, None).y);
    assert_eq!(f.running_mean.unwrap(), rm.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    assert_eq!(f.mean.len(), n * c);
    let g = r::instance_norm_backward(&eval, &x, &dy);
    assert_eq!(g.dx, r::batch_norm_backward(&bn_eval, &x, None, &dy).dx);
}

#[test]
fn fold_conv_transpose_matches_transposed_conv() {
    // Conv-transpose weight (in=3, out=4, k=2) vs the same numbers as a conv
    // weight (out=4, in=3, k=2).
    let (cin, cout, k) = (3, 4, 2);
    let wt = values(cin * cout * k, 61);
    let mut wc = vec![0.0f32; wt.len()];
    for i in 0..cin {
        for o in 0..cout {
            for j in 0..k {
                wc[(o * cin + i) * k + j] = wt[(i * cout + o) * k + j];
            }
        }
    }
    let (rm, rv, g, b, lb) = (values(4, 62), positive(4, 63), values(4, 64), values(4, 65), values(4, 66));
    let bn = r::FoldBn { running_mean: &rm, running_var: &rv, weight: Some(&g), bias: Some(&b), eps: 1e-5 };
    let (fwt, fbt) = r::fold_batch_norm(&wt, Some(&lb), &[cin, cout, k], 1, bn);
    let (fwc, fbc) = r::fold_batch_norm(&wc, Some(&lb), &[cout, cin, k], 0, bn);
    assert_eq!(fbt, fbc);
    for i in 0..cin {
        for o in 0..cout {
            for j in 0..k {
                assert_eq!(fwt[(i * cout + o) * k + j], fwc[(o * cin + i) * k + j]);
            }
        }
    }
    // Folding then applying equals applying then normalizing (linear, one input row).
    let row = values(cin * k, 67);
    let lin_w = wc.clone();
    let (fw, fb) = r::fold_batch_norm(&lin_w, Some(&lb), &[cout, cin * k], 0, bn);
    for o in 0..cout {
        let pre: f64 =
            (0..cin * k).map(|j| f64::from(lin_w[o * cin * k + j]) * f64::from(row[j])).sum::<f64>() + f64::from(lb[o]);
        let bn_out = (pre - f64::from(rm[o])) / (f64::from(rv[o]) + 1e-5).sqrt() * f64::from(g[o]) + f64::from(b[o]);
        let folded: f64 = (0..cin * k).map(|j| fw[o * cin * k + j] * f64::from(row[j])).sum::<f64>() + fb[o];
        assert!((bn_out - folded).abs() < 1e-12, "{bn_out} vs {folded}");
    }
}

#[test]
#[should_panic(expected = "expected more than 1 value per channel")]
fn batch_norm_training_with_one_value_per_channel_panics() {
    let args = BatchNormArgs::new(&[1, 3], Layout::Nchw);
    r::batch_norm_forward(&args, &[1.0, 2.0, 3.0], None);
}
