//! Running reference cases (see [`golden`](crate::golden)) through the GPU
//! ops and comparing every expected tensor the crate can produce: the engine
//! behind `wgpu-norm check`, usable from tests and applications too.

use std::collections::BTreeMap;
use std::path::Path;

use crate::batch_norm::{BatchNorm, BatchNormConfig, BatchNormState};
use crate::context::Context;
use crate::fold::LayerKind;
use crate::golden::{BatchNormCase, Case, FoldCase};
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
        "fold_batch_norm" => fold_outputs(ctx, &FoldCase::from_case(case)?),
        op => Err(case.error(format!("unknown op {op:?}"))),
    }
}

fn batch_norm_outputs(ctx: &Context, case: &BatchNormCase) -> Result<Produced> {
    let c = case.shape[1];
    let config = BatchNormConfig {
        num_features: c,
        eps: case.eps as f32,
        momentum: case.momentum.map(|m| m as f32),
        affine: case.weight.is_some(),
        track_running_stats: case.running_mean.is_some(),
        check_finite: false,
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
    let tensor = |data: &[f32]| Tensor::from_slice(ctx, data, &case.shape, case.layout);
    let zeros = || Tensor::zeros(ctx, &case.shape, case.layout);
    let x = tensor(&case.x)?;
    let z = case.z.as_deref().map(tensor).transpose()?;
    let y = zeros()?;
    let training = case.training;
    match (case.fused, &z) {
        (Fused::None, _) => bn.forward_sync(&x.view(), &y.view(), training)?,
        (Fused::Relu, _) => ctx.run(|e| bn.forward_relu(e, &x.view(), &y.view(), training))?,
        (Fused::AddRelu, Some(z)) => ctx.run(|e| bn.forward_add_relu(e, &x.view(), &z.view(), &y.view(), training))?,
        (Fused::AddRelu, None) => return Err(crate::Error::Parameter("add_relu case without z".into())),
    }
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
        let dy = tensor(dy)?;
        let dx = zeros()?;
        match (case.fused, &z) {
            (Fused::None, _) => bn.backward_sync(&x.view(), &dy.view(), &dx.view(), training)?,
            (Fused::Relu, _) => ctx.run(|e| bn.backward_relu(e, &x.view(), &dy.view(), &dx.view(), training))?,
            (Fused::AddRelu, Some(z)) => {
                let dz = zeros()?;
                ctx.run(|e| {
                    bn.backward_add_relu(e, &x.view(), &z.view(), &dy.view(), &dx.view(), &dz.view(), training)
                })?;
                out.insert("dz".to_string(), dz.read(ctx)?);
            }
            (Fused::AddRelu, None) => unreachable!("checked above"),
        }
        out.insert("dx".to_string(), dx.read(ctx)?);
        let (dweight, dbias) = bn.read_grads()?;
        out.insert("dweight".to_string(), dweight);
        out.insert("dbias".to_string(), dbias);
    }
    Ok(Produced::Outputs(out))
}

/// Folds on the GPU: the case's BatchNorm state into its layer's weights.
fn fold_outputs(ctx: &Context, case: &FoldCase) -> Result<Produced> {
    let kind = LayerKind::parse(&case.layer)
        .ok_or_else(|| crate::Error::Parameter(format!("unknown layer {:?}", case.layer)))?;
    let c = case.shape[case.out_axis];
    let config = BatchNormConfig::new(c).eps(case.eps as f32).affine(case.weight.is_some());
    let bn = BatchNorm::new(ctx, config)?;
    let initial = BatchNormState::initial(c);
    bn.write_state(&BatchNormState {
        weight: case.weight.clone().unwrap_or(initial.weight),
        bias: case.bias.clone().unwrap_or(initial.bias),
        running_mean: case.running_mean.clone(),
        running_var: case.running_var.clone(),
        num_batches_tracked: 0,
    })?;
    let flat = |data: &[f32], shape: &[usize]| Tensor::from_slice(ctx, data, shape, crate::Layout::Nchw);
    let weight = flat(&case.layer_weight, &case.shape)?;
    let bias = case.layer_bias.as_deref().map(|b| flat(b, &[c])).transpose()?;
    let folded_weight = Tensor::zeros(ctx, &case.shape, crate::Layout::Nchw)?;
    let folded_bias = Tensor::zeros(ctx, &[c], crate::Layout::Nchw)?;
    let bias_view = bias.as_ref().map(Tensor::view);
    ctx.run(|e| bn.fold_into(e, kind, &weight.view(), bias_view.as_ref(), &folded_weight.view(), &folded_bias.view()))?;
    let mut out = BTreeMap::new();
    out.insert("folded_weight".to_string(), folded_weight.read(ctx)?);
    out.insert("folded_bias".to_string(), folded_bias.read(ctx)?);
    Ok(Produced::Outputs(out))
}
