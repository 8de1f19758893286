//! BatchNorm's training passes that merge the reduction's partials
//! themselves (shaders/merged.wgsl): on GPUs, a forward of a reduction and
//! an apply, and a backward of a reduction and a dx pass, two dispatches
//! each where a merge kernel between them made three.
//!
//! They take runs tilings (one channel a workgroup, for channels of long
//! inner runs) in one chunk: every workgroup of a channel merges the same
//! few dozen partials from the cache, and the channel's first one stores
//! the merged results once. Channels-last tilings keep the merge kernel: an
//! apply workgroup there spans every channel, and would merge all of them.
//!
//! Not on CPU adapters: on lavapipe the merged passes ran 1.4 to 2.9 times
//! as long as the three (PERF_NOTES.md), whether the workgroup, one
//! invocation or each SIMD batch (`subgroupAdd`) merged: with a merge in
//! front of it, the walk itself ran slower there.

use super::*;
use crate::tiling::Chunk;

/// Storage buffers apply_runs_merged and dx_runs_merged bind.
const APPLY_STORAGE: u32 = 10;
const DX_STORAGE: u32 = 9;

impl BatchNorm {
    /// Whether the training forward over `cut` merges in its apply: on
    /// GPUs, one chunk of a runs tiling, running statistics the channel's
    /// workgroup may commit itself, and a stage that may bind the kernel's
    /// storage buffers.
    pub(super) fn merges_in_apply(&self, cut: &Chunks, update_running: bool) -> bool {
        self.commits_alone(update_running) && self.merges(cut, APPLY_STORAGE)
    }

    /// Whether the backward over `cut` merges in its dx pass.
    pub(super) fn merges_in_dx(&self, cut: &Chunks) -> bool {
        self.merges(cut, DX_STORAGE)
    }

    fn merges(&self, cut: &Chunks, storage: u32) -> bool {
        self.ctx.reduction() == Reduction::Tree
            && storage <= self.ctx.limits().max_storage_buffers_per_shader_stage
            && matches!(cut.chunks.as_slice(), [chunk] if chunk.tiling.walks_runs())
    }

    /// The apply of the statistics' `parts` partials a channel in
    /// `partials`: y, the saved statistics and, with FLAG_UPDATE_RUNNING,
    /// the running ones.
    pub(super) fn record_apply_merged(
        &self,
        rec: &mut Recording,
        chunk: &Chunk,
        parts: u32,
        partials: &wgpu::Buffer,
        epilogue: Epilogue,
    ) -> Result<()> {
        let uniform = rec.uniform(&ChannelParams { parts, ..chunk.apply_params });
        let entries: Vec<_> = [
            (0, uniform.as_entire_binding()),
            (1, partials.as_entire_binding()),
            (6, self.counter.as_entire_binding()),
            (7, self.saved.as_entire_binding()),
            (8, chunk.resource(X)),
            (9, chunk.resource(Y)),
            (15, chunk.resource(Z)),
        ]
        .into_iter()
        .chain(self.parameter_entries())
        .collect();
        rec.dispatch(chunk.tiling.kernel("apply_merged", epilogue.apply_mode()), &entries, chunk.tiling.apply.grid)
    }

    /// The dx pass over the gradient sums' `parts` partials a channel in
    /// `partials`, with the channel entries in `chan`: dx (and dz), dweight
    /// and dbias.
    pub(super) fn record_dx_merged(
        &self,
        rec: &mut Recording,
        chunk: &Chunk,
        parts: u32,
        partials: &wgpu::Buffer,
        chan: &wgpu::Buffer,
        epilogue: Epilogue,
    ) -> Result<()> {
        let uniform = rec.uniform(&ChannelParams { parts, ..chunk.apply_params });
        let dz = match &chunk.windows[DZ] {
            Some(w) => w.resource(),
            None => self.unused.as_entire_binding(),
        };
        let entries = [
            (0, uniform.as_entire_binding()),
            (1, partials.as_entire_binding()),
            (7, chan.as_entire_binding()),
            (8, chunk.resource(X)),
            (10, chunk.resource(DY)),
            (11, chunk.resource(DX)),
            (13, self.affine.grad_weight().as_entire_binding()),
            (14, self.affine.grad_bias().as_entire_binding()),
            (15, chunk.resource(Z)),
            (16, dz),
        ];
        rec.dispatch(chunk.tiling.kernel("dx_merged", epilogue.apply_mode()), &entries, chunk.tiling.apply.grid)
    }
}
