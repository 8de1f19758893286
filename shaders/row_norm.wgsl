// The normalization family's per-row and elementwise kernels: LayerNorm,
// RMSNorm, GroupNorm and InstanceNorm differ only in which values one
// statistic spans (a "stat row": a trailing block for LayerNorm/RMSNorm, an
// (n, group) for GroupNorm, an (n, channel) for InstanceNorm). Their
// reductions are reduce.wgsl's (MODE 0 statistics, MODE 2 row sums, MODE 3
// column sums, or MODE 1 sums per instance: see instance_centres) or
// reduce_vec4.wgsl's; what is left is one invocation per row or per weight, and
// two elementwise passes over the per-weight view [outer][channels][inner],
// where element (o, c, i) uses weight c and stat row
// (o / row_div) * groups + c / cpg.
//
//   rows[r]    = (centre, rstd, delta, var)  y = (x - centre) * rstd * w + b
//     centre is the mean (0 for RMSNorm), var the biased variance, delta the
//     f32 rounding of the mean that backward recovers (0 after forward).
//   rows_dx[r] = (rstd, B, C, centre)        dx = rstd * dy * w + B * (x - centre) + C
// Needs common.wgsl, a prelude (alias V, alias S, fn lanes4, fn from_memory,
// fn to_memory), row_bindings.wgsl and lanes.wgsl in front of it, merge.wgsl,
// walks.wgsl and elementwise_ops.wgsl (appended).

// The uniform, weight, bias, rows, tensors and gradients: row_bindings.wgsl.
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(7) var<storage, read_write> rows_dx: array<vec4<f32>>;
// GroupNorm's and InstanceNorm's backward: one entry per (n, c) instance,
// first its centre, then its sums (see instance_centres).
@group(0) @binding(14) var<storage, read_write> instances: array<vec4<f32>>;

fn gamma(c: u32) -> f32 {
    return select(1.0, weight[p.weight_base + c], has(FLAG_AFFINE));
}

fn beta(c: u32) -> f32 {
    return select(0.0, bias[p.weight_base + c], has(FLAG_BIAS));
}


// Statistics of row r from its MODE 0 partials (row_entry.wgsl).
@compute @workgroup_size(64)
fn merge_rows(g: Grid) {
    for (var r = g.id.x; r < p.rows; r += grid_stride(g)) {
        let acc = merge_partials(r * p.parts, p.parts, true);
        rows[r] = row_entry(acc.y, max(acc.z / acc.x, 0.0));
    }
}

// InstanceNorm's running statistics, one invocation per channel (rows are
// (n, c), `groups` = C): the mean over samples of each instance's mean and
// unbiased variance, as PyTorch.
@compute @workgroup_size(64)
fn update_running(g: Grid) {
    for (var c = g.id.x; c < p.groups; c += grid_stride(g)) {
        let samples = p.rows / p.groups;
        let unbias = p.count / max(p.count - 1.0, 1.0);
        var sum_mean = 0.0;
        var sum_var = 0.0;
        for (var n = 0u; n < samples; n++) {
            let s = rows[n * p.groups + c];
            sum_mean += s.x;
            sum_var += s.w * unbias;
        }
        let f = p.momentum;
        running_mean[c] = (1.0 - f) * running_mean[c] + f * sum_mean / f32(samples);
        running_var[c] = (1.0 - f) * running_var[c] + f * sum_var / f32(samples);
    }
}

// InstanceNorm in eval mode with running statistics: every (n, c) row takes
// channel c's.
@compute @workgroup_size(64)
fn prepare_running(g: Grid) {
    for (var r = g.id.x; r < p.rows; r += grid_stride(g)) {
        let c = p.weight_base + r % p.groups;
        rows[r] = vec4<f32>(running_mean[c], 1.0 / sqrt(running_var[c] + p.eps), 0.0, running_var[c]);
    }
}

// Backward, one invocation per row: from the MODE 2 sums (sum g, sum g * (x -
// centre), sum (x - centre)) with g = dy * w, the dx coefficients. With
// xhat = (x - mean) * rstd and m values per row:
//   LayerNorm/GroupNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:             dx = rstd * (g - xhat * mean(g * xhat))
// Without FLAG_BATCH_STATS the statistics are constants: dx = rstd * g.
@compute @workgroup_size(64)
fn merge_row_grads(g: Grid) {
    for (var r = g.id.x; r < p.rows; r += grid_stride(g)) {
        row_grads(r, merge_partials(r * p.parts, p.parts, false));
    }
}

