// BatchNorm's elementwise passes, tiled so that channel lookups are per
// workgroup (runs) or per invocation (interleaved), never per element:
// y = (x - mean) * scale + beta with the fused activation, and
// dx = A * g + B * (x - mean) + C. Compiled twice, with a prelude that makes
// V f32 or vec4<f32> (four values per load and store where alignment allows),
// and S, the type in memory: V, vec4<f16> for half-precision tensors, or two
// 64-bit words holding a vec4 of f32 (CPU adapters: src/kernels.rs), read
// and written through from_memory and to_memory.
//
// The view in Params is in units of V. When V is vec4 over a channels-last
// tensor (inner == 1, FLAG_LANES_ARE_CHANNELS), a V holds four channels, view
// column c's lane l channel lane_channel(c, l) (walks.wgsl); otherwise a V
// lies inside one channel.
//
// MODE: 0 none, 1 relu(bn(x)), 2 relu(bn(x) + z).
// Needs common.wgsl, a prelude (alias V, alias S, fn lanes4, fn
// from_memory, fn to_memory) and lanes.wgsl in front of it, and walks.wgsl,
// running.wgsl and elementwise_ops.wgsl (appended).

override MODE: u32 = 0u;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
// Per channel (mean, invstd, scale, beta).
@group(0) @binding(7) var<storage, read> chan: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> x: array<S>;
@group(0) @binding(9) var<storage, read_write> y: array<S>;
@group(0) @binding(10) var<storage, read> dy: array<S>;
@group(0) @binding(11) var<storage, read_write> dx: array<S>;
// Per channel dx coefficients (A, B, mean, C).
@group(0) @binding(12) var<storage, read> grad: array<vec4<f32>>;
// MODE 2: the residual input and its gradient; other modes bind stand-ins.
@group(0) @binding(15) var<storage, read> z: array<S>;
@group(0) @binding(16) var<storage, read_write> dz: array<S>;

// View channel c's entries (Coef: lanes.wgsl).
fn chan_coef(c: u32) -> Coef {
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        let l = p.chan_base + lane_channels4(c);
        return spread(chan[l.x], chan[l.y], chan[l.z], chan[l.w]);
    }
    return splat(chan[p.chan_base + c]);
}

fn grad_coef(c: u32) -> Coef {
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        let l = p.chan_base + lane_channels4(c);
        return spread(grad[l.x], grad[l.y], grad[l.z], grad[l.w]);
    }
    return splat(grad[p.chan_base + c]);
}

fn residual(e: u32) -> V {
    if (MODE == 2u) {
        return from_memory(z[p.z_off + e]);
    }
    return V(0.0);
}

// The pre-activation, as fused_pre in common.wgsl computes it per value.
fn pre_activation(v: V, k: Coef, e: u32) -> V {
    return fma(v - k.a, k.c, k.d) + residual(e);
}

fn apply_at(e: u32, k: Coef) {
    let pre = pre_activation(from_memory(x[p.x_off + e]), k, e);
    if (MODE == 0u) {
        y[p.y_off + e] = to_memory(pre);
    } else {
        // ReLU that keeps NaN, as torch.relu does. The zero comes from the
        // uniform: against a literal zero, lavapipe's compiled store of the
        // 64-bit words ran much slower.
        y[p.y_off + e] = to_memory(select(pre, V(p.relu_zero), pre <= V(0.0)));
    }
}

// dx's coefficients: the channel's (for the fused activation's mask) and
// its gradient's.
struct DxCoef {
    k: Coef,
    g: Coef,
}

fn dx_at(e: u32, c: DxCoef) {
    let v = from_memory(x[p.x_off + e]);
    var g = from_memory(dy[p.dy_off + e]);
    if (MODE != 0u) {
        g = select(V(0.0), g, pre_activation(v, c.k, e) > V(0.0));
        if (MODE == 2u) {
            dz[p.dz_off + e] = to_memory(g);
        }
    }
    dx[p.dx_off + e] = to_memory(c.g.a * g + c.g.b * (v - c.g.c) + c.g.d);
}

// What the shared walks (elementwise_ops.wgsl) take: a channel's
// coefficients serve all its values.
alias apply_Chan = Coef;
alias apply_Coef = Coef;
alias dx_Chan = DxCoef;
alias dx_Coef = DxCoef;

fn apply_channel(c: u32) -> Coef {
    return chan_coef(c);
}

// The eval forward on GPUs: apply with each channel's entries computed from
// the running statistics (running.wgsl) instead of read from `chan`; only
// its entry points bind these.
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read> running_var: array<f32>;

alias eval_Chan = Coef;
alias eval_Coef = Coef;

fn eval_channel(c: u32) -> Coef {
    if (has(FLAG_LANES_ARE_CHANNELS)) {
        let l = p.chan_base + lane_channels4(c);
        return spread(running_entry(l.x), running_entry(l.y), running_entry(l.z), running_entry(l.w));
    }
    return splat(running_entry(p.chan_base + c));
}

fn eval_at(e: u32, k: Coef) {
    apply_at(e, k);
}

fn dx_channel(c: u32) -> DxCoef {
    return DxCoef(chan_coef(c), grad_coef(c));
}

// The per-op part, appended once per op (src/kernels.rs): from here on OP is
// apply, eval or dx.
// ---- per op ----

fn OP_segment(k: OP_Chan, o: u32) -> OP_Coef {
    return k;
}

// Interleaved: an invocation owns one column and walks its rows, as
// reduce_interleaved.
@compute @workgroup_size(256)
fn OP_interleaved(ids: Ids) {
    let a = walk_of(ids);
    let cols = p.channels * p.inner;
    OP_strided(a.first * cols + a.col, a.end - a.first, cols, OP_channel(a.c));
}
