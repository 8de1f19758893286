//! How BatchNorm cuts a tensor into dispatches: chunks that each fit one
//! storage binding (tensors above the device's limit), and within a chunk the
//! tiling its reduction and elementwise pass share.

use crate::cut::{self, Units};
use crate::kernels::{ChannelParams, KernelKey, Shader};
use crate::layout::ChannelView;
use crate::reduce::{ReducePlan, Shape, MAX_MERGE_PARTS};
use crate::reducer::Reducer;
use crate::row_teams;
use crate::strategy::Reduction;
use crate::tensor::{DType, TensorView, Window};
use crate::{Error, Result};

/// How a reduction and elementwise passes cut a tensor: the reduction (its
/// view in units of the value type, vec4 when every view starts at a
/// multiple of four values and four values share a channel or are four
/// channels, and its plan over that view), and the elementwise passes' plan
/// over the same view. Every tiling of one op uses the same value type's
/// view, so the merge sees the same partials whichever value type reduced
/// them.
pub(crate) struct Tiling {
    /// The reduction: runs, interleaved, or channels-last rows of 256 bytes
    /// walked in teams on CPU adapters; planar or interleaved on GPUs.
    pub reducer: Reducer,
    /// The elementwise passes' plan (ReducePlan::elementwise_only, as the
    /// family's): runs over long inner runs, else interleaved with 16 values
    /// per invocation; with teams (channels-last rows of 256 bytes and more
    /// on CPU adapters) `slice_len` rows a team. The partials' layout does
    /// not depend on it.
    pub apply: ReducePlan,
}

impl Tiling {
    /// BatchNorm's tiling; `offsets` are the element offsets of every view
    /// the passes bind.
    pub fn new(view: ChannelView, offsets: &[u32], f16: bool, reduction: Reduction) -> Result<Tiling> {
        let (vec4, lanes, v) = Self::view_of(view, offsets, true);
        let value_bytes = value_bytes(vec4, f16);
        let plans = |reduction| -> Result<(ReducePlan, ReducePlan)> {
            if reduction == Reduction::PerInvocation {
                if let Some(runs) = ReducePlan::runs_reduction(v)? {
                    return Ok((runs, runs));
                }
            }
            let shared = ReducePlan::elementwise(v)?;
            let plan = match shared.shape {
                Shape::Planar => shared.with(reduction),
                _ => ReducePlan::interleaved_reduction(v, reduction)?,
            };
            Ok((plan, ReducePlan::elementwise_only(v, reduction, value_bytes)?))
        };
        let (mut plan, mut apply) = plans(reduction)?;
        let teams = match reduction {
            Reduction::PerInvocation if lanes => row_teams::per_lane(v, value_bytes),
            _ => None,
        };
        if let Some(per_lane) = teams {
            let (per_team, workgroups) = row_teams::grid(v.outer, v.channels * value_bytes);
            apply.slice_len = per_team as u32;
            apply.grid = (workgroups, 1);
            if per_lane <= row_teams::MAX_REDUCE_PER_LANE {
                plan = ReducePlan::teams(v.outer, per_team);
            }
        }
        let lane_channels = lanes.then_some(view.channels as u32);
        if reduction == Reduction::Tree {
            plan = plan.narrowed(v, lane_channels, vec4)?;
        }
        // Cycling lanes: every channel has `streams` lane columns, each a run
        // of the plan's partials; a merge loop takes at most MAX_MERGE_PARTS.
        let streams = if lanes { lane_streams(view.channels) } else { 1 };
        if plan.parts * streams > MAX_MERGE_PARTS {
            plan = plans(Reduction::Tree)?.0;
        }
        plan.parts *= streams;
        let teams = teams.map(|t| t as u8);
        Ok(Tiling { reducer: Reducer { plan, view: v, vec4, lane_channels, f16, teams }, apply })
    }

    /// The tiling of elementwise passes alone (the family's: no reduction
    /// shares their view). Channels-last rows regroup when their channels are
    /// not a multiple of four only if `row_div` (tensor rows per statistic
    /// quotient) divides into the regrouped rows.
    pub fn elementwise_only(
        view: ChannelView,
        offsets: &[u32],
        f16: bool,
        reduction: Reduction,
        row_div: usize,
    ) -> Result<Tiling> {
        let cycle = row_div.is_multiple_of(lane_streams(view.channels) as usize);
        let (vec4, lanes, v) = Self::view_of(view, offsets, cycle);
        let apply = ReducePlan::elementwise_only(v, reduction, value_bytes(vec4, f16))?;
        let lane_channels = lanes.then_some(view.channels as u32);
        Ok(Tiling { reducer: Reducer { plan: apply, view: v, vec4, lane_channels, f16, teams: None }, apply })
    }

