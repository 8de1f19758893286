//! The family's forward as recorded: statistics per stat row over each part
//! (or the one-pass kernels of src/resident.rs for LayerNorm's and
//! RMSNorm's short rows), the apply, and InstanceNorm's running statistics.

use super::*;
use crate::kernels::Finish;
use crate::strategy::Reduction;

/// Most values of a stat row row_forward takes (a workgroup's team walks
/// them in 32 steps a pass).
const ROW_TEAM_VALUES: usize = 8192;

/// row_forward.wgsl's workgroup (ROW_WG).
const ROW_TEAM_WG: u32 = 256;

impl Core {
    /// Records a forward of `x` into `y`. A tensor above one binding runs in
    /// parts of whole samples, each part's statistics copied into the saved
    /// rows; InstanceNorm's running statistics then update once, from all.
    pub fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        call: &Call,
    ) -> Result<()> {
        let Call { geo, opt, source } = *call;
        self.check_pair(x, y, "y")?;
        if geo.rows() > u32::MAX as usize / 16 {
            return Err(Error::Unsupported(format!("{} statistics exceed one buffer", geo.rows())));
        }
        let f16 = x.dtype == DType::F16;
        let reduction = self.ctx.reduction();
        let parts = self.parts(&geo, &[(x, "x"), (y, "y")])?;
        let plans = parts
            .iter()
            .map(|p| StatPlan::new(&p.geo, &[p.windows[0].elem_offset], f16, reduction, false))
            .collect::<Result<Vec<_>>>()?;
        let bytes = plans.iter().map(StatPlan::partial_bytes).max().unwrap_or(16);
        let (rows, _, partials) = self.scratch(&geo, bytes)?;
        Recording::run(&self.ctx, Some(self), encoder, "norm forward", |rec| {
            if let [part] = &parts[..] {
                let piece = part.piece(&rows, &partials, f16);
                return self.forward_part(rec, &piece, &plans[0], &part.windows[1], &opt, source);
            }
            let most = parts.iter().map(|p| p.geo.rows()).max().unwrap_or(0);
            let (part_rows, _) = self.part_scratch(most, 0)?;
            // Parts run on their input's statistics; the running ones update once, below.
            let part_source = match source {
                Source::Input { .. } => Source::Input { update_running: false },
                Source::Running => Source::Running,
            };
            for (part, plan) in parts.iter().zip(&plans) {
                let piece = part.piece(&part_rows, &partials, f16);
                self.forward_part(rec, &piece, plan, &part.windows[1], &opt, part_source)?;
                if part_source != Source::Running {
                    rec.copy(&part_rows, 0, &rows, part.first_row as u64 * 16, part.geo.rows() as u64 * 16);
                }
            }
            if source == (Source::Input { update_running: true }) {
                let params = rec.uniform(&self.params(geo.stat, &geo, &opt));
                self.record_running(rec, "update_running", &params, &rows, self.weight_workgroups())?;
            }
            Ok(())
        })?;
        // The rows now hold this input's statistics, or the running ones.
        *lock(&self.saved_for) = match source {
            Source::Input { .. } => Some((x.shape.clone(), x.layout, geo.rows())),
            Source::Running => None,
        };
        Ok(())
    }

    /// One part's forward: statistics into `piece.rows` (or the running
    /// ones), then the elementwise pass into `yw`.
    pub(super) fn forward_part(
        &self,
        rec: &mut Recording,
        piece: &Piece,
        plan: &StatPlan,
        yw: &Window,
        opt: &Options,
        source: Source,
    ) -> Result<()> {
        let Piece { geo, weight_base, x: xw, rows, partials, f16 } = *piece;
        let geo = &geo;
        let mut stat_params = self.params(geo.stat, geo, opt);
        stat_params.x_off = xw.elem_offset;
        stat_params.weight_base = weight_base;
        // LayerNorm's and RMSNorm's rows, where they fit: one pass.
        if let Some(resident) = self.resident(geo, source, &[xw.elem_offset, yw.elem_offset], Pass::Forward) {
            let mut params = stat_params;
            params.y_off = yw.elem_offset;
            let views = [(9, yw.resource())];
            return self.record_resident(rec, resident, Pass::Forward, &params, piece, &views);
        }
        if let (Some((width, grid)), Source::Input { update_running }) = (self.row_team(geo), source) {
            let mut params = stat_params;
            params.y_off = yw.elem_offset;
            params.width = width;
            let uniform = rec.uniform(&params);
            let key = KernelKey::new(Shader::RowNorm { f16, vec4: false, words: false }, "row_forward");
            rec.dispatch(key, &self.apply_entries(&uniform, rows, xw, yw), grid)?;
            if update_running {
                self.record_running(rec, "update_running", &uniform, rows, self.weight_workgroups())?;
            }
            return Ok(());
        }
        let reduce_params = plan.reducer.params(&stat_params);
        stat_params.parts = plan.merge_parts;
        let mut apply_params = self.params(geo.weights, geo, opt);
        apply_params.weight_base = weight_base;
        apply_params.x_off = xw.elem_offset;
        apply_params.y_off = yw.elem_offset;
        let tile = Tiling::elementwise_only(
            geo.weights,
            &[xw.elem_offset, yw.elem_offset],
            f16,
            self.ctx.reduction(),
            geo.row_div,
        )?;
        let mut apply_params = tile.apply_params(&apply_params);
        apply_params.row_div /= tile.rows_per_view_row() as u32;

        let stat_buf = rec.uniform(&stat_params);
        let reduce_buf = rec.uniform(&reduce_params);
        let apply_buf = rec.uniform(&apply_params);
        match source {
            Source::Input { update_running } => {
                if let Some(blocks) = self.rows_finish_blocks(plan, geo) {
                    // The reduction's last workgroups write the rows.
                    let arrivals = self.scratch.get_bound("arrivals", u64::from(blocks) * 4)?;
                    let stand_in = self.scratch.get("stand-in", 16)?;
                    let bindings = ReduceBindings::new(
                        reduce_buf.as_entire_binding(),
                        (xw.resource(), xw.resource()),
                        stand_in.as_entire_binding(),
                        partials.as_entire_binding(),
                    );
                    let finishing = [(7, arrivals.as_entire_binding()), (8, rows.as_entire_binding())];
                    plan.reducer.record_finishing(rec, ReduceMode::Stats, Finish::Rows, bindings, &finishing)?;
                } else {
                    let tensors = (xw.resource(), xw.resource());
                    let bindings = ReduceBindings::new(
                        reduce_buf.as_entire_binding(),
                        tensors,
                        rows.as_entire_binding(),
                        partials.as_entire_binding(),
                    );
                    plan.reducer.record(rec, ReduceMode::Stats, bindings)?;
                    let entries = [
                        (0, stat_buf.as_entire_binding()),
                        (1, partials.as_entire_binding()),
                        (6, rows.as_entire_binding()),
                    ];
                    rec.dispatch(row_norm("merge_rows"), &entries, Self::row_workgroups(geo))?;
                }
                if update_running {
                    self.record_running(rec, "update_running", &stat_buf, rows, self.weight_workgroups())?;
                }
            }
            Source::Running => {
                self.record_running(rec, "prepare_running", &stat_buf, rows, Self::row_workgroups(geo))?
            }
        }
        rec.dispatch(tile_kernel(&tile, "apply"), &self.apply_entries(&apply_buf, rows, xw, yw), tile.apply.grid)
    }

    /// The blocks whose last workgroups merge `plan`'s statistics into
    /// the stat rows (shaders/finish.wgsl, finish_rows.wgsl), or `None`
    /// where merge_rows follows: as BatchNorm's (src/batch_norm/finishing.rs),
    /// where each block holds whole stat rows (with lanes of channels-last
    /// channels, whole groups of `cpg`).
    fn rows_finish_blocks(&self, plan: &StatPlan, geo: &Geometry) -> Option<u32> {
        // x (three times), the stand-in for the rows, partials, weight
        // (scalar kernels), arrivals and the rows.
        const STORAGE: u32 = 8;
        if !self.ctx.last_merge_binds(STORAGE) {
            return None;
        }
        let reducer = &plan.reducer;
        let (blocks, width) = (reducer.plan.grid.0, reducer.plan.width as usize);
        let whole_groups = reducer.lane_channels.is_none() || blocks == 1 || (4 * width).is_multiple_of(geo.cpg);
        whole_groups.then(|| reducer.finish_blocks(self.ctx.limits())).flatten()
    }

    /// What the passes that write y (apply, row_forward) bind: `params`,
    /// the weight and bias, the stat rows, x and y.
    fn apply_entries<'b>(
        &'b self,
        params: &'b Uniform,
        rows: &'b wgpu::Buffer,
        xw: &Window<'b>,
        yw: &Window<'b>,
    ) -> [(u32, wgpu::BindingResource<'b>); 6] {
        [
            (0, params.as_entire_binding()),
            (2, self.affine.weight().as_entire_binding()),
            (3, self.affine.bias().as_entire_binding()),
            (6, rows.as_entire_binding()),
            (8, xw.resource()),
            (9, yw.resource()),
        ]
    }

    /// The one-pass plan (src/resident.rs) of `pass` for `geo` on input
    /// statistics, with views at element offsets `offsets`: LayerNorm's and
    /// RMSNorm's rows, where they fit.
    pub(super) fn resident(&self, geo: &Geometry, source: Source, offsets: &[u32], pass: Pass) -> Option<Resident> {
        let trailing = *geo == Geometry::trailing(geo.rows(), geo.row_len());
        let input = source == Source::Input { update_running: false };
        if !(trailing && input) {
            return None;
        }
        let device = (self.ctx.adapter_info(), self.ctx.device().features());
        Resident::choose(self.ctx.reduction(), device, geo.row_len(), offsets, pass)
    }

    /// The team (invocations a stat row, a power of two) and the grid with
    /// which row_forward.wgsl's kernels take `geo`'s forward (and
    /// GroupNorm's and InstanceNorm's backward) in one pass, if they may: on
    /// GPUs, for stat rows that are contiguous runs (LayerNorm's and
    /// RMSNorm's rows, GroupNorm's and InstanceNorm's channels-first
    /// groups) of up to [`ROW_TEAM_VALUES`] values. About eight values a
    /// lane; short rows a lane each. Not on lavapipe, whose workgroup
    /// barriers cost it more than the passes (as BatchNorm's channel_forward).
    pub(super) fn row_team(&self, geo: &Geometry) -> Option<(u32, (u32, u32))> {
        let len = geo.row_len();
        let fits = self.ctx.reduction() == Reduction::Tree
            && geo.stat.outer == 1
            && geo.batch == 1
            && len <= ROW_TEAM_VALUES
            // group_backward binds six storage buffers, row_forward five.
            && 6 <= self.ctx.limits().max_storage_buffers_per_shader_stage;
        let width = ((len / 8).next_power_of_two() as u32).clamp(1, ROW_TEAM_WG);
        let teams = geo.rows().div_ceil((ROW_TEAM_WG / width) as usize);
        fits.then_some((width, (teams.clamp(1, 65535) as u32, 1)))
    }

    /// Records `kernel` of the one-pass plan over `piece`'s rows: its
    /// parameters, the weights, the saved rows and x bound, and `views`.
    pub(super) fn record_resident(
        &self,
        rec: &mut Recording,
        resident: Resident,
        kernel: Pass,
        params: &ChannelParams,
        piece: &Piece,
        views: &[(u32, wgpu::BindingResource<'_>)],
    ) -> Result<()> {
        let key = KernelKey::new(Shader::Resident { plan: resident, f16: piece.f16, words: false }, kernel.entry());
        let params = rec.uniform(params);
        let mut entries = vec![
            (0, params.as_entire_binding()),
            (2, self.affine.weight().as_entire_binding()),
            (3, self.affine.bias().as_entire_binding()),
            (6, piece.rows.as_entire_binding()),
            (8, piece.x.resource()),
        ];
        entries.extend_from_slice(views);
        let workgroups = resident.workgroups(piece.geo.rows(), kernel, self.ctx.reduction());
        rec.dispatch(key, &entries, (workgroups, 1))
    }

    pub(super) fn record_running(
        &self,
        rec: &mut Recording,
        entry: &'static str,
        params: &Uniform,
        rows: &wgpu::Buffer,
        grid: (u32, u32),
    ) -> Result<()> {
        let entries = [
            (0, params.as_entire_binding()),
            (4, self.running_mean.as_entire_binding()),
            (5, self.running_var.as_entire_binding()),
            (6, rows.as_entire_binding()),
        ];
        rec.dispatch(row_norm(entry), &entries, grid)
    }
}
