// finish.wgsl's commit after the eval backward's sums, taken about the
// running mean: dweight and dbias (as merge_grads_eval), and what the dx
// pass reads, which prepare_eval and merge_grads wrote before: the dx
// coefficients into `entries_out`, the running statistics' entry into
// `eval_out`. The reduction takes each channel's entry from the running
// statistics (channel_entry), so no prepare_eval runs before it.
const WELFORD: bool = false;

@group(0) @binding(15) var<storage, read_write> eval_out: array<vec4<f32>>;

fn channel_entry(c: u32) -> vec4<f32> {
    return running_entry(c);
}

fn commit_merged(c: u32, sums: vec4<f32>) {
    let k = running_entry(c);
    let e = grad_entry(k, sums);
    dweight[c] = e.dweight;
    dbias[c] = sums.x;
    entries_out[c] = e.coef;
    eval_out[c] = k;
}
