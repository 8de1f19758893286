//! wgpu-norm: Batch Normalization and its family as WGSL compute kernels on wgpu.

pub mod batch_norm;
pub mod bench;
pub mod check;
pub mod context;
pub mod error;
pub mod golden;
mod kernels;
pub mod layout;
mod reduce;
pub mod reference;
pub mod tensor;

pub use batch_norm::{BatchNorm, BatchNormConfig, BatchNormState};
pub use context::Context;
pub use error::{Error, Result};
pub use layout::{ChannelView, Layout};
pub use tensor::{Tensor, TensorView};
