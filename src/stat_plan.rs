//! How the family's reductions over stat rows walk one part of a tensor (the
//! forward's statistics; GroupNorm's and InstanceNorm's backward sums per
//! instance): with reduce_vec4.wgsl, four values per load, wherever the
//! values allow it, else with reduce.wgsl over the stat view. Either way the
//! partials of stat row r are one run of `merge_parts` from
//! `r * merge_parts`, as `merge_rows` and `merge_instances` read them.

use crate::geometry::Geometry;
use crate::kernels::{ChannelParams, KernelKey, Shader, FLAG_LANES_ARE_CHANNELS};
use crate::layout::ChannelView;
use crate::recording::Recording;
use crate::reduce::{self, ReduceBindings, ReduceMode, ReducePlan, Shape, MAX_MERGE_PARTS};
use crate::strategy::Reduction;
use crate::tiling::lane_streams;
use crate::Result;

pub(crate) struct StatPlan {
    pub plan: ReducePlan,
    /// The view the reduction walks, in units of its value type.
    pub view: ChannelView,
    pub vec4: bool,
    /// vec4 lanes are four channels (channels-last groups).
    pub lanes: bool,
    /// With lanes: the tensor's channels (lane_channel in shaders/walks.wgsl).
    lane_channels: u32,
    pub f16: bool,
    /// Partials per stat row: the reduction's per channel, times the
    /// channels of a group when lanes are channels.
    pub merge_parts: u32,
    /// Stat rows (channels of the stat view) per view of the batch.
    rows: usize,
}

impl StatPlan {
    /// The plan for `geo` with the tensors it reads (x, and dy for sums)
    /// starting `offsets` values into their bindings.
    pub fn new(geo: &Geometry, offsets: &[u32], f16: bool, reduction: Reduction) -> Result<StatPlan> {
        let stat = geo.stat;
        let rows = stat.channels;
        let aligned = offsets.iter().all(|o| o.is_multiple_of(4)) && geo.batch_stride.is_multiple_of(4);
        // A stat row's values come in runs of four (LayerNorm rows,
        // channels-second groups with spatial size % 4 == 0): its view in vec4 units.
        if aligned && stat.inner.is_multiple_of(4) {
            let view = ChannelView { inner: stat.inner / 4, ..stat };
            let plan = ReducePlan::reduction(view, reduction)?.batched(geo.batch, geo.batch_stride / 4)?;
            return Ok(StatPlan {
                plan,
                view,
                vec4: true,
                lanes: false,
                lane_channels: 0,
                f16,
                merge_parts: plan.parts,
                rows,
            });
        }
        // Channels-last groups, [hw][groups][cpg] per sample: the per-channel
        // view with lanes of four channels, [hw][C / 4][1], or with C not a
        // multiple of four, `streams` rows regrouped in runs of lcm(C, 4)
        // values (walks.wgsl's lane_channel) when they divide the sample's
        // rows. Channel k's partials are a run of `parts` (its streams' runs
        // one after another) at k * parts, so group g's are the run of
        // cpg * parts at g * cpg * parts.
        let channels = stat.channels * stat.inner;
        let streams = lane_streams(channels) as usize;
        if aligned && geo.batched && channels > 0 && stat.outer.is_multiple_of(streams) {
            let view = ChannelView { outer: stat.outer / streams, channels: channels * streams / 4, inner: 1 };
            let mut plan = ReducePlan::reduction(view, reduction)?.batched(geo.batch, geo.batch_stride / 4)?;
            if plan.parts as usize * streams * stat.inner > MAX_MERGE_PARTS as usize {
                plan = ReducePlan::new(view)?.batched(geo.batch, geo.batch_stride / 4)?;
            }
            if plan.shape == Shape::Interleaved {
                plan.parts *= streams as u32;
                let merge_parts = plan.parts * stat.inner as u32;
                let lane_channels = channels as u32;
                return Ok(StatPlan { plan, view, vec4: true, lanes: true, lane_channels, f16, merge_parts, rows });
            }
        }
        let plan = ReducePlan::reduction(stat, reduction)?.batched(geo.batch, geo.batch_stride)?;
        Ok(StatPlan {
            plan,
            view: stat,
            vec4: false,
            lanes: false,
            lane_channels: 0,
            f16,
            merge_parts: plan.parts,
            rows,
        })
    }

    /// Bytes of the partials this plan writes.
    pub fn partial_bytes(&self) -> u64 {
        u64::from(self.merge_parts) * self.rows as u64 * u64::from(self.plan.batch) * 16
    }

    /// `base` (the stat view's parameters) rewritten for the reduction.
    pub fn params(&self, base: &ChannelParams) -> ChannelParams {
        let units = if self.vec4 { 4 } else { 1 };
        let mut p = ChannelParams {
            outer: self.view.outer as u32,
            channels: self.view.channels as u32,
            inner: self.view.inner as u32,
            x_off: base.x_off / units,
            dy_off: base.dy_off / units,
            ..*base
        };
        self.plan.fill(&mut p);
        if self.lanes {
            p.flags |= FLAG_LANES_ARE_CHANNELS;
            p.lane_channels = self.lane_channels;
        }
        p
    }

    /// Records the reduction in `mode` over `bindings`.
    pub fn record(&self, rec: &mut Recording, mode: ReduceMode, bindings: ReduceBindings<'_>) -> Result<()> {
        rec.reduce(self.kernel(mode), bindings, self.vec4, (self.plan.grid.0, self.plan.grid.1, self.plan.batch))
    }

    /// The reduction kernel: `Stats`, or `GradSums` (centres in `chan`).
    fn kernel(&self, mode: ReduceMode) -> KernelKey {
        if self.vec4 {
            KernelKey::with_mode(
                Shader::ReduceVec4 { f16: self.f16, words: false },
                self.plan.entry_vec4(),
                mode as u32,
            )
        } else {
            reduce::kernel(&self.plan, mode, self.f16)
        }
    }
}
