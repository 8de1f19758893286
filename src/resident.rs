//! LayerNorm's and RMSNorm's forward in one pass on CPU adapters, for rows
//! short enough to stay in registers: each row is read once, its exact
//! statistics taken over the registers, and y written from them. Two
//! accesses per value, where statistics-then-apply take three plus a stat
//! load per value (lavapipe, LayerNorm: 8192x512 11.2 -> 6.3 ms, rows of 56
//! 15.3 -> 9.0 ms; PERF_NOTES.md, fourth session).
//!
//! The kernel is generated per row length, with every per-value step
//! written out: lavapipe keeps named values in registers (or spills them
//! with whole-vector moves), where a private array indexed in a loop, or a
//! loop of masked loads, goes through per-lane memory and was slower than
//! the two passes.
//!
//! Two shapes:
//! - rows of up to [`MAX_ONE_LANE`] vec4s: one invocation per row, no
//!   cross-lane step at all; its weight loads have the same index in every
//!   lane (one load for the whole SIMD batch on lavapipe);
//! - longer rows, up to [`MAX_PER_LANE`] vec4s per lane: one subgroup per
//!   row (`subgroupAdd`), lane l holding vec4s l, l + lanes, ...; on
//!   devices with the `SUBGROUP` feature and one fixed subgroup size.
//!
//! Writes the same saved rows as the two passes' `merge_rows`
//! (row_norm.wgsl), `(centre, rstd, 0, var)`, so the backward cannot tell
//! which forward ran.

use std::fmt::Write;

use crate::context::{Context, Reduction};

/// Longest row (in vec4s) one invocation holds: 128 values. Rows of 96
/// and 128 values ran at 0.70 and 0.77 of the copy ceiling this way against
/// 0.52 and 0.60 with a subgroup per row (lavapipe, 16 MiB); 256 values
/// fell to 0.65 (a subgroup: 0.95).
pub(crate) const MAX_ONE_LANE: usize = 32;

/// Most vec4s one lane holds when a subgroup shares a row (eight lanes on
/// lavapipe: rows of up to 512 values).
pub(crate) const MAX_PER_LANE: usize = 16;

/// Invocations per workgroup.
const WG: usize = 64;

/// Workgroups of a dispatch, at most: each walks rows grid-stride (LayerNorm
/// 8192x512 on lavapipe: 32 workgroups 7.7 ms, 64 6.4, 128 6.3, 256 7.1,
/// one row per subgroup 10.4).
const WORKGROUPS: usize = 128;

/// How a row spreads over invocations: `lanes` invocations (1, or the
/// subgroup size) each holding `vectors` vec4s of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Resident {
    pub lanes: u32,
    pub vectors: u32,
}

impl Resident {
    /// The plan for rows of `row_len` values whose views start at the
    /// element offsets `offsets`, or `None` where the two passes run: GPUs
    /// (their reductions are trees; this path was measured on lavapipe
    /// only), views not in whole vec4s, and rows too long to hold.
    pub fn choose(ctx: &Context, row_len: usize, offsets: &[u32]) -> Option<Resident> {
        if ctx.reduction() != Reduction::PerInvocation || offsets.iter().any(|o| o % 4 != 0) {
            return None;
        }
        Self::for_rows(row_len, fixed_subgroup_size(ctx))
    }

    /// The plan for rows of `row_len` values on a device with subgroups of
    /// `subgroup` lanes (`None`: no subgroups, or of varying size).
    fn for_rows(row_len: usize, subgroup: Option<usize>) -> Option<Resident> {
        if row_len == 0 || !row_len.is_multiple_of(4) {
            return None;
        }
        let n4 = row_len / 4;
        if n4 <= MAX_ONE_LANE {
            return Some(Resident { lanes: 1, vectors: n4 as u32 });
        }
        let lanes = subgroup?;
        let vectors = n4.div_ceil(lanes);
        (vectors <= MAX_PER_LANE).then_some(Resident { lanes: lanes as u32, vectors: vectors as u32 })
    }

