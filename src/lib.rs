//! wgpu-norm: Batch Normalization and its family as WGSL compute kernels on wgpu.

pub mod batch_norm;
pub mod bench;
pub mod check;
pub mod context;
pub mod error;
mod family;
pub mod fold;
pub mod golden;
pub mod group_norm;
mod kernels;
pub mod layer_norm;
pub mod layout;
mod reduce;
pub mod reference;
mod state;
pub mod tensor;
mod tiling;
mod validate;

pub use batch_norm::{BatchNorm, BatchNormConfig, BatchNormState};
pub use context::Context;
pub use error::{Error, Result};
pub use fold::{fold_host, LayerKind};
pub use group_norm::{GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, InstanceNormState};
pub use layer_norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
pub use layout::{ChannelView, Layout};
pub use reference::Fused;
pub use tensor::{Tensor, TensorView};
