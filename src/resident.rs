//! LayerNorm's and RMSNorm's forward and backward in one pass, for rows
//! short enough to stay in registers (on GPUs, the forward, and the
//! backward of rows of 512 values or more). The forward reads
//! each row once, takes its exact statistics over the registers and writes
//! y from them: two accesses per value, where statistics-then-apply take
//! three plus a stat load per value. The backward reads x and dy once,
//! writes dx, and sums each lane's columns of dweight and dbias over its
//! rows into one partial per lane, which a small merge adds up: three
//! accesses per value where the row sums, column sums and dx passes took
//! seven.
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
//! The forward writes the same saved rows as the two passes' `merge_rows`
//! (row_norm.wgsl), `(centre, rstd, 0, var)`, and the backward takes
//! either's.

use crate::strategy::Reduction;

/// Longest row (in vec4s) one invocation holds: 128 values. Rows of 96
/// and 128 values ran at 0.70 and 0.77 of the copy ceiling this way against
/// 0.52 and 0.60 with a subgroup per row (lavapipe, 16 MiB); 256 values
/// fell to 0.65 (a subgroup: 0.95).
pub(crate) const MAX_ONE_LANE: usize = 32;

/// Most vec4s one lane holds when a subgroup shares a row (eight lanes on
/// lavapipe: rows of up to 512 values).
pub(crate) const MAX_PER_LANE: usize = 16;

/// On GPUs, the shortest rows whose backward takes one pass: on an H200
/// the one pass won at rows of 512 values (8192x512: 0.109 ms against
/// 0.121) and lost at 256 and shorter (2048x256: 0.071 against 0.051).
const GPU_BACKWARD_ROWS: usize = 512;

/// Invocations per workgroup.
const WG: usize = 64;

/// Workgroups of a dispatch, at most: each walks rows grid-stride (the best
/// of 32 to 256 on lavapipe, and better than one row per subgroup).
const WORKGROUPS: usize = 128;

/// The backward with one invocation per row writes a column partial per
/// invocation of the row's whole width: fewer, longer walks run faster on
/// lavapipe. A subgroup per row showed no trend between 16 and 128.
const ONE_LANE_BACKWARD_WORKGROUPS: usize = 16;

/// How a row spreads over invocations: `lanes` invocations (1, or the
/// subgroup size) each holding `vectors` vec4s of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Resident {
    pub lanes: u32,
    pub vectors: u32,
}

impl Resident {
    /// The plan of `pass` for rows of `row_len` values whose views start
    /// at the element offsets `offsets`, or `None` where the two passes
    /// run: views not in whole vec4s, rows too long to hold, and on GPUs
    /// (`Reduction::Tree`) backwards of rows under [`GPU_BACKWARD_ROWS`]
    /// values. `device` gives the subgroup size.
    pub fn choose(
        reduction: Reduction,
        device: (&wgpu::AdapterInfo, wgpu::Features),
        row_len: usize,
        offsets: &[u32],
        pass: Pass,
    ) -> Option<Resident> {
        let gpu_backward = reduction == Reduction::Tree && pass != Pass::Forward;
        if offsets.iter().any(|o| o % 4 != 0) || (gpu_backward && row_len < GPU_BACKWARD_ROWS) {
            return None;
        }
        Self::for_rows(row_len, fixed_subgroup_size(device.0, device.1))
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

    /// Workgroups for `rows` rows of `pass` under `reduction`.
    pub fn workgroups(&self, rows: usize, pass: Pass, reduction: Reduction) -> u32 {
        let rows_per_workgroup = WG / self.lanes as usize;
        let most = match (pass, reduction) {
            // GPUs: a workgroup for each group of rows, to fill the device.
            (Pass::Forward, Reduction::Tree) => 65535,
            (Pass::Backward, _) if self.lanes == 1 => ONE_LANE_BACKWARD_WORKGROUPS,
            _ => WORKGROUPS,
        };
        rows.div_ceil(rows_per_workgroup).clamp(1, most) as u32
    }

    /// Column partial slots of the backward over `rows` rows: one per
    /// invocation, or per subgroup (each lane its own columns).
    pub fn slots(&self, rows: usize) -> u32 {
        // The backward's workgroups are the same under both reductions.
        self.workgroups(rows, Pass::Backward, Reduction::PerInvocation) * (WG as u32 / self.lanes)
    }

    /// The WGSL of the three kernels (the [`Pass`]es' entry points),
    /// after common.wgsl and the prelude (`S`, the vec4 type in memory).
    pub fn source(&self) -> String {
        let mut g = Gen { s: String::from(HEADER), v: self.vectors as usize, lanes: self.lanes as usize };
        g.open(Pass::Forward.entry(), Pass::Forward);
        g.forward();
        g.line("}\n");
        g.open(Pass::Backward.entry(), Pass::Backward);
        g.backward();
        g.line("}\n");
        g.line(MERGE);
        g.s
    }
}

/// The kernels of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pass {
    /// y and the saved rows from x.
    Forward,
    /// dx and column partials of dweight and dbias from x, dy and the saved
    /// rows (whose delta it fills in, as merge_row_grads).
    Backward,
    /// dweight and dbias from the backward's column partials.
    MergeColumns,
}

