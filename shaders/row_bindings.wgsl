// The bindings the family's kernels share (row_norm.wgsl and LayerNorm's and
// RMSNorm's one-pass kernels, src/resident.rs).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// Per stat row (centre, rstd, delta, var): see row_norm.wgsl.
@group(0) @binding(6) var<storage, read_write> rows: array<vec4<f32>>;
// Tensors in memory as S (prelude): f32, or f16 for half precision; the
// arithmetic is f32 either way.
@group(0) @binding(8) var<storage, read> x: array<S>;
@group(0) @binding(9) var<storage, read_write> y: array<S>;
@group(0) @binding(10) var<storage, read> dy: array<S>;
@group(0) @binding(11) var<storage, read_write> dx: array<S>;
@group(0) @binding(12) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(13) var<storage, read_write> dbias: array<f32>;