// Row r's dx coefficients from its sums (sum g, sum g * (x - centre),
// sum (x - centre)).
fn row_grads(r: u32, sums: vec4<f32>) {
    let k = grads_of(rows[r], sums);
    rows[r] = k.stats;
    rows_dx[r] = k.dx;
}

// GroupNorm's and InstanceNorm's backward from one reduction instead of
// two: per (n, c) instance i (stat row i / cpg), A = sum dy, B = sum dy *
// (x - centre) and D = sum (x - centre) over its values (reduce MODE 1 with
// `instances` as the centres). Then row r's sums are the sums over its
// channels of (gamma_c A, gamma_c B, D), and weight c's dbias is the sum over
// samples of A and its dweight of rstd * (B - delta * A): x and dy are read
// twice in all (here and in dx), where row sums and column sums read them
// twice each.
@compute @workgroup_size(64)
fn instance_centres(g: Grid) {
    for (var i = g.id.x; i < p.rows * p.cpg; i += grid_stride(g)) {
        instances[i] = vec4<f32>(rows[i / p.cpg].x, 0.0, 0.0, 0.0);
    }
}

// Row r's dx coefficients from its channels' instances: each instance's
// partials (p.parts of them) merged into its sums, kept in `instances` for
// instance_columns (merged here, by the row's invocation, rather than in a
// dispatch of their own).
@compute @workgroup_size(64)
fn group_row_grads(g: Grid) {
    let channels = p.groups * p.cpg;
    for (var r = g.id.x; r < p.rows; r += grid_stride(g)) {
        var sums = vec4<f32>(0.0);
        for (var k = 0u; k < p.cpg; k++) {
            let i = r * p.cpg + k;
            let s = merge_partials(i * p.parts, p.parts, false);
            instances[i] = s;
            let w = gamma(i % channels);
            sums += vec4<f32>(w * s.x, w * s.y, s.z, 0.0);
        }
        row_grads(r, sums);
    }
}

// dweight and dbias of weight c from its instances, after group_row_grads
// (rows[r] = (centre, rstd, delta, var)).
@compute @workgroup_size(64)
fn instance_columns(g: Grid) {
    let channels = p.groups * p.cpg;
    let samples = p.rows / p.groups;
    for (var c = g.id.x; c < channels; c += grid_stride(g)) {
        var dw = 0.0;
        var db = 0.0;
        for (var n = 0u; n < samples; n++) {
            let i = n * channels + c;
            let s = instances[i];
            let row = rows[i / p.cpg];
            dw += row.y * (s.y - row.z * s.x);
            db += s.x;
        }
        dweight[c] = dw;
        dbias[c] = db;
    }
}

// dweight and dbias of weight c from its MODE 3 partials.
@compute @workgroup_size(64)
fn merge_columns(g: Grid) {
    for (var c = g.id.x; c < p.channels; c += grid_stride(g)) {
        let sums = merge_partials(c * p.parts, p.parts, false);
        dweight[c] = sums.x;
        dbias[c] = sums.y;
    }
}

// The elementwise passes walk the per-weight view with the tilings of
// ReducePlan::elementwise_only (src/reduce.rs): runs over long inner runs
// (each weight channel's values in slices, walked in contiguous spans), or
// interleaved, one column per invocation down its rows. The weight and the
// stat row are looked up per workgroup, per invocation or when the row
// changes, never with divisions per element.
//
// They run on V (prelude): f32, or vec4<f32> where the view is in units of
// four values (src/tiling.rs): four values of one weight, or, with
// FLAG_LANES_ARE_CHANNELS (inner == 1), four weights lane_channel(c, l)
// (walks.wgsl: 4c + l, or cycling through channels-last channels that are
// not a multiple of four, view rows then spanning several tensor rows),
// which may fall in different groups. lanes4 builds a V from four scalars.

// Gamma and beta of view channel c, over the lanes of V. The dx passes
// read only gamma (they bind no bias).
struct Weights {
    g: V,
    b: V,
}

fn gammas_of(c: u32) -> V {
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        let l = lane_channels4(c);
        return lanes4(gamma(l.x), gamma(l.y), gamma(l.z), gamma(l.w));
    }
    return V(gamma(c));
}

fn weights_of(c: u32) -> Weights {
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        let l = lane_channels4(c);
        return Weights(gammas_of(c), lanes4(beta(l.x), beta(l.y), beta(l.z), beta(l.w)));
    }
    return Weights(V(gamma(c)), V(beta(c)));
}

// On lavapipe every division and every load is paid lane by lane per SIMD
// batch, a load behind an `if` whenever a lane of the batch takes it: the
// walks below find stat rows by stepping, and load their entries when the
// row changes (four where lanes span groups).

