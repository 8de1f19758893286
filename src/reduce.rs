//! The per-channel reduction machinery: how a tensor seen as
//! `[outer][channels][inner]` is cut into workgroup slices whose partials
//! (shaders/reduce.wgsl) a merge kernel then combines, one channel per
//! invocation.
//!
//! BatchNorm reduces per channel; the family (LayerNorm, RMSNorm, GroupNorm,
//! InstanceNorm) reduces per "stat row" with the same kernels, by viewing its
//! rows as channels (see `family.rs`). The plan picks the kernel shape from
//! the row length: long rows are sliced across workgroups (planar), short
//! rows share a workgroup (rows), and strided ones go column-wise
//! (interleaved).

use crate::kernels::{ChannelParams, Finish, KernelKey, Shader};
use crate::layout::ChannelView;
use crate::row_teams;
use crate::strategy::Reduction;
use crate::{Error, Result};

/// Invocations per reduction workgroup (`WG` in reduce.wgsl).
const WG: usize = 256;
/// Workgroups a reduction aims for: enough to fill a large GPU.
const TARGET_WORKGROUPS: usize = 2048;
/// Fewest values an invocation should reduce before slicing finer pays.
const MIN_PER_INVOCATION: usize = 32;
/// The same for elementwise passes that share no plan with a reduction.
const MIN_PER_INVOCATION_ELEMENTWISE: usize = 16;
/// Workgroups runs plans and interleaved reductions aim for on CPU adapters.
const CPU_WORKGROUPS: usize = 64;
/// Lanes per row of a rows reduction on CPU adapters (one SIMD batch of lavapipe).
const CPU_ROW_LANES: u32 = 8;
/// Fewest rows an invocation of an interleaved reduction walks on CPU adapters.
const CPU_MIN_ROWS: usize = 256;
/// Bytes of rows an invocation of an interleaved elementwise pass walks at
/// least on CPU adapters (rows of 2 KiB and more keep 16 rows).
const CPU_WALK_BYTES: usize = 32768;
const MAX_GRID: usize = 65535;
/// Most partials a block's last workgroup merges in a tree plan
/// (shaders/finish.wgsl), and most instances the last workgroup of a sweep
/// takes (finish_instances.wgsl): sixteen an invocation.
pub(crate) const TAIL_PARTS: usize = 16 * WG;
/// Fewest columns of a block of a narrowed tree plan: 64 bytes of f32 a
/// row, in vec4 views and in scalar ones.
const MIN_BLOCK_VEC4: usize = 4;
const MIN_BLOCK_SCALAR: usize = 16;
/// Most partials per channel a per-invocation plan may leave: the merge
/// kernels loop over them, and lavapipe (llvmpipe's loop limiter) ends any
/// shader loop after 65,535 iterations.
pub(crate) const MAX_MERGE_PARTS: u32 = 16384;

/// What the reduction sums: statistics of x, or backward's two sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReduceMode {
    /// (count, mean, M2) of x.
    Stats = 0,
    /// (sum dy, sum dy * (x - mean_c), sum (x - mean_c)).
    GradSums = 1,
    /// GradSums with dy * gamma (the family's per-row backward sums).
    WeightedGradSums = 2,
    /// (sum dy * xhat, sum dy) per weight, xhat from per-row statistics.
    ColumnGrads = 3,
    /// GradSums behind a fused ReLU's mask.
    GradSumsRelu = 4,
    /// GradSums behind a fused add + ReLU's mask (reads z).
    GradSumsAddRelu = 5,
}

/// Which kernel shape a plan uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// inner >= WG: workgroup (slice, channel).
    Planar,
    /// Workgroup (column block, row slice).
    Interleaved,
    /// outer == 1 and inner < WG: `width` lanes per channel, several channels per workgroup.
    Rows,
    /// inner >= WG: workgroup (slice, channel) walks spans of a slice, see
    /// [`ReducePlan::elementwise_only`]; reductions only per invocation
    /// ([`ReducePlan::runs_reduction`]).
    Runs,
    /// Channels-last rows walked whole by teams of eight invocations on CPU
    /// adapters, `slice_len` rows a team (src/row_teams.rs): one partial a
    /// team and channel. vec4 only (reduce_vec4.wgsl).
    Teams,
}

