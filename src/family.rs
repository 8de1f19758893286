//! The engine shared by the normalization family (LayerNorm, RMSNorm,
//! GroupNorm, InstanceNorm): the four differ only in which values one
//! statistic spans, described by a [`Geometry`], and in a few flags
//! ([`Options`]). Statistics and backward sums are reduce.wgsl's reductions
//! over a view whose channels are the family's "stat rows"; the per-row and
//! elementwise kernels are shaders/row_norm.wgsl's.
//!
//! Forward records: partial statistics (reduce MODE 0), `merge_rows` (mean,
//! rstd per row; InstanceNorm may then update its running statistics), then
//! `apply`. Backward: row sums (MODE 2), `merge_row_grads` (dx coefficients),
//! column sums (MODE 3), `merge_columns` (dweight, dbias), then `backward_dx`.
//! GroupNorm and InstanceNorm in one part take one reduction per (n, c)
//! instance (MODE 1) for both sums instead (`record_instance_grads`). On CPU
//! adapters, LayerNorm's and RMSNorm's rows of up to 512 values take one
//! pass each way (src/resident.rs).
//!
//! A tensor above one storage binding runs in parts (runs of whole samples,
//! or of whole groups of one channels-second sample), each with its own
//! rows, copied to and from the op's saved rows; dweight and dbias merge
//! every part's column partials once at the end.

use std::sync::Mutex;

use crate::context::Context;
use crate::geometry::Geometry;
use crate::kernels::{
    bind, dispatch, lock, uniform, ChannelParams, KernelKey, Shader, FLAG_AFFINE, FLAG_BATCH_STATS, FLAG_BIAS, FLAG_RMS,
};
use crate::layout::{ChannelView, Layout};
use crate::reduce::{self, ReduceBindings, ReduceMode, ReducePlan, MAX_MERGE_PARTS};
use crate::resident::{Pass, Resident};
use crate::stat_plan::StatPlan;
use crate::tensor::{check_range, window, DType, TensorView, Window};
use crate::tiling::Tiling;
use crate::{Error, Result};

/// What distinguishes the ops beyond their geometry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub eps: f32,
    pub affine: bool,
    pub bias: bool,
    pub rms: bool,
    /// Running-statistics factor (InstanceNorm).
    pub momentum: f32,
}

/// Where the statistics come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The input's own, optionally updating the running statistics.
    Input { update_running: bool },
    /// The running statistics (InstanceNorm in eval mode).
    Running,
}

/// One call's geometry, flags and statistics source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    pub geo: Geometry,
    pub opt: Options,
    pub source: Source,
}

/// Buffers whose size depends on the input, grown on demand and reused.
#[derive(Default)]
struct Scratch {
    rows: Option<wgpu::Buffer>,
    rows_dx: Option<wgpu::Buffer>,
    partials: Option<wgpu::Buffer>,
    /// GroupNorm's and InstanceNorm's backward: one entry per instance.
    instances: Option<wgpu::Buffer>,
    /// Tensors above one binding: one part's rows, and the column partials
    /// of every part.
    part_rows: Option<wgpu::Buffer>,
    column_partials: Option<wgpu::Buffer>,
}

/// The state of one family layer on the GPU.
pub(crate) struct Core {
    pub ctx: Context,
    /// Weight length (normalized size or channel count).
    pub len: usize,
    pub weight: wgpu::Buffer,
    pub bias: wgpu::Buffer,
    pub running_mean: wgpu::Buffer,
    pub running_var: wgpu::Buffer,
    pub grad_weight: wgpu::Buffer,
    pub grad_bias: wgpu::Buffer,
    scratch: Mutex<Scratch>,
    /// Shape, layout and row count of the input whose statistics `rows` holds.
    saved_for: Mutex<Option<(Vec<usize>, Layout, usize)>>,
}

fn grow(ctx: &Context, slot: &mut Option<wgpu::Buffer>, bytes: u64, label: &str) -> Result<wgpu::Buffer> {
    match slot {
        Some(b) if b.size() >= bytes => Ok(b.clone()),
        _ => {
            let b = ctx.zeros(label, bytes)?;
            *slot = Some(b.clone());
            Ok(b)
        }
    }
}

impl Core {
    /// A layer with `len` weights (ones), biases (zeros) and, for
    /// InstanceNorm, running statistics (0 and 1).
    pub fn new(ctx: &Context, len: usize) -> Result<Core> {
        Ok(Core {
            weight: ctx.upload("norm weight", &vec![1.0f32; len])?,
            bias: ctx.zeros("norm bias", len as u64 * 4)?,
            running_mean: ctx.zeros("norm running_mean", len as u64 * 4)?,
            running_var: ctx.upload("norm running_var", &vec![1.0f32; len])?,
            grad_weight: ctx.zeros("norm grad weight", len as u64 * 4)?,
            grad_bias: ctx.zeros("norm grad bias", len as u64 * 4)?,
            scratch: Mutex::new(Scratch::default()),
            saved_for: Mutex::new(None),
            ctx: ctx.clone(),
            len,
        })
    }

    /// Writes `data` into one of the layer's vectors. `Err(Shape)`, writing
    /// nothing, unless it has `len` values.
    pub fn write_vec(&self, buffer: &wgpu::Buffer, data: &[f32], name: &str) -> Result<()> {
        if data.len() != self.len {
            return Err(Error::Shape(format!("{name} has {} values, the layer has {}", data.len(), self.len)));
        }
        self.ctx.write(buffer, 0, data)
    }

