//! How `wgpu-norm bench` times recorded work: GPU timestamps where the
//! device has them, wall clock otherwise, runs interleaved.

use std::time::Instant;

use super::{Timer, MEASURED};
use wgpu_norm::{Context, Result};

/// Times recorded work, with timestamp queries when the device has them.
pub(super) struct Clock {
    /// Query set of `2 * iters` timestamps and the buffer they resolve into.
    queries: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    period_ns: f64,
}

impl Clock {
    pub(super) fn new(ctx: &Context, timer: Timer, iters: usize) -> Result<Clock> {
        let queries = if timer == Timer::GpuTimestamp {
            let count = (2 * MEASURED * iters) as u32;
            Some(ctx.scoped(|| {
                let set = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                });
                let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bench timestamps resolved"),
                    size: u64::from(count) * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                Ok((set, buffer))
            })?)
        } else {
            None
        };
        Ok(Clock { queries, period_ns: f64::from(ctx.queue().get_timestamp_period()) })
    }

    /// Runs each of `records` `warmup` times (more while the warm-up is
    /// shorter than `min_warmup_ms`), then `iters` timed rounds in
    /// which each runs once in turn (interleaved, so that load from other
    /// processes falls on all of them alike). Each run is its own
    /// submission, waited for. A recorder whose last warm-up took over
    /// [`SLOW_RUN_MS`] runs in the first [`SLOW_ITERS`] rounds only (the
    /// naive baseline takes up to a second a run on a GPU). Returns the
    /// times in milliseconds, one vector per recorder, and the wall-clock
    /// times around submit-and-wait.
    pub(super) fn measure(
        &self,
        ctx: &Context,
        warmup: usize,
        min_warmup_ms: f64,
        iters: usize,
        records: &mut [Recorder<'_>],
    ) -> Result<(Times, Times)> {
        let k = records.len();
        let mut slow = vec![false; k];
        let warming = Instant::now();
        let mut round = 0;
        while keep_warming(round, warmup, warming.elapsed().as_secs_f64() * 1e3, min_warmup_ms) {
            for (j, record) in records.iter_mut().enumerate() {
                let start = Instant::now();
                ctx.run(&mut **record)?;
                slow[j] = start.elapsed().as_secs_f64() * 1e3 > SLOW_RUN_MS;
            }
            round += 1;
        }
        let mut wall = vec![Vec::with_capacity(iters); k];
        // The recorder of each pair of timestamps, in the order written.
        let mut owners = Vec::with_capacity(iters * k);
        for i in 0..iters {
            for (j, record) in records.iter_mut().enumerate() {
                if slow[j] && i >= SLOW_ITERS {
                    continue;
                }
                let slot = 2 * owners.len() as u32;
                owners.push(j);
                let commands = ctx.scoped(|| {
                    let mut encoder = ctx
                        .device()
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench iteration") });
                    if let Some((set, _)) = &self.queries {
                        stamp(&mut encoder, set, Some(slot), None);
                    }
                    record(&mut encoder)?;
                    if let Some((set, _)) = &self.queries {
                        stamp(&mut encoder, set, None, Some(slot + 1));
                    }
                    Ok(encoder.finish())
                })?;
                let start = Instant::now();
                let index = ctx.queue().submit([commands]);
                ctx.wait(Some(index))?;
                wall[j].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let Some((set, buffer)) = &self.queries else {
            return Ok((wall.clone(), wall));
        };
        let count = 2 * owners.len();
        ctx.run(|encoder| {
            encoder.resolve_query_set(set, 0..count as u32, buffer, 0);
            Ok(())
        })?;
        let stamps: Vec<u64> = ctx.read(buffer, 0, count)?;
        let mut out = vec![Vec::with_capacity(iters); k];
        for (pair, &j) in stamps.chunks(2).zip(&owners) {
            out[j].push(pair[1].wrapping_sub(pair[0]) as f64 * self.period_ns * 1e-6);
        }
        Ok((out, wall))
    }
}

/// The default run's warm-up goes on past `--warmup` rounds (up to
/// [`MAX_WARMUP_ROUNDS`]) until it has run this long (ms): a GPU left idle while `--verify` ran the
/// f64 reference on the CPU comes back at low clocks, and two warm-up runs
/// of tens of microseconds did not bring it up. On an H100 and an H200,
/// `bn_forward_train` 8192x512 read 0.22–0.26 ms right after verification
/// (its copy and naive baseline 2–3x slow too) and 0.065 ms without it.
pub(super) const MIN_WARMUP_MS: f64 = 200.0;
const MAX_WARMUP_ROUNDS: usize = 1000;

/// Whether warm-up round `round` (from 0) should run, `elapsed_ms` into it.
fn keep_warming(round: usize, warmup: usize, elapsed_ms: f64, min_ms: f64) -> bool {
    round < warmup || (warmup > 0 && round < MAX_WARMUP_ROUNDS && elapsed_ms < min_ms)
}

/// A run slower than this (ms, the last warm-up's wall clock) is timed in
/// only [`SLOW_ITERS`] rounds.
pub(super) const SLOW_RUN_MS: f64 = 100.0;
pub(super) const SLOW_ITERS: usize = 3;

/// Milliseconds, one vector per thing timed.
pub(super) type Times = Vec<Vec<f64>>;

/// Records one run of something timed.
pub(super) type Recorder<'a> = &'a mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>;

/// An empty compute pass that writes the given timestamps.
fn stamp(encoder: &mut wgpu::CommandEncoder, set: &wgpu::QuerySet, begin: Option<u32>, end: Option<u32>) {
    let pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("bench timestamp"),
        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: begin,
            end_of_pass_write_index: end,
        }),
    });
    drop(pass);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_runs_its_rounds_then_until_its_time() {
        // The rounds asked for, however long they take.
        assert!(keep_warming(1, 2, 1e6, 200.0));
        assert!(!keep_warming(2, 2, 1e6, 200.0));
        // Then more while short of the time, up to the cap.
        assert!(keep_warming(2, 2, 10.0, 200.0));
        assert!(!keep_warming(MAX_WARMUP_ROUNDS, 2, 10.0, 200.0));
        // No time floor without one, nor when no warm-up was asked for.
        assert!(!keep_warming(2, 2, 10.0, 0.0));
        assert!(!keep_warming(0, 0, 0.0, 200.0));
    }
}
