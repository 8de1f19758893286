// The merge kernels' one loop: a channel's (or row's) run of partials, in
// blocks, because per-invocation reductions (CPU adapters) leave thousands of
// partials per channel and one long chain of merges would round at each.
// Needs common.wgsl, and a `partials: array<vec4<f32>>` binding in its module.

fn merge_two(a: vec4<f32>, b: vec4<f32>, welford: bool) -> vec4<f32> {
    if (welford) {
        return chan_merge(a, b);
    }
    return a + b;
}

// Partials [first, first + count): Chan's formula over (count, mean, M2, _)
// when `welford`, else sums. Two levels of sequential merges (blocks of
// about sqrt(count) partials, then the blocks), so rounding grows with
// 2 sqrt(count) steps instead of count.
fn merge_partials(first: u32, count: u32, welford: bool) -> vec4<f32> {
    return merge_strided(first, count, 1u, welford);
}

// The same over partials first, first + stride, ... (count of them).
fn merge_strided(first: u32, count: u32, stride: u32, welford: bool) -> vec4<f32> {
    let block = max(u32(sqrt(f32(count))), 1u);
    var total = vec4<f32>(0.0);
    var part = vec4<f32>(0.0);
    var filled = 0u;
    // One loop over at most MAX_MERGE_PARTS (src/reduce.rs): lavapipe ends
    // any loop after 65,535 iterations, silently.
    for (var k = 0u; k < count; k++) {
        part = merge_two(part, partials[first + k * stride], welford);
        filled += 1u;
        if (filled == block) {
            total = merge_two(total, part, welford);
            part = vec4<f32>(0.0);
            filled = 0u;
        }
    }
    return merge_two(total, part, welford);
}
