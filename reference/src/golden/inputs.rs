//! Each op's inputs gathered from a case and checked (the `*Case` types),
//! with the matching reference arguments, and the reference's outputs for
//! any case named as its expected tensors are.

use super::*;

/// Whether an optional pair of tensors is expected: the metadata `key` when
/// present, otherwise whether the case holds `tensor`.
fn flag_or_present(case: &Case, key: &str, tensor: &str) -> Result<bool> {
    Ok(case.meta_bool_opt(key)?.unwrap_or_else(|| case.has(tensor)))
}

/// Reads a required input when `wanted`, `None` otherwise.
fn wanted_input(case: &Case, wanted: bool, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
    if wanted {
        case.input_f32(name, Some(len)).map(Some)
    } else {
        Ok(None)
    }
}

/// Checks the `channels` metadata (when present) against the shape.
fn check_channels(case: &Case, shape: &[usize]) -> Result<usize> {
    if !(2..=5).contains(&shape.len()) || shape.contains(&0) {
        return Err(case.error(format!("shape {shape:?} must have rank 2..=5 and no zero dimension")));
    }
    let c = shape[1];
    if case.meta.contains_key("channels") && case.meta_usize("channels")? != c {
        return Err(
            case.error(format!("metadata channels = {} disagrees with shape {shape:?}", case.meta_str("channels")?))
        );
    }
    Ok(c)
}

/// The layout metadata, parsed with [`Layout::parse`]; NCHW when absent.
fn layout_of(case: &Case) -> Result<Layout> {
    if !case.meta.contains_key("layout") {
        return Ok(Layout::Nchw);
    }
    case.meta_parsed("layout", "NCHW or NHWC", Layout::parse)
}

/// The inputs and parameters of a `batch_norm` case, owned.
#[derive(Clone, Debug)]
pub struct BatchNormCase {
    /// Logical shape `(N, C, spatial…)`.
    pub shape: Vec<usize>,
    /// Memory order of the tensors.
    pub layout: Layout,
    /// Input.
    pub x: Vec<f32>,
    /// Residual input (`add_relu` only).
    pub z: Option<Vec<f32>>,
    /// Upstream gradient, when the case checks gradients.
    pub dy: Option<Vec<f32>>,
    /// Gamma (`affine`).
    pub weight: Option<Vec<f32>>,
    /// Beta (`affine`).
    pub bias: Option<Vec<f32>>,
    /// Running mean before the call (`track_running_stats`).
    pub running_mean: Option<Vec<f32>>,
    /// Running variance before the call (`track_running_stats`).
    pub running_var: Option<Vec<f32>>,
    /// Training mode.
    pub training: bool,
    /// Momentum; `None` for the cumulative average (metadata `none`).
    pub momentum: Option<f64>,
    /// `num_batches_tracked` before the call.
    pub num_batches_tracked: u64,
    /// Epsilon.
    pub eps: f64,
    /// Fused activation.
    pub fused: Fused,
}

impl BatchNormCase {
    /// Gathers and checks a `batch_norm` case's inputs: shapes against the
    /// `shape` metadata, `z` required for `add_relu`, weight/bias required
    /// when `affine` is true, running stats when `track_running_stats` is.
    pub fn from_case(case: &Case) -> Result<BatchNormCase> {
        let shape = case.meta_shape("shape")?;
        let c = check_channels(case, &shape)?;
        let len: usize = shape.iter().product();
        let fused = case.meta_parsed("fused", "none, relu or add_relu", Fused::parse)?;
        let momentum = match case.meta_str("momentum")?.trim() {
            m if m.eq_ignore_ascii_case("none") => None,
            _ => match case.meta_f64("momentum")? {
                m if (0.0..=1.0).contains(&m) => Some(m),
                m => return Err(case.error(format!("momentum = {m}: expected none or a value within [0, 1]"))),
            },
        };
        let affine = flag_or_present(case, "affine", "weight")?;
        let tracking = flag_or_present(case, "track_running_stats", "running_mean")?;
        Ok(BatchNormCase {
            layout: layout_of(case)?,
            x: case.input_f32("x", Some(len))?,
            z: wanted_input(case, fused == Fused::AddRelu, "z", len)?,
            dy: case.input_f32_opt("dy", len)?,
            weight: wanted_input(case, affine, "weight", c)?,
            bias: wanted_input(case, affine, "bias", c)?,
            running_mean: wanted_input(case, tracking, "running_mean", c)?,
            running_var: wanted_input(case, tracking, "running_var", c)?,
            training: case.meta_bool("training")?,
            momentum,
            num_batches_tracked: case.meta_usize("num_batches_tracked")? as u64,
            eps: case.meta_eps()?,
            fused,
            shape,
        })
    }

