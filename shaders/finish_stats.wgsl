// finish.wgsl's commit after statistics, as merge_stats with
// FLAG_RUNNING_IN_MERGE (the only form that runs here: no batch to reject,
// no counter to read): channel c's entry and, with FLAG_UPDATE_RUNNING, its
// running statistics.
const WELFORD: bool = true;

fn commit_merged(c: u32, m: vec4<f32>) {
    let s = m.xyz;
    entries_out[c] = batch_entry(c, s);
    if (has(FLAG_UPDATE_RUNNING)) {
        commit_running_alone(c, s);
    }
}
