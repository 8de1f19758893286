//! CPU reference ("oracle") for every op of the crate, in `f64` on host slices,
//! with PyTorch's semantics.
//!
//! Inputs are `f32` slices (what a caller hands the GPU); every computation and
//! every output is `f64`, so the result is what PyTorch gives when it runs in
//! float64 on the same float32 inputs (the `golden` cases). Variances are
//! two-pass (mean first, then the centered sum of squares), never
//! `E[x²] - E[x]²`.
//!
//! Tensors are flat slices in physical order: a logical shape `(N, C, spatial…)`
//! with [`Layout::Nhwc`] is stored channels-last (see [`ChannelView`]).
//!
//! **Validation:** this module is a test oracle, not a public entry point for
//! untrusted input. A malformed call (a slice of the wrong length, a rank out
//! of range, a group count that does not divide the channels, training with a
//! single value per channel…) fails an `assert!` and panics with a message
//! saying what is wrong; it never returns an error.

use wgpu_norm::{ChannelView, Layout};

mod batch_norm;
mod fold;
mod groups;
mod rows;

pub use batch_norm::*;
pub use fold::*;
pub use groups::*;
pub use rows::*;

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// `v` as `f64`.
fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| f64::from(a)).collect()
}

/// An optional per-channel (or per-element) parameter as `f64`, `default`
/// everywhere when absent. Panics when present with the wrong length.
fn param_or(p: Option<&[f32]>, len: usize, default: f64, what: &str) -> Vec<f64> {
    match p {
        Some(v) => {
            assert_eq!(v.len(), len, "{what} has {} values, expected {len}", v.len());
            to_f64(v)
        }
        None => vec![default; len],
    }
}

/// Asserts that a tensor slice holds exactly `len` values.
fn check_len(v: &[f32], len: usize, what: &str) {
    assert_eq!(v.len(), len, "{what} has {} values, expected {len}", v.len());
}

/// Product of `dims` (1 for none).
fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Mean and biased variance (two-pass) of `vals`; `(0, 0)` when empty.
fn mean_var(vals: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let mut n = 0usize;
    let mut sum = 0.0;
    for v in vals.clone() {
        sum += v;
        n += 1;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / n as f64;
    let sq: f64 = vals.map(|v| (v - mean) * (v - mean)).sum();
    (mean, sq / n as f64)
}

/// Flat indices of every element of channel `c` in `view`, in memory order.
fn channel_indices(view: ChannelView, c: usize) -> impl Iterator<Item = usize> + Clone {
    (0..view.outer).flat_map(move |o| {
        let base = (o * view.channels + c) * view.inner;
        base..base + view.inner
    })
}

/// Backward of a normalization `xhat = (x - mean) * rstd` over one set of
/// `idx` (whose statistics came from those same values), given the gradient
/// `gx` with respect to `xhat` (already multiplied by gamma). Writes `dx`.
fn normalized_backward(idx: impl Iterator<Item = usize> + Clone, xhat: &[f64], gx: &[f64], rstd: f64, dx: &mut [f64]) {
    let (mut n, mut sum_g, mut sum_gx) = (0usize, 0.0, 0.0);
    for i in idx.clone() {
        n += 1;
        sum_g += gx[i];
        sum_gx += gx[i] * xhat[i];
    }
    if n == 0 {
        return;
    }
    let m = n as f64;
    for i in idx {
        dx[i] = rstd / m * (m * gx[i] - sum_g - xhat[i] * sum_gx);
    }
}
