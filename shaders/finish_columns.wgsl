// finish.wgsl's commit after the family's column sums (reduce MODE 3), as
// row_norm.wgsl's merge_columns: dweight and dbias of weight c.
const WELFORD: bool = false;

fn commit_merged(c: u32, sums: vec4<f32>) {
    dweight[c] = sums.x;
    dbias[c] = sums.y;
}
