//! The family's backward as recorded: per part the dx coefficients from the
//! row sums and dx itself (src/family/grads.rs takes the sums), then
//! dweight and dbias from every part's column partials at once; or the
//! one-pass kernels of src/resident.rs for short rows on CPU adapters.

use super::*;

impl Core {
    /// Records a backward: dx into `dx`, dweight and dbias into the grad
    /// buffers. A tensor above one binding runs in parts of whole samples,
    /// each on its copy of the saved rows; every part's column partials
    /// merge into dweight and dbias at the end.
    pub fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        call: &Call,
    ) -> Result<()> {
        let Call { geo, opt, source } = *call;
        self.check_pair(x, dy, "dy")?;
        self.check_pair(x, dx, "dx")?;
        if dx.buffer == dy.buffer {
            return Err(Error::Buffer("dx shares a buffer with dy; backward does not run in place".into()));
        }
        if let Source::Input { .. } = source {
            let saved = lock(&self.saved_for).clone();
            if saved.as_ref().map(|s| (&s.0, s.1)) != Some((&x.shape, x.layout)) {
                return Err(Error::Parameter(format!(
                    "backward needs the statistics of a forward on the same input; the last one saw {:?}, x is {:?} {:?}",
                    saved.map(|s| (s.0, s.1)),
                    x.shape,
                    x.layout
                )));
            }
        }
        let f16 = x.dtype == DType::F16;
        let reduction = self.ctx.reduction();
        let parts = self.parts(&geo, &[(x, "x"), (dy, "dy"), (dx, "dx")])?;
        let mut plans = Vec::with_capacity(parts.len());
        let slots = parts.iter().map(|p| p.slot + 1).max().unwrap_or(1);
        let max_binding = self.ctx.limits().max_storage_buffer_binding_size;
        // The one-pass backward, where every part takes it (its column
        // partials are laid out its own way) and they fit the merge's loop
        // and one binding.
        let mut resident: Vec<Option<Resident>> = parts
            .iter()
            .map(|part| {
                let offsets: Vec<u32> = part.windows.iter().map(|w| w.elem_offset).collect();
                self.resident(&part.geo, source, &offsets, Pass::Backward).filter(|r| {
                    let total = r.slots(part.geo.rows()) * slots;
                    total <= MAX_MERGE_PARTS && u64::from(total) * geo.weights.channels as u64 * 16 <= max_binding
                })
            })
            .collect();
        if resident.iter().any(Option::is_none) {
            resident.fill(None);
        }
        for (part, resident) in parts.iter().zip(&resident) {
            let g = &part.geo;
            let rows = ReducePlan::reduction(g.stat, reduction)?.batched(g.batch, g.batch_stride)?;
            let mut columns = ReducePlan::reduction(g.weights, reduction)?.narrowed(g.weights, None, false)?;
            if let Some(r) = resident {
                columns.parts = r.slots(g.rows());
            }
            // Every part's column partials meet in one merge loop and one
            // binding: keep them within MAX_MERGE_PARTS (see src/reduce.rs)
            // and the binding limit with the tree's fewer.
            let column_bytes = columns.partial_bytes(geo.weights.channels) * u64::from(slots);
            if resident.is_none() && (columns.parts * slots > MAX_MERGE_PARTS || column_bytes > max_binding) {
                columns = ReducePlan::new(g.weights)?;
            }
            plans.push((rows, columns, *resident));
        }
        // GroupNorm's and InstanceNorm's sums per instance, where the op is
        // one part (a cut op's column partials meet across parts) and the
        // partials, at least one per instance, fit one binding (so does
        // the per-instance scratch).
        let instances = match &parts[..] {
            [part] if resident[0].is_none() && part.geo.is_grouped() => {
                let offsets = [part.windows[0].elem_offset, part.windows[1].elem_offset];
                let plan = StatPlan::new(&part.geo.instances(), &offsets, f16, reduction, true)?;
                (plan.partial_bytes() <= max_binding).then_some(plan)
            }
            _ => None,
        };
        // The partials scratch holds the per-instance partials, or the row and
        // the column partials, whichever the backward takes.
        let partial_bytes = match &instances {
            Some(plan) => plan.partial_bytes(),
            None => {
                let rows = plans.iter().zip(&parts).map(|((r, _, _), p)| r.partial_bytes(p.geo.stat.channels));
                let columns = plans.iter().map(|(_, c, _)| c.partial_bytes(geo.weights.channels));
                rows.chain(columns).max().unwrap_or(16)
            }
        };
        let (rows, rows_dx, partials) = self.scratch(&geo, partial_bytes)?;
        Recording::run(&self.ctx, Some(self), encoder, "norm backward", |rec| {
            if let [part] = &parts[..] {
                let (row_plan, col_plan, resident) = &plans[0];
                let columns = Columns { partials: &partials, parts: col_plan.parts, part_base: 0, merge: true };
                let piece = part.piece(&rows, &partials, f16);
                let instances = match &instances {
                    Some(plan) => Some((plan, self.instance_scratch(part.geo.instances().rows())?)),
                    None => None,
                };
                let part_dx = PartDx {
                    dy: &part.windows[1],
                    dx: &part.windows[2],
                    rows_dx: &rows_dx,
                    resident: *resident,
                    instances: instances.as_ref().map(|(plan, buffer)| (*plan, buffer)),
                };
                return self.backward_part(rec, &piece, row_plan, col_plan, &part_dx, &opt, source, &columns);
            }
            // Every part's column partials in one run per column, merged once.
            let stride = plans.iter().map(|(_, c, _)| c.parts).max().unwrap_or(1);
            let total = stride * slots;
            let most = parts.iter().map(|p| p.geo.rows()).max().unwrap_or(0);
            let column_bytes = u64::from(total) * geo.weights.channels as u64 * 16;
            let (part_rows, column_partials) = self.part_scratch(most, column_bytes)?;
            if plans.iter().any(|(_, c, _)| c.parts != stride) {
                // Slots a smaller part leaves unwritten must sum as zero.
                rec.clear(&column_partials);
            }
            for (part, (row_plan, col_plan, resident)) in parts.iter().zip(&plans) {
                if source != Source::Running {
                    rec.copy(&rows, part.first_row as u64 * 16, &part_rows, 0, part.geo.rows() as u64 * 16);
                }
                let columns =
                    Columns { partials: &column_partials, parts: total, part_base: part.slot * stride, merge: false };
                let piece = part.piece(&part_rows, &partials, f16);
                let part_dx = PartDx {
                    dy: &part.windows[1],
                    dx: &part.windows[2],
                    rows_dx: &rows_dx,
                    resident: *resident,
                    instances: None,
                };
                self.backward_part(rec, &piece, row_plan, col_plan, &part_dx, &opt, source, &columns)?;
            }
            let mut params = self.params(geo.weights, &geo, &opt);
            params.parts = total;
            let params = rec.uniform(&params);
            self.record_merge_columns(rec, &params, &column_partials, resident[0])
        })?;
        if source == Source::Running {
            // prepare_running replaced the saved input statistics.
            *lock(&self.saved_for) = None;
        }
        Ok(())
    }

    /// One part's backward: row sums and dx coefficients, column partials
    /// into `columns` (merged into dweight and dbias when it says so), dx.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_part(
        &self,
        rec: &mut Recording,
        piece: &Piece,
        row_plan: &ReducePlan,
        col_plan: &ReducePlan,
        out: &PartDx,
        opt: &Options,
        source: Source,
        columns: &Columns,
    ) -> Result<()> {
        let Piece { geo, weight_base, x: xw, rows, f16, .. } = *piece;
        let PartDx { dy: dyw, dx: dxw, rows_dx, resident, .. } = *out;
        let geo = &geo;
        let mut row_params = self.params(geo.stat, geo, opt);
        row_params.weight_base = weight_base;
        row_params.x_off = xw.elem_offset;
        row_params.dy_off = dyw.elem_offset;
        row_params.flags |= if matches!(source, Source::Input { .. }) { FLAG_BATCH_STATS } else { 0 };
        row_plan.fill(&mut row_params);
        let mut col_params = self.params(geo.weights, geo, opt);
        col_params.weight_base = weight_base;
        col_params.x_off = xw.elem_offset;
        col_params.dy_off = dyw.elem_offset;
        col_params.dx_off = dxw.elem_offset;
        col_plan.fill(&mut col_params);
        // The dx pass walks the same view with an elementwise tiling of its own.
        let tile = Tiling::elementwise_only(
            geo.weights,
            &[xw.elem_offset, dyw.elem_offset, dxw.elem_offset],
            f16,
            self.ctx.reduction(),
            geo.row_div,
        )?;
        let mut dx_params = tile.apply_params(&col_params);
        dx_params.row_div /= tile.rows_per_view_row() as u32;
        // Column partials go to the part's weights, `parts` per weight.
        col_params.parts = columns.parts;
        col_params.part_base = columns.part_base;
        col_params.chan_base = weight_base;
        if let Some(resident) = resident {
            let mut params = row_params;
            params.dx_off = dxw.elem_offset;
            params.parts = columns.parts;
            params.part_base = columns.part_base;
            params.chan_base = weight_base;
            return self.backward_resident(rec, resident, &params, &col_params, piece, out, columns);
        }

        if let (Some(team), Source::Input { .. }) = (self.row_team(geo), source) {
            let mut params = row_params;
            params.dx_off = dxw.elem_offset;
            if let Some(instances) = out.instances {
                return self.record_group_backward(rec, team, params, piece, out, instances.1);
            }
            self.record_team_backward(rec, "row_backward", team, params, piece, out, None)?;
            let col_buf = rec.uniform(&col_params);
            return self.record_column_grads(rec, piece, out, (&col_buf, col_plan), columns);
        }
        let row_buf = rec.uniform(&row_params);
        let col_buf = rec.uniform(&col_params);
        let dx_buf = rec.uniform(&dx_params);
        if source == Source::Running {
            self.record_running(rec, "prepare_running", &row_buf, rows, Self::row_workgroups(geo))?;
        }
        if let Some(instances) = out.instances {
            self.record_instance_grads(rec, instances, &row_params, piece, out, opt)?;
        } else {
            let row = (&row_buf, row_plan);
            self.record_row_and_column_grads(rec, piece, out, row, (&col_buf, col_plan), columns)?;
        }
        let entries = [
            (0, dx_buf.as_entire_binding()),
            (2, self.affine.weight().as_entire_binding()),
            (7, rows_dx.as_entire_binding()),
            (8, xw.resource()),
            (10, dyw.resource()),
            (11, dxw.resource()),
        ];
        rec.dispatch(tile_kernel(&tile, "dx"), &entries, tile.apply.grid)
    }

    /// One part's backward in one pass (src/resident.rs): dx and the column
    /// partials from a single read of x and dy, then dweight and dbias when
    /// `columns` says so.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_resident(
        &self,
        rec: &mut Recording,
        resident: Resident,
        params: &ChannelParams,
        col_params: &ChannelParams,
        piece: &Piece,
        out: &PartDx,
        columns: &Columns,
    ) -> Result<()> {
        let views = [(1, columns.partials.as_entire_binding()), (10, out.dy.resource()), (11, out.dx.resource())];
        self.record_resident(rec, resident, Pass::Backward, params, piece, &views)?;
        if columns.merge {
            let col_buf = rec.uniform(col_params);
            self.record_merge_columns(rec, &col_buf, columns.partials, Some(resident))?;
        }
        Ok(())
    }

    /// dweight and dbias from the column partials (`params.parts` per
    /// column), laid out by the one-pass backward with `resident`.
    pub(super) fn record_merge_columns(
        &self,
        rec: &mut Recording,
        params: &Uniform,
        partials: &wgpu::Buffer,
        resident: Option<Resident>,
    ) -> Result<()> {
        let key = match resident {
            Some(plan) => {
                KernelKey::new(Shader::Resident { plan, f16: false, words: false }, Pass::MergeColumns.entry())
            }
            None => row_norm("merge_columns"),
        };
        let entries = [
            (0, params.as_entire_binding()),
            (1, partials.as_entire_binding()),
            (12, self.affine.grad_weight().as_entire_binding()),
            (13, self.affine.grad_bias().as_entire_binding()),
        ];
        rec.dispatch(key, &entries, self.weight_workgroups())
    }

    /// One of row_forward.wgsl's team backwards over stat rows a team of
    /// `width` invocations takes (GPUs, see `row_team`), each writing dx in
    /// one pass: `row_backward`, which leaves each row's delta for the
    /// column sums after it, or `group_backward`, which leaves the
    /// `instances`' sums. Returns its parameters' uniform.
    #[allow(clippy::too_many_arguments)]
    fn record_team_backward(
        &self,
        rec: &mut Recording,
        entry: &'static str,
        (width, grid): (u32, (u32, u32)),
        mut params: ChannelParams,
        piece: &Piece,
        out: &PartDx,
        instances: Option<&wgpu::Buffer>,
    ) -> Result<Uniform> {
        params.width = width;
        let uniform = rec.uniform(&params);
        let entries: Vec<_> = [
            (0, uniform.as_entire_binding()),
            (2, self.affine.weight().as_entire_binding()),
            (6, piece.rows.as_entire_binding()),
            (8, piece.x.resource()),
            (10, out.dy.resource()),
            (11, out.dx.resource()),
        ]
        .into_iter()
        .chain(instances.map(|b| (14, b.as_entire_binding())))
        .collect();
        let key = KernelKey::new(Shader::RowNorm { f16: piece.f16, vec4: false, words: false }, entry);
        rec.dispatch(key, &entries, grid)?;
        Ok(uniform)
    }

    /// GroupNorm's and InstanceNorm's backward over channels-first groups
    /// in two dispatches (GPUs, see `row_team`): row_forward.wgsl's
    /// group_backward (the instances' sums, the rows' coefficients, dx),
    /// then dweight and dbias from the instances.
    fn record_group_backward(
        &self,
        rec: &mut Recording,
        team: (u32, (u32, u32)),
        params: ChannelParams,
        piece: &Piece,
        out: &PartDx,
        instances: &wgpu::Buffer,
    ) -> Result<()> {
        let uniform = self.record_team_backward(rec, "group_backward", team, params, piece, out, Some(instances))?;
        let entries = [
            (0, uniform.as_entire_binding()),
            (6, piece.rows.as_entire_binding()),
            (12, self.affine.grad_weight().as_entire_binding()),
            (13, self.affine.grad_bias().as_entire_binding()),
            (14, instances.as_entire_binding()),
        ];
        rec.dispatch(row_norm("instance_columns"), &entries, self.weight_workgroups())
    }
}
