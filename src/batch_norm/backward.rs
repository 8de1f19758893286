//! BatchNorm's backward as recorded: the gradient sums over x and dy (or
//! given ones), their merge into dweight, dbias and the dx coefficients,
//! and the elementwise dx (and dz after add-ReLU).

use super::forward::MergeKernel;
use super::*;
use crate::kernels::Finish;
use crate::tiling::Chunk;

impl BatchNorm {
    /// Records a backward: gradient sums from `source`, their merge into
    /// dweight, dbias and the dx coefficients, then the dx pass. With given
    /// sums x may be empty.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        stats: Stats,
        epilogue: Epilogue,
        source: Source,
    ) -> Result<()> {
        let given = matches!(source, Source::Given { .. });
        let view = self.check_input(x, given)?;
        self.check_like(x, dy, "dy")?;
        self.check_like(x, dx, "dx")?;
        let dz = match epilogue {
            Epilogue::AddRelu { z, dz } => {
                let dz = dz.ok_or_else(|| Error::Parameter("the add + relu backward needs dz".into()))?;
                self.check_like(x, z, "z")?;
                self.check_like(x, dz, "dz")?;
                Some(dz)
            }
            _ => None,
        };
        let inputs: Vec<(&str, &wgpu::Buffer)> =
            [Some(("x", x.buffer)), Some(("dy", dy.buffer)), epilogue.z().map(|z| ("z", z.buffer))]
                .into_iter()
                .flatten()
                .collect();
        let mut outputs = vec![("dx", dx.buffer)];
        if let Some(dz) = dz {
            outputs.push(("dz", dz.buffer));
        }
        self.check_distinct(&outputs, &inputs)?;
        let batch = matches!(stats, Stats::Batch { .. });
        if batch {
            if !given && view.per_channel() < 2 {
                return Err(Error::OneValuePerChannel(x.shape.clone()));
            }
            self.check_saved_for(x)?;
        }
        let mut params = self.channel_params(view);
        if batch {
            params.flags |= FLAG_BATCH_STATS;
        }
        let mut tensors: [Option<&TensorView>; 6] = Default::default();
        tensors[X] = Some(x);
        tensors[DY] = Some(dy);
        tensors[DX] = Some(dx);
        tensors[Z] = epilogue.z();
        tensors[DZ] = dz;
        let cut = self.cut(view, tensors, &params)?;
        let chan = if batch { &self.saved } else { &self.eval_chan };
        // The eval form reads the weight, bias and running statistics where
        // the training form reads the saved coefficients.
        let storage = if batch { 8 } else { 11 };
        if matches!(source, Source::Reduce) && self.one_pass(view, x, &cut, false, storage) {
            return Recording::run(&self.ctx, Some(self), encoder, "batch_norm backward", |rec| {
                self.record_channel_backward(rec, &params, &cut.chunks[0], epilogue, batch)
            });
        }
        if !batch && matches!(source, Source::Reduce) && self.walks_eval_backward(&cut) {
            let chunk = &cut.chunks[0];
            let (grid, parts) = self.eval_walk(chunk);
            let partials = self.partials(parts, view.channels)?;
            params.parts = parts;
            return Recording::run(&self.ctx, Some(self), encoder, "batch_norm backward", |rec| {
                self.record_eval_walk(rec, &params, chunk, (grid, parts), &partials, epilogue)
            });
        }
        // The eval form takes each channel's entry from the running
        // statistics in the reduction, with no prepare_eval before it.
        let finish = if batch { Finish::Grads } else { Finish::GradsEval };
        let finish_blocks = match source {
            Source::Reduce => self.finish_blocks(&cut, finish),
            Source::Given { .. } => None,
        };
        let partials = match source {
            Source::Given { values, count } => {
                params.parts = 1;
                params.count = count;
                values.clone()
            }
            Source::Reduce => {
                params.parts = cut.parts;
                self.partials(params.parts, view.channels)?
            }
        };

        Recording::run(&self.ctx, Some(self), encoder, "batch_norm backward", |rec| {
            let params_buf = rec.uniform(&params);
            if cut.needs_clear && !given {
                rec.clear(&partials);
            }
            if !batch && finish_blocks.is_none() {
                self.record_prepare_eval(rec, &params_buf)?;
            }
            if let Some(blocks) = finish_blocks {
                let sums = (epilogue.grad_mode(), finish);
                self.record_finishing_reduce(rec, &cut.chunks[0], sums, blocks, chan, &partials)?;
            } else {
                if !given {
                    self.record_reduces(rec, &cut, epilogue.grad_mode(), chan, &partials)?;
                    if self.merges_in_dx(&cut) {
                        return self.record_dx_merged(rec, &cut.chunks[0], cut.parts, &partials, chan, epilogue);
                    }
                }
                let entries = [
                    (0, params_buf.as_entire_binding()),
                    (1, partials.as_entire_binding()),
                    (7, chan.as_entire_binding()),
                    (12, self.grad_coef.as_entire_binding()),
                    (13, self.affine.grad_weight().as_entire_binding()),
                    (14, self.affine.grad_bias().as_entire_binding()),
                ];
                self.record_merge(rec, MergeKernel::Grads, &entries)?;
            }
            for chunk in &cut.chunks {
                let chunk_params = rec.uniform(&chunk.apply_params);
                let entries = [
                    (0, chunk_params.as_entire_binding()),
                    (7, chan.as_entire_binding()),
                    (8, chunk.resource(X)),
                    (10, chunk.resource(DY)),
                    (11, chunk.resource(DX)),
                    (12, self.grad_coef.as_entire_binding()),
                    (15, chunk.resource(Z)),
                    (16, chunk.resource_or(DZ, &self.unused)),
                ];
                rec.dispatch(chunk.tiling.kernel("dx", epilogue.apply_mode()), &entries, chunk.tiling.apply.grid)?;
            }
            Ok(())
        })
    }

    /// The backward in one dispatch, a workgroup per channel (for the views
    /// [`Self::one_pass`] gives the forward in one), with the saved
    /// statistics (`batch`) or the running ones.
    fn record_channel_backward(
        &self,
        rec: &mut Recording,
        params: &ChannelParams,
        chunk: &Chunk,
        epilogue: Epilogue,
        batch: bool,
    ) -> Result<()> {
        let mut params = *params;
        let offset = |role: usize| chunk.windows[role].as_ref().map_or(0, |w| w.elem_offset);
        (params.x_off, params.dy_off, params.dx_off) = (offset(X), offset(DY), offset(DX));
        (params.z_off, params.dz_off) = (offset(Z), offset(DZ));
        let uniform = rec.uniform(&params);
        let tensors = [
            (0, uniform.as_entire_binding()),
            (8, chunk.resource(X)),
            (10, chunk.resource(DY)),
            (11, chunk.resource(DX)),
            (13, self.affine.grad_weight().as_entire_binding()),
            (14, self.affine.grad_bias().as_entire_binding()),
            (15, chunk.resource(Z)),
            (16, chunk.resource_or(DZ, &self.unused)),
        ];
        let (entry, coefficients): (_, Vec<_>) = match batch {
            true => ("channel_backward", vec![(7, self.saved.as_entire_binding())]),
            false => ("channel_backward_eval", self.parameter_entries().into()),
        };
        let entries: Vec<_> = tensors.into_iter().chain(coefficients).collect();
        let key = KernelKey::with_mode(Shader::BatchNorm, entry, epilogue.apply_mode());
        rec.dispatch(key, &entries, (params.channels.clamp(1, 65535), 1))
    }
}