    /// Reads one of the layer's vectors.
    pub async fn read_vec(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        self.ctx.read_async(buffer, 0, self.len).await
    }

    /// The saved per-row statistics buffer, (centre, rstd, delta, var) per row.
    pub fn saved(&self) -> Option<wgpu::Buffer> {
        lock(&self.scratch).rows.clone()
    }

    /// (mean, rstd) per stat row of the last input-statistics forward.
    pub async fn read_saved(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let rows = lock(&self.saved_for).as_ref().map(|s| s.2);
        let (Some(rows), Some(buf)) = (rows, self.saved()) else {
            return Err(Error::Parameter("no forward has saved statistics yet".into()));
        };
        let v: Vec<f32> = self.ctx.read_async(&buf, 0, rows * 4).await?;
        Ok((v.chunks(4).map(|s| s[0]).collect(), v.chunks(4).map(|s| s[1]).collect()))
    }

    fn params(&self, view: ChannelView, geo: &Geometry, opt: &Options) -> ChannelParams {
        let mut flags = 0;
        if opt.affine {
            flags |= FLAG_AFFINE;
        }
        if opt.bias {
            flags |= FLAG_BIAS;
        }
        if opt.rms {
            flags |= FLAG_RMS;
        }
        ChannelParams {
            outer: view.outer as u32,
            channels: view.channels as u32,
            inner: view.inner as u32,
            flags,
            eps: opt.eps,
            momentum: opt.momentum,
            count: geo.row_len() as f32,
            row_div: geo.row_div as u32,
            groups: geo.groups as u32,
            cpg: geo.cpg as u32,
            wdiv: geo.wdiv as u32,
            rows: geo.rows() as u32,
            ..Default::default()
        }
    }

    /// Validates `x` and `other`: same shape, layout and dtype, distinct buffers.
    fn check_pair(&self, x: &TensorView, other: &TensorView, name: &str) -> Result<()> {
        self.ctx.check_alive()?;
        if other.shape != x.shape || (other.layout != x.layout && x.shape.len() > 2) {
            return Err(Error::Shape(format!(
                "{name} is {:?} {:?}, x is {:?} {:?}",
                other.shape, other.layout, x.shape, x.layout
            )));
        }
        if other.buffer == x.buffer {
            return Err(Error::Buffer(format!("x and {name} share a buffer; the op does not run in place")));
        }
        if other.dtype != x.dtype {
            return Err(Error::Parameter(format!("{name} is {:?}, x is {:?}", other.dtype, x.dtype)));
        }
        if x.dtype == DType::F16 && !self.ctx.device().features().contains(wgpu::Features::SHADER_F16) {
            return Err(Error::Unsupported("f16 tensors need a device with SHADER_F16".into()));
        }
        Ok(())
    }