    /// The reference arguments borrowing this case's data.
    pub fn args(&self) -> BatchNormArgs<'_> {
        BatchNormArgs {
            shape: &self.shape,
            layout: self.layout,
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
            running_mean: self.running_mean.as_deref(),
            running_var: self.running_var.as_deref(),
            training: self.training,
            momentum: self.momentum,
            num_batches_tracked: self.num_batches_tracked,
            eps: self.eps,
            fused: self.fused,
        }
    }

    /// The `[outer, channels, inner]` view of the case's tensors.
    pub fn view(&self) -> ChannelView {
        ChannelView::of(&self.shape, self.layout)
    }
}

/// Shape and normalized shape of a `layer_norm` / `rms_norm` case, checked.
fn trailing_shapes(case: &Case) -> Result<(Vec<usize>, Vec<usize>)> {
    let shape = case.meta_shape("shape")?;
    let norm = case.meta_shape("normalized_shape")?;
    let k = norm.len();
    if k == 0 || k > shape.len() || shape[shape.len() - k..] != norm[..] || shape.contains(&0) {
        return Err(
            case.error(format!("normalized_shape {norm:?} is not a non-empty trailing part of shape {shape:?}"))
        );
    }
    Ok((shape, norm))
}

/// The inputs and parameters of a `layer_norm` case, owned.
#[derive(Clone, Debug)]
pub struct LayerNormCase {
    /// Input shape.
    pub shape: Vec<usize>,
    /// Trailing dimensions normalized together.
    pub normalized_shape: Vec<usize>,
    /// Input.
    pub x: Vec<f32>,
    /// Upstream gradient, when the case checks gradients.
    pub dy: Option<Vec<f32>>,
    /// Elementwise gamma (`affine`).
    pub weight: Option<Vec<f32>>,
    /// Elementwise beta (`affine`).
    pub bias: Option<Vec<f32>>,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNormCase {
    /// Gathers and checks a `layer_norm` case's inputs.
    pub fn from_case(case: &Case) -> Result<LayerNormCase> {
        let (shape, normalized_shape) = trailing_shapes(case)?;
        let len: usize = shape.iter().product();
        let cols: usize = normalized_shape.iter().product();
        let affine = flag_or_present(case, "affine", "weight")?;
        Ok(LayerNormCase {
            x: case.input_f32("x", Some(len))?,
            dy: case.input_f32_opt("dy", len)?,
            weight: wanted_input(case, affine, "weight", cols)?,
            bias: wanted_input(case, affine, "bias", cols)?,
            eps: case.meta_eps()?,
            shape,
            normalized_shape,
        })
    }

    /// The reference arguments borrowing this case's data.
    pub fn args(&self) -> LayerNormArgs<'_> {
        LayerNormArgs {
            shape: &self.shape,
            normalized_shape: &self.normalized_shape,
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
            eps: self.eps,
        }
    }
}

/// The inputs and parameters of an `rms_norm` case, owned.
#[derive(Clone, Debug)]
pub struct RmsNormCase {
    /// Input shape.
    pub shape: Vec<usize>,
    /// Trailing dimensions normalized together.
    pub normalized_shape: Vec<usize>,
    /// Input.
    pub x: Vec<f32>,
    /// Upstream gradient, when the case checks gradients.
    pub dy: Option<Vec<f32>>,
    /// Elementwise gamma (`affine`).
    pub weight: Option<Vec<f32>>,
    /// Epsilon; `None` when the metadata is absent or `none` (PyTorch's default).
    pub eps: Option<f64>,
}

impl RmsNormCase {
    /// Gathers and checks an `rms_norm` case's inputs.
    pub fn from_case(case: &Case) -> Result<RmsNormCase> {
        let (shape, normalized_shape) = trailing_shapes(case)?;
        let len: usize = shape.iter().product();
        let cols: usize = normalized_shape.iter().product();
        let affine = flag_or_present(case, "affine", "weight")?;
        let eps = match case.meta.get("eps").map(|s| s.trim()) {
            None => None,
            Some(s) if s.eq_ignore_ascii_case("none") => None,
            Some(_) => Some(case.meta_eps()?),
        };
        Ok(RmsNormCase {
            x: case.input_f32("x", Some(len))?,
            dy: case.input_f32_opt("dy", len)?,
            weight: wanted_input(case, affine, "weight", cols)?,
            eps,
            shape,
            normalized_shape,
        })
    }

    /// The reference arguments borrowing this case's data.
    pub fn args(&self) -> RmsNormArgs<'_> {
        RmsNormArgs {
            shape: &self.shape,
            normalized_shape: &self.normalized_shape,
            weight: self.weight.as_deref(),
            eps: self.eps,
        }
    }
}