impl Pass {
    pub fn entry(self) -> &'static str {
        match self {
            Pass::Forward => "forward_resident",
            Pass::Backward => "backward_resident",
            Pass::MergeColumns => "merge_columns_resident",
        }
    }
}

/// Writes a kernel out: lane l's vec4 k is vec4 l + k * lanes of the row,
/// each a named value; with a subgroup, the last may fall past the row's
/// end in some lanes (`live`), and reads as zero there.
struct Gen {
    s: String,
    v: usize,
    lanes: usize,
}

impl Gen {
    fn line(&mut self, text: &str) {
        self.s.push_str(text);
        self.s.push('\n');
    }

    fn subgroup(&self) -> bool {
        self.lanes > 1
    }

    fn masked(&self, k: usize) -> bool {
        self.subgroup() && k == self.v - 1
    }

    /// `expr` (with `#` for k) summed over the lane's vec4s, the last one
    /// `zero` (of expr's type) where it is not live.
    fn sum(&self, expr: &str, zero: &str) -> String {
        let terms: Vec<String> = (0..self.v)
            .map(|k| {
                let e = expr.replace('#', &k.to_string());
                if self.masked(k) {
                    format!("select({zero}, {e}, live)")
                } else {
                    format!("({e})")
                }
            })
            .collect();
        terms.join(" + ")
    }

    /// `e` summed over the row: over the subgroup, or the lane's own.
    fn total(&self, e: &str) -> String {
        if self.subgroup() {
            format!("subgroupAdd({e})")
        } else {
            format!("({e})")
        }
    }

    /// `let {name}k = array[base + offset]` for every k, as f32.
    fn load(&mut self, name: &str, array: &str, base: &str) {
        for k in 0..self.v {
            let at = format!("{array}[{base} + {}u]", k * self.lanes);
            if self.masked(k) {
                self.line(&format!("        var {name}{k} = vec4<f32>(0.0);"));
                self.line(&format!("        if (live) {{ {name}{k} = from_memory({at}); }}"));
            } else {
                self.line(&format!("        let {name}{k} = from_memory({at});"));
            }
        }
    }

    /// `array[base + offset] = to_memory(expr)` for every k (`#` for k).
    fn store(&mut self, array: &str, base: &str, expr: &str) {
        for k in 0..self.v {
            let store =
                format!("{array}[{base} + {}u] = to_memory({});", k * self.lanes, expr.replace('#', &k.to_string()));
            if self.masked(k) {
                self.line(&format!("        if (live) {{ {store} }}"));
            } else {
                self.line(&format!("        {store}"));
            }
        }
    }

    /// The entry point's signature and the lane's weights.
    fn open(&mut self, entry: &str, pass: Pass) {
        let ids = if self.subgroup() {
            "@builtin(subgroup_id) sid: u32,\n    @builtin(num_subgroups) nsub: u32,\n    \
             @builtin(subgroup_invocation_id) lane: u32,"
        } else {
            "@builtin(local_invocation_index) t: u32,"
        };
        self.line(&format!(
            "@compute @workgroup_size({WG})\nfn {entry}(\n    @builtin(workgroup_id) wg: vec3<u32>,\n    \
             @builtin(num_workgroups) nwg: vec3<u32>,\n    {ids}\n) {{"
        ));
        if !self.subgroup() {
            self.line("    let lane = 0u;");
        }
        self.line("    let n4 = p.inner / 4u;");
        // The backward needs gamma only.
        let weights = if pass == Pass::Forward { "weights4" } else { "gamma4" };
        for k in 0..self.v {
            self.line(&format!("    let w{k} = {weights}(lane + {}u);", k * self.lanes));
        }
        if self.subgroup() {
            self.line(&format!("    let live = lane + {}u < n4;", (self.v - 1) * self.lanes));
        }
    }

