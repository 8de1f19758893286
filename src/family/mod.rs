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
//! instance (MODE 1) for both sums instead (`record_instance_grads`), whose
//! last workgroups take them on to dweight, dbias and the dx coefficients
//! where the context lets them (`record_finishing_instances`). On CPU
//! adapters, LayerNorm's and RMSNorm's rows of up to 512 values take one
//! pass each way (src/resident.rs).
//!
//! A tensor above one storage binding runs in parts (runs of whole samples,
//! or of whole groups of one channels-second sample), each with its own
//! rows, copied to and from the op's saved rows; dweight and dbias merge
//! every part's column partials once at the end.

mod backward;
mod forward;
mod grads;

/// What every family layer (a struct with `core: Core` and `config`)
/// offers alike: `new` (its config's `features()` validates it and counts
/// the layer's weights), its config, affine parameters, saved statistics
/// buffer and context; `$new` documents `new`, `$saved` what the saved
/// statistics hold.
macro_rules! family_layer {
    ($config:ty, $new:literal, $saved:literal) => {
        #[doc = $new]
        pub fn new(ctx: &crate::Context, config: $config) -> crate::Result<Self> {
            let features = config.features()?;
            Ok(Self { core: crate::family::Core::new(ctx, features)?, config })
        }

        /// The layer's configuration.
        pub fn config(&self) -> &$config {
            &self.config
        }

        /// Weight and bias (one f32 per feature) and their gradients from
        /// the last backward.
        pub fn affine(&self) -> &crate::Affine {
            &self.core.affine
        }

        #[doc = $saved]
        pub fn saved_statistics(&self) -> Option<wgpu::Buffer> {
            self.core.saved()
        }

        /// The context the layer records for: `context().run(|e| ..)` is
        /// the blocking form of its ops.
        pub fn context(&self) -> &crate::Context {
            &self.core.ctx
        }
    };
}

/// `forward` and `backward` of a family layer whose every call on x is
/// `self.call(x)` (LayerNorm, RMSNorm, GroupNorm); `$forward` and
/// `$backward` document what each saves and writes.
macro_rules! family_ops {
    ($forward:literal, $backward:literal) => {
        #[doc = $forward]
        pub fn forward(&self, encoder: &mut wgpu::CommandEncoder, x: &TensorView, y: &TensorView) -> Result<()> {
            self.core.record_forward(encoder, x, y, &self.call(x)?)
        }

        #[doc = $backward]
        pub fn backward(
            &self,
            encoder: &mut wgpu::CommandEncoder,
            x: &TensorView,
            dy: &TensorView,
            dx: &TensorView,
        ) -> Result<()> {
            self.core.record_backward(encoder, x, dy, dx, &self.call(x)?)
        }
    };
}

/// `read_saved` and `read_saved_async`: (mean, rstd) per stat row of the
/// last input-statistics forward (LayerNorm, GroupNorm, InstanceNorm).
macro_rules! mean_rstd_reads {
    () => {
        /// Reads (mean, rstd) per stat row of the last input-statistics
        /// forward, in row order (blocking).
        pub fn read_saved(&self) -> Result<(Vec<f32>, Vec<f32>)> {
            crate::context::block_on(self.core.read_saved())
        }

        /// [`Self::read_saved`] without blocking.
        pub async fn read_saved_async(&self) -> Result<(Vec<f32>, Vec<f32>)> {
            self.core.read_saved().await
        }
    };
}

use crate::affine::Affine;
use crate::context::Context;
use crate::cut::{self, Units};
use crate::geometry::Geometry;
use crate::kernels::{
    grid_stride, lock, ChannelParams, KernelKey, Shader, FLAG_AFFINE, FLAG_BATCH_STATS, FLAG_BIAS, FLAG_RMS,
};
use crate::layout::{ChannelView, Layout};
use crate::plans::{Keeper, Plans};
use crate::recording::{Recording, Uniform};
use crate::reduce::{self, ReduceBindings, ReduceMode, ReducePlan, MAX_MERGE_PARTS};
use crate::resident::{Pass, Resident};
use crate::scratch::Scratch;
use crate::stat_plan::StatPlan;
use crate::tensor::{DType, TensorView, Window};
use crate::tiling::Tiling;
use crate::validate::check_features_fit;
use crate::{Error, Result};
use std::sync::Mutex;

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

impl Keeper for Core {
    fn plans(&self) -> &Plans {
        &self.plans
    }

    /// Its scratch (statistics rows, partials): no method hands it out.
    fn private(&self, buffer: &wgpu::Buffer) -> bool {
        self.scratch.owns(buffer)
    }
}

/// The state of one family layer on the GPU.
pub(crate) struct Core {
    pub ctx: Context,
    /// Weight length (normalized size or channel count).
    pub len: usize,
    pub affine: Affine,
    pub running_mean: wgpu::Buffer,
    pub running_var: wgpu::Buffer,
    /// Row statistics, partials and the buffers of a cut op.
    scratch: Scratch,
    /// The wgpu objects of recent ops, for calls that repeat them.
    plans: Plans,
    /// Shape, layout and row count of the input whose statistics `rows` holds.
    saved_for: Mutex<Option<(Vec<usize>, Layout, usize)>>,
}

