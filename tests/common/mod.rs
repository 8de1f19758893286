//! Shared by the GPU test binaries: one context per binary (many devices
//! created in parallel on lavapipe are a known source of hangs) and the one
//! tolerance rule every comparison uses.
#![allow(dead_code)]

pub mod family;

use std::sync::OnceLock;

use wgpu_norm::Context;

/// The test binary's context. Panics (failing the test, never skipping it)
/// when no adapter exists: `.ci/run` installs lavapipe first.
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| Context::new().expect("no wgpu adapter: install mesa-vulkan-drivers (lavapipe)"))
}

pub use wgpu_norm_reference::normalized_error;

/// The accesses the test context's device can run: both where it has
/// 64-bit integers (lavapipe has), else floats only.
pub fn accesses() -> &'static [wgpu_norm::Access] {
    if ctx().device().features().contains(wgpu::Features::SHADER_INT64) {
        &[wgpu_norm::Access::Floats, wgpu_norm::Access::Words64]
    } else {
        &[wgpu_norm::Access::Floats]
    }
}

/// The f32 GPU result against the f64 reference: the crate's one tolerance,
/// the same `check` uses by default.
pub const TOLERANCE: f64 = wgpu_norm_reference::DEFAULT_TOLERANCE;

/// Asserts `got` is within [`TOLERANCE`] of `want`, naming `what` on failure.
pub fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let err = normalized_error(got, want);
    assert!(err <= TOLERANCE, "{what}: normalized error {err:.3e} > {TOLERANCE:.0e}");
}

/// A small deterministic generator (SplitMix64) so failing seeds reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Approximately standard normal values scaled by `scale` around `offset`.
    pub fn normal_vec(&mut self, n: usize, offset: f32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let s: f64 = (0..4).map(|_| self.uniform()).sum::<f64>() - 2.0;
                offset + scale * (s * 1.732) as f32
            })
            .collect()
    }
}
