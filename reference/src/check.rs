//! Running reference cases (see [`golden`](crate::golden)) through the GPU
//! ops and comparing every expected tensor the library can produce: the
//! engine behind `wgpu-norm check`, and the tests' way to run a case.

use std::collections::BTreeMap;
use std::path::Path;

use crate::golden::{BatchNormCase, Case, FoldCase, GroupNormCase, LayerNormCase, RmsNormCase};
use crate::Fused;
pub use crate::{normalized_error, DEFAULT_TOLERANCE};
use wgpu_norm::{
    Affine, BatchNorm, BatchNormConfig, BatchNormState, Context, GroupNorm, GroupNormConfig, InstanceNorm,
    InstanceNormConfig, InstanceNormState, LayerKind, LayerNorm, LayerNormConfig, Layout, Mode, Result, RmsNorm,
    RmsNormConfig, Tensor,
};

/// How one case ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every compared tensor within tolerance; the worst normalized error.
    Pass { worst: f64 },
    /// A tensor out of tolerance (the worst one), or the op failed (`tensor`
    /// is then `"-"` and `error` infinite, `message` says why).
    Fail { tensor: String, error: f64, message: Option<String> },
    /// The crate does not run this op; `reason` says which. (Every op of the
    /// case format runs today; the variant stays for formats that grow.)
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

/// Loads and runs the case at `path`; an unreadable or malformed file is a
/// failed case whose message names the file.
pub fn check_file(ctx: &Context, path: &Path, tol: f64) -> CaseReport {
    match Case::load(path) {
        Ok(case) => check_case(ctx, &case, tol),
        // The report names the file; its message need not again.
        Err(wgpu_norm::Error::Case { message, .. }) => failed(path.display().to_string(), path, String::new(), message),
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
        Ok(got) => got,
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
        let message = match (got.get(worst_name), case.expected(worst_name)) {
            (Some(g), Some(want)) if g.len() != want.data.len() => {
                Some(format!("{} values, the case expects {}", g.len(), want.data.len()))
            }
            (Some(g), Some(want)) if worst.is_infinite() => {
                // The first value off by a non-finite amount (NaN against a
                // number, or an infinity against anything else).
                let off = |g: f32, w: f64| {
                    let g = f64::from(g);
                    !(g.is_nan() && w.is_nan()) && g != w && !(g - w).is_finite()
                };
                let at = g.iter().zip(&want.data).position(|(&g, &w)| off(g, w));
                at.map(|i| format!("value {i} is {} where the reference is {}", g[i], want.data[i]))
            }
            _ => None,
        };
        Outcome::Fail { tensor: worst_name.to_string(), error: worst, message }
    };
    report(outcome, errors)
}

/// What the GPU produced for a case, under the format's tensor names.
type Produced = BTreeMap<String, Vec<f32>>;

fn gpu_outputs(ctx: &Context, case: &Case) -> Result<Produced> {
    match case.op() {
        "batch_norm" => batch_norm_outputs(ctx, &BatchNormCase::from_case(case)?),
        "layer_norm" => layer_norm_outputs(ctx, &LayerNormCase::from_case(case)?),
        "rms_norm" => rms_norm_outputs(ctx, &RmsNormCase::from_case(case)?),
        "group_norm" => group_norm_outputs(ctx, &GroupNormCase::from_case(case)?),
        "instance_norm" => instance_norm_outputs(ctx, case, &GroupNormCase::from_case(case)?),
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
    let z_tensor = case.z.as_deref().map(tensor).transpose()?;
    let y = zeros()?;
    let mode = Mode::from_training(case.training);
    let z = z_tensor.as_ref().map(Tensor::view);
    let no_z = || wgpu_norm::Error::Parameter("add_relu case without z".into());
    let forward = case.fused.epilogue(z.as_ref(), None).ok_or_else(no_z)?;
    ctx.run(|e| bn.forward(e, &x.view(), &y.view(), mode, forward))?;
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
        let dz = (case.fused == Fused::AddRelu).then(zeros).transpose()?;
        let dz_view = dz.as_ref().map(Tensor::view);
        let backward = case.fused.epilogue(z.as_ref(), dz_view.as_ref()).ok_or_else(no_z)?;
        ctx.run(|e| bn.backward(e, &x.view(), &dy.view(), &dx.view(), mode, backward))?;
        if let Some(dz) = &dz {
            out.insert("dz".to_string(), dz.read(ctx)?);
        }
        out.insert("dx".to_string(), dx.read(ctx)?);
        insert_grads(&mut out, bn.affine(), true)?;
    }
    Ok(out)
}

