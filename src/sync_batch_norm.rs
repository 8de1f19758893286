//! SyncBatchNorm: BatchNorm over a batch split across devices or processes,
//! normalizing with the statistics of the whole (global) batch, as PyTorch's
//! `torch.nn.SyncBatchNorm`.
//!
//! A training step splits where the statistics are complete:
//! 1. each rank reduces its slice to per-channel [`PartialStats`]
//!    ([`BatchNorm::partial_stats`]);
//! 2. the ranks exchange them ([`Exchange::all_gather`]) and every rank
//!    merges all of them in rank order, so all hold the same global statistics;
//! 3. each rank normalizes its slice with them and updates its running
//!    statistics from them ([`BatchNorm::forward_with_stats`]), identically
//!    on every rank.
//!
//! The backward does the same with [`GradSums`] and an all-reduce. The
//! exchanged values are `3 * channels` f64 per rank forward and
//! `1 + 3 * channels` backward, through the host.

use crate::batch_norm::{BatchNorm, Epilogue, Mode, Source, Stats};
use crate::context::block_on;
use crate::context::Context;
use crate::exchange::Exchange;
use crate::layout::ChannelView;
use crate::partial_stats::{GradSums, PartialStats};
use crate::tensor::TensorView;
use crate::{BatchNormConfig, Error, Result};

impl BatchNorm {
    /// SyncBatchNorm's first forward half: the per-channel statistics of this
    /// rank's slice x, which may be empty (a zero-sized dimension: count 0).
    /// Blocking: records, submits and reads back `channels * 16` bytes.
    pub fn partial_stats(&self, x: &TensorView) -> Result<PartialStats> {
        block_on(self.partial_stats_async(x))
    }

    /// [`Self::partial_stats`] without blocking.
    pub async fn partial_stats_async(&self, x: &TensorView<'_>) -> Result<PartialStats> {
        Ok(PartialStats::from_gpu(&self.local_half(x, None, true).await?, per_channel(x)))
    }

    /// SyncBatchNorm's second forward half: normalizes x with `stats` (the
    /// merged statistics of the global batch) into y, saves them for the
    /// backward and, in training mode with tracking, updates the running
    /// statistics from them (unbiased variance over the global count). x may
    /// be empty; the running statistics still update.
    ///
    /// `Err(Parameter)` in eval mode with running statistics, which
    /// normalizes with those, or when the global batch has fewer than two
    /// values per channel.
    pub fn forward_with_stats(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        y: &TensorView,
        stats: &PartialStats,
        mode: Mode,
    ) -> Result<()> {
        let stats_mode = self.stats_for(mode.is_training(), true);
        if stats_mode == Stats::Running {
            return Err(Error::Parameter(
                "an eval forward with running statistics normalizes with those, not with given ones".into(),
            ));
        }
        let channels = self.config().num_features;
        stats.check_lengths()?;
        if stats.channels() != channels {
            return Err(Error::Shape(format!("statistics of {} channels for a layer of {channels}", stats.channels())));
        }
        check_global_count(stats.count.iter().copied().fold(f64::INFINITY, f64::min))?;
        let values = self.context().upload("bn given statistics", &stats.to_gpu())?;
        let count = stats.count[0] as f32;
        self.record_forward(encoder, x, y, stats_mode, Epilogue::None, Source::Given { values: &values, count })
    }

    /// SyncBatchNorm's first backward half: this rank's gradient sums for
    /// (x, dy), with the statistics saved by the last batch-statistics
    /// forward (training) or the running ones (eval). Blocking.
    pub fn grad_sums(&self, x: &TensorView, dy: &TensorView, mode: Mode) -> Result<GradSums> {
        block_on(self.grad_sums_async(x, dy, mode))
    }

    /// [`Self::grad_sums`] without blocking.
    pub async fn grad_sums_async(&self, x: &TensorView<'_>, dy: &TensorView<'_>, mode: Mode) -> Result<GradSums> {
        Ok(GradSums::from_gpu(&self.local_half(x, Some(dy), mode.is_training()).await?, per_channel(x)))
    }

    /// A first half's values per channel: records and submits the local
    /// statistics of x (`dy` None) or gradient sums of (x, dy), and reads them.
    async fn local_half(
        &self,
        x: &TensorView<'_>,
        dy: Option<&TensorView<'_>>,
        training: bool,
    ) -> Result<Vec<[f32; 4]>> {
        let ctx = self.context();
        ctx.run_async(|e| self.record_local(e, x, dy, training)).await?;
        ctx.read_async(self.local_values(dy.is_some()), 0, self.config().num_features).await
    }

