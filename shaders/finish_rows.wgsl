// finish.wgsl's commit after the family's statistics, as row_norm.wgsl's
// merge_rows: the saved entry of each stat row the block holds. With lanes
// of channels-last channels (GroupNorm's and InstanceNorm's channels-last
// groups) row g of view z holds channels [g * cpg, (g + 1) * cpg) of the
// view, its partials one run of cpg * parts; otherwise the view's channels
// are its rows.
const WELFORD: bool = true;

fn units(b: Block) -> vec3<u32> {
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        let first_row = b.view * p.groups;
        return vec3<u32>(first_row + b.first / p.cpg, 1u, first_row + (b.end + p.cpg - 1u) / p.cpg);
    }
    let first_row = b.view * p.channels;
    return vec3<u32>(first_row + b.first, b.step, first_row + b.end);
}

fn unit_parts() -> u32 {
    return select(p.parts, p.parts * p.cpg, has(FLAG_LANES_ARE_CHANNELS));
}

fn commit_merged(r: u32, acc: vec4<f32>) {
    entries_out[r] = row_entry(acc.y, max(acc.z / acc.x, 0.0));
}