/// The inputs and parameters of a `group_norm` or `instance_norm` case, owned.
#[derive(Clone, Debug)]
pub struct GroupNormCase {
    /// Logical shape `(N, C, spatial…)`.
    pub shape: Vec<usize>,
    /// Memory order of the tensors.
    pub layout: Layout,
    /// Number of groups (`C` for `instance_norm`).
    pub num_groups: usize,
    /// Input.
    pub x: Vec<f32>,
    /// Upstream gradient, when the case checks gradients.
    pub dy: Option<Vec<f32>>,
    /// Per-channel gamma (`affine`).
    pub weight: Option<Vec<f32>>,
    /// Per-channel beta (`affine`).
    pub bias: Option<Vec<f32>>,
    /// Epsilon.
    pub eps: f64,
}

impl GroupNormCase {
    /// Gathers and checks a `group_norm` or `instance_norm` case's inputs
    /// (`num_groups` defaults to `C` for `instance_norm`, and must equal it).
    pub fn from_case(case: &Case) -> Result<GroupNormCase> {
        let shape = case.meta_shape("shape")?;
        let c = check_channels(case, &shape)?;
        let len: usize = shape.iter().product();
        let instance = case.op() == "instance_norm";
        let num_groups =
            if instance && !case.meta.contains_key("num_groups") { c } else { case.meta_usize("num_groups")? };
        if num_groups == 0 || !c.is_multiple_of(num_groups) || (instance && num_groups != c) {
            return Err(case.error(format!("num_groups {num_groups} does not fit {c} channels")));
        }
        let affine = flag_or_present(case, "affine", "weight")?;
        Ok(GroupNormCase {
            layout: layout_of(case)?,
            num_groups,
            x: case.input_f32("x", Some(len))?,
            dy: case.input_f32_opt("dy", len)?,
            weight: wanted_input(case, affine, "weight", c)?,
            bias: wanted_input(case, affine, "bias", c)?,
            eps: case.meta_eps()?,
            shape,
        })
    }

    /// The reference arguments borrowing this case's data.
    pub fn args(&self) -> GroupNormArgs<'_> {
        GroupNormArgs {
            shape: &self.shape,
            layout: self.layout,
            num_groups: self.num_groups,
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
            eps: self.eps,
        }
    }

    /// Instance-norm arguments (input statistics, no running stats).
    pub fn instance_args(&self) -> InstanceNormArgs<'_> {
        InstanceNormArgs {
            shape: &self.shape,
            layout: self.layout,
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
            running_mean: None,
            running_var: None,
            use_input_stats: true,
            momentum: 0.1,
            eps: self.eps,
        }
    }
}

/// The inputs and parameters of a `fold_batch_norm` case, owned.
#[derive(Clone, Debug)]
pub struct FoldCase {
    /// The layer kind from the metadata (`conv2d`, `linear`, …).
    pub layer: String,
    /// The layer's weight shape.
    pub shape: Vec<usize>,
    /// Axis of the output channels in `shape`: 1 for `conv_transpose*`, else 0.
    pub out_axis: usize,
    /// The layer's weight.
    pub layer_weight: Vec<f32>,
    /// The layer's bias (`layer_has_bias`).
    pub layer_bias: Option<Vec<f32>>,
    /// BatchNorm running mean.
    pub running_mean: Vec<f32>,
    /// BatchNorm running variance.
    pub running_var: Vec<f32>,
    /// BatchNorm gamma, when present.
    pub weight: Option<Vec<f32>>,
    /// BatchNorm beta, when present.
    pub bias: Option<Vec<f32>>,
    /// BatchNorm epsilon.
    pub eps: f64,
}

impl FoldCase {
    /// Gathers and checks a `fold_batch_norm` case's inputs.
    pub fn from_case(case: &Case) -> Result<FoldCase> {
        let layer = case.meta_str("layer")?.trim().to_ascii_lowercase();
        let out_axis = if layer.starts_with("conv_transpose") || layer.starts_with("convtranspose") {
            1
        } else if layer == "linear" || layer.starts_with("conv") {
            0
        } else {
            return Err(case.error(format!("unknown layer {layer:?}")));
        };
        let shape = case.meta_shape("shape")?;
        if shape.len() < 2 || shape.contains(&0) {
            return Err(case.error(format!("layer weight shape {shape:?} must have rank >= 2")));
        }
        let out = shape[out_axis];
        let has_bias = flag_or_present(case, "layer_has_bias", "layer_bias")?;
        Ok(FoldCase {
            layer_weight: case.input_f32("layer_weight", Some(shape.iter().product()))?,
            layer_bias: wanted_input(case, has_bias, "layer_bias", out)?,
            running_mean: case.input_f32("running_mean", Some(out))?,
            running_var: case.input_f32("running_var", Some(out))?,
            weight: case.input_f32_opt("weight", out)?,
            bias: case.input_f32_opt("bias", out)?,
            eps: case.meta_eps()?,
            layer,
            shape,
            out_axis,
        })
    }

