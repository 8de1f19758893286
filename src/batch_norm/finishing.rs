//! BatchNorm's reductions whose last workgroup merges (shaders/finish.wgsl):
//! the reduction itself commits what a merge kernel would (the saved and
//! running statistics, or dweight, dbias and the dx coefficients), and the
//! apply or dx pass follows. The training forward and backward, and the
//! eval backward (whose reduction takes each channel's entry from the
//! running statistics, with no prepare_eval), take two dispatches where a
//! merge kernel between made three or four, on every tree tiling whose
//! blocks of workgroups hold whole channels (channels-last and 2-D tensors
//! too).
//!
//! Where the context allows it ([`Context::last_workgroup_merges`]), the
//! reduction is a tree (GPUs: a barrier in lavapipe's per-invocation
//! reductions slowed them several times over) in one chunk, the running
//! statistics need no commit after every channel's merge, and the stage
//! may bind the kernel's buffers.

use super::*;
use crate::kernels::Finish;
use crate::tiling::Chunk;

/// Storage buffers a finishing reduction binds: x, dy, chan, partials, z,
/// weight, and finish.wgsl's. After statistics: arrivals, entries, bias,
/// the running statistics and the counter. After sums: arrivals, entries,
/// dweight and dbias (weight only in the scalar kernels); in eval, also
/// bias, the running statistics and the running entries.
const STATS_STORAGE: u32 = 12;
const GRADS_STORAGE: u32 = 10;
const GRADS_EVAL_STORAGE: u32 = 14;

impl BatchNorm {
    /// The blocks whose arrivals the reduction over `cut` counts when its
    /// last workgroups merge with `finish`, or `None` where a merge kernel
    /// follows instead.
    pub(super) fn finish_blocks(&self, cut: &Chunks, finish: Finish) -> Option<u32> {
        let storage = match finish {
            Finish::Stats => STATS_STORAGE,
            Finish::GradsEval => GRADS_EVAL_STORAGE,
            _ => GRADS_STORAGE,
        };
        if !self.ctx.last_merge_binds(storage) {
            return None;
        }
        match cut.chunks.as_slice() {
            [chunk] => chunk.tiling.reducer.finish_blocks(self.ctx.limits()),
            _ => None,
        }
    }

    /// The reduction in `mode` over `chunk` into `partials`, whose last
    /// workgroup of each of `blocks` blocks merges them with `finish`: into
    /// the saved statistics (and the running ones), or into the dx
    /// coefficients, dweight and dbias from the entries in `chan` (in eval,
    /// from the running statistics, whose entries it writes into
    /// `eval_chan`).
    pub(super) fn record_finishing_reduce(
        &self,
        rec: &mut Recording,
        chunk: &Chunk,
        (mode, finish): (ReduceMode, Finish),
        blocks: u32,
        chan: &wgpu::Buffer,
        partials: &wgpu::Buffer,
    ) -> Result<()> {
        let arrivals = self.scratch.get_bound("arrivals", u64::from(blocks) * 4)?;
        let uniform = rec.uniform(&chunk.params);
        let stats = mode == ReduceMode::Stats;
        let eval = finish == Finish::GradsEval;
        let reducer = &chunk.tiling.reducer;
        let tensors = (chunk.resource(X), chunk.resource(if stats { X } else { DY }));
        // Statistics write the saved entries, which a read binding of
        // `chan` may not alias: statistics read no entry, nor does the eval
        // backward (scalar kernels still bind `chan`, for the family's modes).
        let chan = if stats || eval { &self.unused } else { chan };
        // Entries from the running statistics read weight, bias and those.
        let running = stats || eval;
        let weight = || self.affine.weight().as_entire_binding();
        let bindings = ReduceBindings {
            z: (!stats).then(|| chunk.resource(Z)),
            weight: (running && !reducer.vec4).then(weight),
            ..ReduceBindings::new(
                uniform.as_entire_binding(),
                tensors,
                chan.as_entire_binding(),
                partials.as_entire_binding(),
            )
        };
        let mut finishing = vec![(7, arrivals.as_entire_binding())];
        if running {
            finishing.extend([
                (9, self.affine.bias().as_entire_binding()),
                (10, self.running_mean.as_entire_binding()),
                (11, self.running_var.as_entire_binding()),
            ]);
            if reducer.vec4 {
                finishing.push((5, weight()));
            }
        }
        if stats {
            finishing.extend([(8, self.saved.as_entire_binding()), (12, self.counter.as_entire_binding())]);
        } else {
            finishing.extend([
                (8, self.grad_coef.as_entire_binding()),
                (13, self.affine.grad_weight().as_entire_binding()),
                (14, self.affine.grad_bias().as_entire_binding()),
            ]);
        }
        if eval {
            finishing.push((15, self.eval_chan.as_entire_binding()));
        }
        reducer.record_finishing(rec, mode, finish, bindings, &finishing)
    }
}
