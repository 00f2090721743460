//! Which worker of a data-parallel run this process is: alone (the usual case), or one of N
//! processes that `mpirun` started (`convrec` built with `--features mpi`). Training only sees
//! `convrec_core::workers::Workers`; this module starts and ends MPI, finds the worker's
//! place on its host (which picks its GPU), and makes one worker's failure end every worker, so
//! that none waits forever in a sum the failed one never joins.

use std::rc::Rc;

use convrec_core::workers::{Single, Workers};

/// Environment variables that MPI launchers set in the processes they start, with the number of
/// processes: Open MPI, MPICH/Intel MPI (Hydra's PMI), and PMIx launchers (Slurm's srun among them).
const LAUNCHER_SIZE: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// How many processes the MPI launcher says were started together, if one started this one.
fn launched_as() -> Option<usize> {
    LAUNCHER_SIZE.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

pub struct Launch {
    workers: Rc<dyn Workers>,
    /// This worker's place among the workers on its host.
    pub worker_on_host: usize,
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Launch {
    /// Joins the run's other workers when an MPI launcher started this process.
    pub fn start() -> anyhow::Result<Self> {
        match launched_as() {
            Some(n) if n > 1 => Self::start_mpi(n),
            _ => Ok(Launch::alone()),
        }
    }

    fn alone() -> Self {
        Launch {
            workers: Rc::new(Single),
            worker_on_host: 0,
            #[cfg(feature = "mpi")]
            _universe: None,
        }
    }

    #[cfg(not(feature = "mpi"))]
    fn start_mpi(n: usize) -> anyhow::Result<Self> {
        anyhow::bail!(
            "convrec was started by an MPI launcher as one of {n} processes, but this build has no MPI support, \
             so each would run the whole job alone: build it with `cargo build --release --features mpi` \
             (docs/SCALING.md), or run it without mpirun"
        )
    }

    #[cfg(feature = "mpi")]
    fn start_mpi(_: usize) -> anyhow::Result<Self> {
        use mpi::topology::Communicator;
        // Funneled: the GPU runtime has threads of its own, but only this one calls MPI.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let world = universe.world();
        let worker_on_host = world.split_shared(0).rank() as usize;
        let workers = mpi_workers::MpiWorkers::new(world);
        // A panic on one worker must end them all (the others may be waiting in a sum).
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            mpi_workers::abort_all();
        }));
        Ok(Launch { workers: Rc::new(workers), worker_on_host, _universe: Some(universe) })
    }

    pub fn workers(&self) -> Rc<dyn Workers> {
        self.workers.clone()
    }

    pub fn count(&self) -> usize {
        self.workers.count()
    }

    /// Only `sft` and `train` run as several workers; anything else would be repeated by each.
    pub fn refuse_for(&self, command: &str) -> anyhow::Result<()> {
        match self.count() {
            1 => Ok(()),
            n => anyhow::bail!(
                "`convrec {command}` does not run data-parallel (only `sft` and `train` do): start it without \
                 mpirun (it was started as {n} workers)"
            ),
        }
    }

    /// The command's outcome on this worker. Alone, as it is; among several, an error is printed
    /// naming the worker and then every worker is stopped (MPI_Abort).
    pub fn finish(&self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        match outcome {
            Err(error) if self.count() > 1 => {
                eprintln!("error: worker {} of {}: {error:#}", self.workers.rank(), self.count());
                #[cfg(feature = "mpi")]
                mpi_workers::abort_all();
                #[cfg(not(feature = "mpi"))]
                Err(error)
            }
            other => other,
        }
    }
}

#[cfg(feature = "mpi")]
mod mpi_workers {
    use std::cell::Cell;
    use std::time::Instant;

    use convrec_core::workers::Workers;
    use mpi::collective::{Root, SystemOperation};
    use mpi::datatype::Equivalence;
    use mpi::topology::{Communicator, SimpleCommunicator};

    pub struct MpiWorkers {
        world: SimpleCommunicator,
        exchanging: Cell<f64>,
    }

    impl MpiWorkers {
        pub fn new(world: SimpleCommunicator) -> Self {
            MpiWorkers { world, exchanging: Cell::new(0.0) }
        }

        /// A reduction to worker 0, then its result broadcast: every worker gets worker 0's
        /// bits (an all-reduce need not give every process the same rounding).
        fn sum<T: Equivalence + Copy>(&self, values: &mut [T]) {
            let start = Instant::now();
            let root = self.world.process_at_rank(0);
            if self.world.rank() == 0 {
                let mine = values.to_vec();
                root.reduce_into_root(&mine[..], values, SystemOperation::sum());
            } else {
                root.reduce_into(&*values, SystemOperation::sum());
            }
            root.broadcast_into(values);
            self.exchanging.set(self.exchanging.get() + start.elapsed().as_secs_f64());
        }
    }

    impl Workers for MpiWorkers {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn count(&self) -> usize {
            self.world.size() as usize
        }
        fn sum_f32(&self, values: &mut [f32]) {
            self.sum(values)
        }
        fn sum_f64(&self, values: &mut [f64]) {
            self.sum(values)
        }
        fn exchange_seconds(&self) -> f64 {
            self.exchanging.get()
        }
    }

    /// Ends every worker of the run (the launcher reports the abort).
    pub fn abort_all() -> ! {
        SimpleCommunicator::world().abort(1)
    }
}
