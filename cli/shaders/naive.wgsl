// The baseline of `wgpu-norm bench` (cli/src/bench/naive.rs): BatchNorm
// written the obvious way, one kernel per step: a per-channel mean (one
// invocation per channel looping over its values), a per-channel variance
// (same, two-pass), an elementwise normalize, per-channel backward sums, an
// elementwise dx; for the fused forwards, a separate elementwise relu (or
// add-and-relu) pass over y.
//
// A tensor is seen as [outer][channels][inner].

struct BenchParams {
    outer: u32,
    channels: u32,
    inner: u32,
    total: u32,
    // Values per channel (outer * inner), as f32.
    count: f32,
    eps: f32,
    // naive_bwd_dx: 0 = batch statistics (training), 1 = running statistics (eval).
    mode: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> bp: BenchParams;
@group(0) @binding(1) var<storage, read> bx: array<f32>;
// dy; the residual z in naive_add_relu.
@group(0) @binding(2) var<storage, read> bdy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bout: array<f32>;
// Per channel: (mean, biased variance, gamma, beta).
@group(0) @binding(4) var<storage, read_write> bchan: array<vec4<f32>>;
// Per channel: (sum dy, sum dy * xhat).
@group(0) @binding(5) var<storage, read_write> bgrad: array<vec2<f32>>;
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid.x;
}

fn at(o: u32, c: u32, i: u32) -> u32 {
    return (o * bp.channels + c) * bp.inner + i;
}

@compute @workgroup_size(64)
fn naive_mean(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= bp.channels {
        return;
    }
    var sum = 0.0;
    for (var o = 0u; o < bp.outer; o++) {
        for (var i = 0u; i < bp.inner; i++) {
            sum += bx[at(o, c, i)];
        }
    }
    bchan[c].x = sum / bp.count;
}

@compute @workgroup_size(64)
fn naive_var(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= bp.channels {
        return;
    }
    let mean = bchan[c].x;
    var sum = 0.0;
    for (var o = 0u; o < bp.outer; o++) {
        for (var i = 0u; i < bp.inner; i++) {
            let d = bx[at(o, c, i)] - mean;
            sum += d * d;
        }
    }
    bchan[c].y = sum / bp.count;
}

@compute @workgroup_size(256)
fn naive_normalize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = flat_index(wid, nwg, lid);
    if idx >= bp.total {
        return;
    }
    let s = bchan[(idx / bp.inner) % bp.channels];
    bout[idx] = (bx[idx] - s.x) / sqrt(s.y + bp.eps) * s.z + s.w;
}

@compute @workgroup_size(64)
fn naive_bwd_sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= bp.channels {
        return;
    }
    let s = bchan[c];
    let invstd = 1.0 / sqrt(s.y + bp.eps);
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    for (var o = 0u; o < bp.outer; o++) {
        for (var i = 0u; i < bp.inner; i++) {
            let k = at(o, c, i);
            sum_dy += bdy[k];
            sum_dy_xhat += bdy[k] * (bx[k] - s.x) * invstd;
        }
    }
    bgrad[c] = vec2<f32>(sum_dy, sum_dy_xhat);
}

@compute @workgroup_size(256)
fn naive_bwd_dx(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = flat_index(wid, nwg, lid);
    if idx >= bp.total {
        return;
    }
    let c = (idx / bp.inner) % bp.channels;
    let s = bchan[c];
    let invstd = 1.0 / sqrt(s.y + bp.eps);
    if bp.mode == 1u {
        bout[idx] = s.z * invstd * bdy[idx];
        return;
    }
    let g = bgrad[c];
    let xhat = (bx[idx] - s.x) * invstd;
    let m = bp.count;
    bout[idx] = s.z * invstd / m * (m * bdy[idx] - g.x - xhat * g.y);
}

// y = relu(y), in place after naive_normalize.
@compute @workgroup_size(256)
fn naive_relu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = flat_index(wid, nwg, lid);
    if idx >= bp.total {
        return;
    }
    bout[idx] = max(bout[idx], 0.0);
}

// y = relu(y + z), in place after naive_normalize; z is bound as bdy.
@compute @workgroup_size(256)
fn naive_add_relu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = flat_index(wid, nwg, lid);
    if idx >= bp.total {
        return;
    }
    bout[idx] = max(bout[idx] + bdy[idx], 0.0);
}
