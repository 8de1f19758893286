// A reduction whose last workgroup merges (src/batch_norm/finishing.rs
// says when): every workgroup of a block (those whose partials cover the
// same channels: reduce_entries.wgsl's Block) stores its partials, then
// counts itself in; the one that counts last merges the block's channels
// (or stat rows) and commits each with `commit_merged`, one file a kind:
// finish_stats.wgsl (what merge_stats does), finish_grads.wgsl
// (merge_grads), finish_grads_eval.wgsl (prepare_eval and merge_grads),
// finish_columns.wgsl (merge_columns), finish_rows.wgsl (merge_rows),
// finish_instances.wgsl (the family's sums per instance, whose commit goes
// on in `after_merge`; the others' does nothing). The pass that consumes
// the entries follows with no merge dispatch between.
//
// The pattern of CUB's single-pass reductions and AMD's single-pass
// downsampler. The partials are @coherent, and storageBarrier is a
// device-scope barrier where this runs (naga writes OpControlBarrier with
// Device memory scope for Vulkan, DeviceMemoryBarrierWithGroupSync for
// DX12): the barrier before the count orders the workgroup's partials
// before it, the last workgroup's barrier after its count orders its reads
// after everyone's. No workgroup waits for another, so nothing needs
// forward progress. The last workgroup sets its block's count back to
// zero, so the next dispatch finds zeros.
// Appended to the reduce shaders, with running.wgsl and merge.wgsl.

@group(0) @binding(7) var<storage, read_write> arrivals: array<atomic<u32>>;
// The merged entries: chan's (mean, invstd, scale, beta) after statistics,
// grad's (A, B, mean, C) after the backward's sums, the family's stat rows.
@group(0) @binding(8) var<storage, read_write> entries_out: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> bias: array<f32>;
@group(0) @binding(10) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(11) var<storage, read_write> running_var: array<f32>;
// num_batches_tracked as batch_norm.wgsl's.
@group(0) @binding(12) var<storage, read_write> counter: array<u32, 4>;
@group(0) @binding(13) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(14) var<storage, read_write> dbias: array<f32>;

var<workgroup> last_arrival: u32;

fn finish_reduction(b: Block, t: u32) {
    storageBarrier();
    if (t == 0u) {
        let last = atomicAdd(&arrivals[b.index], 1u) + 1u == b.members;
        if (last) {
            atomicStore(&arrivals[b.index], 0u);
        }
        last_arrival = select(0u, 1u, last);
    }
    if (workgroupUniformLoad(&last_arrival) == 0u) {
        return;
    }
    storageBarrier();
    merge_block(b, t);
    after_merge(b, t);
}

// The block's units (channels, or the family's stat rows: `units` and
// `unit_parts` say which, and how many partials each has), spread over the
// workgroup: `lanes` invocations a unit (a power of two), each merging
// every lanes-th partial of its unit in a chain, then the unit's lanes
// merging theirs in a tree.
fn merge_block(b: Block, t: u32) {
    let u = units(b);
    let n = (max(u.z, u.x) - u.x + u.y - 1u) / u.y;
    let parts = unit_parts();
    var lanes = 1u;
    while (lanes * 2u * n <= WG) {
        lanes *= 2u;
    }
    let lane = t % lanes;
    for (var round = 0u; round < n; round += WG / lanes) {
        let k = round + t / lanes;
        let unit = u.x + min(k, n - 1u) * u.y;
        let count = (max(parts, lane) - lane + lanes - 1u) / lanes;
        var merged = merge_strided(unit * parts + lane, count, lanes, WELFORD);
        if (lanes > 1u) {
            team_sums[t] = merged;
            workgroupBarrier();
            for (var s = lanes / 2u; s > 0u; s >>= 1u) {
                if (lane < s) {
                    team_sums[t] = merge_two(team_sums[t], team_sums[t + s], WELFORD);
                }
                workgroupBarrier();
            }
            merged = team_sums[t];
            workgroupBarrier();
        }
        if (lane == 0u && k < n) {
            commit_merged(unit, merged);
        }
    }
}