/// Folds on the GPU: the case's BatchNorm state into its layer's weights.
fn fold_outputs(ctx: &Context, case: &FoldCase) -> Result<Produced> {
    let kind = LayerKind::parse(&case.layer)
        .ok_or_else(|| wgpu_norm::Error::Parameter(format!("unknown layer {:?}", case.layer)))?;
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
    let flat = |data: &[f32], shape: &[usize]| Tensor::from_slice(ctx, data, shape, Layout::Nchw);
    let weight = flat(&case.layer_weight, &case.shape)?;
    let bias = case.layer_bias.as_deref().map(|b| flat(b, &[c])).transpose()?;
    let folded_weight = Tensor::zeros(ctx, &case.shape, Layout::Nchw)?;
    let folded_bias = Tensor::zeros(ctx, &[c], Layout::Nchw)?;
    let bias_view = bias.as_ref().map(Tensor::view);
    ctx.run(|e| bn.fold_into(e, kind, &weight.view(), bias_view.as_ref(), &folded_weight.view(), &folded_bias.view()))?;
    let mut out = BTreeMap::new();
    out.insert("folded_weight".to_string(), folded_weight.read(ctx)?);
    out.insert("folded_bias".to_string(), folded_bias.read(ctx)?);
    Ok(out)
}

/// A family case's input tensors.
struct Inputs<'a> {
    x: &'a [f32],
    dy: Option<&'a [f32]>,
    shape: &'a [usize],
    layout: Layout,
}

/// Runs y (and, given dy, dx) through `forward` / `backward` on fresh tensors.
fn run_pair(
    ctx: &Context,
    inputs: Inputs<'_>,
    forward: impl FnOnce(&Tensor, &Tensor) -> Result<()>,
    backward: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<()>,
    out: &mut BTreeMap<String, Vec<f32>>,
) -> Result<()> {
    let Inputs { x, dy, shape, layout } = inputs;
    let x = Tensor::from_slice(ctx, x, shape, layout)?;
    let y = Tensor::zeros(ctx, shape, layout)?;
    forward(&x, &y)?;
    out.insert("y".to_string(), y.read(ctx)?);
    if let Some(dy) = dy {
        let dy = Tensor::from_slice(ctx, dy, shape, layout)?;
        let dx = Tensor::zeros(ctx, shape, layout)?;
        backward(&x, &dy, &dx)?;
        out.insert("dx".to_string(), dx.read(ctx)?);
    }
    Ok(())
}

/// Writes a case's weight and bias, where it has them, into a layer's.
fn write_affine(affine: &Affine, weight: &Option<Vec<f32>>, bias: &Option<Vec<f32>>) -> Result<()> {
    if let Some(w) = weight {
        affine.write_weight(w)?;
    }
    if let Some(b) = bias {
        affine.write_bias(b)?;
    }
    Ok(())
}

/// The mean and rstd a forward saved, where it saved them.
fn insert_saved(out: &mut Produced, saved: Option<(Vec<f32>, Vec<f32>)>) {
    if let Some((mean, rstd)) = saved {
        out.insert("mean".to_string(), mean);
        out.insert("rstd".to_string(), rstd);
    }
}

/// dweight, and dbias where the layer has a bias, of the last backward.
fn insert_grads(out: &mut Produced, affine: &Affine, bias: bool) -> Result<()> {
    let (dweight, dbias) = affine.read_grads()?;
    out.insert("dweight".to_string(), dweight);
    if bias {
        out.insert("dbias".to_string(), dbias);
    }
    Ok(())
}

fn layer_norm_outputs(ctx: &Context, case: &LayerNormCase) -> Result<Produced> {
    let config = LayerNormConfig::new(&case.normalized_shape)
        .eps(case.eps as f32)
        .elementwise_affine(case.weight.is_some() || case.bias.is_some())
        .bias(case.bias.is_some());
    let ln = LayerNorm::new(ctx, config)?;
    write_affine(ln.affine(), &case.weight, &case.bias)?;
    let mut out = BTreeMap::new();
    let mut saved = None;
    run_pair(
        ctx,
        Inputs { x: &case.x, dy: case.dy.as_deref(), shape: &case.shape, layout: Layout::Nchw },
        |x, y| {
            ln.context().run(|e| ln.forward(e, &x.view(), &y.view()))?;
            saved = Some(ln.read_saved()?);
            Ok(())
        },
        |x, dy, dx| ln.context().run(|e| ln.backward(e, &x.view(), &dy.view(), &dx.view())),
        &mut out,
    )?;
    insert_saved(&mut out, saved);
    if case.dy.is_some() {
        insert_grads(&mut out, ln.affine(), true)?;
    }
    Ok(out)
}