    /// Cuts the op into parts that each fit one storage binding: runs of
    /// whole samples or, when one sample is too large, runs of whole groups
    /// of one sample. Returns every part with its windows of `tensors`, all
    /// checked before anything is recorded. One part when the op fits.
    fn parts<'a>(&self, geo: &Geometry, tensors: &[(&TensorView<'a>, &str)]) -> Result<Vec<Part<'a>>> {
        let limits = self.ctx.device().limits();
        let x = tensors[0].0;
        for (t, name) in tensors {
            check_range(t.buffer, t.offset, t.len(), t.dtype.size(), name)?;
        }
        let esize = x.dtype.size();
        let align = u64::from(limits.min_storage_buffer_offset_alignment.max(16));
        let max_bytes = limits.max_storage_buffer_binding_size.min(u64::from(u32::MAX)).saturating_sub(align + 4);
        let max_values = (max_bytes / esize) as usize;
        let sample_len = geo.sample_len();
        // (first value, geometry, first row, first weight, slot among the parts covering a weight)
        let mut cuts: Vec<(usize, Geometry, usize, usize, usize)> = Vec::new();
        let fits = (max_values / sample_len.max(1)).min(geo.samples);
        if fits > 0 {
            // Runs of whole samples, of equal size so the last is not a sliver.
            let count = geo.samples.div_ceil(fits);
            let per = geo.samples.div_ceil(count);
            for (slot, first) in (0..geo.samples).step_by(per).enumerate() {
                let n = per.min(geo.samples - first);
                cuts.push((first * sample_len, geo.for_samples(n), first * geo.sample_rows(), 0, slot));
            }
        } else {
            // One sample exceeds a binding: runs of whole groups of each sample.
            let row_len = geo.row_len();
            let per = max_values / row_len.max(1);
            let too_large = || {
                Error::Unsupported(format!(
                    "one sample of {sample_len} values exceeds the device's storage binding limit, and it \
                     cannot be cut (a row, a channels-last sample, or one group above the limit)"
                ))
            };
            if per == 0 || geo.group_run(0, 1).is_none() {
                return Err(too_large());
            }
            let groups = geo.sample_rows();
            let count = groups.div_ceil(per);
            let per = groups.div_ceil(count);
            for n in 0..geo.samples {
                for g0 in (0..groups).step_by(per) {
                    let g1 = (g0 + per).min(groups);
                    let g = geo.group_run(g0, g1).ok_or_else(too_large)?;
                    cuts.push((n * sample_len + g0 * row_len, g, n * groups + g0, g0 * geo.cpg, n));
                }
            }
        }
        let mut parts = Vec::with_capacity(cuts.len());
        for (start, g, first_row, weight_base, slot) in cuts {
            let windows = tensors
                .iter()
                .map(|(t, name)| {
                    let offset = t.offset + start as u64 * esize;
                    window(t.buffer, offset, g.weights.len(), esize, name, &limits)
                })
                .collect::<Result<Vec<_>>>()?;
            parts.push(Part { first_row, weight_base: weight_base as u32, slot: slot as u32, geo: g, windows });
        }
        Ok(parts)
    }

    fn scratch(&self, geo: &Geometry, partial_bytes: u64) -> Result<(wgpu::Buffer, wgpu::Buffer, wgpu::Buffer)> {
        let mut s = lock(&self.scratch);
        let row_bytes = geo.rows() as u64 * 16;
        Ok((
            grow(&self.ctx, &mut s.rows, row_bytes, "norm row statistics")?,
            grow(&self.ctx, &mut s.rows_dx, row_bytes, "norm dx coefficients")?,
            grow(&self.ctx, &mut s.partials, partial_bytes, "norm partials")?,
        ))
    }

    /// One vec4 per instance (GroupNorm's and InstanceNorm's backward).
    fn instance_scratch(&self, instances: usize) -> Result<wgpu::Buffer> {
        let mut s = lock(&self.scratch);
        grow(&self.ctx, &mut s.instances, instances as u64 * 16, "norm instance sums")
    }

    /// The scratch of a cut op: one part's rows and every part's column partials.
    fn part_scratch(&self, part_rows: usize, column_bytes: u64) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let limit = self.ctx.device().limits().max_storage_buffer_binding_size;
        if column_bytes > limit {
            return Err(Error::Unsupported(format!(
                "{column_bytes} bytes of partial column sums exceed the device's storage binding limit"
            )));
        }
        let mut s = lock(&self.scratch);
        Ok((
            grow(&self.ctx, &mut s.part_rows, part_rows as u64 * 16, "norm part rows")?,
            grow(&self.ctx, &mut s.column_partials, column_bytes, "norm column partials")?,
        ))
    }

    fn row_workgroups(geo: &Geometry) -> (u32, u32) {
        (geo.rows().div_ceil(64).min(65535) as u32, 1)
    }

    fn weight_workgroups(&self) -> (u32, u32) {
        (self.len.div_ceil(64).min(65535) as u32, 1)
    }

    /// Records a forward of `x` into `y`. A tensor above one binding runs in
    /// parts of whole samples, each part's statistics copied into the saved
    /// rows; InstanceNorm's running statistics then update once, from all.
    pub fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        call: &Call,
    ) -> Result<()> {
        let Call { geo, opt, source } = *call;
        self.check_pair(x, y, "y")?;
        if geo.rows() > u32::MAX as usize / 16 {
            return Err(Error::Unsupported(format!("{} statistics exceed one buffer", geo.rows())));
        }
        let f16 = x.dtype == DType::F16;
        let reduction = self.ctx.reduction();
        let parts = self.parts(&geo, &[(x, "x"), (y, "y")])?;
        let plans = parts
            .iter()
            .map(|p| StatPlan::new(&p.geo, &[p.windows[0].elem_offset], f16, reduction))
            .collect::<Result<Vec<_>>>()?;
        let bytes = plans.iter().map(StatPlan::partial_bytes).max().unwrap_or(16);
        let (rows, _, partials) = self.scratch(&geo, bytes)?;
        if let [part] = &parts[..] {
            let piece = part.piece(&rows, &partials, f16);
            self.forward_part(encoder, &piece, &plans[0], &part.windows[1], &opt, source)?;
        } else {
            let most = parts.iter().map(|p| p.geo.rows()).max().unwrap_or(0);
            let (part_rows, _) = self.part_scratch(most, 0)?;
            // Parts run on their input's statistics; the running ones update once, below.
            let part_source = match source {
                Source::Input { .. } => Source::Input { update_running: false },
                Source::Running => Source::Running,
            };
            for (part, plan) in parts.iter().zip(&plans) {
                let piece = part.piece(&part_rows, &partials, f16);
                self.forward_part(encoder, &piece, plan, &part.windows[1], &opt, part_source)?;
                if part_source != Source::Running {
                    let at = part.first_row as u64 * 16;
                    encoder.copy_buffer_to_buffer(&part_rows, 0, &rows, at, part.geo.rows() as u64 * 16);
                }
            }
            if source == (Source::Input { update_running: true }) {
                let params = self.params(geo.stat, &geo, &opt);
                self.ctx.scoped(|| {
                    let params = uniform(self.ctx.device(), &params)?;
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    self.record_running(&mut pass, "update_running", &params, &rows, self.weight_workgroups())
                })?;
            }
        }
        // The rows now hold this input's statistics, or the running ones.
        *lock(&self.saved_for) = match source {
            Source::Input { .. } => Some((x.shape.clone(), x.layout, geo.rows())),
            Source::Running => None,
        };
        Ok(())
    }

    /// One part's forward: statistics into `piece.rows` (or the running
    /// ones), then the elementwise pass into `yw`.
    fn forward_part(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        piece: &Piece,
        plan: &StatPlan,
        yw: &Window,
        opt: &Options,
        source: Source,
    ) -> Result<()> {
        let Piece { geo, weight_base, x: xw, rows, partials, f16 } = *piece;
        let geo = &geo;
        let mut stat_params = self.params(geo.stat, geo, opt);
        stat_params.x_off = xw.elem_offset;
        stat_params.weight_base = weight_base;
        // LayerNorm's and RMSNorm's rows, where they fit: one pass.
        if let Some(resident) = self.resident(geo, source, &[xw.elem_offset, yw.elem_offset]) {
            let mut params = stat_params;
            params.y_off = yw.elem_offset;
            return self.forward_resident(encoder, resident, &params, piece, yw);
        }
        let reduce_params = plan.params(&stat_params);
        stat_params.parts = plan.merge_parts;
        let mut apply_params = self.params(geo.weights, geo, opt);
        apply_params.weight_base = weight_base;
        apply_params.x_off = xw.elem_offset;
        apply_params.y_off = yw.elem_offset;
        let tile = Tiling::elementwise_only(
            geo.weights,
            &[xw.elem_offset, yw.elem_offset],
            f16,
            self.ctx.reduction(),
            geo.row_div,
        )?;
        let mut apply_params = tile.apply_params(&apply_params);
        apply_params.row_div /= tile.rows_per_view_row() as u32;

        let device = self.ctx.device();
        self.ctx.scoped(|| {
            let kernels = self.ctx.kernels();
            let stat_buf = uniform(device, &stat_params)?;
            let reduce_buf = uniform(device, &reduce_params)?;
            let apply_buf = uniform(device, &apply_params)?;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("norm forward"),
                timestamp_writes: None,
            });
            match source {
                Source::Input { update_running } => {
                    plan.record(
                        &self.ctx,
                        &mut pass,
                        ReduceMode::Stats,
                        ReduceBindings {
                            params: reduce_buf.as_entire_binding(),
                            x: xw.resource(),
                            dy: xw.resource(),
                            chan: rows.as_entire_binding(),
                            partials: partials.as_entire_binding(),
                            weight: None,
                            z: None,
                        },
                    )?;
                    let merge = kernels
                        .get(KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, "merge_rows"))?;
                    let group = bind(
                        device,
                        &merge,
                        &[
                            (0, stat_buf.as_entire_binding()),
                            (1, partials.as_entire_binding()),
                            (6, rows.as_entire_binding()),
                        ],
                    );
                    dispatch(&mut pass, &merge, &group, Self::row_workgroups(geo));
                    if update_running {
                        self.record_running(&mut pass, "update_running", &stat_buf, rows, self.weight_workgroups())?;
                    }
                }
                Source::Running => {
                    let grid = Self::row_workgroups(geo);
                    self.record_running(&mut pass, "prepare_running", &stat_buf, rows, grid)?;
                }
            }
            let apply = kernels.get(tile_kernel(&tile, "apply"))?;
            let group = bind(
                device,
                &apply,
                &[
                    (0, apply_buf.as_entire_binding()),
                    (2, self.weight.as_entire_binding()),
                    (3, self.bias.as_entire_binding()),
                    (6, rows.as_entire_binding()),
                    (8, xw.resource()),
                    (9, yw.resource()),
                ],
            );
            dispatch(&mut pass, &apply, &group, tile.apply.grid);
            Ok(())
        })
    }

    /// The one-pass plan (src/resident.rs) for `geo` on input statistics,
    /// with views at element offsets `offsets`: LayerNorm's and RMSNorm's
    /// rows on CPU adapters, where they fit.
    fn resident(&self, geo: &Geometry, source: Source, offsets: &[u32]) -> Option<Resident> {
        let trailing = *geo == Geometry::trailing(geo.rows(), geo.row_len());
        let input = source == Source::Input { update_running: false };
        if !(trailing && input) {
            return None;
        }
        let device = (self.ctx.adapter_info(), self.ctx.device().features());
        Resident::choose(self.ctx.reduction(), device, geo.row_len(), offsets)
    }

    /// One part's forward in one pass (src/resident.rs): y and the saved
    /// rows from a single read of x.
    fn forward_resident(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        resident: Resident,
        params: &ChannelParams,
        piece: &Piece,
        yw: &Window,
    ) -> Result<()> {
        self.ctx.scoped(|| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("norm forward, one pass"),
                timestamp_writes: None,
            });
            self.record_resident(&mut pass, resident, Pass::Forward, params, piece, &[(9, yw.resource())])
        })
    }

    /// Records `kernel` of the one-pass plan over `piece`'s rows: its
    /// parameters, the weights, the saved rows and x bound, and `views`.
    fn record_resident(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        resident: Resident,
        kernel: Pass,
        params: &ChannelParams,
        piece: &Piece,
        views: &[(u32, wgpu::BindingResource<'_>)],
    ) -> Result<()> {
        let device = self.ctx.device();
        let key = KernelKey::new(Shader::Resident { plan: resident, f16: piece.f16, words: false }, kernel.entry());
        let pipeline = self.ctx.kernels().get(key)?;
        let params = uniform(device, params)?;
        let mut entries = vec![
            (0, params.as_entire_binding()),
            (2, self.weight.as_entire_binding()),
            (3, self.bias.as_entire_binding()),
            (6, piece.rows.as_entire_binding()),
            (8, piece.x.resource()),
        ];
        entries.extend_from_slice(views);
        let group = bind(device, &pipeline, &entries);
        dispatch(pass, &pipeline, &group, (resident.workgroups(piece.geo.rows(), kernel), 1));
        Ok(())
    }

    fn record_running(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        entry: &'static str,
        params: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        grid: (u32, u32),
    ) -> Result<()> {
        let device = self.ctx.device();
        let kernel =
            self.ctx.kernels().get(KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, entry))?;
        let group = bind(
            device,
            &kernel,
            &[
                (0, params.as_entire_binding()),
                (4, self.running_mean.as_entire_binding()),
                (5, self.running_var.as_entire_binding()),
                (6, rows.as_entire_binding()),
            ],
        );
        dispatch(pass, &kernel, &group, grid);
        Ok(())
    }

    /// Records a backward: dx into `dx`, dweight and dbias into the grad
    /// buffers. A tensor above one binding runs in parts of whole samples,
    /// each on its copy of the saved rows; every part's column partials
    /// merge into dweight and dbias at the end.
    pub fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        call: &Call,
    ) -> Result<()> {
        let Call { geo, opt, source } = *call;
        self.check_pair(x, dy, "dy")?;
        self.check_pair(x, dx, "dx")?;
        if dx.buffer == dy.buffer {
            return Err(Error::Buffer("dx shares a buffer with dy; backward does not run in place".into()));
        }
        if let Source::Input { .. } = source {
            let saved = lock(&self.saved_for).clone();
            if saved.as_ref().map(|s| (&s.0, s.1)) != Some((&x.shape, x.layout)) {
                return Err(Error::Parameter(format!(
                    "backward needs the statistics of a forward on the same input; the last one saw {:?}, x is {:?} {:?}",
                    saved.map(|s| (s.0, s.1)),
                    x.shape,
                    x.layout
                )));
            }
        }
        let f16 = x.dtype == DType::F16;
        let reduction = self.ctx.reduction();
        let parts = self.parts(&geo, &[(x, "x"), (dy, "dy"), (dx, "dx")])?;
        let mut plans = Vec::with_capacity(parts.len());
        let slots = parts.iter().map(|p| p.slot + 1).max().unwrap_or(1);
        let max_binding = self.ctx.device().limits().max_storage_buffer_binding_size;
        // The one-pass backward, where every part takes it (its column
        // partials are laid out its own way) and they fit the merge's loop
        // and one binding.
        let mut resident: Vec<Option<Resident>> = parts
            .iter()
            .map(|part| {
                let offsets: Vec<u32> = part.windows.iter().map(|w| w.elem_offset).collect();
                self.resident(&part.geo, source, &offsets).filter(|r| {
                    let total = r.slots(part.geo.rows()) * slots;
                    total <= MAX_MERGE_PARTS && u64::from(total) * geo.weights.channels as u64 * 16 <= max_binding
                })
            })
            .collect();
        if resident.iter().any(Option::is_none) {
            resident.fill(None);
        }
        for (part, resident) in parts.iter().zip(&resident) {
            let g = &part.geo;
            let rows = ReducePlan::reduction(g.stat, reduction)?.batched(g.batch, g.batch_stride)?;
            let mut columns = ReducePlan::reduction(g.weights, reduction)?;
            if let Some(r) = resident {
                columns.parts = r.slots(g.rows());
            }
            // Every part's column partials meet in one merge loop and one
            // binding: keep them within MAX_MERGE_PARTS (see src/reduce.rs)
            // and the binding limit with the tree's fewer.
            let column_bytes = columns.partial_bytes(geo.weights.channels) * u64::from(slots);
            if resident.is_none() && (columns.parts * slots > MAX_MERGE_PARTS || column_bytes > max_binding) {
                columns = ReducePlan::new(g.weights)?;
            }
            plans.push((rows, columns, *resident));
        }
        // GroupNorm's and InstanceNorm's sums per instance, where the op is
        // one part (a cut op's column partials meet across parts) and the
        // partials, at least one per instance, fit one binding (so does
        // the per-instance scratch).
        let instances = match &parts[..] {
            [part] if resident[0].is_none() && part.geo.is_grouped() => {
                let offsets = [part.windows[0].elem_offset, part.windows[1].elem_offset];
                let plan = StatPlan::new(&part.geo.instances(), &offsets, f16, reduction)?;
                (plan.partial_bytes() <= max_binding).then_some(plan)
            }
            _ => None,
        };
        // The partials scratch holds the per-instance partials, or the row and
        // the column partials, whichever the backward takes.
        let partial_bytes = match &instances {
            Some(plan) => plan.partial_bytes(),
            None => {
                let rows = plans.iter().zip(&parts).map(|((r, _, _), p)| r.partial_bytes(p.geo.stat.channels));
                let columns = plans.iter().map(|(_, c, _)| c.partial_bytes(geo.weights.channels));
                rows.chain(columns).max().unwrap_or(16)
            }
        };
        let (rows, rows_dx, partials) = self.scratch(&geo, partial_bytes)?;
        if let [part] = &parts[..] {
            let (row_plan, col_plan, resident) = &plans[0];
            let columns = Columns { partials: &partials, parts: col_plan.parts, part_base: 0, merge: true };
            let piece = part.piece(&rows, &partials, f16);
            let instances = match &instances {
                Some(plan) => Some((plan, self.instance_scratch(part.geo.instances().rows())?)),
                None => None,
            };
            let part_dx = PartDx {
                dy: &part.windows[1],
                dx: &part.windows[2],
                rows_dx: &rows_dx,
                resident: *resident,
                instances: instances.as_ref().map(|(plan, buffer)| (*plan, buffer)),
            };
            self.backward_part(encoder, &piece, row_plan, col_plan, &part_dx, &opt, source, &columns)?;
        } else {
            // Every part's column partials in one run per column, merged once.
            let stride = plans.iter().map(|(_, c, _)| c.parts).max().unwrap_or(1);
            let slots = parts.iter().map(|p| p.slot + 1).max().unwrap_or(1);
            let total = stride * slots;
            let most = parts.iter().map(|p| p.geo.rows()).max().unwrap_or(0);
            let column_bytes = u64::from(total) * geo.weights.channels as u64 * 16;
            let (part_rows, column_partials) = self.part_scratch(most, column_bytes)?;
            if plans.iter().any(|(_, c, _)| c.parts != stride) {
                // Slots a smaller part leaves unwritten must sum as zero.
                encoder.clear_buffer(&column_partials, 0, None);
            }
            for (part, (row_plan, col_plan, resident)) in parts.iter().zip(&plans) {
                if source != Source::Running {
                    let at = part.first_row as u64 * 16;
                    encoder.copy_buffer_to_buffer(&rows, at, &part_rows, 0, part.geo.rows() as u64 * 16);
                }
                let columns =
                    Columns { partials: &column_partials, parts: total, part_base: part.slot * stride, merge: false };
                let piece = part.piece(&part_rows, &partials, f16);
                let part_dx = PartDx {
                    dy: &part.windows[1],
                    dx: &part.windows[2],
                    rows_dx: &rows_dx,
                    resident: *resident,
                    instances: None,
                };
                self.backward_part(encoder, &piece, row_plan, col_plan, &part_dx, &opt, source, &columns)?;
            }
            let mut params = self.params(geo.weights, &geo, &opt);
            params.parts = total;
            self.ctx.scoped(|| {
                let params = uniform(self.ctx.device(), &params)?;
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.record_merge_columns(&mut pass, &params, &column_partials, resident[0])
            })?;
        }
        if source == Source::Running {
            // prepare_running replaced the saved input statistics.
            *lock(&self.saved_for) = None;
        }
        Ok(())
    }

    /// One part's backward: row sums and dx coefficients, column partials
    /// into `columns` (merged into dweight and dbias when it says so), dx.
    #[allow(clippy::too_many_arguments)]
    fn backward_part(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        piece: &Piece,
        row_plan: &ReducePlan,
        col_plan: &ReducePlan,
        out: &PartDx,
        opt: &Options,
        source: Source,
        columns: &Columns,
    ) -> Result<()> {
        let Piece { geo, weight_base, x: xw, rows, f16, .. } = *piece;
        let PartDx { dy: dyw, dx: dxw, rows_dx, resident, .. } = *out;
        let geo = &geo;
        let mut row_params = self.params(geo.stat, geo, opt);
        row_params.weight_base = weight_base;
        row_params.x_off = xw.elem_offset;
        row_params.dy_off = dyw.elem_offset;
        row_params.flags |= if matches!(source, Source::Input { .. }) { FLAG_BATCH_STATS } else { 0 };
        row_plan.fill(&mut row_params);
        let mut col_params = self.params(geo.weights, geo, opt);
        col_params.weight_base = weight_base;
        col_params.x_off = xw.elem_offset;
        col_params.dy_off = dyw.elem_offset;
        col_params.dx_off = dxw.elem_offset;
        col_plan.fill(&mut col_params);
        // The dx pass walks the same view with an elementwise tiling of its own.
        let tile = Tiling::elementwise_only(
            geo.weights,
            &[xw.elem_offset, dyw.elem_offset, dxw.elem_offset],
            f16,
            self.ctx.reduction(),
            geo.row_div,
        )?;
        let mut dx_params = tile.apply_params(&col_params);
        dx_params.row_div /= tile.rows_per_view_row() as u32;
        // Column partials go to the part's weights, `parts` per weight.
        col_params.parts = columns.parts;
        col_params.part_base = columns.part_base;
        col_params.chan_base = weight_base;
        if let Some(resident) = resident {
            let mut params = row_params;
            params.dx_off = dxw.elem_offset;
            params.parts = columns.parts;
            params.part_base = columns.part_base;
            params.chan_base = weight_base;
            return self.backward_resident(encoder, resident, &params, &col_params, piece, out, columns);
        }

        let device = self.ctx.device();
        self.ctx.scoped(|| {
            let kernels = self.ctx.kernels();
            let row_buf = uniform(device, &row_params)?;
            let col_buf = uniform(device, &col_params)?;
            let dx_buf = uniform(device, &dx_params)?;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("norm backward"),
                timestamp_writes: None,
            });
            if source == Source::Running {
                self.record_running(&mut pass, "prepare_running", &row_buf, rows, Self::row_workgroups(geo))?;
            }
            if let Some(instances) = out.instances {
                self.record_instance_grads(&mut pass, instances, &row_params, piece, out, opt)?;
            } else {
                let row = (&row_buf, row_plan);
                self.record_row_and_column_grads(&mut pass, piece, out, row, (&col_buf, col_plan), columns)?;
            }
            let dx_kernel = kernels.get(tile_kernel(&tile, "dx"))?;
            let group = bind(
                device,
                &dx_kernel,
                &[
                    (0, dx_buf.as_entire_binding()),
                    (2, self.weight.as_entire_binding()),
                    (7, rows_dx.as_entire_binding()),
                    (8, xw.resource()),
                    (10, dyw.resource()),
                    (11, dxw.resource()),
                ],
            );
            dispatch(&mut pass, &dx_kernel, &group, tile.apply.grid);
            Ok(())
        })
    }

    /// The backward's row sums (reduce MODE 2) into dx coefficients, and its
    /// column partials (MODE 3), merged into dweight and dbias when `columns`
    /// says so.
    fn record_row_and_column_grads(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        piece: &Piece,
        out: &PartDx,
        (row_buf, row_plan): (&wgpu::Buffer, &ReducePlan),
        (col_buf, col_plan): (&wgpu::Buffer, &ReducePlan),
        columns: &Columns,
    ) -> Result<()> {
        let Piece { geo, x: xw, rows, partials, f16, .. } = *piece;
        let PartDx { dy: dyw, rows_dx, .. } = *out;
        let device = self.ctx.device();
        let kernels = self.ctx.kernels();
        let trailing = !geo.is_grouped();
        let reduce = reduce::pipeline(&self.ctx, row_plan, ReduceMode::WeightedGradSums, f16, trailing)?;
        reduce::record(
            device,
            pass,
            &reduce,
            row_plan,
            ReduceBindings {
                params: row_buf.as_entire_binding(),
                x: xw.resource(),
                dy: dyw.resource(),
                chan: rows.as_entire_binding(),
                partials: partials.as_entire_binding(),
                weight: Some(self.weight.as_entire_binding()),
                z: None,
            },
        );
        let merge = kernels
            .get(KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, "merge_row_grads"))?;
        let group = bind(
            device,
            &merge,
            &[
                (0, row_buf.as_entire_binding()),
                (1, partials.as_entire_binding()),
                (6, rows.as_entire_binding()),
                (7, rows_dx.as_entire_binding()),
            ],
        );
        dispatch(pass, &merge, &group, Self::row_workgroups(&geo));
        let reduce = reduce::pipeline(&self.ctx, col_plan, ReduceMode::ColumnGrads, f16, trailing)?;
        reduce::record(
            device,
            pass,
            &reduce,
            col_plan,
            ReduceBindings {
                params: col_buf.as_entire_binding(),
                x: xw.resource(),
                dy: dyw.resource(),
                chan: rows.as_entire_binding(),
                partials: columns.partials.as_entire_binding(),
                weight: None,
                z: None,
            },
        );
        if columns.merge {
            self.record_merge_columns(pass, col_buf, columns.partials, None)?;
        }
        Ok(())
    }

    /// GroupNorm's and InstanceNorm's row sums and column sums from one
    /// reduction of (x, dy) per (n, c) instance (see instance_centres in
    /// shaders/row_norm.wgsl): dx coefficients into `rows_dx`, dweight and
    /// dbias. `row_params` are the stat rows' parameters.
    fn record_instance_grads(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        (plan, instances): (&StatPlan, &wgpu::Buffer),
        row_params: &ChannelParams,
        piece: &Piece,
        out: &PartDx,
        opt: &Options,
    ) -> Result<()> {
        let Piece { geo, weight_base, x: xw, rows, partials, .. } = *piece;
        let PartDx { dy: dyw, rows_dx, .. } = *out;
        let device = self.ctx.device();
        let kernels = self.ctx.kernels();
        let inst = geo.instances();
        let mut base = self.params(inst.stat, &inst, opt);
        base.x_off = xw.elem_offset;
        base.dy_off = dyw.elem_offset;
        base.weight_base = weight_base;
        let reduce_buf = uniform(device, &plan.params(&base))?;
        let mut params = *row_params;
        params.parts = plan.merge_parts;
        let params = uniform(device, &params)?;
        let per_instance = (inst.rows().div_ceil(64).min(65535) as u32, 1);
        let row_norm =
            |entry| kernels.get(KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, entry));

        let centres = row_norm("instance_centres")?;
        let group = bind(
            device,
            &centres,
            &[(0, params.as_entire_binding()), (6, rows.as_entire_binding()), (14, instances.as_entire_binding())],
        );
        dispatch(pass, &centres, &group, per_instance);
        plan.record(
            &self.ctx,
            pass,
            ReduceMode::GradSums,
            ReduceBindings {
                params: reduce_buf.as_entire_binding(),
                x: xw.resource(),
                dy: dyw.resource(),
                chan: instances.as_entire_binding(),
                partials: partials.as_entire_binding(),
                weight: None,
                z: None,
            },
        )?;
        let merge = row_norm("merge_instances")?;
        let group = bind(
            device,
            &merge,
            &[(0, params.as_entire_binding()), (1, partials.as_entire_binding()), (14, instances.as_entire_binding())],
        );
        dispatch(pass, &merge, &group, per_instance);
        let row_grads = row_norm("group_row_grads")?;
        let group = bind(
            device,
            &row_grads,
            &[
                (0, params.as_entire_binding()),
                (2, self.weight.as_entire_binding()),
                (6, rows.as_entire_binding()),
                (7, rows_dx.as_entire_binding()),
                (14, instances.as_entire_binding()),
            ],
        );
        dispatch(pass, &row_grads, &group, Self::row_workgroups(&geo));
        let columns = row_norm("instance_columns")?;
        let group = bind(
            device,
            &columns,
            &[
                (0, params.as_entire_binding()),
                (6, rows.as_entire_binding()),
                (12, self.grad_weight.as_entire_binding()),
                (13, self.grad_bias.as_entire_binding()),
                (14, instances.as_entire_binding()),
            ],
        );
        dispatch(pass, &columns, &group, self.weight_workgroups());
        Ok(())
    }

    /// One part's backward in one pass (src/resident.rs): dx and the column
    /// partials from a single read of x and dy, then dweight and dbias when
    /// `columns` says so.
    #[allow(clippy::too_many_arguments)]
    fn backward_resident(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        resident: Resident,
        params: &ChannelParams,
        col_params: &ChannelParams,
        piece: &Piece,
        out: &PartDx,
        columns: &Columns,
    ) -> Result<()> {
        self.ctx.scoped(|| {
            let col_buf = uniform(self.ctx.device(), col_params)?;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("norm backward, one pass"),
                timestamp_writes: None,
            });
            let views = [(1, columns.partials.as_entire_binding()), (10, out.dy.resource()), (11, out.dx.resource())];
            self.record_resident(&mut pass, resident, Pass::Backward, params, piece, &views)?;
            if columns.merge {
                self.record_merge_columns(&mut pass, &col_buf, columns.partials, Some(resident))?;
            }
            Ok(())
        })
    }

    /// dweight and dbias from the column partials (`params.parts` per
    /// column), laid out by the one-pass backward with `resident`.
    fn record_merge_columns(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        params: &wgpu::Buffer,
        partials: &wgpu::Buffer,
        resident: Option<Resident>,
    ) -> Result<()> {
        let key = match resident {
            Some(plan) => {
                KernelKey::new(Shader::Resident { plan, f16: false, words: false }, Pass::MergeColumns.entry())
            }
            None => KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, "merge_columns"),
        };
        let merge = self.ctx.kernels().get(key)?;
        let group = bind(
            self.ctx.device(),
            &merge,
            &[
                (0, params.as_entire_binding()),
                (1, partials.as_entire_binding()),
                (12, self.grad_weight.as_entire_binding()),
                (13, self.grad_bias.as_entire_binding()),
            ],
        );
        dispatch(pass, &merge, &group, self.weight_workgroups());
        Ok(())
    }
}

