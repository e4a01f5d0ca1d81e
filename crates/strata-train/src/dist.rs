//! Data-parallel training: the processes ("ranks") that train one model together, and what the training loop
//! asks of them. The loop is written once against [`Collective`]; one process is [`Single`] (every operation
//! the identity, so a run of one process computes exactly what it did before ranks existed), and `mpirun`
//! gives the MPI implementation in the `strata` binary (cargo feature `mpi`). A GPU build would add an NCCL
//! implementation of the same trait: the loop, the split of the batch and the checkpoints stay as they are.
//!
//! The rules every implementation keeps:
//! - every rank calls the same operations in the same order, with buffers of the same length;
//! - a sum leaves the same values on every rank (the weights then stay equal bit for bit, since each rank
//!   applies the same optimizer update to the same summed gradients).

use crate::{Result, TrainError};

/// The ranks of one training job and the collective operations the loop needs.
pub trait Collective {
    /// This process's rank, 0-based; rank 0 writes checkpoints, metrics and the published artifact.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Sums `buf` elementwise over the ranks, in place; every rank ends with the same values.
    ///
    /// # Errors
    /// When the transport fails.
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Collective::sum_f32`] for f64 (losses, token counts, flags).
    ///
    /// # Errors
    /// When the transport fails.
    fn sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// The smallest and the largest of each rank's `v`.
    ///
    /// # Errors
    /// When the transport fails.
    fn min_max_u64(&self, v: u64) -> Result<(u64, u64)>;
    /// Waits until every rank has called it.
    ///
    /// # Errors
    /// When the transport fails.
    fn barrier(&self) -> Result<()>;
}

/// One process: every collective operation is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn min_max_u64(&self, v: u64) -> Result<(u64, u64)> {
        Ok((v, v))
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// The rows of global batch rows `[0, global)` that rank `rank` of `size` takes: a contiguous range, the
/// same size on every rank.
///
/// # Errors
/// When `global` does not divide by `size`.
pub fn share(global: usize, rank: usize, size: usize) -> Result<std::ops::Range<usize>> {
    if size == 0 || !global.is_multiple_of(size) {
        return Err(TrainError::Config(format!(
            "the global batch (batch_size × grad_accum = {global} rows) does not divide among {size} ranks: \
             choose a batch whose rows are a multiple of the number of ranks"
        )));
    }
    let each = global / size;
    Ok(rank * each..(rank + 1) * each)
}

/// Checks that every rank runs the same job: each rank's `fingerprint` (the run's config hash) is compared
/// across ranks.
///
/// # Errors
/// When the ranks disagree, naming this rank's fingerprint.
pub fn check_agreement(comm: &dyn Collective, fingerprint: &str) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fingerprint.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let (lo, hi) = comm.min_max_u64(h)?;
    if lo != hi {
        return Err(TrainError::Config(format!(
            "the {} ranks disagree on the run's config (rank {}'s fingerprint is {}): every rank must run the \
             same command on the same store",
            comm.size(),
            comm.rank(),
            &fingerprint[..fingerprint.len().min(12)]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_once() {
        let parts: Vec<_> = (0..4).map(|r| share(16, r, 4).unwrap()).collect();
        assert_eq!(parts, vec![0..4, 4..8, 8..12, 12..16]);
        assert_eq!(share(16, 0, 1).unwrap(), 0..16);
        let e = share(10, 0, 4).unwrap_err().to_string();
        assert!(e.contains("10 rows") && e.contains("4 ranks"), "{e}");
    }

    /// Two fake ranks that disagree: the min/max of their hashes differ.
    struct Two(u64);
    impl Collective for Two {
        fn rank(&self) -> usize {
            1
        }
        fn size(&self) -> usize {
            2
        }
        fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
            Ok(())
        }
        fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
            Ok(())
        }
        fn min_max_u64(&self, v: u64) -> Result<(u64, u64)> {
            Ok((v.min(self.0), v.max(self.0)))
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn disagreeing_ranks_are_refused() {
        assert!(check_agreement(&Single, "abc").is_ok());
        let e = check_agreement(&Two(7), "0123456789abcdef")
            .unwrap_err()
            .to_string();
        assert!(e.contains("disagree") && e.contains("rank 1") && e.contains("0123456789ab"));
    }
}
