// finish.wgsl's commit after the backward's sums, as merge_grads: dweight,
// dbias and the dx coefficients of channel c from its entry in `chan`.
const WELFORD: bool = false;

fn commit_merged(c: u32, sums: vec4<f32>) {
    let e = grad_entry(chan[c], sums);
    dweight[c] = e.dweight;
    dbias[c] = sums.x;
    entries_out[c] = e.coef;
}