impl Core {
    /// A layer with `len` weights (ones), biases (zeros) and, for
    /// InstanceNorm, running statistics (0 and 1).
    pub fn new(ctx: &Context, len: usize) -> Result<Core> {
        check_features_fit(ctx.limits(), len, 4)?;
        Ok(Core {
            affine: Affine::new(ctx, len, "norm")?,
            running_mean: ctx.zeros("norm running_mean", len as u64 * 4)?,
            running_var: ctx.upload("norm running_var", &vec![1.0f32; len])?,
            scratch: Scratch::new(ctx, "norm"),
            plans: Plans::default(),
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
        self.scratch.current("row statistics")
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
        let flags = [(FLAG_AFFINE, opt.affine), (FLAG_BIAS, opt.bias), (FLAG_RMS, opt.rms)];
        ChannelParams {
            row_div: geo.row_div as u32,
            groups: geo.groups as u32,
            cpg: geo.cpg as u32,
            wdiv: geo.wdiv as u32,
            rows: geo.rows() as u32,
            ..ChannelParams::of(view, &flags, opt.eps, opt.momentum, geo.row_len())
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
        let limits = self.ctx.limits();
        for (i, (t, name)) in tensors.iter().enumerate() {
            if self.owns(t.buffer) {
                return Err(Error::Buffer(format!("{name} is one of the layer's own buffers; pass a tensor of yours")));
            }
            if let Some((_, other)) = tensors[..i].iter().find(|(o, _)| o.buffer == t.buffer) {
                return Err(Error::Buffer(format!("{name} and {other} share a buffer; the op does not run in place")));
            }
        }
        // Samples of groups: a channels-second sample too large for a
        // binding runs in whole groups (a row is never cut).
        let groups = geo.sample_rows();
        let units = Units {
            units: geo.samples,
            subs: groups,
            sub_len: geo.row_len(),
            split_subs: geo.group_run(0, 1).is_some(),
            split_values: false,
        };
        let pieces = units.cut(cut::max_values(limits, tensors[0].0.dtype.size()))?;
        let windows = cut::windows(&pieces, tensors, limits)?;
        let mut parts = Vec::with_capacity(pieces.len());
        for (piece, windows) in pieces.into_iter().zip(windows) {
            let (subs, o) = (piece.subs, piece.units.start);
            let part = if subs.len() == groups {
                let (geo, first_row) = (geo.for_samples(piece.units.len()), o * groups);
                Part { first_row, weight_base: 0, slot: piece.slot as u32, geo, windows }
            } else {
                let geo = geo.group_run(subs.start, subs.end).ok_or_else(|| {
                    Error::Unsupported("a channels-last sample above the storage binding limit cannot be cut".into())
                })?;
                let (first_row, weight_base) = (o * groups + subs.start, (subs.start * geo.cpg) as u32);
                Part { first_row, weight_base, slot: piece.slot as u32, geo, windows }
            };
            parts.push(part);
        }
        Ok(parts)
    }

    /// Whether `buffer` is one of the layer's own: its parameters, running
    /// statistics or scratch.
    fn owns(&self, buffer: &wgpu::Buffer) -> bool {
        self.affine.owns(buffer) || [&self.running_mean, &self.running_var].contains(&buffer) || self.private(buffer)
    }

    fn scratch(&self, geo: &Geometry, partial_bytes: u64) -> Result<(wgpu::Buffer, wgpu::Buffer, wgpu::Buffer)> {
        let row_bytes = geo.rows() as u64 * 16;
        Ok((
            self.scratch.get("row statistics", row_bytes)?,
            self.scratch.get("dx coefficients", row_bytes)?,
            self.scratch.get("partials", partial_bytes)?,
        ))
    }

    /// One vec4 per instance (GroupNorm's and InstanceNorm's backward).
    fn instance_scratch(&self, instances: usize) -> Result<wgpu::Buffer> {
        self.scratch.get("instance sums", instances as u64 * 16)
    }

    /// The scratch of a cut op: one part's rows and every part's column partials.
    fn part_scratch(&self, part_rows: usize, column_bytes: u64) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        Ok((
            self.scratch.get("part rows", part_rows as u64 * 16)?,
            self.scratch.get_bound("column partials", column_bytes)?,
        ))
    }

    fn row_workgroups(geo: &Geometry) -> (u32, u32) {
        grid_stride(geo.rows())
    }

    fn weight_workgroups(&self) -> (u32, u32) {
        grid_stride(self.len)
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

/// row_norm.wgsl's scalar kernel `entry` (the per-row and per-weight passes).
fn row_norm(entry: &'static str) -> KernelKey {
    KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, entry)
}

/// row_norm.wgsl's kernel for pass `op` (`apply` or `dx`) over `tile`.
fn tile_kernel(tile: &Tiling, op: &str) -> KernelKey {
    KernelKey::new(Shader::RowNorm { f16: tile.reducer.f16, vec4: tile.reducer.vec4, words: false }, tile.entry(op))
}