/// How one reduction is cut into workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReducePlan {
    pub shape: Shape,
    pub slices: u32,
    pub slice_len: u32,
    pub width: u32,
    pub tree: u32,
    /// Partials per channel.
    pub parts: u32,
    pub grid: (u32, u32),
    /// Number of equal views reduced at once (grid z), `batch_stride` elements apart.
    pub batch: u32,
    pub batch_stride: u32,
    /// Planar: one partial per invocation ([`Reduction::PerInvocation`]).
    pub per_invocation: bool,
}

impl ReducePlan {
    /// The reduction plan of a channels-last vec4 view of `rows` rows walked
    /// by teams ([`row_teams::per_lane`] columns a lane, at most
    /// [`row_teams::MAX_REDUCE_PER_LANE`]): the elementwise passes'
    /// `per_team` rows a team (from [`row_teams::grid`]), or more where the
    /// partials would not fit one merge.
    pub fn teams(rows: usize, per_team: usize) -> ReducePlan {
        let per_team = per_team.max(rows.div_ceil(MAX_MERGE_PARTS as usize)).max(1);
        let teams = rows.div_ceil(per_team).max(1);
        ReducePlan {
            shape: Shape::Teams,
            slices: teams as u32,
            slice_len: per_team as u32,
            width: row_teams::TEAM as u32,
            tree: 0,
            parts: teams as u32,
            grid: (teams.div_ceil(row_teams::TEAMS_PER_WORKGROUP) as u32, 1),
            batch: 1,
            batch_stride: 0,
            per_invocation: true,
        }
    }

    pub fn new(view: ChannelView) -> Result<ReducePlan> {
        // One contiguous row per channel (the family's rows) too short to give
        // every invocation of a workgroup its share: several rows per workgroup.
        let short_rows = view.outer == 1 && view.inner < WG * MIN_PER_INVOCATION;
        if view.inner >= WG && !short_rows {
            return Ok(Self::planar(view, MIN_PER_INVOCATION));
        }
        if view.outer == 1 {
            // Short rows: about MIN_PER_INVOCATION values per lane, a power of
            // two of lanes, up to a whole workgroup per row.
            let lanes = view.inner.div_ceil(MIN_PER_INVOCATION).next_power_of_two().clamp(1, WG);
            return Self::rows(view, lanes);
        }
        Self::interleaved(view, MIN_PER_INVOCATION, TARGET_WORKGROUPS)
    }

    /// `lanes` (a power of two) per row, WG / lanes rows per workgroup.
    fn rows(view: ChannelView, lanes: usize) -> Result<ReducePlan> {
        let blocks = view.channels.div_ceil(WG / lanes);
        let grid = (blocks.min(MAX_GRID), blocks.div_ceil(MAX_GRID));
        if grid.1 > MAX_GRID {
            return Err(Error::Unsupported(format!("{} rows exceed one dispatch's reach", view.channels)));
        }
        Ok(ReducePlan {
            shape: Shape::Rows,
            slices: 1,
            slice_len: view.inner as u32,
            width: lanes as u32,
            tree: (lanes / 2) as u32,
            parts: 1,
            grid: (grid.0 as u32, grid.1 as u32),
            batch: 1,
            batch_stride: 0,
            per_invocation: false,
        })
    }

    /// Workgroup (slice, channel) over channels of long contiguous runs.
    fn planar(view: ChannelView, min: usize) -> ReducePlan {
        let per = view.per_channel();
        let wanted = TARGET_WORKGROUPS.div_ceil(view.channels);
        let most = per.div_ceil(WG * min);
        let slices = wanted.clamp(1, most.max(1)).min(MAX_GRID);
        let slice_len = per.div_ceil(slices);
        let slices = per.div_ceil(slice_len);
        ReducePlan {
            shape: Shape::Planar,
            slices: slices as u32,
            slice_len: slice_len as u32,
            width: 1,
            tree: 0,
            parts: slices as u32,
            grid: (slices as u32, view.channels.min(MAX_GRID) as u32),
            batch: 1,
            batch_stride: 0,
            per_invocation: false,
        }
    }

