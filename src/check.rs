//! Running reference cases (see [`golden`](crate::golden)) through the GPU
//! ops and comparing every expected tensor the crate can produce: the engine
//! behind `wgpu-norm check`, usable from tests and applications too.

use std::collections::BTreeMap;
use std::path::Path;

use crate::batch_norm::{BatchNorm, BatchNormConfig, BatchNormState};
use crate::context::Context;
use crate::golden::{BatchNormCase, Case};
use crate::reference::Fused;
use crate::tensor::Tensor;
use crate::Result;

/// Default tolerance of [`compare`]: 1e-3 of the expected magnitude.
pub const DEFAULT_TOLERANCE: f64 = 1e-3;

/// How one case ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every compared tensor within tolerance; the worst normalized error.
    Pass { worst: f64 },
    /// A tensor out of tolerance (the worst one), or the op failed (`tensor`
    /// is then `"-"` and `error` infinite, `message` says why).
    Fail { tensor: String, error: f64, message: Option<String> },
    /// The crate does not run this op (yet); `reason` says which.
    Skipped { reason: String },
}

/// The result of one case file.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseReport {
    /// File stem, or the path when the file could not be read.
    pub name: String,
    pub path: String,
    /// The case's `op`, empty when unreadable.
    pub op: String,
    pub outcome: Outcome,
    /// Normalized error of every compared tensor.
    pub errors: BTreeMap<String, f64>,
}

/// `max|got - want| / max(1, max|want|)`; NaN where only one side is NaN
/// counts as infinite, NaN on both sides as equal.
pub fn normalized_error(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(1.0f64, |m, w| if w.is_finite() { m.max(w.abs()) } else { m });
    let worst = got.iter().zip(want).fold(0.0f64, |worst, (&g, &w)| {
        let g = f64::from(g);
        let e = if g.is_nan() || w.is_nan() {
            if g.is_nan() == w.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else if g == w {
            0.0
        } else {
            (g - w).abs()
        };
        worst.max(e)
    });
    worst / scale
}

/// Loads and runs the case at `path`; an unreadable or malformed file is a
/// failed case whose message names the file.
pub fn check_file(ctx: &Context, path: &Path, tol: f64) -> CaseReport {
    match Case::load(path) {
        Ok(case) => check_case(ctx, &case, tol),
        Err(e) => failed(path.display().to_string(), path, String::new(), e.to_string()),
    }
}

fn failed(name: String, path: &Path, op: String, message: String) -> CaseReport {
    CaseReport {
        name,
        path: path.display().to_string(),
        op,
        outcome: Outcome::Fail { tensor: "-".into(), error: f64::INFINITY, message: Some(message) },
        errors: BTreeMap::new(),
    }
}

/// Runs one loaded case on the GPU and compares what it produced.
pub fn check_case(ctx: &Context, case: &Case, tol: f64) -> CaseReport {
    let report = |outcome, errors| CaseReport {
        name: case.name.clone(),
        path: case.path.display().to_string(),
        op: case.op().to_string(),
        outcome,
        errors,
    };
    let got = match gpu_outputs(ctx, case) {
        Ok(Produced::Outputs(got)) => got,
        Ok(Produced::Unsupported(reason)) => return report(Outcome::Skipped { reason }, BTreeMap::new()),
        Err(e) => return failed(case.name.clone(), &case.path, case.op().to_string(), e.to_string()),
    };
    let mut errors = BTreeMap::new();
    for name in case.expected_names() {
        if let (Some(g), Some(want)) = (got.get(name), case.expected(name)) {
            errors.insert(name.to_string(), normalized_error(g, &want.data));
        }
    }
    if errors.is_empty() {
        let message = "the case has no expected tensor this op produces".to_string();
        return failed(case.name.clone(), &case.path, case.op().to_string(), message);
    }
    let (worst_name, worst) =
        errors.iter().fold(("", 0.0f64), |(n, w), (k, &e)| if e > w || e.is_nan() { (k, e) } else { (n, w) });
    let outcome = if worst <= tol {
        Outcome::Pass { worst }
    } else {
        Outcome::Fail { tensor: worst_name.to_string(), error: worst, message: None }
    };
    report(outcome, errors)
}

enum Produced {
    Outputs(BTreeMap<String, Vec<f32>>),
    Unsupported(String),
}

fn gpu_outputs(ctx: &Context, case: &Case) -> Result<Produced> {
    match case.op() {
        "batch_norm" => batch_norm_outputs(ctx, &BatchNormCase::from_case(case)?),
        op @ ("layer_norm" | "rms_norm" | "group_norm" | "instance_norm") => {
            Ok(Produced::Unsupported(format!("{op} is not implemented yet (the normalization family)")))
        }
        "fold_batch_norm" => Ok(Produced::Unsupported("fold_batch_norm is not implemented yet (fusion)".into())),
        op => Err(case.error(format!("unknown op {op:?}"))),
    }
}

fn batch_norm_outputs(ctx: &Context, case: &BatchNormCase) -> Result<Produced> {
    if case.fused != Fused::None {
        return Ok(Produced::Unsupported(format!(
            "fused = {} is not implemented yet (fused BatchNorm)",
            case.fused.name()
        )));
    }
    let c = case.shape[1];
    let config = BatchNormConfig {
        num_features: c,
        eps: case.eps as f32,
        momentum: case.momentum.map(|m| m as f32),
        affine: case.weight.is_some(),
        track_running_stats: case.running_mean.is_some(),
    };
    let bn = BatchNorm::new(ctx, config)?;
    let initial = BatchNormState::initial(c);
    bn.write_state(&BatchNormState {
        weight: case.weight.clone().unwrap_or(initial.weight),
        bias: case.bias.clone().unwrap_or(initial.bias),
        running_mean: case.running_mean.clone().unwrap_or(initial.running_mean),
        running_var: case.running_var.clone().unwrap_or(initial.running_var),
        num_batches_tracked: case.num_batches_tracked,
    })?;
    let x = Tensor::from_slice(ctx, &case.x, &case.shape, case.layout)?;
    let y = Tensor::zeros(ctx, &case.shape, case.layout)?;
    bn.forward_sync(&x.view(), &y.view(), case.training)?;
    let mut out = BTreeMap::new();
    out.insert("y".to_string(), y.read(ctx)?);
    if case.args().uses_batch_stats() {
        let (mean, invstd) = bn.read_saved()?;
        out.insert("save_mean".to_string(), mean);
        out.insert("save_invstd".to_string(), invstd);
    }
    if bn.config().track_running_stats {
        let state = bn.read_state()?;
        out.insert("running_mean_out".to_string(), state.running_mean);
        out.insert("running_var_out".to_string(), state.running_var);
    }
    if let Some(dy) = &case.dy {
        let dy = Tensor::from_slice(ctx, dy, &case.shape, case.layout)?;
        let dx = Tensor::zeros(ctx, &case.shape, case.layout)?;
        bn.backward_sync(&x.view(), &dy.view(), &dx.view(), case.training)?;
        out.insert("dx".to_string(), dx.read(ctx)?);
        let (dweight, dbias) = bn.read_grads()?;
        out.insert("dweight".to_string(), dweight);
        out.insert("dbias".to_string(), dbias);
    }
    Ok(Produced::Outputs(out))
}