    /// The view in units of the value type: vec4 when every view starts at
    /// a multiple of four values and four values share a channel, or lie
    /// across channels-last channels. With `cycle`, channels-last rows
    /// whose channels are not a multiple of four are regrouped in rows of
    /// lcm(channels, 4) values, lane l of column c channel (4c + l) %
    /// channels, when the rows divide evenly.
    fn view_of(view: ChannelView, offsets: &[u32], cycle: bool) -> (bool, bool, ChannelView) {
        let aligned = offsets.iter().all(|o| o % 4 == 0);
        let c = view.channels;
        if aligned && view.inner.is_multiple_of(4) {
            return (true, false, ChannelView { inner: view.inner / 4, ..view });
        }
        if aligned && view.inner == 1 && c.is_multiple_of(4) {
            return (true, true, ChannelView { channels: c / 4, ..view });
        }
        let per_row = lane_streams(c) as usize; // rows of `view` per regrouped row
        if cycle && aligned && view.inner == 1 && c > 0 && view.outer.is_multiple_of(per_row) {
            let cols = c * per_row / 4;
            return (true, true, ChannelView { outer: view.outer / per_row, channels: cols, inner: 1 });
        }
        (false, false, view)
    }

    /// Whether the elementwise passes walk runs: one channel a workgroup.
    pub fn walks_runs(&self) -> bool {
        self.apply.shape == Shape::Runs && self.reducer.teams.is_none()
    }

    /// Tensor rows per row of the view: more than one where channels-last
    /// rows are regrouped in runs of lcm(channels, 4) values.
    pub fn rows_per_view_row(&self) -> usize {
        self.reducer.lane_channels.map_or(1, |c| lane_streams(c as usize) as usize)
    }

    /// `base` (the op's scalar parameters) rewritten for the reduction.
    pub fn params(&self, base: &ChannelParams) -> ChannelParams {
        self.reducer.params(base)
    }

    /// `base` rewritten for the elementwise passes.
    pub fn apply_params(&self, base: &ChannelParams) -> ChannelParams {
        self.reducer.params_for(base, &self.apply)
    }

    /// The entry point of elementwise pass `op` (`apply`, `dx`, or `eval`:
    /// BatchNorm's apply on running coefficients; `apply_merged`,
    /// `dx_merged` and `dx_eval_*`: merged.wgsl's), in elementwise.wgsl or row_norm.wgsl.
    pub fn entry(&self, op: &str) -> &'static str {
        // Runs tilings only (src/batch_norm/merged.rs).
        match op {
            "apply_merged" => return "apply_runs_merged",
            "dx_merged" => return "dx_runs_merged",
            "dx_eval_team" => return "dx_eval_runs_team",
            "dx_eval_lanes" => return "dx_eval_runs_lanes",
            _ => {}
        }
        let walk = match (self.reducer.teams.is_some(), self.apply.shape == Shape::Runs) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        };
        let names = match op {
            "apply" => ["apply_rows", "apply_runs", "apply_interleaved"],
            "eval" => ["eval_rows", "eval_runs", "eval_interleaved"],
            _ => ["dx_rows", "dx_runs", "dx_interleaved"],
        };
        names[walk]
    }

    /// BatchNorm's pipeline of `op` (`apply`, `eval` or `dx`) for this tiling and `mode`.
    pub fn kernel(&self, op: &str, mode: u32) -> KernelKey {
        let Reducer { f16, vec4, teams, .. } = self.reducer;
        let shader = match teams {
            Some(per_lane) => Shader::ElementwiseRows { per_lane, f16, words: false },
            None => Shader::Elementwise { vec4, f16, words: false },
        };
        KernelKey::with_mode(shader, self.entry(op), mode)
    }
}

/// Bytes of one value of a view in memory: a vec4 or a scalar, of f32 or f16.
fn value_bytes(vec4: bool, f16: bool) -> usize {
    (if vec4 { 4 } else { 1 }) * (if f16 { 2 } else { 4 })
}