    /// BatchNorm's reduction tiling over `view`: planar over long inner runs,
    /// else interleaved, so that every workgroup (planar) or invocation
    /// (interleaved) stays on one channel and looks its coefficients up once.
    /// Its elementwise passes take [`ReducePlan::elementwise_only`].
    pub fn elementwise(view: ChannelView) -> Result<ReducePlan> {
        if view.inner >= WG {
            Ok(Self::planar(view, MIN_PER_INVOCATION))
        } else {
            Self::interleaved(view, MIN_PER_INVOCATION, TARGET_WORKGROUPS)
        }
    }

    /// The plan of an elementwise pass that shares its tiling with no
    /// reduction (the family's apply and dx passes).
    ///
    /// Short inner runs take the interleaved tiling with 16 values per
    /// invocation instead of 32: no partials pay for the extra invocations,
    /// and lavapipe streams best with short walks (the family's apply went
    /// from about 0.5 to 0.6 of the copy ceiling).
    ///
    /// On CPU adapters an invocation walks at least CPU_WALK_BYTES of rows
    /// (`value_bytes` a value of the view): lavapipe streams down short rows
    /// better in longer walks; twice that length was slower again.
    ///
    /// Long inner runs (inner >= WG) take [`Shape::Runs`]: each channel's
    /// values cut into `slices` slices of `slice_len`, workgroup (x, c)
    /// walking slices x, x + grid.x, ... of channel c, and each group of
    /// eight invocations a contiguous span of `width` values of the slice
    /// (see shaders/walks.wgsl).
    pub fn elementwise_only(view: ChannelView, reduction: Reduction, value_bytes: usize) -> Result<ReducePlan> {
        if view.inner < WG {
            let min = match reduction {
                Reduction::PerInvocation => {
                    let row_bytes = (view.channels * view.inner * value_bytes).max(1);
                    MIN_PER_INVOCATION_ELEMENTWISE.max(CPU_WALK_BYTES / row_bytes)
                }
                Reduction::Tree => MIN_PER_INVOCATION_ELEMENTWISE,
            };
            return Self::interleaved(view, min, TARGET_WORKGROUPS);
        }
        let per = view.per_channel();
        let slices = match reduction {
            // CPU adapters: about CPU_WORKGROUPS workgroups. Each costs
            // lavapipe microseconds to start, and longer spans stream
            // better: 64 beat 16, 32, 128 and 256.
            Reduction::PerInvocation => CPU_WORKGROUPS.div_ceil(view.channels),
            // GPUs: enough workgroups to fill the device.
            Reduction::Tree => per.div_ceil(WG * MIN_PER_INVOCATION_ELEMENTWISE),
        };
        let slice_len = per.div_ceil(slices.clamp(1, MAX_GRID));
        let slices = per.div_ceil(slice_len);
        // Each group of eight invocations walks a span of its slice.
        let span = slice_len.div_ceil(WG / 8).next_multiple_of(8);
        Ok(ReducePlan {
            shape: Shape::Runs,
            slices: slices as u32,
            slice_len: slice_len as u32,
            width: span as u32,
            tree: 0,
            parts: 0,
            grid: (slices as u32, view.channels.min(MAX_GRID) as u32),
            batch: 1,
            batch_stride: 0,
            per_invocation: false,
        })
    }

    /// The plan of a reduction over `view` with `reduction`'s partials.
    pub fn reduction(view: ChannelView, reduction: Reduction) -> Result<ReducePlan> {
        let plan = Self::new(view)?;
        match (plan.shape, reduction) {
            (Shape::Interleaved, _) => Self::interleaved_reduction(view, reduction),
            (Shape::Planar, Reduction::PerInvocation) => match Self::runs_reduction(view)? {
                Some(runs) => Ok(runs),
                None => Ok(plan.with(reduction)),
            },
            // CPU adapters: a row's lanes one SIMD batch of eight, which then
            // reads the row in consecutive 128-byte steps.
            (Shape::Rows, Reduction::PerInvocation) if plan.width > CPU_ROW_LANES => {
                Ok(Self::rows(view, CPU_ROW_LANES as usize)?.with(reduction))
            }
            _ => Ok(plan.with(reduction)),
        }
    }

