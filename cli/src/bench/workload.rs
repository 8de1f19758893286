//! An op's workload in `wgpu-norm bench`: its layer, its tensors on the GPU,
//! how it is recorded, and its verification against the f64 reference.

use wgpu_norm::{
    BatchNorm, BatchNormConfig, BatchNormState, ChannelView, Context, Epilogue, Error, GroupNorm, GroupNormConfig,
    InstanceNorm, InstanceNormConfig, LayerNorm, LayerNormConfig, Layout, Mode, Result, RmsNorm, RmsNormConfig, Tensor,
};
use wgpu_norm_reference::normalized_error;
use wgpu_norm_reference::reference::{self, BatchNormArgs, BatchNormBackward, Fused};

use super::naive::Naive;
use super::{group_count, Kind, Op};

pub(super) const EPS: f32 = 1e-5;
const MOMENTUM: f32 = 0.1;

/// Deterministic pseudo-random numbers (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// The family layer of a family op.
enum FamilyLayer {
    Ln(LayerNorm),
    Rms(RmsNorm),
    Gn(GroupNorm),
    In(InstanceNorm),
}

/// One op on one shape and layout, with its tensors on the GPU, ready to be
/// recorded again and again; also its naive baseline and its verification.
///
/// A BatchNorm layer is made for every op (its random state also gives
/// GroupNorm its weight and bias); family ops add their own layer. The
/// residual input z of the add-ReLU forwards is the `dy` tensor, which no
/// forward reads otherwise; the add-ReLU step, which reads dy too, has its
/// own z and dz ([`Residual`]).
pub struct Workload {
    ctx: Context,
    op: Op,
    shape: Vec<usize>,
    /// The layout the tensors are in (`Nchw` for LayerNorm and RMSNorm).
    layout: Layout,
    view: ChannelView,
    bn: BatchNorm,
    state: BatchNormState,
    family: Option<FamilyLayer>,
    /// LayerNorm / RMSNorm weight and bias over the last dimension.
    row_weight: Vec<f32>,
    row_bias: Vec<f32>,
    x_host: Vec<f32>,
    dy_host: Vec<f32>,
    x: Tensor,
    y: Tensor,
    dy: Tensor,
    dx: Tensor,
    residual: Option<Residual>,
    naive: Option<Naive>,
}

/// The add-ReLU step's residual input z and its gradient dz.
struct Residual {
    z_host: Vec<f32>,
    z: Tensor,
    dz: Tensor,
}