    /// Workgroups for `rows` rows.
    pub fn workgroups(&self, rows: usize) -> u32 {
        let rows_per_workgroup = WG / self.lanes as usize;
        rows.div_ceil(rows_per_workgroup).clamp(1, WORKGROUPS) as u32
    }

    /// The kernel's WGSL: `forward_resident`, after common.wgsl and the
    /// prelude (`S`, the vec4 type in memory).
    pub fn source(&self) -> String {
        let (v, lanes) = (self.vectors as usize, self.lanes as usize);
        let mut s = String::new();
        let mut line = |text: String| {
            let _ = writeln!(s, "{text}");
        };
        line(String::from(HEADER));
        let subgroup = lanes > 1;
        if subgroup {
            line(format!(
                "@compute @workgroup_size({WG})\nfn forward_resident(\n    @builtin(workgroup_id) wg: vec3<u32>,\n    \
                 @builtin(num_workgroups) nwg: vec3<u32>,\n    @builtin(subgroup_id) sid: u32,\n    \
                 @builtin(num_subgroups) nsub: u32,\n    @builtin(subgroup_invocation_id) lane: u32,\n) {{"
            ));
        } else {
            line(format!(
                "@compute @workgroup_size({WG})\nfn forward_resident(\n    @builtin(workgroup_id) wg: vec3<u32>,\n    \
                 @builtin(num_workgroups) nwg: vec3<u32>,\n    @builtin(local_invocation_index) t: u32,\n) {{"
            ));
            line("    let lane = 0u;".into());
        }
        line("    let n4 = p.inner / 4u;".into());
        // Vec4 k of a lane is vec4 lane + k * lanes of the row; only the last
        // can fall past the row's end, and then only with a subgroup.
        let last = v - 1;
        let masked = subgroup;
        for k in 0..v {
            line(format!("    let w{k} = weights4(lane + {}u);", k * lanes));
        }
        if masked {
            line(format!("    let live = lane + {}u < n4;", last * lanes));
        }
        if subgroup {
            line("    for (var r = wg.x * nsub + sid; r < p.rows; r += nwg.x * nsub) {".into());
        } else {
            line(format!("    for (var r = wg.x * {WG}u + t; r < p.rows; r += nwg.x * {WG}u) {{"));
        }
        line("        let at = p.x_off / 4u + r * n4 + lane;".into());
        for k in 0..v {
            if masked && k == last {
                line(format!("        var v{k} = vec4<f32>(0.0);"));
                line(format!("        if (live) {{ v{k} = vec4<f32>(x[at + {}u]); }}", k * lanes));
            } else {
                line(format!("        let v{k} = vec4<f32>(x[at + {}u]);", k * lanes));
            }
        }
        // The mean from sums shifted by the row's first value (no
        // cancellation when |mean| >> std), then the exact sum of squared
        // deviations from it.
        let first = if subgroup { "subgroupBroadcastFirst(v0.x)" } else { "v0.x" };
        line(format!("        let pivot = {first};"));
        let shifted: Vec<String> = (0..v)
            .map(|k| {
                if masked && k == last {
                    format!("select(vec4<f32>(0.0), v{k} - pivot, live)")
                } else {
                    format!("(v{k} - pivot)")
                }
            })
            .collect();
        line(format!("        let shifted = dot({}, vec4<f32>(1.0));", shifted.join(" + ")));
        let total = |e: &str| if subgroup { format!("subgroupAdd({e})") } else { e.to_string() };
        line(format!("        let mean = pivot + {} / f32(p.inner);", total("shifted")));
        let squares: Vec<String> = (0..v)
            .map(|k| {
                if masked && k == last {
                    format!("sq(select(vec4<f32>(0.0), v{k} - mean, live))")
                } else {
                    format!("sq(v{k} - mean)")
                }
            })
            .collect();
        line(format!("        let squares = {};", squares.join(" + ")));
        line(format!("        let stats = finish(mean, {} / f32(p.inner));", total("squares")));
        line("        let out = p.y_off / 4u + r * n4 + lane;".into());
        for k in 0..v {
            let store = format!("y[out + {}u] = S(fma((v{k} - stats.x) * stats.y, w{k}[0], w{k}[1]));", k * lanes);
            if masked && k == last {
                line(format!("        if (live) {{ {store} }}"));
            } else {
                line(format!("        {store}"));
            }
        }
        if subgroup {
            line("        if (lane == 0u) { rows[r] = stats; }".into());
        } else {
            line("        rows[r] = stats;".into());
        }
        line("    }\n}".into());
        s
    }
}