    /// An interleaved reduction's plan with `reduction`'s partials. On CPU
    /// adapters about CPU_WORKGROUPS workgroups of at least CPU_MIN_ROWS rows
    /// per invocation: fewer partials to write and merge, and longer walks
    /// down neighbouring rows.
    pub fn interleaved_reduction(view: ChannelView, reduction: Reduction) -> Result<ReducePlan> {
        Ok(match reduction {
            Reduction::PerInvocation => Self::interleaved(view, CPU_MIN_ROWS, CPU_WORKGROUPS)?.with(reduction),
            Reduction::Tree => Self::interleaved(view, MIN_PER_INVOCATION, TARGET_WORKGROUPS)?,
        })
    }

    /// A tree interleaved plan over `view` cut for a block's last
    /// workgroup to merge (shaders/finish.wgsl): blocks of whole channels
    /// (`lanes`: a vec4 column is four channels-last channels, `Some(c)`
    /// the tensor's c; else a channel is a run of `inner` columns) of at
    /// least 64 bytes a row (`vec4`: the view's values are vec4s), as
    /// narrow as keeps a block's partials at most TAIL_PARTS. Halving a
    /// block halves its channels and, each invocation keeping its
    /// MIN_PER_INVOCATION rows, its row slices: its merge shrinks with the
    /// square of its width while the grid keeps its workgroups. Lanes of
    /// channels regrouped (channels not a multiple of four) spread a
    /// channel over every column: those plans stay as they are. Other
    /// plans are returned unchanged; the partials' layout is the same
    /// either way.
    pub fn narrowed(self, view: ChannelView, lanes: Option<u32>, vec4: bool) -> Result<ReducePlan> {
        self.narrowed_over(view, lanes, vec4, 1)
    }

    /// [`Self::narrowed`] for a reduction whose last workgroups also sweep
    /// a block's channels in each of `views` views (finish_instances.wgsl):
    /// a block's channels times the views also stay within TAIL_PARTS.
    pub fn narrowed_over(self, view: ChannelView, lanes: Option<u32>, vec4: bool, views: usize) -> Result<ReducePlan> {
        let tree = self.shape == Shape::Interleaved && !self.per_invocation;
        if !tree || lanes.is_some_and(|c| c % 4 != 0) || view.inner > WG {
            return Ok(self);
        }
        let cols = view.channels * view.inner;
        let least = if vec4 { MIN_BLOCK_VEC4 } else { MIN_BLOCK_SCALAR }.max(view.inner);
        // A block's partials a row slice: a vec4 column of lanes holds four
        // channels' partials, any other column one partial of its channel.
        let per_slice = |width: usize| if lanes.is_some() { 4 * width } else { width };
        let mut width = if cols <= WG { cols } else { WG / view.inner * view.inner };
        loop {
            let plan = Self::interleaved_in(view, MIN_PER_INVOCATION, TARGET_WORKGROUPS, width)?;
            let half = width / 2 / view.inner * view.inner;
            let fits = per_slice(width) * (plan.slices as usize).max(views) <= TAIL_PARTS;
            if fits || half < least || cols.div_ceil(half) > MAX_GRID {
                return Ok(ReducePlan { batch: self.batch, batch_stride: self.batch_stride, ..plan });
            }
            width = half;
        }
    }

    /// The per-invocation reduction over runs of a planar view on CPU
    /// adapters (the elementwise passes' own plan, so both passes walk the
    /// same memory the same way): one partial per invocation, `grid.x * WG`
    /// per channel. `None` when the view is not planar or the partials would
    /// outnumber what a merge may loop over.
    pub fn runs_reduction(view: ChannelView) -> Result<Option<ReducePlan>> {
        // Runs only (inner >= WG): the value size plays no part.
        let mut plan = Self::elementwise_only(view, Reduction::PerInvocation, 4)?;
        if plan.shape != Shape::Runs || plan.grid.1 as usize != view.channels {
            return Ok(None);
        }
        plan.grid.0 = plan.grid.0.min(MAX_MERGE_PARTS / WG as u32);
        plan.parts = plan.grid.0 * WG as u32;
        plan.per_invocation = true;
        Ok(Some(plan))
    }

    /// Workgroup (column block, row slice) over the tensor as `outer` rows of
    /// `channels * inner` columns: about `target` workgroups, at least `min`
    /// rows per invocation.
    fn interleaved(view: ChannelView, min: usize, target: usize) -> Result<ReducePlan> {
        Self::interleaved_in(view, min, target, (view.channels * view.inner).min(WG))
    }