    /// The head of the grid-stride loop over rows (`r`, its first vec4 `at`).
    fn rows_loop(&mut self) {
        if self.subgroup() {
            self.line("    for (var r = wg.x * nsub + sid; r < p.rows; r += nwg.x * nsub) {");
        } else {
            self.line(&format!("    for (var r = wg.x * {WG}u + t; r < p.rows; r += nwg.x * {WG}u) {{"));
        }
        self.line("        let at = r * n4 + lane;");
    }

    /// The row's statistics, exact over the registers: the mean from sums
    /// shifted by the row's first value (no cancellation when |mean| >>
    /// std), then the sum of squared deviations from it; y from them.
    fn forward(&mut self) {
        self.rows_loop();
        self.load("v", "x", "p.x_off / 4u + at");
        let first = if self.subgroup() { "subgroupBroadcastFirst(v0.x)" } else { "v0.x" };
        self.line(&format!("        let pivot = {first};"));
        let shifted = format!("dot({}, vec4<f32>(1.0))", self.sum("v# - pivot", "vec4<f32>(0.0)"));
        self.line(&format!("        let mean = pivot + {} / f32(p.inner);", self.total(&shifted)));
        let squares = self.sum("sq(v# - mean)", "0.0");
        self.line(&format!("        let stats = row_entry(mean, {} / f32(p.inner));", self.total(&squares)));
        self.store("y", "p.y_off / 4u + at", "fma((v# - stats.x) * stats.y, w#[0], w#[1])");
        self.line(if self.subgroup() {
            "        if (lane == 0u) { rows[r] = stats; }"
        } else {
            "        rows[r] = stats;"
        });
        self.line("    }");
    }

    /// dx from the row's sums (sum g, sum g d, sum d) with g = dy * gamma and
    /// d = x - centre, as merge_row_grads and row_norm.wgsl's dx pass; each
    /// lane sums dy * xhat and dy over its columns through all its rows,
    /// then writes them to its slot of the column partials.
    fn backward(&mut self) {
        for k in 0..self.v {
            self.line(&format!("    var dw{k} = vec4<f32>(0.0);"));
            self.line(&format!("    var db{k} = vec4<f32>(0.0);"));
        }
        self.rows_loop();
        self.line("        let st = rows[r];");
        self.load("v", "x", "p.x_off / 4u + at");
        self.load("e", "dy", "p.dy_off / 4u + at");
        for k in 0..self.v {
            self.line(&format!("        let g{k} = e{k} * w{k};"));
            self.line(&format!("        let d{k} = v{k} - st.x;"));
        }
        let sums = format!(
            "vec4<f32>(dot({}, vec4<f32>(1.0)), {}, dot({}, vec4<f32>(1.0)), 0.0)",
            self.sum("g#", "vec4<f32>(0.0)"),
            self.sum("dot(g#, d#)", "0.0"),
            self.sum("d#", "vec4<f32>(0.0)"),
        );
        self.line(&format!("        let k = dx_coefficients({}, st.y);", self.total(&sums)));
        self.store("dx", "p.dx_off / 4u + at", "fma(vec4<f32>(st.y), g#, fma(vec4<f32>(k.x), d#, vec4<f32>(k.y)))");
        for k in 0..self.v {
            self.line(&format!("        dw{k} += e{k} * (d{k} - k.z) * st.y;"));
            self.line(&format!("        db{k} += e{k};"));
        }
        let save = "rows[r] = vec4<f32>(st.x, st.y, k.z, st.w);";
        self.line(&if self.subgroup() {
            format!("        if (lane == 0u) {{ {save} }}")
        } else {
            format!("        {save}")
        });
        self.line("    }");
        // Slot-major (each slot's columns contiguous): written column-major,
        // a lane's writes fell on a page each, and took half the kernel's
        // time.
        let slot = if self.subgroup() { "wg.x * nsub + sid" } else { &format!("wg.x * {WG}u + t") };
        self.line(&format!("    let first = (p.part_base + {slot}) * p.inner + 4u * lane;"));
        for k in 0..self.v {
            for (c, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                let write =
                    format!("partials[first + {}u] = vec2<f32>(dw{k}.{comp}, db{k}.{comp});", 4 * k * self.lanes + c);
                if self.masked(k) {
                    self.line(&format!("    if (live) {{ {write} }}"));
                } else {
                    self.line(&format!("    {write}"));
                }
            }
        }
    }
}

