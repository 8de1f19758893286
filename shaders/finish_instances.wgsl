// finish.wgsl's commit after GroupNorm's and InstanceNorm's backward sums
// per (n, c) instance (reduce MODE 1; row_norm.wgsl's instance_centres
// explains them), and what group_row_grads and instance_columns do after
// them, so that the dx pass follows the reduction directly:
// - each instance's centre comes from its stat row in `chan` (the saved
//   rows), so no instance_centres runs first;
// - the last workgroup of a block keeps its instances' sums;
// - the last of those over a sweep (the blocks that take the same channels
//   of every view: a column block's channels in every sample; otherwise,
//   planar and rows, every block) turns the sweep's
//   stat rows' sums into their dx coefficients (`entries_out`), then sums
//   its channels' dweight and dbias over the samples.
// The Params are the stat rows' (groups, cpg, a row's count, flags) over
// the instances' view; src/family/grads.rs keeps column blocks to whole
// groups and puts the sweeps' counts after the blocks' in `arrivals`.
const WELFORD: bool = false;

@group(0) @binding(15) var<storage, read_write> instance_sums: array<vec4<f32>>;

var<workgroup> last_of_sweep: u32;

// Channels of one view: lanes' channels-last channels, or the view's.
fn view_channels() -> u32 {
    return select(p.channels, p.lane_channels, has(FLAG_LANES_ARE_CHANNELS));
}

// Channel c of view z as an instance: n * C + c of the tensor.
fn instance_of(z: u32, c: u32) -> u32 {
    return p.chan_base + z * view_channels() + c;
}

// Instance i's centre is its stat row's (i / cpg).
fn channel_entry(i: u32) -> vec4<f32> {
    return vec4<f32>(chan[i / p.cpg].x, 0.0, 0.0, 0.0);
}

fn units(b: Block) -> vec3<u32> {
    return vec3<u32>(instance_of(b.view, b.first), b.step, instance_of(b.view, b.end));
}

fn unit_parts() -> u32 {
    return p.parts;
}

fn commit_merged(i: u32, sums: vec4<f32>) {
    instance_sums[i] = sums;
}

fn after_merge(b: Block, t: u32) {
    var sweep = b.across;
    var members = b.views;
    var lo = b.first;
    var hi = b.end;
    if (!b.recurs) {
        sweep = 0u;
        members = b.per_view * b.views;
        lo = 0u;
        hi = view_channels();
    }
    storageBarrier();
    if (t == 0u) {
        let slot = b.per_view * b.views + sweep;
        let last = atomicAdd(&arrivals[slot], 1u) + 1u == members;
        if (last) {
            atomicStore(&arrivals[slot], 0u);
        }
        last_of_sweep = select(0u, 1u, last);
    }
    if (workgroupUniformLoad(&last_of_sweep) == 0u) {
        return;
    }
    storageBarrier();
    sweep_rows(b.views, lo, hi, t);
    storageBarrier();
    sweep_columns(b.views, lo, hi, t);
}

fn instance_gamma(i: u32) -> f32 {
    return select(1.0, weight[p.weight_base + i % (p.groups * p.cpg)], has(FLAG_AFFINE));
}

// The stat rows of channels [lo, hi) in every view, as group_row_grads:
// each row's sums over its channels (dy weighted by gamma), its dx
// coefficients, and in place of each of its instances' sums that
// instance's share of dbias (A) and dweight (rstd * (B - delta * A)).
fn sweep_rows(views: u32, lo: u32, hi: u32, t: u32) {
    let per_view = (hi - lo + p.cpg - 1u) / p.cpg;
    for (var k = t; k < per_view * views; k += WG) {
        let z = k / per_view;
        let r = instance_of(z, lo) / p.cpg + k - z * per_view;
        var sums = vec4<f32>(0.0);
        for (var j = 0u; j < p.cpg; j++) {
            let s = instance_sums[r * p.cpg + j];
            let w = instance_gamma(r * p.cpg + j);
            sums += vec4<f32>(w * s.x, w * s.y, s.z, 0.0);
        }
        let g = grads_of(chan[r], sums);
        entries_out[r] = g.dx;
        for (var j = 0u; j < p.cpg; j++) {
            let s = instance_sums[r * p.cpg + j];
            instance_sums[r * p.cpg + j] = vec4<f32>(s.x, g.stats.y * (s.y - g.stats.z * s.x), 0.0, 0.0);
        }
    }
}

// dweight and dbias of channels [lo, hi) of a view (of C weights), as
// instance_columns: their instances' shares summed over the views and, in
// a view of several samples (planar), over those.
fn sweep_columns(views: u32, lo: u32, hi: u32, t: u32) {
    let channels = p.groups * p.cpg;
    for (var c = lo + t; c < min(hi, lo + channels); c += WG) {
        var dw = 0.0;
        var db = 0.0;
        for (var z = 0u; z < views; z++) {
            for (var i = instance_of(z, c); i < instance_of(z, hi); i += channels) {
                let s = instance_sums[i];
                db += s.x;
                dw += s.y;
            }
        }
        dweight[c % channels] = dw;
        dbias[c % channels] = db;
    }
}