    /// [`Self::interleaved`] with blocks of `width` columns (at most WG).
    fn interleaved_in(view: ChannelView, min: usize, target: usize, width: usize) -> Result<ReducePlan> {
        let cols = view.channels * view.inner;
        let groups = WG / width;
        let blocks = cols.div_ceil(width);
        if blocks > MAX_GRID {
            return Err(Error::Unsupported(format!(
                "{} channels x {} inner values exceed one dispatch's reach",
                view.channels, view.inner
            )));
        }
        let rows = view.outer;
        let wanted = target.div_ceil(blocks);
        let most = rows.div_ceil(groups * min);
        let slices = wanted.clamp(1, most.max(1)).min(MAX_GRID);
        let slice_len = rows.div_ceil(slices);
        let slices = rows.div_ceil(slice_len);
        Ok(ReducePlan {
            shape: Shape::Interleaved,
            slices: slices as u32,
            slice_len: slice_len as u32,
            width: width as u32,
            tree: (groups.next_power_of_two() / 2) as u32,
            parts: (view.inner * slices) as u32,
            grid: (blocks as u32, slices as u32),
            batch: 1,
            batch_stride: 0,
            per_invocation: false,
        })
    }

    /// The same plan over `batch` equal views, `stride` elements apart.
    pub fn batched(mut self, batch: usize, stride: usize) -> Result<ReducePlan> {
        if batch > MAX_GRID {
            return Err(Error::Unsupported(format!("{batch} views exceed one dispatch's reach")));
        }
        self.batch = batch as u32;
        self.batch_stride = stride as u32;
        Ok(self)
    }

    /// Bytes of the partials buffer this plan writes for `channels` channels per view.
    pub fn partial_bytes(&self, channels: usize) -> u64 {
        u64::from(self.parts) * channels as u64 * u64::from(self.batch) * 16
    }

    /// Copies the plan's fields into the kernel parameters.
    pub fn fill(&self, params: &mut ChannelParams) {
        params.slices = self.slices;
        params.slice_len = self.slice_len;
        params.width = self.width;
        params.tree = self.tree;
        params.parts = self.parts;
        params.batch_stride = self.batch_stride;
    }

    /// The plan with `reduction`'s partials: per invocation multiplies the
    /// partials by the invocations that share one (the workgroup, planar; its
    /// row groups, interleaved; a row's lanes, rows), up to
    /// [`MAX_MERGE_PARTS`]; a plan that would leave more keeps its tree.
    pub fn with(mut self, reduction: Reduction) -> ReducePlan {
        if reduction != Reduction::PerInvocation
            || self.per_invocation
            || matches!(self.shape, Shape::Runs | Shape::Teams)
        {
            return self;
        }
        let sharing = match self.shape {
            Shape::Planar => WG as u32,
            Shape::Interleaved => WG as u32 / self.width,
            Shape::Rows | Shape::Runs | Shape::Teams => self.width,
        };
        if self.parts * sharing > MAX_MERGE_PARTS {
            return self;
        }
        self.per_invocation = true;
        self.parts *= sharing;
        self
    }

    /// The entry point for this plan, in reduce.wgsl or reduce_vec4.wgsl
    /// (the shared ones in reduce_entries.wgsl).
    pub fn entry(&self) -> &'static str {
        match self.shape {
            Shape::Planar if self.per_invocation => "reduce_planar_lanes",
            Shape::Planar => "reduce_planar",
            Shape::Runs => "reduce_runs_lanes",
            Shape::Interleaved if self.per_invocation => "reduce_interleaved_lanes",
            Shape::Interleaved => "reduce_interleaved",
            Shape::Rows if self.per_invocation => "reduce_rows_lanes",
            Shape::Rows => "reduce_rows",
            // Teams are planned for vec4 views only: reduce.wgsl has none
            // (src/row_teams.rs generates it).
            Shape::Teams => "reduce4_teams",
        }
    }
}

