//! The family's backward sums: the row sums and column sums in two
//! reductions, or, for GroupNorm and InstanceNorm in one part, one
//! reduction per (n, c) instance from which both follow.

use super::*;

impl Core {
    /// The backward's row sums (reduce MODE 2) into dx coefficients, and its
    /// column partials (MODE 3), merged into dweight and dbias when `columns`
    /// says so.
    pub(super) fn record_row_and_column_grads(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        piece: &Piece,
        out: &PartDx,
        (row_buf, row_plan): (&wgpu::Buffer, &ReducePlan),
        (col_buf, col_plan): (&wgpu::Buffer, &ReducePlan),
        columns: &Columns,
    ) -> Result<()> {
        let Piece { geo, x: xw, rows, partials, f16, .. } = *piece;
        let PartDx { dy: dyw, rows_dx, .. } = *out;
        let device = self.ctx.device();
        let kernels = self.ctx.kernels();
        let trailing = !geo.is_grouped();
        let reduce = reduce::pipeline(&self.ctx, row_plan, ReduceMode::WeightedGradSums, f16, trailing)?;
        reduce::record(
            device,
            pass,
            &reduce,
            row_plan,
            ReduceBindings {
                params: row_buf.as_entire_binding(),
                x: xw.resource(),
                dy: dyw.resource(),
                chan: rows.as_entire_binding(),
                partials: partials.as_entire_binding(),
                weight: Some(self.affine.weight().as_entire_binding()),
                z: None,
            },
        );
        let merge = kernels
            .get(KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, "merge_row_grads"))?;
        let group = bind(
            device,
            &merge,
            &[
                (0, row_buf.as_entire_binding()),
                (1, partials.as_entire_binding()),
                (6, rows.as_entire_binding()),
                (7, rows_dx.as_entire_binding()),
            ],
        );
        dispatch(pass, &merge, &group, Self::row_workgroups(&geo));
        let reduce = reduce::pipeline(&self.ctx, col_plan, ReduceMode::ColumnGrads, f16, trailing)?;
        reduce::record(
            device,
            pass,
            &reduce,
            col_plan,
            ReduceBindings {
                params: col_buf.as_entire_binding(),
                x: xw.resource(),
                dy: dyw.resource(),
                chan: rows.as_entire_binding(),
                partials: columns.partials.as_entire_binding(),
                weight: None,
                z: None,
            },
        );
        if columns.merge {
            self.record_merge_columns(pass, col_buf, columns.partials, None)?;
        }
        Ok(())
    }

    /// GroupNorm's and InstanceNorm's row sums and column sums from one
    /// reduction of (x, dy) per (n, c) instance (see instance_centres in
    /// shaders/row_norm.wgsl): dx coefficients into `rows_dx`, dweight and
    /// dbias. `row_params` are the stat rows' parameters.
    pub(super) fn record_instance_grads(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        (plan, instances): (&StatPlan, &wgpu::Buffer),
        row_params: &ChannelParams,
        piece: &Piece,
        out: &PartDx,
        opt: &Options,
    ) -> Result<()> {
        let Piece { geo, weight_base, x: xw, rows, partials, .. } = *piece;
        let PartDx { dy: dyw, rows_dx, .. } = *out;
        let device = self.ctx.device();
        let kernels = self.ctx.kernels();
        let inst = geo.instances();
        let mut base = self.params(inst.stat, &inst, opt);
        base.x_off = xw.elem_offset;
        base.dy_off = dyw.elem_offset;
        base.weight_base = weight_base;
        let reduce_buf = uniform(device, &plan.params(&base))?;
        let mut params = *row_params;
        params.parts = plan.merge_parts;
        let params = uniform(device, &params)?;
        let per_instance = (inst.rows().div_ceil(64).min(65535) as u32, 1);
        let row_norm =
            |entry| kernels.get(KernelKey::new(Shader::RowNorm { f16: false, vec4: false, words: false }, entry));

        let centres = row_norm("instance_centres")?;
        let group = bind(
            device,
            &centres,
            &[(0, params.as_entire_binding()), (6, rows.as_entire_binding()), (14, instances.as_entire_binding())],
        );
        dispatch(pass, &centres, &group, per_instance);
        plan.record(
            &self.ctx,
            pass,
            ReduceMode::GradSums,
            ReduceBindings {
                params: reduce_buf.as_entire_binding(),
                x: xw.resource(),
                dy: dyw.resource(),
                chan: instances.as_entire_binding(),
                partials: partials.as_entire_binding(),
                weight: None,
                z: None,
            },
        )?;
        let merge = row_norm("merge_instances")?;
        let group = bind(
            device,
            &merge,
            &[(0, params.as_entire_binding()), (1, partials.as_entire_binding()), (14, instances.as_entire_binding())],
        );
        dispatch(pass, &merge, &group, per_instance);
        let row_grads = row_norm("group_row_grads")?;
        let group = bind(
            device,
            &row_grads,
            &[
                (0, params.as_entire_binding()),
                (2, self.affine.weight().as_entire_binding()),
                (6, rows.as_entire_binding()),
                (7, rows_dx.as_entire_binding()),
                (14, instances.as_entire_binding()),
            ],
        );
        dispatch(pass, &row_grads, &group, Self::row_workgroups(&geo));
        let columns = row_norm("instance_columns")?;
        let group = bind(
            device,
            &columns,
            &[
                (0, params.as_entire_binding()),
                (6, rows.as_entire_binding()),
                (12, self.affine.grad_weight().as_entire_binding()),
                (13, self.affine.grad_bias().as_entire_binding()),
                (14, instances.as_entire_binding()),
            ],
        );
        dispatch(pass, &columns, &group, self.weight_workgroups());
        Ok(())
    }
}