/// Lane columns per channel when channels-last rows are regrouped in runs
/// of lcm(channels, 4) values: lcm / channels.
pub(crate) fn lane_streams(channels: usize) -> u32 {
    let g = gcd(channels, 4);
    (4 / g) as u32
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The tensors an op binds, by role; `None` where the op has no such tensor.
pub(crate) const X: usize = 0;
pub(crate) const Y: usize = 1;
pub(crate) const DY: usize = 2;
pub(crate) const DX: usize = 3;
pub(crate) const Z: usize = 4;
pub(crate) const DZ: usize = 5;
const NAMES: [&str; 6] = ["x", "y", "dy", "dx", "z", "dz"];

/// One chunk: its windows of every tensor, its tiling, and its kernel
/// parameters (the op's, rewritten for the chunk).
pub(crate) struct Chunk<'a> {
    pub windows: [Option<Window<'a>>; 6],
    pub tiling: Tiling,
    /// The reduction's parameters, and the elementwise passes'.
    pub params: ChannelParams,
    pub apply_params: ChannelParams,
}

impl<'a> Chunk<'a> {
    /// The window of tensor `role` (x stands in for an absent one: kernels
    /// that never read a tensor still need something bound there).
    pub fn resource(&self, role: usize) -> wgpu::BindingResource<'a> {
        self.windows[role].as_ref().or(self.windows[X].as_ref()).expect("x is always bound").resource()
    }

    /// The window of tensor `role`, or `fallback` where the op has none: a
    /// binding the kernel writes (dz) may not stand on x.
    pub fn resource_or<'b>(&'b self, role: usize, fallback: &'b wgpu::Buffer) -> wgpu::BindingResource<'b> {
        match &self.windows[role] {
            Some(w) => w.resource(),
            None => fallback.as_entire_binding(),
        }
    }
}

/// A tensor (and its companions) cut into chunks that each fit one binding.
/// Chunk k's partials for channel c go to `c * parts + part_base_k + local`,
/// so the merge sees one run of `parts` per channel whatever the cut.
pub(crate) struct Chunks<'a> {
    pub chunks: Vec<Chunk<'a>>,
    /// Partials per channel over all chunks.
    pub parts: u32,
    /// Some chunk writes fewer partials than its stride: clear them first
    /// (empty partials merge as nothing).
    pub needs_clear: bool,
}

impl<'a> Chunks<'a> {
    /// Cuts `view` (the op's `[outer][channels][inner]` view) and its tensors.
    /// `base` holds the op's parameters; offsets are filled in per chunk.
    pub fn new(
        view: ChannelView,
        tensors: [Option<&TensorView<'a>>; 6],
        base: &ChannelParams,
        limits: &wgpu::Limits,
        reduction: Reduction,
    ) -> Result<Chunks<'a>> {
        let dtype = tensors[X].map_or(DType::F32, |x| x.dtype);
        for (role, t) in tensors.iter().enumerate() {
            if let Some(t) = t {
                if t.dtype != dtype {
                    return Err(Error::Parameter(format!("{} is {:?}, x is {dtype:?}", NAMES[role], t.dtype)));
                }
            }
        }
        let units =
            Units { units: view.outer, subs: view.channels, sub_len: view.inner, split_subs: true, split_values: true };
        let pieces = units.cut(cut::max_values(limits, dtype.size()))?;
        let present = tensors.iter().enumerate().filter_map(|(role, t)| t.map(|t| (role, t)));
        let (roles, named): (Vec<usize>, Vec<(&TensorView<'a>, &str)>) =
            present.map(|(role, t)| (role, (t, NAMES[role]))).unzip();
        let mut chunks = Vec::with_capacity(pieces.len());
        for (piece, piece_windows) in pieces.iter().zip(cut::windows(&pieces, &named, limits)?) {
            let mut windows: [Option<Window<'a>>; 6] = Default::default();
            let offsets: Vec<u32> = piece_windows.iter().map(|w| w.elem_offset).collect();
            for (&role, w) in roles.iter().zip(piece_windows) {
                windows[role] = Some(w);
            }
            let piece_view =
                ChannelView { outer: piece.units.len(), channels: piece.subs.len(), inner: piece.values.len() };
            let tiling = Tiling::new(piece_view, &offsets, dtype == DType::F16, reduction)?;
            let mut params = *base;
            let elem = |role: usize| windows[role].as_ref().map_or(0, |w: &Window| w.elem_offset);
            params.x_off = elem(X);
            params.y_off = elem(Y);
            params.dy_off = elem(DY);
            params.dx_off = elem(DX);
            params.z_off = elem(Z);
            params.dz_off = elem(DZ);
            params.chan_base = piece.subs.start as u32;
            let apply_params = tiling.apply_params(&params);
            let params = tiling.params(&params);
            chunks.push(Chunk { windows, tiling, params, apply_params });
        }
        let stride = chunks.iter().map(|c| c.tiling.reducer.plan.parts).max().unwrap_or(1);
        let covering = pieces.iter().map(|p| p.slot).max().unwrap_or(0) as u32 + 1;
        for (chunk, piece) in chunks.iter_mut().zip(&pieces) {
            chunk.params.parts = stride * covering;
            chunk.params.part_base = stride * piece.slot as u32;
        }
        let needs_clear = chunks.iter().any(|c| c.tiling.reducer.plan.parts != stride);
        Ok(Chunks { chunks, parts: stride * covering, needs_clear })
    }
}