/// The buffers one reduction binds.
pub(crate) struct ReduceBindings<'a> {
    pub params: wgpu::BindingResource<'a>,
    pub x: wgpu::BindingResource<'a>,
    /// Upstream gradient (GradSums) or x again (Stats).
    pub dy: wgpu::BindingResource<'a>,
    /// Per-channel (mean, invstd, scale, beta) (GradSums) or any vec4 buffer.
    pub chan: wgpu::BindingResource<'a>,
    pub partials: wgpu::BindingResource<'a>,
    /// Residual input (GradSumsAddRelu); `None` binds x again.
    pub z: Option<wgpu::BindingResource<'a>>,
    /// Gamma (WeightedGradSums); `None` binds x again.
    pub weight: Option<wgpu::BindingResource<'a>>,
}

impl<'a> ReduceBindings<'a> {
    /// The bindings of a reduction of x and dy (x again for statistics),
    /// with `chan`, into `partials`; no residual, no weight.
    pub fn new(
        params: wgpu::BindingResource<'a>,
        (x, dy): (wgpu::BindingResource<'a>, wgpu::BindingResource<'a>),
        chan: wgpu::BindingResource<'a>,
        partials: wgpu::BindingResource<'a>,
    ) -> ReduceBindings<'a> {
        ReduceBindings { params, x, dy, chan, partials, z: None, weight: None }
    }
}

impl ReducePlan {
    /// The grid of a dispatch: (x, y, views).
    pub fn grid3(&self) -> (u32, u32, u32) {
        (self.grid.0, self.grid.1, self.batch)
    }
}

/// The reduce.wgsl kernel for `plan` and `mode`, with `finish`.
pub(crate) fn kernel(plan: &ReducePlan, mode: ReduceMode, f16: bool, finish: Finish) -> KernelKey {
    KernelKey::with_mode(Shader::Reduce { f16, finish }, plan.entry(), mode as u32)
}

