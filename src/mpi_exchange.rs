//! SyncBatchNorm's [`Exchange`] over MPI (the `mpi` crate, rsmpi): one
//! process per rank, as `mpirun -np K` starts them. Cargo feature `mpi`.

use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives};

use crate::exchange::Exchange;
use crate::Result;

/// An [`Exchange`] over an MPI communicator: all-gather of the forward's
/// (count, mean, M2) (counts may differ per rank, as in PyTorch's
/// SyncBatchNorm) and all-reduce of the backward's sums. Each collective is
/// one MPI call of `3 * channels` (or `1 + 3 * channels`) f64 per rank.
///
/// When a rank dies or an MPI call fails, rsmpi's communicators keep MPI's
/// default error handler, `MPI_ERRORS_ARE_FATAL`: the MPI runtime aborts
/// the whole job (`mpirun` ends every process) rather than returning an
/// error, and a rank that never reaches a collective leaves the others
/// blocked in it (MPI's blocking collectives have no timeout). What a rank
/// can get wrong before the values go out (channel count, op, mode, a
/// failed local half) every rank learns from SyncBatchNorm's header, and
/// returns `Err(Exchange)`.
///
/// ```no_run
/// # #[cfg(feature = "mpi")] {
/// use mpi::traits::Communicator;
/// let universe = mpi::initialize().expect("MPI initialized twice");
/// let exchange = wgpu_norm::MpiExchange::new(universe.world());
/// # }
/// ```
pub struct MpiExchange<C: Communicator> {
    comm: C,
}

impl<C: Communicator> MpiExchange<C> {
    /// An exchange among the processes of `comm`, each one rank.
    pub fn new(comm: C) -> MpiExchange<C> {
        MpiExchange { comm }
    }

    /// The communicator, for the caller's own collectives.
    pub fn communicator(&self) -> &C {
        &self.comm
    }
}

impl<C: Communicator> Exchange for MpiExchange<C> {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<Vec<f64>>> {
        let size = self.size();
        let mut all = vec![0.0f64; local.len() * size];
        // MPI's default error handler aborts the job on failure, so there is
        // no error to map here. Equal lengths on every rank are the caller's
        // contract: SyncBatchNorm first gathers a header of fixed length and
        // sends values only when every rank agrees on their count.
        self.comm.all_gather_into(local, &mut all[..]);
        if local.is_empty() {
            return Ok(vec![Vec::new(); size]);
        }
        Ok(all.chunks(local.len()).map(<[f64]>::to_vec).collect())
    }

    fn all_reduce_sum(&self, local: &[f64]) -> Result<Vec<f64>> {
        let mut sum = vec![0.0f64; local.len()];
        self.comm.all_reduce_into(local, &mut sum[..], SystemOperation::sum());
        Ok(sum)
    }
}
