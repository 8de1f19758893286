//! How the family's reductions over stat rows walk one part of a tensor (the
//! forward's statistics; GroupNorm's and InstanceNorm's backward sums per
//! instance): with reduce_vec4.wgsl, four values per load, wherever the
//! values allow it, else with reduce.wgsl over the stat view. Either way the
//! partials of stat row r are one run of `merge_parts` from
//! `r * merge_parts`, as `merge_rows` and `group_row_grads` read them.

use crate::geometry::Geometry;
use crate::layout::ChannelView;
use crate::reduce::{ReducePlan, Shape, MAX_MERGE_PARTS};
use crate::reducer::Reducer;
use crate::strategy::Reduction;
use crate::tiling::lane_streams;
use crate::Result;

pub(crate) struct StatPlan {
    pub reducer: Reducer,
    /// Partials per stat row: the reduction's per channel, times the
    /// channels of a group when lanes are channels.
    pub merge_parts: u32,
    /// Stat rows (channels of the stat view) per view of the batch.
    rows: usize,
}

impl StatPlan {
    /// The plan for `geo` with the tensors it reads (x, and dy for sums)
    /// starting `offsets` values into their bindings. `sweeping`: the
    /// backward's sums per instance, whose last workgroups may sweep a
    /// block's channels over every sample (finish_instances.wgsl), so its
    /// blocks narrow for that too.
    pub fn new(geo: &Geometry, offsets: &[u32], f16: bool, reduction: Reduction, sweeping: bool) -> Result<StatPlan> {
        let views = if sweeping { geo.batch } else { 1 };
        let stat = geo.stat;
        let rows = stat.channels;
        let aligned = offsets.iter().all(|o| o.is_multiple_of(4)) && geo.batch_stride.is_multiple_of(4);
        // A stat row's values come in runs of four (LayerNorm rows,
        // channels-second groups with spatial size % 4 == 0): its view in vec4 units.
        if aligned && stat.inner.is_multiple_of(4) {
            let view = ChannelView { inner: stat.inner / 4, ..stat };
            let plan = ReducePlan::reduction(view, reduction)?.narrowed(view, None, true)?;
            let plan = plan.batched(geo.batch, geo.batch_stride / 4)?;
            let reducer = Reducer { plan, view, vec4: true, lane_channels: None, f16, teams: None };
            return Ok(StatPlan { reducer, merge_parts: plan.parts, rows });
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
            let lane_channels = Some(channels as u32);
            let plan = ReducePlan::reduction(view, reduction)?.narrowed_over(view, lane_channels, true, views)?;
            let mut plan = plan.batched(geo.batch, geo.batch_stride / 4)?;
            if plan.parts as usize * streams * stat.inner > MAX_MERGE_PARTS as usize {
                plan = ReducePlan::new(view)?.batched(geo.batch, geo.batch_stride / 4)?;
            }
            if plan.shape == Shape::Interleaved {
                plan.parts *= streams as u32;
                let merge_parts = plan.parts * stat.inner as u32;
                let reducer = Reducer { plan, view, vec4: true, lane_channels, f16, teams: None };
                return Ok(StatPlan { reducer, merge_parts, rows });
            }
        }
        let plan = ReducePlan::reduction(stat, reduction)?.narrowed_over(stat, None, false, views)?;
        let plan = plan.batched(geo.batch, geo.batch_stride)?;
        let reducer = Reducer { plan, view: stat, vec4: false, lane_channels: None, f16, teams: None };
        Ok(StatPlan { reducer, merge_parts: plan.parts, rows })
    }

    /// Bytes of the partials this plan writes.
    pub fn partial_bytes(&self) -> u64 {
        u64::from(self.merge_parts) * self.rows as u64 * u64::from(self.reducer.plan.batch) * 16
    }
}