fn rms_norm_outputs(ctx: &Context, case: &RmsNormCase) -> Result<Produced> {
    let config = RmsNormConfig::new(&case.normalized_shape)
        .eps(case.eps.map(|e| e as f32))
        .elementwise_affine(case.weight.is_some());
    let rn = RmsNorm::new(ctx, config)?;
    write_affine(rn.affine(), &case.weight, &None)?;
    let mut out = BTreeMap::new();
    let mut saved = None;
    run_pair(
        ctx,
        Inputs { x: &case.x, dy: case.dy.as_deref(), shape: &case.shape, layout: Layout::Nchw },
        |x, y| {
            rn.context().run(|e| rn.forward(e, &x.view(), &y.view()))?;
            saved = Some(rn.read_saved()?);
            Ok(())
        },
        |x, dy, dx| rn.context().run(|e| rn.backward(e, &x.view(), &dy.view(), &dx.view())),
        &mut out,
    )?;
    if let Some(rstd) = saved {
        out.insert("rstd".to_string(), rstd);
    }
    if case.dy.is_some() {
        insert_grads(&mut out, rn.affine(), false)?;
    }
    Ok(out)
}

fn group_norm_outputs(ctx: &Context, case: &GroupNormCase) -> Result<Produced> {
    let c = case.shape[1];
    let config = GroupNormConfig::new(case.num_groups, c).eps(case.eps as f32).affine(case.weight.is_some());
    let gn = GroupNorm::new(ctx, config)?;
    write_affine(gn.affine(), &case.weight, &case.bias)?;
    let mut out = BTreeMap::new();
    let mut saved = None;
    run_pair(
        ctx,
        Inputs { x: &case.x, dy: case.dy.as_deref(), shape: &case.shape, layout: case.layout },
        |x, y| {
            gn.context().run(|e| gn.forward(e, &x.view(), &y.view()))?;
            saved = Some(gn.read_saved()?);
            Ok(())
        },
        |x, dy, dx| gn.context().run(|e| gn.backward(e, &x.view(), &dy.view(), &dx.view())),
        &mut out,
    )?;
    insert_saved(&mut out, saved);
    if case.dy.is_some() {
        insert_grads(&mut out, gn.affine(), true)?;
    }
    Ok(out)
}

/// InstanceNorm: the documented format has no running statistics; a case
/// that carries `running_mean` / `running_var` anyway runs with tracking on,
/// in the mode of its `training` key (default training), with its `momentum`
/// (a number or `none`; default 0.1).
fn instance_norm_outputs(ctx: &Context, raw: &Case, case: &GroupNormCase) -> Result<Produced> {
    let c = case.shape[1];
    let running_mean = raw.input_f32_opt("running_mean", c)?;
    let running_var = raw.input_f32_opt("running_var", c)?;
    if running_mean.is_some() != running_var.is_some() {
        return Err(raw.error("running_mean and running_var come together"));
    }
    let track = running_mean.is_some();
    let training = raw.meta_bool_opt("training")?.unwrap_or(true);
    let momentum = match raw.meta.get("momentum").map(|s| s.trim()) {
        None => Some(0.1),
        Some(s) if s.eq_ignore_ascii_case("none") => None,
        Some(_) => Some(raw.meta_f64("momentum")? as f32),
    };
    let config = InstanceNormConfig::new(c)
        .eps(case.eps as f32)
        .momentum(momentum)
        .affine(case.weight.is_some())
        .track_running_stats(track);
    let inorm = InstanceNorm::new(ctx, config)?;
    let initial = InstanceNormState::initial(c);
    inorm.write_state(&InstanceNormState {
        weight: case.weight.clone().unwrap_or(initial.weight),
        bias: case.bias.clone().unwrap_or(initial.bias),
        running_mean: running_mean.unwrap_or(initial.running_mean),
        running_var: running_var.unwrap_or(initial.running_var),
    })?;
    let uses_input_stats = training || !track;
    let mut out = BTreeMap::new();
    let mut saved = None;
    run_pair(
        ctx,
        Inputs { x: &case.x, dy: case.dy.as_deref(), shape: &case.shape, layout: case.layout },
        |x, y| {
            inorm.context().run(|e| inorm.forward(e, &x.view(), &y.view(), training))?;
            if uses_input_stats {
                saved = Some(inorm.read_saved()?);
            }
            Ok(())
        },
        |x, dy, dx| inorm.context().run(|e| inorm.backward(e, &x.view(), &dy.view(), &dx.view(), training)),
        &mut out,
    )?;
    insert_saved(&mut out, saved);
    if track {
        let state = inorm.read_state()?;
        out.insert("running_mean_out".to_string(), state.running_mean);
        out.insert("running_var_out".to_string(), state.running_var);
    }
    if case.dy.is_some() {
        insert_grads(&mut out, inorm.affine(), true)?;
    }
    Ok(out)
}
