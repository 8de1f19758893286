//! The per-channel reduction machinery: how a tensor seen as
//! `[outer][channels][inner]` is cut into workgroup slices whose partials
//! (shaders/reduce.wgsl) a merge kernel then combines, one channel per
//! invocation.

use crate::kernels::{bind, dispatch, ChannelParams, KernelKey, Shader};
use crate::layout::ChannelView;
use crate::{Error, Result};

/// Invocations per reduction workgroup (`WG` in reduce.wgsl).
const WG: usize = 256;
/// Workgroups a reduction aims for: enough to fill a large GPU.
const TARGET_WORKGROUPS: usize = 2048;
/// Fewest values an invocation should reduce before slicing finer pays.
const MIN_PER_INVOCATION: usize = 4;
const MAX_GRID: usize = 65535;

/// What the reduction sums: statistics of x, or backward's two sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReduceMode {
    /// (count, mean, M2) of x.
    Stats = 0,
    /// (sum dy, sum dy * (x - mean_c), sum (x - mean_c)).
    GradSums = 1,
    /// GradSums behind a fused ReLU's mask.
    GradSumsRelu = 2,
    /// GradSums behind a fused add + ReLU's mask (reads z).
    GradSumsAddRelu = 3,
}

/// How one reduction is cut into workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReducePlan {
    /// Planar (inner >= WG): workgroup (slice, channel). Otherwise
    /// interleaved: workgroup (column block, row slice).
    pub planar: bool,
    pub slices: u32,
    pub slice_len: u32,
    pub width: u32,
    pub tree: u32,
    /// Partials per channel.
    pub parts: u32,
    pub grid: (u32, u32),
}

impl ReducePlan {
    pub fn new(view: ChannelView) -> Result<ReducePlan> {
        if view.inner >= WG {
            let per = view.per_channel();
            let wanted = TARGET_WORKGROUPS.div_ceil(view.channels);
            let most = per.div_ceil(WG * MIN_PER_INVOCATION);
            let slices = wanted.clamp(1, most.max(1)).min(MAX_GRID);
            let slice_len = per.div_ceil(slices);
            let slices = per.div_ceil(slice_len);
            return Ok(ReducePlan {
                planar: true,
                slices: slices as u32,
                slice_len: slice_len as u32,
                width: 1,
                tree: 0,
                parts: slices as u32,
                grid: (slices as u32, view.channels.min(MAX_GRID) as u32),
            });
        }
        let cols = view.channels * view.inner;
        let width = cols.min(WG);
        let groups = WG / width;
        let blocks = cols.div_ceil(width);
        if blocks > MAX_GRID {
            return Err(Error::Unsupported(format!(
                "{} channels x {} inner values exceed one dispatch's reach",
                view.channels, view.inner
            )));
        }
        let rows = view.outer;
        let wanted = TARGET_WORKGROUPS.div_ceil(blocks);
        let most = rows.div_ceil(groups * MIN_PER_INVOCATION);
        let slices = wanted.clamp(1, most.max(1)).min(MAX_GRID);
        let slice_len = rows.div_ceil(slices);
        let slices = rows.div_ceil(slice_len);
        Ok(ReducePlan {
            planar: false,
            slices: slices as u32,
            slice_len: slice_len as u32,
            width: width as u32,
            tree: (groups.next_power_of_two() / 2) as u32,
            parts: (view.inner * slices) as u32,
            grid: (blocks as u32, slices as u32),
        })
    }

    /// Copies the plan's fields into the kernel parameters.
    pub fn fill(&self, params: &mut ChannelParams) {
        params.slices = self.slices;
        params.slice_len = self.slice_len;
        params.width = self.width;
        params.tree = self.tree;
        params.parts = self.parts;
    }

    fn entry(&self) -> &'static str {
        if self.planar {
            "reduce_planar"
        } else {
            "reduce_interleaved"
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
    /// Residual input (GradSumsAddRelu) or x again.
    pub z: wgpu::BindingResource<'a>,
}

/// Compiles (once) the reduction pipeline for `plan` and `mode`.
pub(crate) fn pipeline(
    ctx: &crate::Context,
    plan: &ReducePlan,
    mode: ReduceMode,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    ctx.kernels().get(KernelKey::with_mode(Shader::Reduce, plan.entry(), mode as u32))
}

/// Records the partial reduction of `plan` into `pass`.
pub(crate) fn record(
    device: &wgpu::Device,
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    plan: &ReducePlan,
    b: ReduceBindings<'_>,
) {
    let group = bind(device, pipeline, &[(0, b.params), (1, b.x), (2, b.dy), (3, b.chan), (4, b.partials), (5, b.z)]);
    dispatch(pass, pipeline, &group, plan.grid);
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
            assert!(p.planar);
            assert!(p.slices as usize * p.slice_len as usize >= v.per_channel());
            assert!((p.slices as usize - 1) * (p.slice_len as usize) < v.per_channel());
            assert!(p.grid.0 <= 65535 && p.grid.1 <= 65535);
        }
    }

    #[test]
    fn interleaved_plans_cover_every_row_once() {
        for v in [view(8 * 262144, 3, 1), view(8192, 512, 1), view(32, 2048, 49), view(3, 1, 1)] {
            let p = ReducePlan::new(v).unwrap();
            assert!(!p.planar);
            assert!(p.slices as usize * p.slice_len as usize >= v.outer);
            assert!((p.slices as usize - 1) * (p.slice_len as usize) < v.outer);
            assert_eq!(p.parts as usize, v.inner * p.slices as usize);
            assert!(p.grid.0 as usize * p.width as usize >= v.channels * v.inner);
        }
    }
}
