//! The family's backward sums: the row sums and column sums in two
//! reductions, or, for GroupNorm and InstanceNorm in one part, one
//! reduction per (n, c) instance from which both follow (on the GPU path
//! in that reduction's last workgroups: shaders/finish_instances.wgsl).

use super::*;
use crate::kernels::Finish;
use crate::reduce::{Shape, TAIL_PARTS};
use crate::reducer::Reducer;

impl Core {
    /// The backward's row sums (reduce MODE 2) into dx coefficients, then
    /// its column sums ([`Self::record_column_grads`]).
    pub(super) fn record_row_and_column_grads(
        &self,
        rec: &mut Recording,
        piece: &Piece,
        out: &PartDx,
        (row_buf, row_plan): (&Uniform, &ReducePlan),
        (col_buf, col_plan): (&Uniform, &ReducePlan),
        columns: &Columns,
    ) -> Result<()> {
        let Piece { geo, x: xw, rows, partials, f16, .. } = *piece;
        let PartDx { dy: dyw, rows_dx, .. } = *out;
        let row_sums = ReduceBindings {
            weight: Some(self.affine.weight().as_entire_binding()),
            ..ReduceBindings::new(
                row_buf.as_entire_binding(),
                (xw.resource(), dyw.resource()),
                rows.as_entire_binding(),
                partials.as_entire_binding(),
            )
        };
        let kernel =
            reduce::kernel(row_plan, ReduceMode::WeightedGradSums, f16, Finish::None).trailing(!geo.is_grouped());
        rec.reduce(kernel, row_sums, false, row_plan.grid3())?;
        let entries = [
            (0, row_buf.as_entire_binding()),
            (1, partials.as_entire_binding()),
            (6, rows.as_entire_binding()),
            (7, rows_dx.as_entire_binding()),
        ];
        rec.dispatch(row_norm("merge_row_grads"), &entries, Self::row_workgroups(&geo))?;
        self.record_column_grads(rec, piece, out, (col_buf, col_plan), columns)
    }

    /// The backward's column partials (reduce MODE 3, over rows whose
    /// entries hold their delta), merged into dweight and dbias when
    /// `columns` says so.
    pub(super) fn record_column_grads(
        &self,
        rec: &mut Recording,
        piece: &Piece,
        out: &PartDx,
        (col_buf, col_plan): (&Uniform, &ReducePlan),
        columns: &Columns,
    ) -> Result<()> {
        let Piece { geo, x: xw, rows, f16, .. } = *piece;
        let column_sums = ReduceBindings::new(
            col_buf.as_entire_binding(),
            (xw.resource(), out.dy.resource()),
            rows.as_entire_binding(),
            columns.partials.as_entire_binding(),
        );
        let finish_blocks = match columns.merge {
            true => self.column_finish_blocks(col_plan, geo.weights),
            false => None,
        };
        let finish = if finish_blocks.is_some() { Finish::Columns } else { Finish::None };
        let kernel = reduce::kernel(col_plan, ReduceMode::ColumnGrads, f16, finish).trailing(!geo.is_grouped());
        if let Some(blocks) = finish_blocks {
            // The reduction's last workgroups write dweight and dbias.
            let arrivals = self.scratch.get_bound("arrivals", u64::from(blocks) * 4)?;
            let finishing = [
                (7, arrivals.as_entire_binding()),
                (13, self.affine.grad_weight().as_entire_binding()),
                (14, self.affine.grad_bias().as_entire_binding()),
            ];
            let mut entries = reduce::entries(column_sums, false);
            entries.extend(finishing);
            return rec.dispatch3(kernel, &entries, col_plan.grid3());
        }
        rec.reduce(kernel, column_sums, false, col_plan.grid3())?;
        if columns.merge {
            self.record_merge_columns(rec, col_buf, columns.partials, None)?;
        }
        Ok(())
    }

    /// The blocks whose last workgroups merge the column sums of `plan`
    /// over `view` into dweight and dbias (shaders/finish.wgsl, as
    /// src/batch_norm/finishing.rs for BatchNorm), or `None` where
    /// merge_columns follows.
    fn column_finish_blocks(&self, plan: &ReducePlan, view: ChannelView) -> Option<u32> {
        // x, dy, the rows, partials, weight, z; arrivals, dweight, dbias.
        const STORAGE: u32 = 9;
        if !self.ctx.last_merge_binds(STORAGE) {
            return None;
        }
        let reducer = Reducer { plan: *plan, view, vec4: false, lane_channels: None, f16: false, teams: None };
        reducer.finish_blocks(self.ctx.limits())
    }

