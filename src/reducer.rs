//! A reduction as recorded, the one BatchNorm's chunks and the family's stat
//! rows share: its plan over a view in units of its value type (vec4 where
//! the values allow, lanes of four channels where they lie across
//! channels-last channels), and the kernel and parameters that plan takes.

use crate::kernels::{ChannelParams, Finish, KernelKey, Shader, FLAG_LANES_ARE_CHANNELS};
use crate::layout::ChannelView;
use crate::recording::Recording;
use crate::reduce::{self, ReduceBindings, ReduceMode, ReducePlan, Shape};
use crate::Result;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Reducer {
    pub plan: ReducePlan,
    /// The view the reduction walks, in units of its value type.
    pub view: ChannelView,
    pub vec4: bool,
    /// vec4 lanes are four channels: the tensor's channel count
    /// (lane_channel in shaders/walks.wgsl).
    pub lane_channels: Option<u32>,
    /// Tensors hold f16; statistics and arithmetic stay f32.
    pub f16: bool,
    /// Channels-last rows walked by teams, this many columns a lane
    /// (src/row_teams.rs), where the plan's shape is `Teams`.
    pub teams: Option<u8>,
}

impl Reducer {
    /// `base` (the op's parameters over the tensor) rewritten for `plan`
    /// over this view: offsets in units of the value type, the plan's
    /// tiling, and the lanes' channels.
    pub fn params_for(&self, base: &ChannelParams, plan: &ReducePlan) -> ChannelParams {
        let units = if self.vec4 { 4 } else { 1 };
        let mut p = ChannelParams {
            outer: self.view.outer as u32,
            channels: self.view.channels as u32,
            inner: self.view.inner as u32,
            x_off: base.x_off / units,
            y_off: base.y_off / units,
            dy_off: base.dy_off / units,
            dx_off: base.dx_off / units,
            z_off: base.z_off / units,
            dz_off: base.dz_off / units,
            ..*base
        };
        plan.fill(&mut p);
        if let Some(channels) = self.lane_channels {
            p.flags |= FLAG_LANES_ARE_CHANNELS;
            p.lane_channels = channels;
        }
        p
    }

    /// `base` rewritten for the reduction.
    pub fn params(&self, base: &ChannelParams) -> ChannelParams {
        self.params_for(base, &self.plan)
    }

    /// The reduction kernel in `mode`, with `finish`: teams, vec4 or scalar.
    pub fn kernel(&self, mode: ReduceMode, finish: Finish) -> KernelKey {
        let f16 = self.f16;
        match (self.plan.shape, self.teams) {
            (Shape::Teams, Some(per_lane)) => {
                let shader = Shader::ReduceTeams { per_lane, f16, words: false };
                KernelKey::with_mode(shader, self.plan.entry(), mode as u32)
            }
            _ if self.vec4 => {
                let shader = Shader::ReduceVec4 { f16, words: false, finish };
                KernelKey::with_mode(shader, self.plan.entry(), mode as u32)
            }
            _ => reduce::kernel(&self.plan, mode, f16, finish),
        }
    }

    /// Records the reduction in `mode` over `bindings`.
    pub fn record(&self, rec: &mut Recording, mode: ReduceMode, bindings: ReduceBindings<'_>) -> Result<()> {
        rec.reduce(self.kernel(mode, Finish::None), bindings, self.vec4, self.plan.grid3())
    }

    /// Records the reduction in `mode` whose last workgroup of each block
    /// merges and commits (`finish`), binding finish.wgsl's buffers
    /// `finishing` besides `bindings`.
    pub fn record_finishing(
        &self,
        rec: &mut Recording,
        mode: ReduceMode,
        finish: Finish,
        bindings: ReduceBindings<'_>,
        finishing: &[(u32, wgpu::BindingResource<'_>)],
    ) -> Result<()> {
        let mut entries = reduce::entries(bindings, self.vec4);
        if finish == Finish::GradsEval && self.vec4 {
            // Its channel entries come from the running statistics: reduce_vec4.wgsl then reads no `chan`.
            entries.retain(|(binding, _)| *binding != 3);
        }
        entries.extend(finishing.iter().cloned());
        rec.dispatch3(self.kernel(mode, finish), &entries, self.plan.grid3())
    }

    /// The blocks of finish.wgsl this reduction counts in over all its
    /// views (rows of a planar grid, column blocks of an interleaved one),
    /// where it reduces through a tree in workgroup memory, each block's
    /// partials hold whole channels and their counts fit one binding
    /// under `limits`; `None` where a merge kernel must follow.
    pub fn finish_blocks(&self, limits: &wgpu::Limits) -> Option<u32> {
        if self.plan.per_invocation {
            return None;
        }
        let blocks = match self.plan.shape {
            Shape::Planar => self.plan.grid.1,
            Shape::Interleaved => {
                let blocks = self.plan.grid.0;
                // Blocks of `width` columns hold whole channels: lanes of
                // channels-last channels a multiple of four (one column a
                // channel), or whole runs of `inner` columns.
                let whole = self.lane_channels.is_none_or(|c| c % 4 == 0)
                    && (self.plan.width as usize).is_multiple_of(self.view.inner);
                if blocks > 1 && !whole {
                    return None;
                }
                blocks
            }
            Shape::Rows | Shape::Runs | Shape::Teams => return None,
        };
        let counts = u64::from(blocks) * u64::from(self.plan.batch);
        (counts * 4 <= limits.max_storage_buffer_binding_size).then_some(counts as u32)
    }
}
