// Parameters shared by every per-channel kernel; mirrored by `ChannelParams`
// in src/kernels.rs (same field order, 64 bytes). A tensor is seen as
// [outer][channels][inner]: element (o, c, i) sits at (o * channels + c) * inner + i.
struct Params {
    outer: u32,
    channels: u32,
    inner: u32,
    // Reductions: number of partial slices per channel / column.
    slices: u32,
    // Reductions: elements (planar) or rows (interleaved) per slice.
    slice_len: u32,
    // Interleaved reduction: columns per workgroup.
    width: u32,
    // Partials per channel the merge kernels combine.
    parts: u32,
    flags: u32,
    // Element offsets of each view inside its bound buffer.
    x_off: u32,
    y_off: u32,
    dy_off: u32,
    dx_off: u32,
    eps: f32,
    // Momentum factor for running statistics; negative = cumulative average.
    momentum: f32,
    // Values per channel (outer * inner), as f32.
    count: f32,
    // Interleaved reduction: first stride of the tree over row groups.
    tree: u32,
    // Element offsets of the residual input z and its gradient dz (fused add).
    z_off: u32,
    dz_off: u32,
    pad0: u32,
    pad1: u32,
}

const FLAG_AFFINE: u32 = 1u;
const FLAG_UPDATE_RUNNING: u32 = 2u;
const FLAG_BATCH_STATS: u32 = 4u;
const FLAG_LAYER_BIAS: u32 = 8u;
const FLAG_CHECK_FINITE: u32 = 16u;

// The value a fused ReLU sees: (x - mean) * scale + beta (+ z). Forward and
// backward both call this, so the backward's mask (pre > 0) is bit-for-bit
// the forward's and needs no stored mask or output.
fn fused_pre(v: f32, k: vec4<f32>, residual: f32) -> f32 {
    return fma(v - k.x, k.z, k.w) + residual;
}