    /// SyncBatchNorm's second backward half: dx of this rank's slice from
    /// `sums` (summed over every rank), and dweight and dbias of the global
    /// batch (the same on every rank: they need no further all-reduce).
    pub fn backward_with_sums(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &TensorView,
        dy: &TensorView,
        dx: &TensorView,
        sums: &GradSums,
        mode: Mode,
    ) -> Result<()> {
        let channels = self.config().num_features;
        if sums.channels() != channels {
            return Err(Error::Shape(format!(
                "gradient sums of {} channels for a layer of {channels}",
                sums.channels()
            )));
        }
        if !sums.count.is_finite() || sums.count < 0.0 {
            return Err(Error::Parameter(format!(
                "a gradient-sum count of {}: counts are finite and not negative",
                sums.count
            )));
        }
        let stats_mode = self.stats_for(mode.is_training(), false);
        if stats_mode != Stats::Running {
            check_global_count(sums.count)?;
        }
        let values = self.context().upload("bn given gradient sums", &sums.to_gpu()?)?;
        let source = Source::Given { values: &values, count: sums.count as f32 };
        self.record_backward(encoder, x, dy, dx, stats_mode, Epilogue::None, source)
    }
}

/// Values per channel in x (0 when x is empty); x's shape was checked.
fn per_channel(x: &TensorView) -> f64 {
    ChannelView::of(&x.shape, x.layout).per_channel() as f64
}

/// Batch statistics need more than one value per channel over the global
/// batch (PyTorch's rule, applied to the whole batch, not one rank's slice).
fn check_global_count(count: f64) -> Result<()> {
    if !count.is_finite() || count < 2.0 {
        return Err(Error::Parameter(format!(
            "expected more than 1 value per channel over the global batch when training, got {count}"
        )));
    }
    Ok(())
}

/// A BatchNorm layer whose batch statistics span every rank of an
/// [`Exchange`] group: each rank holds one, with the same config and state,
/// and calls the same ops in the same order on its slice of the batch.
///
/// The ops are blocking (each waits for its exchange). Eval mode with running
/// statistics needs no exchange and runs locally. dweight and dbias are
/// those of the global batch on every rank.
///
/// Before its values, each op gathers a small header from every rank: which
/// op, which mode, how many channels, and whether the rank's local half
/// succeeded. When the ranks differ or one failed, every rank returns an
/// `Err` (`Err(Exchange)` naming the rank, or its own error) with its state
/// untouched, and the group serves the next op. A rank that never arrives
/// is the exchange's to time out ([`crate::LocalExchange`]'s timeout; MPI aborts
/// the job, see `MpiExchange`).
///
/// ```no_run
/// use wgpu_norm::{BatchNormConfig, Context, LocalExchange, SyncBatchNorm};
/// // One thread per device, each with its own handle of the group.
/// let contexts = [Context::new()?, Context::new()?];
/// std::thread::scope(|s| {
///     for (ctx, exchange) in contexts.iter().zip(LocalExchange::group(2)) {
///         s.spawn(move || -> wgpu_norm::Result<()> {
///             let bn = SyncBatchNorm::new(ctx, BatchNormConfig::new(64), exchange)?;
///             // bn.forward(&x.view(), &y.view(), Mode::Training)? on this rank's slice...
///             Ok(())
///         });
///     }
/// });
/// # Ok::<(), wgpu_norm::Error>(())
/// ```
pub struct SyncBatchNorm<E: Exchange> {
    layer: BatchNorm,
    exchange: E,
}

impl<E: Exchange> SyncBatchNorm<E> {
    /// A layer in PyTorch's initial state on `ctx`, synced through `exchange`.
    pub fn new(ctx: &Context, config: BatchNormConfig, exchange: E) -> Result<SyncBatchNorm<E>> {
        Ok(SyncBatchNorm { layer: BatchNorm::new(ctx, config)?, exchange })
    }

    /// Syncs an existing layer (its state is kept: give every rank the same).
    pub fn from_layer(layer: BatchNorm, exchange: E) -> SyncBatchNorm<E> {
        SyncBatchNorm { layer, exchange }
    }

    /// The local layer: its buffers, state and gradients.
    pub fn layer(&self) -> &BatchNorm {
        &self.layer
    }

