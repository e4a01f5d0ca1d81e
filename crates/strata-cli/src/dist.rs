//! How this process takes part in a data-parallel run. `mpirun -np N strata finetune …` (or `srun` with
//! PMI) starts N copies of the command; each finds its rank in MPI ([`start`], cargo feature `mpi`) and the
//! training loop sums gradients over them (`strata_train::dist`). Started any other way, a process is the
//! one rank of its run. A launcher's environment seen by a build without the feature, or by a command that
//! does not train, is refused: N copies would each run the whole job, side by side on one store.

use std::cell::RefCell;
use std::rc::Rc;

use strata_train::dist::{Collective, Single};

thread_local! {
    static COMM: RefCell<Option<Rc<dyn Collective>>> = RefCell::new(None);
}

/// The number of ranks an MPI launcher started, from its environment: Open MPI's `OMPI_COMM_WORLD_SIZE`,
/// or `PMI_SIZE` (MPICH's Hydra, Slurm's `srun --mpi=pmi2`).
pub fn launched_size() -> Option<(&'static str, usize)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .into_iter()
        .find_map(|v| Some((v, std::env::var(v).ok()?.trim().parse().ok()?)))
}

/// The ranks that share this machine (Open MPI's `OMPI_COMM_WORLD_LOCAL_SIZE`), 1 when not launched so:
/// the default thread count divides the cores among them.
pub fn local_ranks() -> usize {
    std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(1)
}

/// Runs `f` with this process's ranks ([`Single`] unless [`start`] joined an MPI run).
pub fn with_comm<R>(f: impl FnOnce(&dyn Collective) -> R) -> R {
    match COMM.with(|c| c.borrow().clone()) {
        Some(c) => f(&*c),
        None => f(&Single),
    }
}

/// This process's place in a run, held by `main` until the end (MPI is finalised when it drops). MPI is
/// initialised only for a run of several ranks.
pub struct Ranks {
    #[cfg(feature = "mpi")]
    universe: Option<mpi::environment::Universe>,
}

impl Ranks {
    /// Ends every rank of the run with `code` after an error on this one (the others would otherwise wait
    /// in their next collective operation for ever). One process: does nothing.
    pub fn abort_others(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some(u) = &self.universe {
            use mpi::traits::Communicator;
            u.world().abort(code);
        }
        #[cfg(not(feature = "mpi"))]
        let _ = (self, code);
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        COMM.with(|c| c.borrow_mut().take());
    }
}

/// Joins the MPI run this process was launched into, if any. `trains` says whether the command is one
/// that runs as several ranks (`train`, `finetune` on token data).
///
/// # Errors
/// Launched as several ranks by a build without the `mpi` feature, or for a command that does not train.
pub fn start(trains: bool) -> anyhow::Result<Ranks> {
    let Some((var, size)) = launched_size().filter(|&(_, n)| n > 1) else {
        return Ok(Ranks {
            #[cfg(feature = "mpi")]
            universe: None,
        });
    };
    if !trains {
        anyhow::bail!(
            "started as {size} ranks ({var}={size}), but only `strata train` and `strata finetune` on token data \
             run as several ranks: data steps fan out with --task I/N (or --executor slurm)"
        );
    }
    #[cfg(not(feature = "mpi"))]
    anyhow::bail!(
        "started as {size} ranks ({var}={size}), but this strata was built without MPI: build it with \
         `cargo build --release --features mpi` (needs Open MPI's libopenmpi-dev and libclang-dev)"
    );
    #[cfg(feature = "mpi")]
    {
        let universe = mpi::initialize()
            .ok_or_else(|| anyhow::anyhow!("MPI was initialised twice in one process"))?;
        let comm = Mpi {
            world: universe.world(),
        };
        if comm.size() != size {
            anyhow::bail!(
                "{var} says {size} ranks but MPI's world has {}: launch with mpirun or srun of the same MPI",
                comm.size()
            );
        }
        COMM.with(|c| *c.borrow_mut() = Some(Rc::new(comm)));
        Ok(Ranks {
            universe: Some(universe),
        })
    }
}

/// MPI's world communicator as the training loop's [`Collective`].
#[cfg(feature = "mpi")]
struct Mpi {
    world: mpi::topology::SimpleCommunicator,
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// MPI counts are C ints: a buffer goes in pieces of at most this many values.
    const PIECE: usize = 1 << 28;

    fn sum<T>(&self, buf: &mut [T])
    where
        T: mpi::datatype::Equivalence + Copy,
    {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        for piece in buf.chunks_mut(Self::PIECE) {
            let send = piece.to_vec();
            self.world
                .all_reduce_into(&send[..], piece, SystemOperation::sum());
        }
    }
}

#[cfg(feature = "mpi")]
impl Collective for Mpi {
    fn rank(&self) -> usize {
        use mpi::topology::Communicator;
        usize::try_from(self.world.rank()).unwrap_or(0)
    }
    fn size(&self) -> usize {
        use mpi::topology::Communicator;
        usize::try_from(self.world.size()).unwrap_or(1)
    }
    fn sum_f32(&self, buf: &mut [f32]) -> strata_train::Result<()> {
        self.sum(buf);
        Ok(())
    }
    fn sum_f64(&self, buf: &mut [f64]) -> strata_train::Result<()> {
        self.sum(buf);
        Ok(())
    }
    fn min_max_u64(&self, v: u64) -> strata_train::Result<(u64, u64)> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        let (mut lo, mut hi) = (0u64, 0u64);
        self.world
            .all_reduce_into(&v, &mut lo, SystemOperation::min());
        self.world
            .all_reduce_into(&v, &mut hi, SystemOperation::max());
        Ok((lo, hi))
    }
    fn barrier(&self) -> strata_train::Result<()> {
        use mpi::collective::CommunicatorCollectives;
        self.world.barrier();
        Ok(())
    }
}