// Four weights fall in different groups when groups are not multiples of four.
fn lanes_split() -> bool {
    return has(FLAG_LANES_ARE_CHANNELS) && p.cpg % 4u != 0u;
}

// The groups of view channel c's lanes (all equal without a split).
fn lane_groups(c: u32) -> vec4<u32> {
    if (!has(FLAG_LANES_ARE_CHANNELS)) {
        return vec4<u32>(c / p.cpg);
    }
    return lane_channels4(c) / p.cpg;
}

// A view channel's weights and group; with a stat row's entry, the
// coefficients of its values.
struct Chan {
    w: Weights,
    g: u32,
}

struct RowCoef {
    w: Weights,
    // The stat row's entry (rows or rows_dx; Coef: lanes.wgsl).
    s: Coef,
}

// y = (x - centre) * rstd * gamma + beta; s = rows' (centre, rstd, ...).
fn apply_at(e: u32, k: RowCoef) {
    y[p.y_off + e] = to_memory(fma((from_memory(x[p.x_off + e]) - k.s.a) * k.s.b, k.w.g, k.w.b));
}

// dx = rstd * dy * gamma + B * (x - centre) + C; s = rows_dx' (rstd, B, C, centre).
fn dx_at(e: u32, k: RowCoef) {
    dx[p.dx_off + e] = to_memory(k.s.a * from_memory(dy[p.dy_off + e]) * k.w.g + k.s.b * (from_memory(x[p.x_off + e]) - k.s.d) + k.s.c);
}

// What the walks take (elementwise_ops.wgsl and the per-op part below): the
// stat rows each op reads, and its weights (the dx passes bind no bias).
alias apply_Chan = Chan;
alias apply_Coef = RowCoef;
alias dx_Chan = Chan;
alias dx_Coef = RowCoef;

fn apply_stats(r: u32) -> vec4<f32> {
    return rows[r];
}

fn dx_stats(r: u32) -> vec4<f32> {
    return rows_dx[r];
}

fn apply_weights(c: u32) -> Weights {
    return weights_of(c);
}

fn dx_weights(c: u32) -> Weights {
    return Weights(gammas_of(c), V(0.0));
}

// o / row_div, without a division when row_div is 1 (channels-second groups).
fn quotient(o: u32) -> u32 {
    var q = o;
    if (p.row_div != 1u) {
        q = o / p.row_div;
    }
    return q;
}

// The per-op part, appended once per op (src/kernels.rs): from here on OP is
// apply or dx.
// ---- per op ----

fn OP_channel(c: u32) -> Chan {
    return Chan(OP_weights(c), c / p.cpg);
}

// Runs (ReducePlan::elementwise_only, inner >= 256): the stat row is
// reloaded when the walk reaches the next outer index.
fn OP_segment(k: Chan, o: u32) -> RowCoef {
    return RowCoef(k.w, splat(OP_stats(quotient(o) * p.groups + k.g)));
}

// Interleaved walks go by segments of rows that share one stat quotient
// q = row / row_div (a row for LayerNorm, a sample's spatial rows for
// channels-last GroupNorm), loading the stat entries once per segment: one
// load, or four when the lanes span groups. The choice is made outside the
// loops: inside them, the unused branch costs as much as the used one.
@compute @workgroup_size(256)
fn OP_interleaved(ids: Ids) {
    let a = walk_of(ids);
    let cols = p.channels * p.inner;
    let w = OP_weights(a.c);
    let g = lane_groups(a.c);
    var r = a.first;
    var q = r / p.row_div;
    if (lanes_split()) {
        while (r < a.end) {
            let b = q * p.groups;
            let s = spread(OP_stats(b + g.x), OP_stats(b + g.y), OP_stats(b + g.z), OP_stats(b + g.w));
            let stop = min(a.end, (q + 1u) * p.row_div);
            OP_strided(r * cols + a.col, stop - r, cols, RowCoef(w, s));
            r = stop;
            q += 1u;
        }
    } else if (p.row_div == 1u) {
        // A row per statistic (LayerNorm): one load a row, no segments.
        for (; r < a.end; r++) {
            OP_at(r * cols + a.col, RowCoef(w, splat(OP_stats(r * p.groups + g.x))));
        }
    } else {
        while (r < a.end) {
            let s = splat(OP_stats(q * p.groups + g.x));
            let stop = min(a.end, (q + 1u) * p.row_div);
            OP_strided(r * cols + a.col, stop - r, cols, RowCoef(w, s));
            r = stop;
            q += 1u;
        }
    }
}