    /// The exchange this layer's ranks talk through.
    pub fn exchange(&self) -> &E {
        &self.exchange
    }

    /// Forward over this rank's slice x (possibly empty) in training or eval
    /// mode, with global batch statistics where the mode uses batch
    /// statistics. With `check_finite`, a rejected batch is
    /// `Err(NonFinite)` on every rank.
    pub fn forward(&self, x: &TensorView, y: &TensorView, mode: Mode) -> Result<()> {
        let training = mode.is_training();
        if self.layer.stats_for(training, true) == Stats::Running {
            return self.layer.context().run(|e| self.layer.forward(e, x, y, Mode::Eval, Epilogue::None));
        }
        let local = self.layer.check_sync_args(x, &[], &[("y", y)]).and_then(|()| self.layer.partial_stats(x));
        let local = self.agree(Collective::Forward, mode, local)?;
        let channels = local.channels();
        let gathered = self.exchange.all_gather(&local.to_flat())?;
        let parts = gathered.iter().map(|flat| PartialStats::from_flat(channels, flat)).collect::<Result<Vec<_>>>()?;
        let global = PartialStats::merge_all(channels, &parts)?;
        let ctx = self.layer.context();
        ctx.run(|e| self.layer.forward_with_stats(e, x, y, &global, mode))?;
        let tracked = matches!(self.layer.stats_for(training, true), Stats::Batch { update_running: true });
        if tracked && self.layer.config().check_finite && self.layer.last_batch_rejected()? {
            return Err(Error::NonFinite(
                "the global batch's mean or variance is not finite; running statistics were left as they were".into(),
            ));
        }
        Ok(())
    }

    /// Backward of [`Self::forward`] in the same mode: dx of this rank's
    /// slice, and dweight and dbias of the global batch in the layer's
    /// gradient buffers.
    pub fn backward(&self, x: &TensorView, dy: &TensorView, dx: &TensorView, mode: Mode) -> Result<()> {
        let local = self
            .layer
            .check_sync_args(x, &[("dy", dy)], &[("dx", dx)])
            .and_then(|()| self.layer.grad_sums(x, dy, mode));
        let local = self.agree(Collective::Backward, mode, local)?;
        let channels = local.channels();
        let global = GradSums::from_flat(channels, &self.exchange.all_reduce_sum(&local.to_flat())?)?;
        let ctx = self.layer.context();
        ctx.run(|e| self.layer.backward_with_sums(e, x, dy, dx, &global, mode))
    }

    /// Before a collective's values: every rank tells every other, in a
    /// header of fixed length, which collective it is at (op, mode, channel
    /// count) and whether its local half succeeded. Unless all agree and
    /// all succeeded, every rank returns an `Err` (its own error, or
    /// `Err(Exchange)` naming the rank that differs or failed) and none
    /// sends values, so no rank waits for a round that cannot complete.
    fn agree<T>(&self, collective: Collective, mode: Mode, local: Result<T>) -> Result<T> {
        let mine = [collective as u8 as f64, mode.is_training() as u8 as f64, self.layer.config().num_features as f64];
        let ok = if local.is_ok() { 1.0 } else { 0.0 };
        let gathered = self.exchange.all_gather(&[mine[0], mine[1], mine[2], ok]);
        let local = local?;
        for (rank, theirs) in gathered?.iter().enumerate() {
            let [op, training, channels, ok] = theirs[..] else {
                return Err(Error::Exchange(format!("rank {rank} sent a header of {} values", theirs.len())));
            };
            if ok != 1.0 {
                return Err(Error::Exchange(format!(
                    "rank {rank} failed before the exchange; no rank changed its state"
                )));
            }
            if [op, training, channels] != mine {
                return Err(Error::Exchange(format!(
                    "rank {rank} runs {} where rank {} runs {}",
                    describe(op, training, channels),
                    self.exchange.rank(),
                    describe(mine[0], mine[1], mine[2])
                )));
            }
        }
        Ok(local)
    }
}

/// Which of SyncBatchNorm's collectives a rank is at.
#[derive(Clone, Copy)]
enum Collective {
    Forward = 1,
    Backward = 2,
}

/// A header's collective, mode and channel count in words.
fn describe(op: f64, training: f64, channels: f64) -> String {
    let op = match op as u8 {
        1 => "the forward",
        2 => "the backward",
        _ => "an unknown collective",
    };
    let mode = if training == 1.0 { "training" } else { "eval" };
    format!("{op} in {mode} mode over {channels} channels")
}
