//! How SyncBatchNorm's ranks share their per-channel values: the [`Exchange`]
//! trait (two collectives, as MPI has them) and [`LocalExchange`], its
//! implementation for several devices in one process, one thread per rank.
//! The MPI implementation is `MpiExchange` (cargo feature `mpi`).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The collectives SyncBatchNorm needs. Every rank of a group calls the same
/// collectives in the same order, each with a slice of the same length; a
/// call returns once every rank has made it. The values are a few per
/// channel, so implementations may go through the host.
pub trait Exchange {
    /// This participant's index, `0..size()`.
    fn rank(&self) -> usize;

    /// Number of participants.
    fn size(&self) -> usize;

    /// Every rank's `local`, in rank order.
    fn all_gather(&self, local: &[f64]) -> Result<Vec<Vec<f64>>>;

    /// The elementwise sum of every rank's `local`. The default sums an
    /// all-gather in rank order, so every rank gets bit-identical values.
    fn all_reduce_sum(&self, local: &[f64]) -> Result<Vec<f64>> {
        let all = self.all_gather(local)?;
        let mut sum = vec![0.0; local.len()];
        for part in &all {
            for (s, v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        Ok(sum)
    }
}

/// A borrowed exchange serves as well (several layers can share one group).
impl<E: Exchange + ?Sized> Exchange for &E {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn size(&self) -> usize {
        (**self).size()
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<Vec<f64>>> {
        (**self).all_gather(local)
    }

    fn all_reduce_sum(&self, local: &[f64]) -> Result<Vec<f64>> {
        (**self).all_reduce_sum(local)
    }
}

/// One rank's handle on an in-process group: [`LocalExchange::group`] makes
/// one per rank, and each rank's thread drives its own device with its own
/// handle.
///
/// A round that cannot complete ends for every rank with `Err(Exchange)`,
/// and the group stays closed after it: when a rank drops its handle (it
/// gave up with an error, or panicked), sends a different number of values
/// than the others, or does not arrive within the timeout
/// ([`DEFAULT_TIMEOUT`] unless [`LocalExchange::group_with_timeout`] says).
pub struct LocalExchange {
    rank: usize,
    shared: Arc<Shared>,
}

/// How long [`LocalExchange::group`]'s ranks wait for the others in a round.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

struct Shared {
    size: usize,
    timeout: Duration,
    round: Mutex<Round>,
    done: Condvar,
}

#[derive(Default)]
struct Round {
    /// This round's contributions, by rank.
    slots: Vec<Option<Vec<f64>>>,
    arrived: usize,
    /// Completed rounds; a waiting rank is released when it changes.
    generation: u64,
    /// The last completed round's contributions.
    result: Arc<Vec<Vec<f64>>>,
    /// Why the group closed, once it has.
    closed: Option<String>,
}

impl LocalExchange {
    /// Handles for a group of `size` ranks, in rank order, waiting at most
    /// [`DEFAULT_TIMEOUT`] for each other.
    pub fn group(size: usize) -> Vec<LocalExchange> {
        Self::group_with_timeout(size, DEFAULT_TIMEOUT)
    }

    /// [`Self::group`] whose ranks wait at most `timeout` in a round.
    pub fn group_with_timeout(size: usize, timeout: Duration) -> Vec<LocalExchange> {
        let round = Round { slots: vec![None; size], ..Default::default() };
        let shared = Arc::new(Shared { size, timeout, round: Mutex::new(round), done: Condvar::new() });
        (0..size).map(|rank| LocalExchange { rank, shared: shared.clone() }).collect()
    }

    fn round(&self) -> std::sync::MutexGuard<'_, Round> {
        // A rank that panicked while holding the lock left consistent data
        // (every write below is a single field).
        self.shared.round.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes the group for `reason`, waking every waiting rank.
fn close(round: &mut Round, done: &Condvar, reason: String) -> Error {
    round.closed.get_or_insert(reason.clone());
    done.notify_all();
    Error::Exchange(reason)
}

impl Exchange for LocalExchange {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<Vec<f64>>> {
        let done = &self.shared.done;
        let mut round = self.round();
        if let Some(reason) = &round.closed {
            return Err(Error::Exchange(format!("the in-process group is closed: {reason}")));
        }
        if let Some((other, values)) = round.slots.iter().enumerate().find_map(|(r, s)| s.as_ref().map(|v| (r, v))) {
            if values.len() != local.len() {
                let reason =
                    format!("rank {} sent {} values where rank {other} sent {}", self.rank, local.len(), values.len());
                return Err(close(&mut round, done, reason));
            }
        }
        round.slots[self.rank] = Some(local.to_vec());
        round.arrived += 1;
        if round.arrived == self.shared.size {
            let all: Vec<Vec<f64>> = round.slots.iter_mut().map(|s| s.take().unwrap_or_default()).collect();
            round.result = Arc::new(all);
            round.arrived = 0;
            round.generation += 1;
            done.notify_all();
            return Ok(round.result.to_vec());
        }
        let generation = round.generation;
        let deadline = Instant::now() + self.shared.timeout;
        while round.generation == generation && round.closed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<usize> = (0..self.shared.size).filter(|&r| round.slots[r].is_none()).collect();
                let reason = format!("ranks {missing:?} did not arrive within {:?}", self.shared.timeout);
                return Err(close(&mut round, done, reason));
            }
            round = done.wait_timeout(round, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        // A round this rank completed stays readable: the next one needs this
        // rank's contribution before it can replace the result.
        if round.generation == generation {
            let reason = round.closed.clone().unwrap_or_default();
            return Err(Error::Exchange(format!("the round ended without every rank: {reason}")));
        }
        Ok(round.result.to_vec())
    }
}

impl Drop for LocalExchange {
    fn drop(&mut self) {
        let mut round = self.round();
        close(&mut round, &self.shared.done, format!("rank {} left the group", self.rank));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_threads_gather_and_sum_in_rank_order() {
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = LocalExchange::group(3)
                .into_iter()
                .map(|ex| {
                    s.spawn(move || {
                        let r = ex.rank() as f64;
                        let mut out = Vec::new();
                        for step in 0..50 {
                            let gathered = ex.all_gather(&[r, step as f64]).unwrap();
                            out.push((gathered, ex.all_reduce_sum(&[r, 1.0]).unwrap()));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for per_rank in &results {
            for (step, (gathered, sum)) in per_rank.iter().enumerate() {
                let want: Vec<Vec<f64>> = (0..3).map(|r| vec![r as f64, step as f64]).collect();
                assert_eq!(gathered, &want);
                assert_eq!(sum, &vec![3.0, 3.0]);
            }
        }
    }

    #[test]
    fn a_rank_that_leaves_releases_the_others_with_an_error() {
        let mut group = LocalExchange::group(2);
        let leaver = group.pop().unwrap();
        let stayer = group.pop().unwrap();
        let waiting = std::thread::spawn(move || stayer.all_gather(&[1.0]));
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(leaver);
        assert!(matches!(waiting.join().unwrap(), Err(Error::Exchange(_))));
    }

    #[test]
    fn a_mismatched_round_ends_for_every_rank() {
        let mut group = LocalExchange::group(3);
        let (c, b, a) = (group.pop().unwrap(), group.pop().unwrap(), group.pop().unwrap());
        let first = std::thread::spawn(move || (a.all_gather(&[1.0, 2.0]), a));
        let second = std::thread::spawn(move || (b.all_gather(&[1.0, 2.0]), b));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let third = c.all_gather(&[1.0]);
        let (first, a) = first.join().unwrap();
        let (second, _b) = second.join().unwrap();
        for result in [first, second, third] {
            let err = result.unwrap_err();
            assert!(matches!(err, Error::Exchange(_)) && err.to_string().contains("values"), "{err}");
        }
        // The group stays closed.
        assert!(matches!(a.all_gather(&[1.0, 2.0]), Err(Error::Exchange(_))));
    }

    #[test]
    fn a_rank_that_never_arrives_times_the_round_out() {
        let group = LocalExchange::group_with_timeout(2, Duration::from_millis(100));
        let start = Instant::now();
        let err = group[0].all_gather(&[1.0]).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("[1]"), "{err}");
        assert!(matches!(group[1].all_gather(&[1.0]), Err(Error::Exchange(_))), "closed for the late rank too");
    }
}
