//! Data parallelism: the workers of one training run and the few numbers they exchange.
//!
//! Every worker holds the whole model, the whole adapter and its optimiser state, and reads the
//! whole data set; a step's rows (SFT) or prompts (RL) are split between the workers, each runs
//! its share through the model, and what crosses between them is only what makes the step the
//! one a single process would take: the LoRA gradient (SmolLM2-135M at r = 16: 4.9 M floats) and
//! a handful of counters (loss, token and completion counts). Every worker then applies the same
//! AdamW step to the same sum, so their adapters stay identical without ever being sent.
//! Validation is shared the same way: each worker answers its share of the held-out rows and the
//! per-row scores are summed into one table (`rec::evaluation::evaluate_rows_shared`).
//!
//! The transport is a front end's business: the native binary uses MPI (`convrec` built with
//! `--features mpi`, run under `mpirun`), tests use threads ([`LocalWorker`]), everything else
//! runs alone ([`Single`]).

use std::ops::Range;
use std::sync::{Arc, Barrier, Mutex};

/// The workers of a run, as one of them sees them.
pub trait Workers {
    /// This worker's place, 0 ≤ rank < count; rank 0 writes what the run keeps.
    fn rank(&self) -> usize;
    fn count(&self) -> usize;
    /// Element-wise sums over every worker's `values`, in place. Every worker must call it with
    /// the same length at the same point of the run, and gets the same bits back (so identical
    /// optimiser steps keep the adapters identical).
    fn sum_f32(&self, values: &mut [f32]);
    fn sum_f64(&self, values: &mut [f64]);
    /// Seconds spent in sums so far: waiting for the slowest worker, then the transfer (what data
    /// parallelism costs a step; metrics report it per step as `exchange_s`).
    fn exchange_seconds(&self) -> f64 {
        0.0
    }
}

/// One process, alone: sums are the values themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Workers for Single {
    fn rank(&self) -> usize {
        0
    }
    fn count(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
}

/// Worker `rank`'s contiguous share of `len` items (rows of a micro-batch, prompts of a step):
/// shares differ in size by at most one, and some are empty when there are fewer items than
/// workers.
pub fn share(len: usize, rank: usize, count: usize) -> Range<usize> {
    let count = count.max(1);
    len * rank / count..len * (rank + 1) / count
}

struct Shared {
    barrier: Barrier,
    /// Each worker's contribution to the sum in progress (f64 holds f32 exactly).
    slots: Mutex<Vec<Vec<f64>>>,
}

/// A worker as one thread of a process, for tests: each thread holds one.
pub struct LocalWorker {
    rank: usize,
    count: usize,
    shared: Arc<Shared>,
}

impl LocalWorker {
    /// `count` workers that sum through shared memory (in rank order, so every worker gets the
    /// same bits).
    pub fn group(count: usize) -> Vec<LocalWorker> {
        let shared = Arc::new(Shared { barrier: Barrier::new(count), slots: Mutex::new(vec![Vec::new(); count]) });
        (0..count).map(|rank| LocalWorker { rank, count, shared: shared.clone() }).collect()
    }

    /// Posts `values`, waits for everyone, and returns every worker's contribution in rank order.
    fn exchange(&self, values: Vec<f64>) -> Vec<Vec<f64>> {
        self.shared.slots.lock().expect("a worker thread panicked")[self.rank] = values;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().expect("a worker thread panicked").clone();
        // Nobody posts the next sum before everyone has read this one.
        self.shared.barrier.wait();
        all
    }
}

impl Workers for LocalWorker {
    fn rank(&self) -> usize {
        self.rank
    }
    fn count(&self) -> usize {
        self.count
    }
    fn sum_f32(&self, values: &mut [f32]) {
        let all = self.exchange(values.iter().map(|&v| v as f64).collect());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().fold(0f32, |acc, w| acc + w[i] as f32);
        }
    }
    fn sum_f64(&self, values: &mut [f64]) {
        let all = self.exchange(values.to_vec());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().fold(0f64, |acc, w| acc + w[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once_and_differ_by_at_most_one() {
        for len in 0..12 {
            for count in 1..6 {
                let shares: Vec<Range<usize>> = (0..count).map(|r| share(len, r, count)).collect();
                assert_eq!(shares.iter().flat_map(|s| s.clone()).collect::<Vec<_>>(), (0..len).collect::<Vec<_>>());
                let sizes: Vec<usize> = shares.iter().map(|s| s.len()).collect();
                assert!(
                    sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                    "{len} over {count}: {sizes:?}"
                );
            }
        }
    }

    #[test]
    fn local_workers_sum_in_rank_order_and_agree_to_the_bit() {
        let workers = LocalWorker::group(3);
        let results: Vec<(Vec<f32>, Vec<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter()
                .map(|w| {
                    s.spawn(move || {
                        let r = w.rank() as f32;
                        // Values whose sum depends on the order (1e8 + 1 − 1e8).
                        let mut a = vec![[1e8f32, 1.0, -1e8][w.rank()], r, 0.5];
                        w.sum_f32(&mut a);
                        let mut b = vec![r as f64 * 0.25, 1.0];
                        w.sum_f64(&mut b);
                        (a, b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (a, b) in &results {
            assert_eq!(a, &results[0].0);
            assert_eq!(b, &results[0].1);
        }
        assert_eq!(results[0].0, vec![(1e8f32 + 1.0) - 1e8, 3.0, 1.5]);
        assert_eq!(results[0].1, vec![0.75, 3.0]);
        assert_eq!((Single.rank(), Single.count()), (0, 1));
    }
}
