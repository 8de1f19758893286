//! wgpu-norm: Batch Normalization and its family as WGSL compute kernels on
//! wgpu, for applications that bring their own device, queue and buffers.
//!
//! - [`BatchNorm`]: PyTorch's `BatchNorm1d/2d/3d` (training and eval forward,
//!   running statistics, backward), fused BN+ReLU and BN+Add+ReLU, folding
//!   into the preceding layer ([`fold`]), `state_dict` interop.
//! - [`LayerNorm`], [`RmsNorm`], [`GroupNorm`], [`InstanceNorm`]: the family,
//!   on the same reduction kernels.
//! - [`SyncBatchNorm`]: BatchNorm over a batch split across devices
//!   ([`LocalExchange`]) or MPI processes (`MpiExchange`, feature `mpi`).
//!
//! The f64 reference of every op and the reader of PyTorch's reference cases
//! are the package `wgpu-norm-reference`; the `wgpu-norm` command (`info`,
//! `check`, `bench`) is the package `wgpu-norm-cli`.
//!
//! Ops validate their arguments, then record into the caller's
//! `wgpu::CommandEncoder`; nothing comes back to the host unless asked.
//!
//! ```no_run
//! use wgpu_norm::{BatchNorm, BatchNormConfig, Context, Epilogue, Layout, Mode, Tensor};
//!
//! let ctx = Context::new()?; // or Context::from_device(device, queue)
//! let bn = BatchNorm::new(&ctx, BatchNormConfig::new(64))?;
//! let x = Tensor::from_slice(&ctx, &vec![0.5; 8 * 64 * 16], &[8, 64, 16], Layout::Nchw)?;
//! let y = Tensor::zeros(&ctx, &[8, 64, 16], Layout::Nchw)?;
//! ctx.run(|encoder| bn.forward(encoder, &x.view(), &y.view(), Mode::Training, Epilogue::None))?;
//! let normalized = y.read(&ctx)?;
//! # Ok::<(), wgpu_norm::Error>(())
//! ```

#![deny(missing_docs)]

#[macro_use]
mod setters;

pub mod affine;
pub mod batch_norm;
mod buffer_alive;
pub mod context;
mod cut;
pub mod error;
pub mod exchange;
#[macro_use]
mod family;
pub mod fold;
mod geometry;
pub mod group_norm;
mod kernels;
pub mod layer_norm;
pub mod layout;
#[cfg(feature = "mpi")]
mod mpi_exchange;
pub mod partial_stats;
mod plan_support;
mod plans;
mod recording;
mod reduce;
mod reducer;
mod resident;
mod row_teams;
mod scratch;
mod stat_plan;
mod state;
mod strategy;
pub mod sync_batch_norm;
pub mod tensor;
mod tiling;
mod validate;

pub use affine::Affine;
pub use batch_norm::{BatchNorm, BatchNormConfig, BatchNormState, Epilogue, Mode};
pub use context::Context;
pub use error::{Error, Result};
pub use exchange::{Exchange, LocalExchange};
pub use fold::{fold_host, LayerKind};
pub use group_norm::{GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, InstanceNormState};
pub use kernels::recorded_dispatches;
pub use layer_norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
pub use layout::{ChannelView, Layout};
#[cfg(feature = "mpi")]
pub use mpi_exchange::MpiExchange;
pub use partial_stats::{GradSums, PartialStats};
pub use plans::plans_made;
pub use strategy::{Access, Reduction};
pub use sync_batch_norm::SyncBatchNorm;
pub use tensor::{DType, Tensor, TensorView};
