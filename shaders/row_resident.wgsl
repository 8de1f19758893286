// The family's forward in one pass, for stat rows short enough to stay in
// registers: each row is read once, reduced, normalized and written, two
// accesses per value where the statistics-then-apply passes of
// row_norm.wgsl take three. Used for contiguous stat rows (LayerNorm and
// RMSNorm rows, channels-second GroupNorm and InstanceNorm groups) of at
// most 256 * K vec4s, every view aligned to four values.
//
// A workgroup takes 256 / MODE rows at a time, each row MODE lanes; lane l
// holds vec4s l, l + MODE, ... (K of them, the prelude's constant), so
// neighbouring lanes read neighbouring memory. The statistics are exact
// two-pass ones over the registers: the mean from sums shifted by the row's
// first value, then the sum of squared deviations from that mean.
//
// Writes rows[r] = (mean, rstd, 0, var) as merge_rows does (RMSNorm: (0,
// rstd, 0, var)), so the backward and InstanceNorm's running update read the
// same statistics whichever forward ran.
// Needs common.wgsl and a prelude (alias S, the vec4 type in memory; const
// K) in front of it.

// Lanes per row: a power of two from 1 to 256.
override MODE: u32 = 256u;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> rows: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> x: array<S>;
@group(0) @binding(9) var<storage, read_write> y: array<S>;

var<workgroup> lane_sums: array<f32, WG>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// The sum of `v` over the MODE lanes of each row, returned to every lane of
// it. Every invocation of the workgroup must call it (barriers).
fn row_sum(t: u32, v: f32) -> f32 {
    lane_sums[t] = v;
    workgroupBarrier();
    let lane = t % MODE;
    for (var stride = MODE / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            lane_sums[t] += lane_sums[t + stride];
        }
        workgroupBarrier();
    }
    let total = lane_sums[t - lane];
    // The next call overwrites lane_sums: every lane reads its total first.
    workgroupBarrier();
    return total;
}

// Gamma and beta of the four values from element `i` of stat row `r`
// (weight (r % groups) * cpg + i / wdiv, as reduce.wgsl's gamma_at). Four
// values share one weight when wdiv (a channel's values) is a multiple of four.
fn affine_of(r: u32, i: u32) -> array<vec4<f32>, 2> {
    let base = p.weight_base + (r % p.groups) * p.cpg;
    var g = vec4<f32>(1.0);
    var b = vec4<f32>(0.0);
    if (p.wdiv % 4u == 0u) {
        let at = base + i / p.wdiv;
        if (has(FLAG_AFFINE)) {
            g = vec4<f32>(weight[at]);
        }
        if (has(FLAG_BIAS)) {
            b = vec4<f32>(bias[at]);
        }
        return array<vec4<f32>, 2>(g, b);
    }
    var at = vec4<u32>(base + i, base + i + 1u, base + i + 2u, base + i + 3u);
    if (p.wdiv != 1u) {
        at = base + (vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u)) / p.wdiv;
    }
    if (has(FLAG_AFFINE)) {
        g = vec4<f32>(weight[at.x], weight[at.y], weight[at.z], weight[at.w]);
    }
    if (has(FLAG_BIAS)) {
        b = vec4<f32>(bias[at.x], bias[at.y], bias[at.z], bias[at.w]);
    }
    return array<vec4<f32>, 2>(g, b);
}

@compute @workgroup_size(256)
fn forward_resident(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let per_group = WG / MODE;
    let lane = t % MODE;
    let n4 = p.inner / 4u;
    let n = f32(p.inner);
    let groups = nwg.x * nwg.y;
    // One group of weights (LayerNorm, RMSNorm): a lane's columns are the
    // same in every row it takes, so their weights load once.
    let fixed = p.groups == 1u;
    var fixed_affine: array<array<vec4<f32>, 2>, K>;
    if (fixed) {
        for (var k = 0u; k < K; k++) {
            let j = lane + k * MODE;
            if (j < n4) {
                fixed_affine[k] = affine_of(0u, 4u * j);
            }
        }
    }
    // Grid-stride over blocks of rows; the bound is uniform, so every
    // invocation reaches every barrier.
    for (var block = wg.y * nwg.x + wg.x; block * per_group < p.rows; block += groups) {
        let r = block * per_group + t / MODE;
        let live = r < p.rows;
        let first = p.x_off / 4u + r * n4;
        var v: array<vec4<f32>, K>;
        var pivot = 0.0;
        if (live) {
            pivot = f32(x[first].x);
        }
        var shifted = vec4<f32>(0.0);
        for (var k = 0u; k < K; k++) {
            let j = lane + k * MODE;
            if (live && j < n4) {
                v[k] = vec4<f32>(x[first + j]);
                shifted += v[k] - pivot;
            }
        }
        let mean = pivot + row_sum(t, shifted.x + shifted.y + shifted.z + shifted.w) / n;
        var squares = vec4<f32>(0.0);
        for (var k = 0u; k < K; k++) {
            if (live && lane + k * MODE < n4) {
                let d = v[k] - mean;
                squares += d * d;
            }
        }
        let var_biased = row_sum(t, squares.x + squares.y + squares.z + squares.w) / n;
        var centre = mean;
        var rstd = 1.0 / sqrt(var_biased + p.eps);
        if (has(FLAG_RMS)) {
            centre = 0.0;
            rstd = 1.0 / sqrt(var_biased + mean * mean + p.eps);
        }
        if (live && lane == 0u) {
            rows[r] = vec4<f32>(centre, rstd, 0.0, var_biased);
        }
        let out = p.y_off / 4u + r * n4;
        for (var k = 0u; k < K; k++) {
            let j = lane + k * MODE;
            if (live && j < n4) {
                var a = fixed_affine[k];
                if (!fixed) {
                    a = affine_of(r, 4u * j);
                }
                y[out + j] = S((v[k] - centre) * rstd * a[0] + a[1]);
            }
        }
    }
}
