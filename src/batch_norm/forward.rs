//! BatchNorm's forward passes as recorded: partial statistics over x (or
//! given ones), their merge per channel (a team of invocations a channel on
//! GPUs), the eval coefficients, and the elementwise apply; also
//! SyncBatchNorm's local halves, which stop after the partials.

use super::*;
use crate::kernels::Finish;
use crate::tiling::Chunk;

/// Most values a channel may have for the one-pass training forward: a
/// workgroup of 256 walks them in 32 steps a pass.
const ONE_PASS_VALUES: usize = 8192;

/// Shortest runs of a channel (its `inner`) the one-pass forward takes: a
/// workgroup's neighbouring invocations read neighbouring values.
const ONE_PASS_RUN: usize = 16;

impl BatchNorm {
    /// The partial-statistics scratch for `parts` vec4 partials per channel.
    pub(super) fn partials(&self, parts: u32, channels: usize) -> Result<wgpu::Buffer> {
        self.scratch.get_bound("partials", u64::from(parts) * channels as u64 * 16)
    }

    /// Kernel parameters for `view` with this layer's eps, momentum and flags.
    pub(crate) fn channel_params(&self, view: ChannelView) -> ChannelParams {
        let c = &self.config;
        ChannelParams::of(view, &[(FLAG_AFFINE, c.affine)], c.eps, c.momentum.unwrap_or(-1.0), view.per_channel())
    }

    pub(super) fn per_channel_workgroups(&self) -> (u32, u32) {
        grid_stride(self.config.num_features)
    }

