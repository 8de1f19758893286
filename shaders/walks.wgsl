// Runs (Shape::Runs in src/reduce.rs): a channel's outer * inner values,
// in (o, i) order, cut into `slices` slices of `slice_len`; workgroup
// (x, c) takes slices x, x + nwg.x, ... of channel c. In a slice, each group
// of eight invocations (one SIMD batch on lavapipe, which runs batches one
// after another and streams best when each reads consecutive memory) walks
// its own contiguous span of `width` values (a multiple of eight), lane l of
// the group values l, l + 8, ...
// Appended to the elementwise and reduction shaders; needs their
// `p: Params` uniform, and inner >= 8.

// Invocation t's place in a slice: value j of the channel, at (o, i), and
// the end of its span.
struct Run {
    j: u32,
    end: u32,
    o: u32,
    i: u32,
}

fn run_start(s: u32, t: u32) -> Run {
    let slice_start = s * p.slice_len;
    let first = slice_start + (t / 8u) * p.width;
    let end = min(min(first + p.width, slice_start + p.slice_len), p.outer * p.inner);
    let j = first + t % 8u;
    let o = j / p.inner;
    return Run(j, end, o, j - o * p.inner);
}

// The next value of the span: inner >= 8, so i wraps at most once.
fn run_next(r: Run) -> Run {
    var n = r;
    n.j += 8u;
    n.i += 8u;
    if (n.i >= p.inner) {
        n.i -= p.inner;
        n.o += 1u;
    }
    return n;
}

// Walking by segments (the values of one outer index), so that the inner
// loop has no wrap test: the end of run r's current segment, and the run
// moved past it.
fn segment_stop(r: Run) -> u32 {
    return min(r.end, r.j - r.i + p.inner);
}

// The run's values before `stop`, eight apart.
fn segment_values(r: Run, stop: u32) -> u32 {
    return (stop - r.j + 7u) / 8u;
}

fn next_segment(r: Run, stop: u32) -> Run {
    let steps = 8u * segment_values(r, stop);
    var n = r;
    n.j += steps;
    n.i += steps;
    if (n.i >= p.inner) {
        n.i -= p.inner;
        n.o += 1u;
    }
    return n;
}

// Interleaved workgroups (of 256 invocations): where invocation t sits, row
// group `g` of `groups` = 256 / width and column `col` of the view, `width`
// columns per workgroup; `owned` when both exist.
struct Column {
    groups: u32,
    g: u32,
    col: u32,
    owned: bool,
}

fn column_of(wg: vec3<u32>, t: u32) -> Column {
    let groups = 256u / p.width;
    let g = t / p.width;
    let col = wg.x * p.width + (t - g * p.width);
    return Column(groups, g, col, g < groups && col < p.channels * p.inner);
}

// Where invocation t walks an interleaved view in the elementwise passes:
// column `col` (channel c = col / inner), rows [first, end) (group_rows);
// no rows where it owns no column.
struct Walk {
    col: u32,
    c: u32,
    first: u32,
    end: u32,
}

fn walk_of(ids: Ids) -> Walk {
    let at = column_of(ids.wg, ids.t);
    let rows = group_rows(ids.wg.y, at.g, at.groups);
    return Walk(at.col, at.col / p.inner, rows.x, select(rows.x, max(rows.x, rows.y), at.owned));
}

// Rows plans: `width` lanes per channel, 256 / width channels per
// workgroup, workgroup (x, y) block y * num_workgroups.x + x; invocation t's
// channel.
fn rows_channel(wg: vec3<u32>, nwg: vec3<u32>, t: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * (256u / p.width) + t / p.width;
}

// Interleaved walks: row group g of `groups` in workgroup row slice s takes
// a contiguous range of the slice's rows, [x, y): a SIMD batch then streams
// down neighbouring rows, where rows g, g + groups, ... jumped `groups`
// rows at every step (PERF_NOTES.md).
fn group_rows(s: u32, g: u32, groups: u32) -> vec2<u32> {
    let per = (p.slice_len + groups - 1u) / groups;
    let first = s * p.slice_len + g * per;
    return vec2<u32>(first, min(min(first + per, (s + 1u) * p.slice_len), p.outer));
}

// The channels of view column c's four lanes, and which of its channel's
// streams each is (0 when the channels are a multiple of four).
fn lane_channel(c: u32, l: u32) -> u32 {
    return (4u * c + l) % p.lane_channels;
}

fn lane_channels4(c: u32) -> vec4<u32> {
    return vec4<u32>(lane_channel(c, 0u), lane_channel(c, 1u), lane_channel(c, 2u), lane_channel(c, 3u));
}

fn lane_stream(c: u32, l: u32) -> u32 {
    return (4u * c + l) / p.lane_channels;
}
