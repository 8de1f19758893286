// Channel c's running statistics after its batch's (count, mean, M2), where
// the pass that merges the channel commits them itself
// (FLAG_RUNNING_IN_MERGE: a momentum, no batch to reject, no counter to
// read): each channel writes its own, channel 0 bumps the counter. For the
// modules that bind the running statistics and the counter read-write
// (batch_norm.wgsl, finish.wgsl); needs running.wgsl.
fn commit_running_alone(c: u32, s: vec3<f32>) {
    let updated = next_running(vec2<f32>(running_mean[c], running_var[c]), s, p.momentum);
    running_mean[c] = updated.x;
    running_var[c] = updated.y;
    if (c == 0u) {
        bump_counter();
    }
}