    /// The BatchNorm part of the reference arguments.
    pub fn bn(&self) -> FoldBn<'_> {
        FoldBn {
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
            eps: self.eps,
        }
    }

    /// Runs [`reference::fold_batch_norm`]: `(folded_weight, folded_bias)`.
    pub fn fold(&self) -> (Vec<f64>, Vec<f64>) {
        reference::fold_batch_norm(
            &self.layer_weight,
            self.layer_bias.as_deref(),
            &self.shape,
            self.out_axis,
            self.bn(),
        )
    }
}

/// Runs the CPU reference on any case and returns its outputs under the
/// names the case format uses for expected tensors (`y`, `dx`, `save_mean`,
/// `running_mean_out`, `folded_weight`, …). Gradients are given only when the
/// case holds `dy`. Errors on an unknown `op` or on missing / mis-shaped inputs.
pub fn reference_outputs(case: &Case) -> Result<BTreeMap<String, Vec<f64>>> {
    let mut out = BTreeMap::new();
    let mut put = |name: &str, v: Vec<f64>| {
        out.insert(name.to_string(), v);
    };
    match case.op() {
        "batch_norm" => {
            let bn = BatchNormCase::from_case(case)?;
            let args = bn.args();
            if args.training && bn.view().per_channel() < 2 {
                return Err(case.error("expected more than 1 value per channel when training"));
            }
            let f = reference::batch_norm_forward(&args, &bn.x, bn.z.as_deref());
            put("y", f.y);
            put("save_mean", f.save_mean);
            put("save_invstd", f.save_invstd);
            if let Some(rm) = f.running_mean {
                put("running_mean_out", rm);
            }
            if let Some(rv) = f.running_var {
                put("running_var_out", rv);
            }
            if let Some(dy) = &bn.dy {
                let b = reference::batch_norm_backward(&args, &bn.x, bn.z.as_deref(), dy);
                put("dx", b.dx);
                put("dweight", b.dweight);
                put("dbias", b.dbias);
                if let Some(dz) = b.dz {
                    put("dz", dz);
                }
            }
        }
        "layer_norm" => {
            let ln = LayerNormCase::from_case(case)?;
            let f = reference::layer_norm_forward(&ln.args(), &ln.x);
            put("y", f.y);
            put("mean", f.mean);
            put("rstd", f.rstd);
            if let Some(dy) = &ln.dy {
                let b = reference::layer_norm_backward(&ln.args(), &ln.x, dy);
                put("dx", b.dx);
                put("dweight", b.dweight);
                put("dbias", b.dbias);
            }
        }
        "rms_norm" => {
            let rn = RmsNormCase::from_case(case)?;
            let f = reference::rms_norm_forward(&rn.args(), &rn.x);
            put("y", f.y);
            put("rstd", f.rstd);
            if let Some(dy) = &rn.dy {
                let b = reference::rms_norm_backward(&rn.args(), &rn.x, dy);
                put("dx", b.dx);
                put("dweight", b.dweight);
            }
        }
        op @ ("group_norm" | "instance_norm") => {
            let gn = GroupNormCase::from_case(case)?;
            let (fwd, bwd) = if op == "group_norm" {
                let f = reference::group_norm_forward(&gn.args(), &gn.x);
                let b = gn.dy.as_ref().map(|dy| reference::group_norm_backward(&gn.args(), &gn.x, dy));
                (f, b)
            } else {
                let a = gn.instance_args();
                let f = reference::instance_norm_forward(&a, &gn.x);
                let f = reference::NormForward { y: f.y, mean: f.mean, rstd: f.rstd };
                let b = gn.dy.as_ref().map(|dy| reference::instance_norm_backward(&a, &gn.x, dy));
                (f, b)
            };
            put("y", fwd.y);
            put("mean", fwd.mean);
            put("rstd", fwd.rstd);
            if let Some(b) = bwd {
                put("dx", b.dx);
                put("dweight", b.dweight);
                put("dbias", b.dbias);
            }
        }
        "fold_batch_norm" => {
            let fc = FoldCase::from_case(case)?;
            let (w, b) = fc.fold();
            put("folded_weight", w);
            put("folded_bias", b);
        }
        other => return Err(case.error(format!("unknown op {other:?}"))),
    }
    Ok(out)
}