    /// GroupNorm's and InstanceNorm's row sums and column sums from one
    /// reduction of (x, dy) per (n, c) instance (see instance_centres in
    /// shaders/row_norm.wgsl): dx coefficients into `rows_dx`, dweight and
    /// dbias. `row_params` are the stat rows' parameters.
    pub(super) fn record_instance_grads(
        &self,
        rec: &mut Recording,
        (plan, instances): (&StatPlan, &wgpu::Buffer),
        row_params: &ChannelParams,
        piece: &Piece,
        out: &PartDx,
        opt: &Options,
    ) -> Result<()> {
        let Piece { geo, weight_base, x: xw, rows, partials, .. } = *piece;
        let PartDx { dy: dyw, rows_dx, .. } = *out;
        if let Some(counts) = self.instance_finish_counts(plan, &geo) {
            return self.record_finishing_instances(rec, (plan, instances), counts, row_params, piece, out);
        }
        let inst = geo.instances();
        let mut base = self.params(inst.stat, &inst, opt);
        base.x_off = xw.elem_offset;
        base.dy_off = dyw.elem_offset;
        base.weight_base = weight_base;
        let reduce_buf = rec.uniform(&plan.reducer.params(&base));
        let mut params = *row_params;
        params.parts = plan.merge_parts;
        let params = rec.uniform(&params);
        let per_instance = grid_stride(inst.rows());
        let (params, rows, instances) =
            (params.as_entire_binding(), rows.as_entire_binding(), instances.as_entire_binding());
        rec.dispatch(
            row_norm("instance_centres"),
            &[(0, params.clone()), (6, rows.clone()), (14, instances.clone())],
            per_instance,
        )?;
        let tensors = (xw.resource(), dyw.resource());
        let sums = ReduceBindings::new(
            reduce_buf.as_entire_binding(),
            tensors,
            instances.clone(),
            partials.as_entire_binding(),
        );
        plan.reducer.record(rec, ReduceMode::GradSums, sums)?;
        let entries = [
            (0, params.clone()),
            (1, partials.as_entire_binding()),
            (2, self.affine.weight().as_entire_binding()),
            (6, rows.clone()),
            (7, rows_dx.as_entire_binding()),
            (14, instances.clone()),
        ];
        rec.dispatch(row_norm("group_row_grads"), &entries, Self::row_workgroups(&geo))?;
        let entries = [
            (0, params),
            (6, rows),
            (12, self.affine.grad_weight().as_entire_binding()),
            (13, self.affine.grad_bias().as_entire_binding()),
            (14, instances),
        ];
        rec.dispatch(row_norm("instance_columns"), &entries, self.weight_workgroups())
    }

    /// The blocks and the sweeps (finish_instances.wgsl) whose counts the
    /// reduction of `plan` keeps when its last workgroups go on from the
    /// sums per instance to the stat rows' dx coefficients, dweight and
    /// dbias; `None` where instance_centres and two merges run around it.
    fn instance_finish_counts(&self, plan: &StatPlan, geo: &Geometry) -> Option<(u32, u32)> {
        // x, dy, the rows, partials, z, weight; arrivals, rows_dx, dweight,
        // dbias, the instance sums.
        const STORAGE: u32 = 11;
        if !self.ctx.last_merge_binds(STORAGE) {
            return None;
        }
        let reducer = &plan.reducer;
        let blocks = match reducer.plan {
            // A workgroup of a tree over rows takes its channels whole: a block each.
            ReducePlan { shape: Shape::Rows, per_invocation: false, grid, batch, .. } => grid.0 * grid.1 * batch,
            _ => reducer.finish_blocks(self.ctx.limits())?,
        };
        let per_view = blocks / reducer.plan.batch;
        // A sweep takes a column block's channels in every view, or every
        // channel of every view.
        let mut channels = reducer.lane_channels.map_or(reducer.view.channels, |c| c as usize);
        if reducer.plan.shape == Shape::Interleaved && per_view > 1 {
            // A sweep's stat rows lie in its channels: blocks of whole groups.
            let width = reducer.plan.width as usize;
            channels = if reducer.lane_channels.is_some() { 4 * width } else { width / reducer.view.inner };
            if !channels.is_multiple_of(geo.cpg) {
                return None;
            }
        }
        if channels * reducer.plan.batch as usize > TAIL_PARTS {
            return None;
        }
        let bytes = u64::from(blocks + per_view) * 4;
        (bytes <= self.ctx.limits().max_storage_buffer_binding_size).then_some((blocks, per_view))
    }

    /// The reduction per instance whose last workgroups write the dx
    /// coefficients into `rows_dx`, then dweight and dbias (each instance's
    /// centre read from its stat row): one dispatch where
    /// [`Self::record_instance_grads`] records four.
    fn record_finishing_instances(
        &self,
        rec: &mut Recording,
        (plan, instances): (&StatPlan, &wgpu::Buffer),
        (blocks, sweeps): (u32, u32),
        row_params: &ChannelParams,
        piece: &Piece,
        out: &PartDx,
    ) -> Result<()> {
        let Piece { x: xw, rows, partials, .. } = *piece;
        let reducer = &plan.reducer;
        let arrivals = self.scratch.get_bound("arrivals", u64::from(blocks + sweeps) * 4)?;
        // The stat rows' groups, cpg, count and flags over the instances' view.
        let uniform = rec.uniform(&reducer.params(row_params));
        let weight = || self.affine.weight().as_entire_binding();
        let bindings = ReduceBindings {
            weight: (!reducer.vec4).then(weight),
            ..ReduceBindings::new(
                uniform.as_entire_binding(),
                (xw.resource(), out.dy.resource()),
                rows.as_entire_binding(),
                partials.as_entire_binding(),
            )
        };
        let mut finishing = vec![
            (7, arrivals.as_entire_binding()),
            (8, out.rows_dx.as_entire_binding()),
            (13, self.affine.grad_weight().as_entire_binding()),
            (14, self.affine.grad_bias().as_entire_binding()),
            (15, instances.as_entire_binding()),
        ];
        if reducer.vec4 {
            finishing.push((5, weight()));
        }
        reducer.record_finishing(rec, ReduceMode::GradSums, Finish::Instances, bindings, &finishing)
    }
}
