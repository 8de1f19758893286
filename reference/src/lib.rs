//! The f64 CPU reference of every op of [`wgpu_norm`], with PyTorch's
//! semantics, and PyTorch's reference cases (read, computed, run on the
//! GPU): the oracle of the library's tests and of the `wgpu-norm` command
//! (`check`, `bench --verify`), kept out of the library so that its users
//! do not compile it.
//!
//! - [`reference`]: every op on host slices, in f64.
//! - [`golden`]: reference cases, one safetensors file per call.
//! - [`compare`]: the one error measure and tolerance GPU results meet.
//! - [`check`]: a case run through the GPU ops and compared (`wgpu-norm check`).

pub mod check;
pub mod compare;
pub mod golden;
pub mod reference;

pub use compare::{normalized_error, DEFAULT_TOLERANCE};
pub use reference::Fused;
