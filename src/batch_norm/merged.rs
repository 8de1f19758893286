//! BatchNorm's passes that fold a reduction into the elementwise walk
//! (shaders/merged.wgsl). The training passes merge the reduction's
//! partials themselves: on GPUs, a forward of a reduction and
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
//!
//! The eval backward, whose dx waits for no sum, goes the other way on
//! every device: one walk writes dx and leaves the sums as partials (a
//! workgroup's on GPUs, an invocation's on CPU adapters), and a merge
//! kernel after it writes dweight and dbias.

use super::forward::MergeKernel;
use super::*;
use crate::tiling::Chunk;

/// Invocations a workgroup of the elementwise passes.
const WALK_WG: u32 = 256;

/// Storage buffers apply_runs_merged, dx_runs_merged and dx_eval_runs_* bind.
const APPLY_STORAGE: u32 = 10;
const DX_STORAGE: u32 = 9;
const EVAL_STORAGE: u32 = 10;

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

    /// Whether the eval backward over `cut` writes dx and takes its sums
    /// in one walk (dx_eval_runs_*), then merges them: on either path, one
    /// chunk of a runs tiling.
    pub(super) fn walks_eval_backward(&self, cut: &Chunks) -> bool {
        self.one_runs_chunk(cut, EVAL_STORAGE)
    }

    /// The eval walk's grid over `chunk` and its partials a channel: one a
    /// workgroup on GPUs; one an invocation on CPU adapters, in as many
    /// workgroups a channel as the merge's loop takes.
    pub(super) fn eval_walk(&self, chunk: &Chunk) -> ((u32, u32), u32) {
        let (x, y) = chunk.tiling.apply.grid;
        if self.ctx.reduction() == Reduction::Tree {
            ((x, y), x)
        } else {
            let x = x.min(MAX_MERGE_PARTS / WALK_WG);
            ((x, y), x * WALK_WG)
        }
    }

    /// The eval backward in two dispatches: dx (and dz) with the channel's
    /// gradient sums as `parts` partials a channel, then dweight and dbias.
    pub(super) fn record_eval_walk(
        &self,
        rec: &mut Recording,
        params: &ChannelParams,
        chunk: &Chunk,
        (grid, parts): ((u32, u32), u32),
        partials: &wgpu::Buffer,
        epilogue: Epilogue,
    ) -> Result<()> {
        let uniform = rec.uniform(&ChannelParams { parts, ..chunk.apply_params });
        let entries: Vec<_> = [
            (0, uniform.as_entire_binding()),
            (1, partials.as_entire_binding()),
            (8, chunk.resource(X)),
            (10, chunk.resource(DY)),
            (11, chunk.resource(DX)),
            (15, chunk.resource(Z)),
            (16, chunk.resource_or(DZ, &self.unused)),
        ]
        .into_iter()
        .chain(self.parameter_entries())
        .collect();
        let op = if self.ctx.reduction() == Reduction::Tree { "dx_eval_team" } else { "dx_eval_lanes" };
        rec.dispatch(chunk.tiling.kernel(op, epilogue.apply_mode()), &entries, grid)?;
        let uniform = rec.uniform(params);
        let entries: Vec<_> = [
            (0, uniform.as_entire_binding()),
            (1, partials.as_entire_binding()),
            (13, self.affine.grad_weight().as_entire_binding()),
            (14, self.affine.grad_bias().as_entire_binding()),
        ]
        .into_iter()
        .chain(self.parameter_entries())
        .collect();
        self.record_merge(rec, MergeKernel::GradsEval, &entries)
    }

    fn merges(&self, cut: &Chunks, storage: u32) -> bool {
        self.ctx.reduction() == Reduction::Tree && self.one_runs_chunk(cut, storage)
    }

    /// `cut` is one chunk of a runs tiling, and the stage may bind a
    /// kernel's `storage` storage buffers.
    fn one_runs_chunk(&self, cut: &Chunks, storage: u32) -> bool {
        storage <= self.ctx.limits().max_storage_buffers_per_shader_stage
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
            (16, chunk.resource_or(DZ, &self.unused)),
        ];
        rec.dispatch(chunk.tiling.kernel("dx_merged", epilogue.apply_mode()), &entries, chunk.tiling.apply.grid)
    }
}
