// What the elementwise shaders (elementwise.wgsl, row_norm.wgsl) share over
// their value type V (prelude: f32, or vec4<f32> whose lanes are four values
// of one channel or, with FLAG_LANES_ARE_CHANNELS, four channels; lanes4
// builds a V from four scalars).

// A per-channel or per-row vec4 entry over the lanes of V: the same entry in
// every lane (splat), or lane l's from entry k_l (spread).
struct Coef {
    a: V,
    b: V,
    c: V,
    d: V,
}

fn splat(k: vec4<f32>) -> Coef {
    return Coef(V(k.x), V(k.y), V(k.z), V(k.w));
}

fn spread(k0: vec4<f32>, k1: vec4<f32>, k2: vec4<f32>, k3: vec4<f32>) -> Coef {
    return Coef(lanes4(k0.x, k1.x, k2.x, k3.x), lanes4(k0.y, k1.y, k2.y, k3.y), lanes4(k0.z, k1.z, k2.z, k3.z), lanes4(k0.w, k1.w, k2.w, k3.w));
}