impl Workload {
    /// Uploads random inputs (seeded by `seed`) and a layer with random
    /// parameters and running statistics. LayerNorm and RMSNorm normalize
    /// over the last dimension and read the tensor row-major: `layout` is
    /// ignored for them. `Err(Parameter)` where [`Op::unsupported`] says so.
    pub fn new(ctx: &Context, op: Op, shape: &[usize], layout: Layout, seed: u64) -> Result<Workload> {
        if let Some(reason) = op.unsupported(shape, layout, &ctx.device().limits()) {
            return Err(Error::Parameter(reason));
        }
        let layout = if op.ignores_layout() { Layout::Nchw } else { layout };
        if !(2..=5).contains(&shape.len()) {
            return Err(Error::Parameter(format!("shape {shape:?}: expected 2 to 5 dimensions (N, C, spatial...)")));
        }
        let view = ChannelView::of(shape, layout);
        let c = view.channels;
        let mut rng = Rng(seed);
        let offsets = rng.vec(c, -2.0, 2.0);
        let x_host: Vec<f32> = (0..view.len()).map(|i| offsets[view.channel_of(i)] + rng.uniform(-1.5, 1.5)).collect();
        let dy_host = rng.vec(view.len(), -1.0, 1.0);
        let state = BatchNormState {
            weight: rng.vec(c, 0.5, 1.5),
            bias: rng.vec(c, -0.5, 0.5),
            running_mean: offsets.iter().map(|o| o + 0.1).collect(),
            running_var: rng.vec(c, 0.5, 1.5),
            num_batches_tracked: 0,
        };
        let cols = *shape.last().unwrap_or(&1);
        let row_weight = rng.vec(cols, 0.5, 1.5);
        let row_bias = rng.vec(cols, -0.5, 0.5);
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(c).eps(EPS).momentum(Some(MOMENTUM)))?;
        bn.write_state(&state)?;
        let family = match op.kind() {
            Kind::Bn => None,
            Kind::Ln => {
                let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[cols]).eps(EPS))?;
                ln.affine().write_weight(&row_weight)?;
                ln.affine().write_bias(&row_bias)?;
                Some(FamilyLayer::Ln(ln))
            }
            Kind::Rms => {
                // PyTorch's default eps (None: f32::EPSILON).
                let rms = RmsNorm::new(ctx, RmsNormConfig::new(&[cols]))?;
                rms.affine().write_weight(&row_weight)?;
                Some(FamilyLayer::Rms(rms))
            }
            Kind::Gn => {
                let gn = GroupNorm::new(ctx, GroupNormConfig::new(group_count(c), c).eps(EPS))?;
                gn.affine().write_weight(&state.weight)?;
                gn.affine().write_bias(&state.bias)?;
                Some(FamilyLayer::Gn(gn))
            }
            // PyTorch's defaults: affine = false, track_running_stats = false.
            Kind::In => Some(FamilyLayer::In(InstanceNorm::new(ctx, InstanceNormConfig::new(c).eps(EPS))?)),
        };
        let x = Tensor::from_slice(ctx, &x_host, shape, layout)?;
        let y = Tensor::zeros(ctx, shape, layout)?;
        let dy = Tensor::from_slice(ctx, &dy_host, shape, layout)?;
        let dx = Tensor::zeros(ctx, shape, layout)?;
        let residual = if op == Op::BnAddReluTrainStep {
            let z_host = rng.vec(view.len(), -1.0, 1.0);
            let z = Tensor::from_slice(ctx, &z_host, shape, layout)?;
            Some(Residual { z_host, z, dz: Tensor::zeros(ctx, shape, layout)? })
        } else {
            None
        };
        // The naive kernels bind whole tensors: none above the binding limit.
        let fits = view.len() as u64 * 4 <= ctx.device().limits().max_storage_buffer_binding_size;
        let naive = if op.has_naive() && fits { Some(Naive::new(ctx, view, &state, &x, &y, &dy, &dx)?) } else { None };
        let work = Workload {
            ctx: ctx.clone(),
            op,
            shape: shape.to_vec(),
            layout,
            view,
            bn,
            state,
            family,
            row_weight,
            row_bias,
            x_host,
            dy_host,
            x,
            y,
            dy,
            dx,
            residual,
            naive,
        };
        if op == Op::BnBackwardTrain {
            // Backward uses the statistics of the forward before it.
            ctx.run(|e| work.bn.forward(e, &work.x.view(), &work.y.view(), Mode::Training, Epilogue::None))?;
            if let Some(naive) = &work.naive {
                ctx.run(|e| naive.stats(e))?;
            }
        }
        if op.family_backward() {
            ctx.run(|e| work.family_forward(e))?;
        }
        Ok(work)
    }

    /// The op.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Bytes the op must move at the least.
    pub fn bytes(&self) -> u64 {
        self.op.bytes(self.view.len())
    }

    fn family_forward(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let (x, y) = (self.x.view(), self.y.view());
        match &self.family {
            Some(FamilyLayer::Ln(l)) => l.forward(encoder, &x, &y),
            Some(FamilyLayer::Rms(l)) => l.forward(encoder, &x, &y),
            Some(FamilyLayer::Gn(l)) => l.forward(encoder, &x, &y),
            Some(FamilyLayer::In(l)) => l.forward(encoder, &x, &y, true),
            None => Err(Error::Parameter(format!("{} is not a family op", self.op.name()))),
        }
    }

    fn family_backward(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let (x, dy, dx) = (self.x.view(), self.dy.view(), self.dx.view());
        match &self.family {
            Some(FamilyLayer::Ln(l)) => l.backward(encoder, &x, &dy, &dx),
            Some(FamilyLayer::Rms(l)) => l.backward(encoder, &x, &dy, &dx),
            Some(FamilyLayer::Gn(l)) => l.backward(encoder, &x, &dy, &dx),
            Some(FamilyLayer::In(l)) => l.backward(encoder, &x, &dy, &dx, true),
            None => Err(Error::Parameter(format!("{} is not a family op", self.op.name()))),
        }
    }

    /// Records the op once.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        match self.op.kind() {
            Kind::Bn => {
                let training = self.op.training();
                if self.op.runs_forward() {
                    self.bn_forward(encoder, training)?;
                }
                if self.op.runs_backward() {
                    self.bn_backward(encoder, training)?;
                }
                Ok(())
            }
            _ if self.op.family_backward() => self.family_backward(encoder),
            _ => self.family_forward(encoder),
        }
    }

    /// The error of an add-ReLU op given no residual.
    fn no_residual(&self) -> Error {
        Error::Parameter(format!("{}: no residual to take the gradient of", self.op.name()))
    }

    /// The residual input of the add-ReLU ops.
    fn z(&self) -> &Tensor {
        self.residual.as_ref().map_or(&self.dy, |r| &r.z)
    }

    /// The op's BatchNorm forward, with its epilogue.
    fn bn_forward(&self, encoder: &mut wgpu::CommandEncoder, training: bool) -> Result<()> {
        let (x, y, z) = (self.x.view(), self.y.view(), self.z().view());
        let epilogue = self.op.fused().epilogue(Some(&z), None).ok_or_else(|| self.no_residual())?;
        self.bn.forward(encoder, &x, &y, Mode::from_training(training), epilogue)
    }

    /// The op's BatchNorm backward, with its epilogue (dz too after add-ReLU).
    fn bn_backward(&self, encoder: &mut wgpu::CommandEncoder, training: bool) -> Result<()> {
        let (x, dy, dx) = (self.x.view(), self.dy.view(), self.dx.view());
        let (z, dz) = self.residual.as_ref().map(|r| (r.z.view(), r.dz.view())).unzip();
        let epilogue = self.op.fused().epilogue(z.as_ref(), dz.as_ref()).ok_or_else(|| self.no_residual())?;
        self.bn.backward(encoder, &x, &dy, &dx, Mode::from_training(training), epilogue)
    }

    /// Whether this workload has a naive baseline to time.
    pub fn has_naive(&self) -> bool {
        self.naive.is_some()
    }

    /// Records the naive baseline of the op once; nothing for the ops
    /// without one (see [`Op::has_naive`]).
    pub fn record_naive(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let Some(n) = &self.naive else {
            return Ok(());
        };
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench naive"), timestamp_writes: None });
        match self.op {
            Op::BnForwardEval => n.normalize(&mut pass),
            Op::BnForwardTrain => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
            }
            Op::BnBackwardTrain => n.backward(&mut pass, false),
            Op::BnBackwardEval => n.backward(&mut pass, true),
            Op::BnTrainStep => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
                n.backward(&mut pass, false);
            }
            Op::BnReluForwardTrain => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
                n.relu(&mut pass, false);
            }
            Op::BnAddReluForwardTrain => {
                n.mean_var(&mut pass);
                n.normalize(&mut pass);
                n.relu(&mut pass, true);
            }
            _ => {}
        }
        Ok(())
    }

    /// The reference backward of `args`. Behind a fused ReLU, a value whose
    /// pre-activation lies within f32 rounding of zero takes its mask from
    /// the GPU's forward output `y` where there is one (y > 0, as PyTorch's
    /// autograd), since an f32 forward may round it either way: the
    /// backward of the plain BatchNorm over the masked dy.
    fn backward_reference(&self, args: &BatchNormArgs, z: Option<&[f32]>, y: Option<&[f32]>) -> BatchNormBackward {
        if args.fused == Fused::None {
            return reference::batch_norm_backward(args, &self.x_host, z, &self.dy_host);
        }
        let mask = reference::relu_mask(args, &self.x_host, z);
        let g: Vec<f32> = (self.dy_host.iter().zip(&mask).enumerate())
            .map(|(i, (&d, m))| match m.unwrap_or_else(|| y.is_some_and(|y| y[i] > 0.0)) {
                true => d,
                false => 0.0,
            })
            .collect();
        let plain = BatchNormArgs { fused: Fused::None, ..*args };
        let mut want = reference::batch_norm_backward(&plain, &self.x_host, None, &g);
        if args.fused == Fused::AddRelu {
            want.dz = Some(g.iter().map(|&v| f64::from(v)).collect());
        }
        want
    }

    /// Runs the op once from the layer's initial random state and compares
    /// every output with the f64 reference (y and running statistics of a
    /// forward; dx, dweight, dbias of a backward); then the naive baseline's
    /// main output (y or dx). Returns (op's worst error, naive's worst
    /// error, `None` without a naive baseline).
    pub fn verify(&self) -> Result<(f64, Option<f64>)> {
        if self.op.kind() != Kind::Bn {
            return self.verify_family().map(|e| (e, None));
        }
        let ctx = &self.ctx;
        self.bn.write_state(&self.state)?;
        let (fused, training) = (self.op.fused(), self.op.training());
        let z_host = self.residual.as_ref().map_or(&self.dy_host, |r| &r.z_host);
        let z = (fused == Fused::AddRelu).then_some(z_host.as_slice());
        let args = BatchNormArgs {
            shape: &self.shape,
            layout: self.layout,
            weight: Some(&self.state.weight),
            bias: Some(&self.state.bias),
            running_mean: Some(&self.state.running_mean),
            running_var: Some(&self.state.running_var),
            training,
            momentum: Some(f64::from(MOMENTUM)),
            num_batches_tracked: 0,
            eps: f64::from(EPS),
            fused,
        };
        let mut worst = 0.0f64;
        let mut take = |e: f64| worst = if e > worst || e.is_nan() { e } else { worst };
        let fwd_ref = reference::batch_norm_forward(&args, &self.x_host, z);
        if self.op.runs_forward() {
            ctx.run(|e| self.bn_forward(e, training))?;
            take(normalized_error(&self.y.read(ctx)?, &fwd_ref.y));
            if training {
                let state = self.bn.read_state()?;
                take(normalized_error(&state.running_mean, fwd_ref.running_mean.as_deref().unwrap_or(&[])));
                take(normalized_error(&state.running_var, fwd_ref.running_var.as_deref().unwrap_or(&[])));
            }
        }
        let y_gpu = if self.op.runs_forward() { Some(self.y.read(ctx)?) } else { None };
        let bwd_ref = self.op.runs_backward().then(|| self.backward_reference(&args, z, y_gpu.as_deref()));
        if let Some(want) = &bwd_ref {
            ctx.run(|e| self.bn_backward(e, training))?;
            take(normalized_error(&self.dx.read(ctx)?, &want.dx));
            let (dweight, dbias) = self.bn.affine().read_grads()?;
            take(normalized_error(&dweight, &want.dweight));
            take(normalized_error(&dbias, &want.dbias));
            if let (Some(r), Some(dz)) = (&self.residual, &want.dz) {
                take(normalized_error(&r.dz.read(ctx)?, dz));
            }
        }
        // The naive baseline, from the same inputs (none above the binding limit).
        let naive_error = match &self.naive {
            Some(naive) => {
                naive.reset(ctx, &self.state)?;
                if self.op == Op::BnBackwardTrain {
                    ctx.run(|e| naive.stats(e))?;
                }
                ctx.run(|e| self.record_naive(e))?;
                Some(match &bwd_ref {
                    Some(want) => normalized_error(&self.dx.read(ctx)?, &want.dx),
                    None => normalized_error(&self.y.read(ctx)?, &fwd_ref.y),
                })
            }
            None => None,
        };
        // Leave the layer as timing expects it.
        self.bn.write_state(&self.state)?;
        if self.op == Op::BnBackwardTrain {
            ctx.run(|e| self.bn.forward(e, &self.x.view(), &self.y.view(), Mode::Training, Epilogue::None))?;
        }
        Ok((worst, naive_error))
    }

    /// [`Self::verify`] of a family op: y of a forward; dx, dweight and dbias
    /// (dweight alone for RMSNorm, which has no bias) of a backward. The
    /// forward runs before a backward either way, which leaves the layer's
    /// saved statistics as timing expects them.
    fn verify_family(&self) -> Result<f64> {
        let ctx = &self.ctx;
        let cols = [*self.shape.last().unwrap_or(&1)];
        let eps = f64::from(EPS);
        // (y, dx, dweight, dbias) of the reference.
        let (y, dx, dweight, dbias) = match self.op.kind() {
            Kind::Ln => {
                let args = reference::LayerNormArgs {
                    shape: &self.shape,
                    normalized_shape: &cols,
                    weight: Some(&self.row_weight),
                    bias: Some(&self.row_bias),
                    eps,
                };
                let f = reference::layer_norm_forward(&args, &self.x_host);
                let b = reference::layer_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, Some(b.dbias))
            }
            Kind::Rms => {
                let args = reference::RmsNormArgs {
                    shape: &self.shape,
                    normalized_shape: &cols,
                    weight: Some(&self.row_weight),
                    eps: None,
                };
                let f = reference::rms_norm_forward(&args, &self.x_host);
                let b = reference::rms_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, None)
            }
            Kind::Gn => {
                let args = reference::GroupNormArgs {
                    shape: &self.shape,
                    layout: self.layout,
                    num_groups: group_count(self.view.channels),
                    weight: Some(&self.state.weight),
                    bias: Some(&self.state.bias),
                    eps,
                };
                let f = reference::group_norm_forward(&args, &self.x_host);
                let b = reference::group_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, Some(b.dbias))
            }
            Kind::In => {
                let args = reference::InstanceNormArgs {
                    shape: &self.shape,
                    layout: self.layout,
                    weight: None,
                    bias: None,
                    running_mean: None,
                    running_var: None,
                    use_input_stats: true,
                    momentum: f64::from(MOMENTUM),
                    eps,
                };
                let f = reference::instance_norm_forward(&args, &self.x_host);
                let b = reference::instance_norm_backward(&args, &self.x_host, &self.dy_host);
                (f.y, b.dx, b.dweight, Some(b.dbias))
            }
            Kind::Bn => return Err(Error::Parameter(format!("{} is not a family op", self.op.name()))),
        };
        ctx.run(|e| self.family_forward(e))?;
        if !self.op.family_backward() {
            return Ok(normalized_error(&self.y.read(ctx)?, &y));
        }
        ctx.run(|e| self.family_backward(e))?;
        let (got_dweight, got_dbias) = match &self.family {
            Some(FamilyLayer::Ln(l)) => l.affine().read_grads()?,
            Some(FamilyLayer::Rms(l)) => (l.affine().read_grads()?.0, Vec::new()),
            Some(FamilyLayer::Gn(l)) => l.affine().read_grads()?,
            Some(FamilyLayer::In(l)) => l.affine().read_grads()?,
            None => unreachable!("family ops have a family layer"),
        };
        let mut worst = normalized_error(&self.dx.read(ctx)?, &dx);
        for e in
            [normalized_error(&got_dweight, &dweight), dbias.map_or(0.0, |want| normalized_error(&got_dbias, &want))]
        {
            if e > worst || e.is_nan() {
                worst = e;
            }
        }
        Ok(worst)
    }
}
