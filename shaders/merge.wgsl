// How a channel's (or row's) run of partials merges: in one invocation's
// loop, in blocks, because per-invocation reductions (CPU adapters) leave
// thousands of partials per channel and one long chain of merges would
// round at each; or by a team of invocations (GPUs).
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

// Partials [first, first + count) merged by a team of `width` invocations
// (t's team: a power of two dividing the workgroup, team_sum), every lane
// getting the result; all of the workgroup's invocations call it, in
// uniform control flow. Statistics (count, mean, M2, _): the team sums the
// counts and count-weighted means, then each partial's M2 and its spread
// about the mean (the law of total variance). Empty partials add nothing.
fn team_merge_stats(t: u32, width: u32, first: u32, count: u32) -> vec4<f32> {
    var mass = vec4<f32>(0.0);
    for (var k = t % width; k < count; k += width) {
        let q = partials[first + k];
        if (q.x > 0.0) {
            mass += vec4<f32>(q.x, q.x * q.y, 0.0, 0.0);
        }
    }
    mass = team_sum(t, width, mass);
    let mean = select(0.0, mass.y / mass.x, mass.x > 0.0);
    var m2 = 0.0;
    for (var k = t % width; k < count; k += width) {
        let q = partials[first + k];
        if (q.x > 0.0) {
            let d = q.y - mean;
            m2 += q.z + q.x * d * d;
        }
    }
    return vec4<f32>(mass.x, mean, team_sum(t, width, vec4<f32>(m2)).x, 0.0);
}

// Sums, by a team as team_merge_stats.
fn team_merge_sums(t: u32, width: u32, first: u32, count: u32) -> vec4<f32> {
    var sums = vec4<f32>(0.0);
    for (var k = t % width; k < count; k += width) {
        sums += partials[first + k];
    }
    return team_sum(t, width, sums);
}
