//! How SyncBatchNorm's ranks share their per-channel values: the [`Exchange`]
//! trait (two collectives, as MPI has them) and [`LocalExchange`], its
//! implementation for several devices in one process, one thread per rank.
//! The MPI implementation is `MpiExchange` (cargo feature `mpi`).

use std::sync::{Arc, Condvar, Mutex};

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
/// handle. Dropping a handle (a rank that gave up with an error, or
/// panicked) makes the other ranks' pending and later calls return
/// `Err(Exchange)` instead of waiting for it forever.
pub struct LocalExchange {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
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
    /// A rank left the group.
    broken: bool,
}

impl LocalExchange {
    /// Handles for a group of `size` ranks, in rank order.
    pub fn group(size: usize) -> Vec<LocalExchange> {
        let round = Round { slots: vec![None; size], ..Default::default() };
        let shared = Arc::new(Shared { size, round: Mutex::new(round), done: Condvar::new() });
        (0..size).map(|rank| LocalExchange { rank, shared: shared.clone() }).collect()
    }

    fn round(&self) -> std::sync::MutexGuard<'_, Round> {
        // A rank that panicked while holding the lock left consistent data
        // (every write below is a single field).
        self.shared.round.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Exchange for LocalExchange {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<Vec<f64>>> {
        let gone = || Error::Exchange("a rank of the in-process group left it".into());
        let mut round = self.round();
        if round.broken {
            return Err(gone());
        }
        if let Some(other) = round.slots.iter().flatten().next() {
            if other.len() != local.len() {
                return Err(Error::Exchange(format!(
                    "rank {} sent {} values where another sent {}",
                    self.rank,
                    local.len(),
                    other.len()
                )));
            }
        }
        round.slots[self.rank] = Some(local.to_vec());
        round.arrived += 1;
        if round.arrived == self.shared.size {
            let all: Vec<Vec<f64>> = round.slots.iter_mut().map(|s| s.take().unwrap_or_default()).collect();
            round.result = Arc::new(all);
            round.arrived = 0;
            round.generation += 1;
            self.shared.done.notify_all();
            return Ok(round.result.to_vec());
        }
        let generation = round.generation;
        while round.generation == generation && !round.broken {
            round = self.shared.done.wait(round).unwrap_or_else(|e| e.into_inner());
        }
        // A round this rank completed stays readable: the next one needs this
        // rank's contribution before it can replace the result.
        if round.generation == generation {
            return Err(gone());
        }
        Ok(round.result.to_vec())
    }
}

impl Drop for LocalExchange {
    fn drop(&mut self) {
        self.round().broken = true;
        self.shared.done.notify_all();
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
}