/// The bindings of a reduction kernel: reduce.wgsl's, or (`vec4`)
/// reduce_vec4.wgsl's, which bind no weight.
pub(crate) fn entries(b: ReduceBindings<'_>, vec4: bool) -> Vec<(u32, wgpu::BindingResource<'_>)> {
    let z = b.z.unwrap_or_else(|| b.x.clone());
    let mut entries = vec![(0, b.params), (1, b.x.clone()), (2, b.dy), (3, b.chan), (4, b.partials), (6, z)];
    if !vec4 {
        entries.push((5, b.weight.unwrap_or(b.x)));
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(outer: usize, channels: usize, inner: usize) -> ChannelView {
        ChannelView { outer, channels, inner }
    }

    #[test]
    fn planar_plans_cover_every_value_once() {
        for v in [view(32, 64, 3136), view(1, 1, 1 << 20), view(8, 3, 262144), view(2, 70000, 256)] {
            let p = ReducePlan::new(v).unwrap();
            assert_eq!(p.shape, Shape::Planar);
            assert!(p.slices as usize * p.slice_len as usize >= v.per_channel());
            assert!((p.slices as usize - 1) * (p.slice_len as usize) < v.per_channel());
            assert!(p.grid.0 <= 65535 && p.grid.1 <= 65535);
        }
    }

    #[test]
    fn short_rows_share_workgroups() {
        for v in [view(1, 4096, 32), view(1, 3, 1), view(1, 70000 * 64, 2), view(1, 10, 255)] {
            let p = ReducePlan::new(v).unwrap();
            assert_eq!(p.shape, Shape::Rows);
            let lanes = p.width as usize;
            assert!(lanes.is_power_of_two() && lanes <= 64);
            let blocks = p.grid.0 as usize * p.grid.1 as usize;
            assert!(blocks * (WG / lanes) >= v.channels);
            assert!(p.grid.0 <= 65535 && p.grid.1 <= 65535);
        }
    }

    #[test]
    fn cpu_elementwise_walks_cover_short_rows_at_length() {
        // Channels-last 32x64x56x56 in vec4s: rows of 256 bytes.
        let v = view(32 * 56 * 56, 16, 1);
        let gpu = ReducePlan::elementwise_only(v, Reduction::Tree, 16).unwrap();
        let cpu = ReducePlan::elementwise_only(v, Reduction::PerInvocation, 16).unwrap();
        let rows_per_invocation = |p: &ReducePlan| p.slice_len as usize / (WG / p.width as usize);
        assert_eq!(rows_per_invocation(&gpu), 16);
        assert!(rows_per_invocation(&cpu) * 256 >= CPU_WALK_BYTES);
        for p in [gpu, cpu] {
            assert!(p.slices as usize * p.slice_len as usize >= v.outer);
            assert!((p.slices as usize - 1) * (p.slice_len as usize) < v.outer);
        }
        // Rows of 2 KiB walk 16 rows either way.
        let wide = view(8192, 128, 1);
        assert_eq!(
            ReducePlan::elementwise_only(wide, Reduction::PerInvocation, 16).unwrap(),
            ReducePlan::elementwise_only(wide, Reduction::Tree, 16).unwrap()
        );
    }

    #[test]
    fn narrowed_tree_blocks_hold_whole_channels_and_few_partials() {
        // (view, lanes, vec4): runs of 100, 49, 10 and 7 values; ResNet's
        // and the bench's channels-last tensors in lanes; 8192x512.
        let cases = [
            (view(4, 64, 100), None, true),
            (view(64, 72, 49), None, false),
            (view(32, 2048, 49), None, false),
            (view(8, 30, 10), None, false),
            (view(3, 5, 7), None, false),
            (view(100_352, 16, 1), Some(64), true),
            (view(1568, 512, 1), Some(2048), true),
            (view(8192, 128, 1), Some(512), true),
            (view(50_000, 3, 1), None, false),
        ];
        for (v, lanes, vec4) in cases {
            let base = ReducePlan::interleaved_reduction(v, Reduction::Tree).unwrap();
            let p = base.narrowed(v, lanes, vec4).unwrap();
            let (width, cols) = (p.width as usize, v.channels * v.inner);
            assert!(p.grid.0 == 1 || width % v.inner == 0, "{v:?}: {width} columns a block");
            assert!(p.grid.0 as usize * width >= cols && (p.grid.0 as usize - 1) * width < cols, "{v:?}");
            assert!(p.slices as usize * p.slice_len as usize >= v.outer, "{v:?}");
            assert_eq!(p.parts as usize, v.inner * p.slices as usize, "{v:?}");
            // A block's last workgroup merges few partials, unless its
            // blocks are as narrow as they go.
            let per_slice = if lanes.is_some() { 4 * width } else { width };
            let least = if vec4 { MIN_BLOCK_VEC4 } else { MIN_BLOCK_SCALAR }.max(v.inner);
            assert!(per_slice * p.slices as usize <= TAIL_PARTS || width < 2 * least, "{v:?}: {p:?}");
            // The grid keeps its workgroups, to rounding.
            let (before, after) = (base.grid.0 * base.grid.1, p.grid.0 * p.grid.1);
            assert!(2 * after >= before, "{v:?}: {before} workgroups, then {after}");
            // Swept over 32 views, a block's channels times the views
            // stay within the tail as well.
            let swept = base.narrowed_over(v, lanes, vec4, 32).unwrap();
            let width = swept.width as usize;
            let channels = if lanes.is_some() { 4 * width } else { width / v.inner };
            assert!(width <= p.width as usize, "{v:?}: {swept:?}");
            assert!(channels * 32 <= TAIL_PARTS || width < 2 * least, "{v:?}: {swept:?}");
        }
        // CPU adapters' plans and regrouped lanes stay as they are.
        let v = view(8192, 128, 1);
        let cpu = ReducePlan::interleaved_reduction(v, Reduction::PerInvocation).unwrap();
        assert_eq!(cpu.narrowed(v, Some(512), true).unwrap(), cpu);
        let tree = ReducePlan::interleaved_reduction(v, Reduction::Tree).unwrap();
        assert_eq!(tree.narrowed(v, Some(510), true).unwrap(), tree);
    }

    #[test]
    fn interleaved_plans_cover_every_row_once() {
        for v in [view(8 * 262144, 3, 1), view(8192, 512, 1), view(32, 2048, 49), view(3, 1, 1), view(2, 5, 7)] {
            let p = ReducePlan::new(v).unwrap();
            assert_eq!(p.shape, Shape::Interleaved);
            assert!(p.slices as usize * p.slice_len as usize >= v.outer);
            assert!((p.slices as usize - 1) * (p.slice_len as usize) < v.outer);
            assert_eq!(p.parts as usize, v.inner * p.slices as usize);
            assert!(p.grid.0 as usize * p.width as usize >= v.channels * v.inner);
        }
    }
}