/// A run of whole samples, or of whole groups of one sample, that fits one
/// binding: where its rows start among the op's, its first weight, its slot
/// among the parts that cover a weight (for the column partials), its
/// geometry, and its windows of the op's tensors (x first).
struct Part<'a> {
    first_row: usize,
    weight_base: u32,
    slot: u32,
    geo: Geometry,
    windows: Vec<Window<'a>>,
}

impl<'a> Part<'a> {
    /// The part's passes over `rows` (its own) and the row partials scratch.
    fn piece<'p>(&'p self, rows: &'p wgpu::Buffer, partials: &'p wgpu::Buffer, f16: bool) -> Piece<'p, 'a> {
        Piece { geo: self.geo, weight_base: self.weight_base, x: &self.windows[0], rows, partials, f16 }
    }
}

/// What a part's passes share: its geometry, x, the rows its statistics
/// live in, and the row partials scratch.
#[derive(Clone, Copy)]
struct Piece<'p, 'a> {
    geo: Geometry,
    /// The part's first weight (a run of groups of one sample), else 0.
    weight_base: u32,
    x: &'p Window<'a>,
    rows: &'p wgpu::Buffer,
    partials: &'p wgpu::Buffer,
    f16: bool,
}

/// A part's backward outputs and its dx coefficients.
#[derive(Clone, Copy)]
struct PartDx<'p, 'a> {
    dy: &'p Window<'a>,
    dx: &'p Window<'a>,
    rows_dx: &'p wgpu::Buffer,
    /// The one-pass plan, where the part takes it (its column partials are
    /// sized for it).
    resident: Option<Resident>,
    /// GroupNorm's and InstanceNorm's reduction per instance and its
    /// per-instance scratch, where the part is the whole op.
    instances: Option<(&'p StatPlan, &'p wgpu::Buffer)>,
}

/// Where a part's column partials go: `parts` per column, this part's from
/// `part_base`; `merge` when this part is the whole op.
struct Columns<'p> {
    partials: &'p wgpu::Buffer,
    parts: u32,
    part_base: u32,
    merge: bool,
}

/// row_norm.wgsl's kernel for pass `op` (`apply` or `dx`) over `tile`.
fn tile_kernel(tile: &Tiling, op: &str) -> KernelKey {
    KernelKey::new(Shader::RowNorm { f16: tile.f16, vec4: tile.vec4, words: false }, tile.entry(op))
}
