//! BatchNorm's elementwise passes over channels-last rows of 256 bytes and
//! more on CPU adapters: each group of eight invocations (one SIMD batch on lavapipe) is
//! a team that walks whole rows, lane l taking view columns l, l + 8, ...,
//! with their channel coefficients held in named registers for the walk.
//!
//! The interleaved walk gives each invocation one column and a run of rows:
//! a batch then reads 128 bytes of a row and jumps a row ahead. On rows of
//! 2 KiB (8192x512) from memory that was twice as slow as the team walk,
//! which streams every row whole (lavapipe, with 128 MB touched between
//! runs as the bench's interleaved rounds do: 6.3 against 4.0 ms; from
//! cache the two are close). The per-lane count of columns is fixed per
//! kernel, so the WGSL is generated for each: an array would live in
//! per-lane memory (PERF_NOTES.md, fourth session).

use std::fmt::Write;

use crate::layout::ChannelView;

/// Invocations per team: lavapipe's SIMD batch.
pub(crate) const TEAM: usize = 8;
/// Teams per 256-invocation workgroup.
pub(crate) const TEAMS_PER_WORKGROUP: usize = 256 / TEAM;
/// Rows a team walks, at least: the interleaved walks' CPU_WALK_BYTES.
const WALK_BYTES: usize = 32768;
/// Rows narrower than this keep the interleaved walk. Rows of 256 bytes
/// (32x64x56x56 channels-last) still gain: eval forward 6.73 -> 5.88 ms,
/// the step 25.9 -> 25.1 (3 paired rounds); narrower rows were not measured.
const MIN_ROW_BYTES: usize = 256;
/// Columns one lane holds, at most: 512 channels in f32.
pub(crate) const MAX_PER_LANE: usize = 16;

/// Columns per lane for a channels-last vec4 view (`view.channels` vec4
/// columns of `value_bytes` each), or `None` where the team walk does not
/// apply.
pub(crate) fn per_lane(view: ChannelView, value_bytes: usize) -> Option<usize> {
    let cols = view.channels;
    let fits = view.inner == 1 && cols.is_multiple_of(TEAM) && cols / TEAM <= MAX_PER_LANE;
    (fits && cols > 0 && cols * value_bytes >= MIN_ROW_BYTES).then_some(cols / TEAM)
}

/// Rows per team and workgroups for `rows` rows of `row_bytes`: at least
/// WALK_BYTES a team, and more where the teams would outnumber one
/// dispatch's workgroups.
pub(crate) fn grid(rows: usize, row_bytes: usize) -> (usize, u32) {
    let most_teams = TEAMS_PER_WORKGROUP * 65535;
    let per_team = WALK_BYTES.div_ceil(row_bytes.max(1)).max(rows.div_ceil(most_teams)).max(1);
    let workgroups = rows.div_ceil(per_team * TEAMS_PER_WORKGROUP).max(1);
    (per_team, workgroups as u32)
}

/// The entry points `apply_rows` and `dx_rows` for `per_lane` columns a
/// lane, appended to elementwise.wgsl (vec4 values, lanes as channels).
/// Params: `outer` rows of `channels` vec4 columns, `slice_len` rows a team.
pub(crate) fn source(per_lane: usize) -> String {
    let mut s = String::new();
    let team_rows =
        "    let team = wg.x * 32u + t / 8u;\n    let l = t % 8u;\n    let first = team * p.slice_len;\n    \
                     let end = min(first + p.slice_len, p.outer);\n";
    s.push_str(
        "\n// Generated (src/row_teams.rs): team t / 8 of workgroup wg.x walks rows\n\
         // [first, end), lane l columns l + 8j with their coefficients held.\n\
         @compute @workgroup_size(256)\n\
         fn apply_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {\n",
    );
    s.push_str(team_rows);
    for j in 0..per_lane {
        let _ = writeln!(s, "    let k{j} = chan_coef(l + {}u);", TEAM * j);
    }
    s.push_str("    for (var r = first; r < end; r++) {\n        let e = r * p.channels + l;\n");
    for j in 0..per_lane {
        let _ = writeln!(s, "        apply_at(e + {}u, k{j});", TEAM * j);
    }
    s.push_str(
        "    }\n}\n\n@compute @workgroup_size(256)\n\
                fn dx_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {\n",
    );
    s.push_str(team_rows);
    for j in 0..per_lane {
        let _ = writeln!(s, "    let k{j} = chan_coef(l + {0}u);\n    let g{j} = grad_coef(l + {0}u);", TEAM * j);
    }
    s.push_str("    for (var r = first; r < end; r++) {\n        let e = r * p.channels + l;\n");
    for j in 0..per_lane {
        let _ = writeln!(s, "        dx_at(e + {}u, k{j}, g{j});", TEAM * j);
    }
    s.push_str("    }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(outer: usize, cols: usize) -> ChannelView {
        ChannelView { outer, channels: cols, inner: 1 }
    }

    #[test]
    fn wide_channels_last_rows_take_teams() {
        // 8192x512 in f32: 128 vec4 columns, 16 a lane.
        assert_eq!(per_lane(rows(8192, 128), 16), Some(16));
        // 256 channels in f32 (1 KiB rows), 8 a lane; 64 channels in f32
        // (256 bytes), 2 a lane; in f16 too narrow.
        assert_eq!(per_lane(rows(100, 64), 16), Some(8));
        assert_eq!(per_lane(rows(100, 16), 16), Some(2));
        assert_eq!(per_lane(rows(100, 16), 8), None);
        // Rows of 128 bytes, columns not a multiple of eight, or too many.
        assert_eq!(per_lane(rows(100, 8), 16), None);
        assert_eq!(per_lane(rows(100, 132), 16), None);
        assert_eq!(per_lane(rows(100, 136), 16), None);
        // Not channels-last.
        assert_eq!(per_lane(ChannelView { outer: 4, channels: 128, inner: 2 }, 16), None);
    }

    #[test]
    fn teams_cover_every_row() {
        for (r, bytes) in [(8192, 2048), (1, 2048), (100_000, 1024), (33, 4096), (1 << 31, 1024)] {
            let (per_team, workgroups) = grid(r, bytes);
            assert!(per_team * TEAMS_PER_WORKGROUP * workgroups as usize >= r, "{r} rows");
            assert!(per_team * bytes >= WALK_BYTES && workgroups <= 65535, "{r} rows");
        }
        assert_eq!(grid(8192, 2048), (16, 16));
    }

    #[test]
    fn generated_kernels_hold_each_column() {
        let s = source(3);
        for needle in ["let k2 = chan_coef(l + 16u);", "apply_at(e + 16u, k2);", "dx_at(e + 8u, k1, g1);"] {
            assert!(s.contains(needle), "{needle} missing");
        }
        assert!(!s.contains("k3"));
    }
}