    /// Records a forward: statistics from `source` (batch) or the running
    /// ones, then the elementwise pass. With given statistics x may be empty.
    pub(crate) fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        stats: Stats,
        epilogue: Epilogue,
        source: Source,
    ) -> Result<()> {
        let given = matches!(source, Source::Given { .. });
        let view = self.check_input(x, given)?;
        self.check_like(x, y, "y")?;
        if let Some(z) = epilogue.z() {
            self.check_like(x, z, "z")?;
        }
        let inputs: Vec<(&str, &wgpu::Buffer)> =
            [Some(("x", x.buffer)), epilogue.z().map(|z| ("z", z.buffer))].into_iter().flatten().collect();
        self.check_distinct(&[("y", y.buffer)], &inputs)?;
        let batch = matches!(stats, Stats::Batch { .. });
        if batch && !given && view.per_channel() < 2 {
            return Err(Error::OneValuePerChannel(x.shape.clone()));
        }
        let mut params = self.channel_params(view);
        let update_running = matches!(stats, Stats::Batch { update_running: true });
        if update_running {
            params.flags |= FLAG_UPDATE_RUNNING;
        }
        if self.config.check_finite {
            params.flags |= FLAG_CHECK_FINITE;
        }
        // Without a batch to reject or a counter to read, merge_stats
        // commits the running statistics and commit_running is not needed.
        let commit_in_merge = update_running && !self.config.check_finite && self.config.momentum.is_some();
        if commit_in_merge {
            params.flags |= FLAG_RUNNING_IN_MERGE;
        }
        let mut tensors: [Option<&TensorView>; 6] = Default::default();
        tensors[X] = Some(x);
        tensors[Y] = Some(y);
        tensors[Z] = epilogue.z();
        let cut = self.cut(view, tensors, &params)?;
        let running_in_apply = !batch && running_coefficients_in_apply(self.ctx.reduction(), &cut);
        // channel_forward binds nine storage buffers.
        let reduce = batch && matches!(source, Source::Reduce);
        let one_pass = reduce && self.one_pass(view, x, &cut, update_running, 9);
        let finish_blocks = match reduce && !one_pass && self.commits_alone(update_running) {
            true => self.finish_blocks(&cut, Finish::Stats),
            false => None,
        };
        let merged = reduce && !one_pass && finish_blocks.is_none() && self.merges_in_apply(&cut, update_running);
        let partials = match source {
            _ if !batch || one_pass => None,
            Source::Given { values, .. } => {
                params.parts = 1;
                Some(values.clone())
            }
            Source::Reduce => {
                params.parts = cut.parts;
                Some(self.partials(params.parts, view.channels)?)
            }
        };

        Recording::run(&self.ctx, Some(self), encoder, "batch_norm forward", |rec| {
            if one_pass {
                return self.record_channel_forward(rec, &params, &cut.chunks[0], epilogue);
            }
            let chan = if batch { &self.saved } else { &self.eval_chan };
            if !batch && !running_in_apply {
                let params_buf = rec.uniform(&params);
                self.record_prepare_eval(rec, &params_buf)?;
            }
            if let (Some(partials), Some(blocks)) = (&partials, finish_blocks) {
                let stats = (ReduceMode::Stats, Finish::Stats);
                self.record_finishing_reduce(rec, &cut.chunks[0], stats, blocks, chan, partials)?;
            } else if let Some(partials) = &partials {
                if !given {
                    if cut.needs_clear {
                        rec.clear(partials);
                    }
                    self.record_reduces(rec, &cut, ReduceMode::Stats, chan, partials)?;
                }
                if merged {
                    return self.record_apply_merged(rec, &cut.chunks[0], cut.parts, partials, epilogue);
                }
                let params_buf = rec.uniform(&params);
                let entries: Vec<_> = [
                    (0, params_buf.as_entire_binding()),
                    (1, partials.as_entire_binding()),
                    (6, self.counter.as_entire_binding()),
                    (7, self.saved.as_entire_binding()),
                    (17, self.pending.as_entire_binding()),
                ]
                .into_iter()
                .chain(self.parameter_entries())
                .collect();
                self.record_merge(rec, MergeKernel::Stats, &entries)?;
                if update_running && !commit_in_merge {
                    let commit = KernelKey::new(Shader::BatchNorm, "commit_running");
                    let entries = [
                        (0, params_buf.as_entire_binding()),
                        (4, self.running_mean.as_entire_binding()),
                        (5, self.running_var.as_entire_binding()),
                        (6, self.counter.as_entire_binding()),
                        (17, self.pending.as_entire_binding()),
                    ];
                    rec.dispatch(commit, &entries, (1, 1))?;
                }
            }
            for chunk in &cut.chunks {
                let chunk_params = rec.uniform(&chunk.apply_params);
                let tensors = [
                    (0, chunk_params.as_entire_binding()),
                    (8, chunk.resource(X)),
                    (9, chunk.resource(Y)),
                    (15, chunk.resource(Z)),
                ];
                // The eval entry points read the running statistics where
                // apply reads `chan`.
                let (op, coefficients): (_, Vec<_>) = if running_in_apply {
                    ("eval", self.parameter_entries().into())
                } else {
                    ("apply", vec![(7, chan.as_entire_binding())])
                };
                let entries: Vec<_> = tensors.into_iter().chain(coefficients).collect();
                rec.dispatch(chunk.tiling.kernel(op, epilogue.apply_mode()), &entries, chunk.tiling.apply.grid)?;
            }
            Ok(())
        })?;
        if batch {
            *lock(&self.saved_for) = Some((x.shape.clone(), x.layout));
        }
        Ok(())
    }

    /// Whether the op over `view` takes one dispatch, a workgroup a channel
    /// (batch_norm.wgsl's channel_forward and channel_backward), with a
    /// kernel that binds `storage` storage buffers: on GPUs whose stage may
    /// bind that many, for f32 channels-first views in one binding, runs of
    /// at least [`ONE_PASS_RUN`] values, at most [`ONE_PASS_VALUES`] a
    /// channel, and running statistics that the channel's workgroup may
    /// commit itself (a momentum, no `check_finite`), or none to update.
    /// Not on lavapipe, where the forward ran at a third of the three
    /// passes' speed (scalar loads read three times, against vec4 words
    /// read twice).
    pub(super) fn one_pass(
        &self,
        view: ChannelView,
        x: &TensorView,
        cut: &Chunks,
        update_running: bool,
        storage: u32,
    ) -> bool {
        self.ctx.reduction() == Reduction::Tree
            && storage <= self.ctx.limits().max_storage_buffers_per_shader_stage
            && x.dtype == DType::F32
            && cut.chunks.len() == 1
            && view.inner >= ONE_PASS_RUN
            && view.per_channel() <= ONE_PASS_VALUES
            && self.commits_alone(update_running)
    }

    /// Whether a pass that merges a channel's statistics may also commit
    /// its running statistics, without a commit after every channel's
    /// merge: nothing to update, or a momentum (the cumulative average
    /// reads the counter one channel bumps) and no `check_finite` (whose
    /// rejection is all channels' or none).
    pub(super) fn commits_alone(&self, update_running: bool) -> bool {
        let c = &self.config;
        !update_running || (c.momentum.is_some() && !c.check_finite)
    }

    /// The training forward in one dispatch, a workgroup per channel.
    fn record_channel_forward(
        &self,
        rec: &mut Recording,
        params: &ChannelParams,
        chunk: &Chunk,
        epilogue: Epilogue,
    ) -> Result<()> {
        let mut params = *params;
        let offset = |role: usize| chunk.windows[role].as_ref().map_or(0, |w| w.elem_offset);
        (params.x_off, params.y_off, params.z_off) = (offset(X), offset(Y), offset(Z));
        let uniform = rec.uniform(&params);
        let entries: Vec<_> = [
            (0, uniform.as_entire_binding()),
            (6, self.counter.as_entire_binding()),
            (7, self.saved.as_entire_binding()),
            (8, chunk.resource(X)),
            (9, chunk.resource(Y)),
            (15, chunk.resource(Z)),
        ]
        .into_iter()
        .chain(self.parameter_entries())
        .collect();
        let key = KernelKey::with_mode(Shader::BatchNorm, "channel_forward", epilogue.apply_mode());
        rec.dispatch(key, &entries, (params.channels.clamp(1, 65535), 1))
    }

    /// Chunks of `view` for one binding each; none when the view is empty.
    pub(super) fn cut<'a>(
        &self,
        view: ChannelView,
        tensors: [Option<&TensorView<'a>>; 6],
        params: &ChannelParams,
    ) -> Result<Chunks<'a>> {
        if view.is_empty() {
            return Ok(Chunks { chunks: Vec::new(), parts: 1, needs_clear: false });
        }
        let limits = self.ctx.limits();
        let cut = Chunks::new(view, tensors, params, limits, self.ctx.reduction())?;
        let bytes = view.channels as u64 * u64::from(cut.parts) * 16;
        if self.ctx.reduction() == Reduction::Tree
            || (bytes <= limits.max_storage_buffer_binding_size && cut.parts <= MAX_MERGE_PARTS)
        {
            return Ok(cut);
        }
        // Partials per invocation over many chunks would outgrow a binding,
        // or the merge's loop: one per workgroup instead.
        Chunks::new(view, tensors, params, limits, Reduction::Tree)
    }

    /// Whether `buffer` is one of the layer's own: its parameters,
    /// statistics, gradients or scratch.
    pub(super) fn owns(&self, buffer: &wgpu::Buffer) -> bool {
        self.affine.owns(buffer) || [&self.running_mean, &self.running_var].contains(&buffer) || self.private(buffer)
    }

    /// One reduction per chunk, writing `mode`'s partials of every channel
    /// into `partials`.
    pub(super) fn record_reduces(
        &self,
        rec: &mut Recording,
        cut: &Chunks,
        mode: ReduceMode,
        chan: &wgpu::Buffer,
        partials: &wgpu::Buffer,
    ) -> Result<()> {
        for chunk in &cut.chunks {
            let chunk_params = rec.uniform(&chunk.params);
            let stats = mode == ReduceMode::Stats;
            let tensors = (chunk.resource(X), chunk.resource(if stats { X } else { DY }));
            let bindings = ReduceBindings {
                z: (!stats).then(|| chunk.resource(Z)),
                ..ReduceBindings::new(
                    chunk_params.as_entire_binding(),
                    tensors,
                    chan.as_entire_binding(),
                    partials.as_entire_binding(),
                )
            };
            chunk.tiling.reducer.record(rec, mode, bindings)?;
        }
        Ok(())
    }

    /// A merge of every channel's partials (bound in `entries`): on GPUs a
    /// team of invocations a channel, on CPU adapters one invocation.
    pub(super) fn record_merge(
        &self,
        rec: &mut Recording,
        kernel: MergeKernel,
        entries: &[(u32, wgpu::BindingResource<'_>)],
    ) -> Result<()> {
        let (one, team) = match kernel {
            MergeKernel::Stats => ("merge_stats", "merge_stats_teams"),
            MergeKernel::Grads => ("merge_grads", "merge_grads_teams"),
            MergeKernel::GradsEval => ("merge_grads_eval", "merge_grads_eval_teams"),
            MergeKernel::GatherStats => ("gather_stats", "gather_stats_teams"),
            MergeKernel::GatherSums => ("gather_sums", "gather_sums_teams"),
        };
        if self.ctx.reduction() == Reduction::Tree {
            let workgroups = self.config.num_features.div_ceil(MERGE_TEAMS).min(65535) as u32;
            rec.dispatch(KernelKey::new(Shader::BatchNorm, team), entries, (workgroups, 1))
        } else {
            rec.dispatch(KernelKey::new(Shader::BatchNorm, one), entries, self.per_channel_workgroups())
        }
    }

    /// Eval coefficients from the running statistics into `eval_chan`.
    pub(crate) fn record_prepare_eval(&self, rec: &mut Recording, params: &Uniform) -> Result<()> {
        let entries: Vec<_> = [(0, params.as_entire_binding()), (7, self.eval_chan.as_entire_binding())]
            .into_iter()
            .chain(self.parameter_entries())
            .collect();
        rec.dispatch(KernelKey::new(Shader::BatchNorm, "prepare_eval"), &entries, self.per_channel_workgroups())
    }

    /// Weight, bias and the running statistics, at the bindings (2 to 5)
    /// the per-channel kernels read them from.
    pub(super) fn parameter_entries(&self) -> [(u32, wgpu::BindingResource<'_>); 4] {
        [
            (2, self.affine.weight().as_entire_binding()),
            (3, self.affine.bias().as_entire_binding()),
            (4, self.running_mean.as_entire_binding()),
            (5, self.running_var.as_entire_binding()),
        ]
    }

    /// Records SyncBatchNorm's first half: this layer's local partial
    /// statistics of x (`dy` None) or gradient sums of (x, dy) in `training`
    /// or eval mode, merged per channel into `local_stats` / `local_sums`.
    pub(crate) fn record_local(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: Option<&TensorView>,
        training: bool,
    ) -> Result<()> {
        let view = self.check_input(x, true)?;
        let stats = self.stats_for(training, dy.is_none());
        let batch = matches!(stats, Stats::Batch { .. });
        let mode = if dy.is_some() { ReduceMode::GradSums } else { ReduceMode::Stats };
        if let Some(dy) = dy {
            self.check_like(x, dy, "dy")?;
            if batch {
                self.check_saved_for(x)?;
            }
        } else if !batch {
            return Err(Error::Parameter(
                "an eval forward with running statistics normalizes with those; it has no batch statistics to share"
                    .into(),
            ));
        }
        let inputs: Vec<(&str, &wgpu::Buffer)> =
            [Some(("x", x.buffer)), dy.map(|dy| ("dy", dy.buffer))].into_iter().flatten().collect();
        self.check_distinct(&[], &inputs)?;
        let out = if dy.is_some() { &self.local_sums } else { &self.local_stats };
        let mut params = self.channel_params(view);
        let mut tensors: [Option<&TensorView>; 6] = Default::default();
        tensors[X] = Some(x);
        tensors[DY] = dy;
        let cut = self.cut(view, tensors, &params)?;
        if cut.chunks.is_empty() {
            // An empty slice: count 0 and zero sums, which merge as nothing.
            encoder.clear_buffer(out, 0, None);
            return Ok(());
        }
        params.parts = cut.parts;
        let partials = self.partials(params.parts, view.channels)?;
        let chan = if batch { &self.saved } else { &self.eval_chan };
        Recording::run(&self.ctx, Some(self), encoder, "batch_norm local partials", |rec| {
            let params_buf = rec.uniform(&params);
            if cut.needs_clear {
                rec.clear(&partials);
            }
            if dy.is_some() && !batch {
                self.record_prepare_eval(rec, &params_buf)?;
            }
            self.record_reduces(rec, &cut, mode, chan, &partials)?;
            let kernel = if dy.is_some() { MergeKernel::GatherSums } else { MergeKernel::GatherStats };
            let entries =
                [(0, params_buf.as_entire_binding()), (1, partials.as_entire_binding()), (18, out.as_entire_binding())];
            self.record_merge(rec, kernel, &entries)
        })
    }

    /// The buffer `record_local` wrote: statistics, or gradient sums.
    pub(crate) fn local_values(&self, sums: bool) -> &wgpu::Buffer {
        if sums {
            &self.local_sums
        } else {
            &self.local_stats
        }
    }
}

/// The merge kernels: of statistics or gradient sums, into the entries
/// (`merge_stats`, `merge_grads`) or into SyncBatchNorm's local values
/// (`gather_*`).
#[derive(Clone, Copy, Debug)]
pub(super) enum MergeKernel {
    Stats,
    Grads,
    /// dweight and dbias of sums about the running mean (no coefficients).
    GradsEval,
    GatherStats,
    GatherSums,
}

/// Channels a workgroup of the team merge kernels takes (`TEAMS` in
/// batch_norm.wgsl).
const MERGE_TEAMS: usize = 8;

/// Whether the eval forward's apply over `cut` computes each channel's
/// coefficients from the running statistics (one dispatch, no
/// prepare_eval): on GPUs, where a dispatch costs more than the few cached
/// loads every invocation then repeats, and on CPU adapters where every
/// chunk walks runs (a workgroup computes its channel's once). Other CPU
/// tilings compute them per invocation, lane by lane, and keep
/// prepare_eval (PERF_NOTES.md).
fn running_coefficients_in_apply(reduction: Reduction, cut: &Chunks) -> bool {
    reduction == Reduction::Tree || cut.chunks.iter().all(|chunk| chunk.tiling.walks_runs())
}