/// The device's subgroup size, where it has subgroups and one size only.
fn fixed_subgroup_size(ctx: &Context) -> Option<usize> {
    let info = ctx.adapter_info();
    let fixed = info.subgroup_min_size == info.subgroup_max_size;
    let usable = (1..=WG as u32).contains(&info.subgroup_max_size);
    (ctx.device().features().contains(wgpu::Features::SUBGROUP) && fixed && usable)
        .then_some(info.subgroup_max_size as usize)
}

const HEADER: &str = "
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> rows: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> x: array<S>;
@group(0) @binding(9) var<storage, read_write> y: array<S>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// Gamma and beta of the row's vec4 j, clamped into the row (a masked lane's
// vec4 past the end loads, but is never used).
fn weights4(j: u32) -> array<vec4<f32>, 2> {
    let at = p.weight_base + 4u * min(j, p.inner / 4u - 1u);
    var g = vec4<f32>(1.0);
    var b = vec4<f32>(0.0);
    if (has(FLAG_AFFINE)) {
        g = vec4<f32>(weight[at], weight[at + 1u], weight[at + 2u], weight[at + 3u]);
    }
    if (has(FLAG_BIAS)) {
        b = vec4<f32>(bias[at], bias[at + 1u], bias[at + 2u], bias[at + 3u]);
    }
    return array<vec4<f32>, 2>(g, b);
}

fn sq(d: vec4<f32>) -> f32 {
    return dot(d, d);
}

// The saved row (centre, rstd, 0, var) from the mean and the biased
// variance, as merge_rows: RMSNorm's centre is 0, its mean square var +
// mean^2.
fn finish(mean: f32, var_biased: f32) -> vec4<f32> {
    if (has(FLAG_RMS)) {
        return vec4<f32>(0.0, 1.0 / sqrt(var_biased + mean * mean + p.eps), 0.0, var_biased);
    }
    return vec4<f32>(mean, 1.0 / sqrt(var_biased + p.eps), 0.0, var_biased);
}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_to_one_lane_a_subgroup_or_the_two_passes() {
        let one = |v| Some(Resident { lanes: 1, vectors: v });
        let eight = |v| Some(Resident { lanes: 8, vectors: v });
        assert_eq!(Resident::for_rows(4, Some(8)), one(1));
        assert_eq!(Resident::for_rows(56, Some(8)), one(14));
        assert_eq!(Resident::for_rows(128, None), one(32));
        // Past one lane's 32 vec4s: a subgroup, the last vec4 of some lanes masked.
        assert_eq!(Resident::for_rows(132, Some(8)), eight(5));
        assert_eq!(Resident::for_rows(512, Some(8)), eight(16));
        assert_eq!(Resident::for_rows(132, None), None);
        assert_eq!(Resident::for_rows(516, Some(8)), None);
        assert_eq!(Resident::for_rows(2048, Some(32)), Some(Resident { lanes: 32, vectors: 16 }));
        // Rows not in whole vec4s.
        assert_eq!(Resident::for_rows(58, Some(8)), None);
        assert_eq!(Resident::for_rows(0, Some(8)), None);
    }

    #[test]
    fn workgroups_cover_the_rows_up_to_the_cap() {
        let one = Resident { lanes: 1, vectors: 14 };
        assert_eq!(one.workgroups(1), 1);
        assert_eq!(one.workgroups(65), 2);
        assert_eq!(one.workgroups(1 << 20), WORKGROUPS as u32);
        let eight = Resident { lanes: 8, vectors: 16 };
        assert_eq!(eight.workgroups(9), 2);
    }
}