/// The device's subgroup size, where it has subgroups and one size only.
fn fixed_subgroup_size(info: &wgpu::AdapterInfo, features: wgpu::Features) -> Option<usize> {
    let fixed = info.subgroup_min_size == info.subgroup_max_size;
    let usable = (1..=WG as u32).contains(&info.subgroup_max_size);
    (features.contains(wgpu::Features::SUBGROUP) && fixed && usable).then_some(info.subgroup_max_size as usize)
}

/// dweight and dbias of weight c from the backward's `parts` slots (p.channels
/// columns), in two levels of sums as merge.wgsl's merge_partials.
const MERGE: &str = "
@compute @workgroup_size(64)
fn merge_columns_resident(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        let block = max(u32(sqrt(f32(p.parts))), 1u);
        var total = vec2<f32>(0.0);
        var part = vec2<f32>(0.0);
        var filled = 0u;
        // One loop (lavapipe ends any loop after 65,535 iterations).
        for (var s = 0u; s < p.parts; s++) {
            part += partials[s * p.channels + c];
            filled += 1u;
            if (filled == block) {
                total += part;
                part = vec2<f32>(0.0);
                filled = 0u;
            }
        }
        total += part;
        dweight[p.weight_base + c] = total.x;
        dbias[p.weight_base + c] = total.y;
    }
}
";

const HEADER: &str = concat!(
    include_str!("../shaders/row_bindings.wgsl"),
    include_str!("../shaders/row_entry.wgsl"),
    "
// The backward's column partials: (dweight, dbias) of column c from slot
// s at s * columns + c.
@group(0) @binding(1) var<storage, read_write> partials: array<vec2<f32>>;

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

fn gamma4(j: u32) -> vec4<f32> {
    return weights4(j)[0];
}

fn sq(d: vec4<f32>) -> f32 {
    return dot(d, d);
}


// (B, C, delta) of dx = rstd * g + B * d + C from the row's sums (sum g,
// sum g d, sum d), d = x - centre and delta the f32 rounding of the mean,
// as merge_row_grads:
//   LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
fn dx_coefficients(sums: vec4<f32>, rstd: f32) -> vec3<f32> {
    let inv_m = 1.0 / f32(p.inner);
    if (has(FLAG_RMS)) {
        return vec3<f32>(-rstd * rstd * rstd * sums.y * inv_m, 0.0, 0.0);
    }
    let delta = sums.z * inv_m;
    let b = -rstd * rstd * rstd * (sums.y - delta * sums.x) * inv_m;
    return vec3<f32>(b, -rstd * sums.x * inv_m - b * delta, delta);
}
"
);

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
        let (cpu, gpu) = (Reduction::PerInvocation, Reduction::Tree);
        let one = Resident { lanes: 1, vectors: 14 };
        assert_eq!(one.workgroups(1, Pass::Forward, cpu), 1);
        assert_eq!(one.workgroups(65, Pass::Forward, cpu), 2);
        assert_eq!(one.workgroups(1 << 20, Pass::Forward, cpu), WORKGROUPS as u32);
        assert_eq!(one.workgroups(1 << 20, Pass::Forward, gpu), 1 << 14);
        assert_eq!(one.workgroups(1 << 24, Pass::Forward, gpu), 65535);
        assert_eq!(one.workgroups(1 << 12, Pass::Forward, gpu), 64);
        for reduction in [cpu, gpu] {
            assert_eq!(one.workgroups(1 << 20, Pass::Backward, reduction), ONE_LANE_BACKWARD_WORKGROUPS as u32);
        }
        assert_eq!(one.slots(1 << 20), 64 * ONE_LANE_BACKWARD_WORKGROUPS as u32);
        let eight = Resident { lanes: 8, vectors: 16 };
        assert_eq!(eight.workgroups(9, Pass::Forward, cpu), 2);
        assert_eq!(eight.slots(1 << 20), 8 * WORKGROUPS as u32);
    }
}
