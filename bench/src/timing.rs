//! Wall-clock timing of recorded GPU work: warm up once, size the repetition count to a time
//! budget, take the median of several rounds. Each round records `reps` copies of the op into one
//! batch, so launch and submission overheads are amortised the way a training step amortises them.

use std::time::{Duration, Instant};

use convrec_core::Gpu;
use convrec_core::gpu::{Batch, GpuResult};

/// Median seconds per repetition of `record`.
pub fn time_op(gpu: &Gpu, budget: Duration, mut record: impl FnMut(&mut Batch) -> GpuResult<()>) -> GpuResult<f64> {
    let mut run = |reps: usize| -> GpuResult<f64> {
        let mut batch = gpu.batch("bench");
        for _ in 0..reps {
            record(&mut batch)?;
        }
        let start = Instant::now();
        pollster::block_on(batch.submit())?;
        pollster::block_on(gpu.finish())?;
        Ok(start.elapsed().as_secs_f64() / reps as f64)
    };
    let first = run(1)?; // warm-up: pipeline compilation, first-touch allocation
    let estimate = run(1)?.min(first);
    let reps = ((budget.as_secs_f64() / 3.0 / estimate.max(1e-6)) as usize).clamp(1, 50);
    let mut samples: Vec<f64> = (0..3).map(|_| run(reps)).collect::<GpuResult<_>>()?;
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[1])
}
