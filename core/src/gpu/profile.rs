//! An opt-in profile of GPU work (native builds). Between [`Gpu::profile_start`] and
//! [`Gpu::profile_take`], every `Batch::submit` counts its dispatches per (batch op, kernel
//! family, variant) and adds its host time (recording and submission, wall clock) to its op.
//! With [`Timing::Gpu`] each dispatch also gets a compute pass of its own that writes a timestamp
//! query before and after it; the queries are resolved in the same command buffer, read back once
//! the work is done, and each dispatch's GPU time is added to its entry. With [`Timing::Host`]
//! the submission itself is unchanged, so host times are those of the unprofiled path. Off — the
//! default — submission is what it always is: one flag read.
//!
//! GPU timing serialises the work (a pass per dispatch, a wait per submission), so it says where
//! GPU time goes; an unprofiled run says how long a step takes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::context::{Batch, DISPATCHES_PER_QUERY_SET, Gpu};
use super::error::GpuResult;

/// What a profile measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timing {
    /// Dispatch counts and host time per submission; the submission is the plain one.
    Host,
    /// Also each dispatch's GPU time, from timestamp queries (where the device has them).
    Gpu,
}

/// Dispatches and GPU time of one (op, kernel family, variant).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KernelTime {
    /// The batch's op name (`gpu.batch(op)`).
    pub op: String,
    /// The shader file.
    pub family: String,
    /// The variant's label: entry point and specialisation.
    pub variant: String,
    pub dispatches: u64,
    /// Seconds between the timestamps around its dispatches (0 without timestamp queries).
    pub gpu_s: f64,
}

/// What the submits of one op cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpTime {
    pub op: String,
    pub submits: u64,
    pub dispatches: u64,
    /// Copies and clears (not timed on the GPU).
    pub other_steps: u64,
    /// Host wall time from the start of `submit` to the end of recording its command buffer
    /// (parameters upload, bind groups, passes), summed over submits.
    pub record_s: f64,
    /// Host wall time of the submission proper (`queue.submit` and the error scopes). On a
    /// driver that runs work inside its submit call (lavapipe) this includes the execution.
    pub submit_s: f64,
    /// The dispatches' GPU time, summed.
    pub gpu_s: f64,
    /// From each submit's first timestamp to its last, summed: GPU time with the gaps between
    /// dispatches.
    pub gpu_span_s: f64,
}

/// One kernel family's share of some ops.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FamilyTime {
    pub family: String,
    pub dispatches: u64,
    pub gpu_s: f64,
}

/// What a profiled stretch of work did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    pub timing: Timing,
    /// Whether GPU times were measured: [`Timing::Gpu`] on a device with timestamp queries.
    pub timestamps: bool,
    /// Sorted by op, family, variant.
    pub kernels: Vec<KernelTime>,
    /// Sorted by op.
    pub ops: Vec<OpTime>,
}

impl Profile {
    pub fn op(&self, name: &str) -> Option<&OpTime> {
        self.ops.iter().find(|o| o.op == name)
    }

    /// Dispatches and GPU time per kernel family over the ops named, most GPU time first.
    pub fn families(&self, ops: &[&str]) -> Vec<FamilyTime> {
        let mut by: BTreeMap<&str, FamilyTime> = BTreeMap::new();
        for k in self.kernels.iter().filter(|k| ops.contains(&k.op.as_str())) {
            let f =
                by.entry(&k.family).or_insert_with(|| FamilyTime { family: k.family.clone(), ..Default::default() });
            f.dispatches += k.dispatches;
            f.gpu_s += k.gpu_s;
        }
        let mut out: Vec<FamilyTime> = by.into_values().collect();
        out.sort_by(|a, b| b.gpu_s.total_cmp(&a.gpu_s).then(b.dispatches.cmp(&a.dispatches)));
        out
    }
}

/// The profiling switch (0 off, else the [`Timing`] + 1) and what has been gathered since it was
/// turned on.
#[derive(Default)]
pub(super) struct Profiler {
    state: AtomicU8,
    gathered: Mutex<Gathered>,
}

#[derive(Default)]
struct Gathered {
    kernels: BTreeMap<(String, &'static str, String), (u64, f64)>,
    ops: BTreeMap<String, OpTime>,
}

impl Profiler {
    pub(super) fn is_on(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 0
    }

    fn timing(&self) -> Option<Timing> {
        match self.state.load(Ordering::Relaxed) {
            1 => Some(Timing::Host),
            2 => Some(Timing::Gpu),
            _ => None,
        }
    }

    fn set(&self, timing: Option<Timing>) {
        let state = match timing {
            None => 0,
            Some(Timing::Host) => 1,
            Some(Timing::Gpu) => 2,
        };
        self.state.store(state, Ordering::Relaxed);
    }
}

impl Gpu {
    /// Starts a profile (dropping one in progress): from now on every submission is counted and
    /// timed, until [`Self::profile_take`].
    pub fn profile_start(&self, timing: Timing) {
        let profiler = self.profiler();
        *profiler.gathered.lock().expect("profile lock") = Gathered::default();
        profiler.set(Some(timing));
    }

    /// Stops profiling and returns what was gathered since [`Self::profile_start`] (an empty
    /// host profile if none was started).
    pub fn profile_take(&self) -> Profile {
        let profiler = self.profiler();
        let timing = profiler.timing().unwrap_or(Timing::Host);
        profiler.set(None);
        let gathered = std::mem::take(&mut *profiler.gathered.lock().expect("profile lock"));
        Profile {
            timing,
            timestamps: timing == Timing::Gpu && self.has_timestamps(),
            kernels: gathered
                .kernels
                .into_iter()
                .map(|((op, family, variant), (dispatches, gpu_s))| KernelTime {
                    op,
                    family: family.to_string(),
                    variant,
                    dispatches,
                    gpu_s,
                })
                .collect(),
            ops: gathered.ops.into_values().collect(),
        }
    }

    fn has_timestamps(&self) -> bool {
        self.device().features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }
}

/// `Batch::submit` while profiling: with GPU timing, the batch's dispatches in passes of their own
/// between timestamp queries and the readback of the queries; then the bookkeeping.
pub(super) async fn submit(batch: Batch) -> GpuResult<()> {
    let gpu = batch.gpu().clone();
    let (kernels, other_steps) = batch.contents();
    let dispatches = kernels.len() as u32;
    let timed = gpu.profiler().timing() == Some(Timing::Gpu) && gpu.has_timestamps() && dispatches > 0;
    let queries = if timed { Some(Queries::new(&gpu, dispatches)) } else { None };
    let sets = queries.as_ref().map_or(&[][..], |q| &q.sets[..]);
    let start = Instant::now();
    let mut recorded = start;
    batch
        .submit_with(sets, |encoder| {
            recorded = Instant::now();
            if let Some(q) = &queries {
                q.resolve(encoder);
            }
        })
        .await?;
    let (record_s, submit_s) = ((recorded - start).as_secs_f64(), recorded.elapsed().as_secs_f64());
    let ticks = match &queries {
        Some(q) => q.read(&gpu, batch.op()).await?,
        None => vec![0; 2 * kernels.len()],
    };
    let period = gpu.queue().get_timestamp_period() as f64 * 1e-9;
    let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 * period;

    let mut gathered = gpu.profiler().gathered.lock().expect("profile lock");
    let mut gpu_s = 0.0;
    for (kernel, pair) in kernels.iter().zip(ticks.chunks_exact(2)) {
        let s = seconds(pair[0], pair[1]);
        gpu_s += s;
        let entry = gathered.kernels.entry((batch.op().to_string(), kernel.family(), kernel.label().to_string()));
        let (n, t) = entry.or_default();
        *n += 1;
        *t += s;
    }
    let op = gathered
        .ops
        .entry(batch.op().to_string())
        .or_insert_with(|| OpTime { op: batch.op().to_string(), ..Default::default() });
    op.submits += 1;
    op.dispatches += kernels.len() as u64;
    op.other_steps += other_steps as u64;
    op.record_s += record_s;
    op.submit_s += submit_s;
    op.gpu_s += gpu_s;
    op.gpu_span_s += match (ticks.first(), ticks.last()) {
        (Some(&first), Some(&last)) => seconds(first, last),
        _ => 0.0,
    };
    Ok(())
}

/// The query sets of one submission, the buffer they resolve into and its mappable copy.
struct Queries {
    sets: Vec<wgpu::QuerySet>,
    count: u32,
    resolved: super::GpuBuffer,
    staging: super::GpuBuffer,
}

impl Queries {
    fn new(gpu: &Gpu, dispatches: u32) -> Self {
        let count = 2 * dispatches;
        let sets = (0..dispatches.div_ceil(DISPATCHES_PER_QUERY_SET))
            .map(|k| {
                let in_set = (dispatches - k * DISPATCHES_PER_QUERY_SET).min(DISPATCHES_PER_QUERY_SET);
                gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("convrec profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * in_set,
                })
            })
            .collect();
        let bytes = count as u64 * wgpu::QUERY_SIZE as u64;
        let resolved = gpu.pool().acquire(
            gpu.device(),
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            "profile timestamps",
        );
        Queries { sets, count, resolved, staging: gpu.staging(bytes) }
    }

    /// Resolves every set into consecutive stretches of one buffer (each set's offset is a
    /// multiple of 4,096 queries × 8 bytes, inside the 256-byte resolve alignment) and copies it
    /// out for mapping.
    fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let per_set = 2 * DISPATCHES_PER_QUERY_SET;
        for (k, set) in self.sets.iter().enumerate() {
            let first = k as u32 * per_set;
            let n = (self.count - first).min(per_set);
            encoder.resolve_query_set(set, 0..n, self.resolved.raw(), first as u64 * wgpu::QUERY_SIZE as u64);
        }
        let bytes = self.count as u64 * wgpu::QUERY_SIZE as u64;
        encoder.copy_buffer_to_buffer(self.resolved.raw(), 0, self.staging.raw(), 0, bytes);
    }

    /// The timestamps in ticks, two per dispatch, once the submission has finished.
    async fn read(&self, gpu: &Gpu, op: &str) -> GpuResult<Vec<u64>> {
        gpu.map_read::<u64>(op, &self.staging, self.count as u64 * wgpu::QUERY_SIZE as u64).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::gpu::{GpuBuffer, GpuOptions};
    use crate::ops::elementwise::{Embedding, SwiGlu};
    use crate::testing;

    /// A device of the test's own: the shared test device runs other tests' batches in parallel,
    /// and a profile counts every submission on its device.
    fn own_gpu() -> Option<Gpu> {
        testing::gpu()?;
        Some(pollster::block_on(Gpu::new(&GpuOptions::default())).expect("a second device on the test adapter"))
    }

    /// Known work on fixed inputs: SwiGLU forwards, embedding gathers, a copy and a clear.
    struct Known {
        swiglu: SwiGlu,
        embedding: Embedding,
        /// One row of gate | up, an embedding table, ids.
        inputs: [GpuBuffer; 3],
        swiglu_out: Vec<GpuBuffer>,
        gather_out: Vec<GpuBuffer>,
        copied: GpuBuffer,
        cleared: GpuBuffer,
    }

    const N: usize = 1000;
    const VOCAB: usize = 37;
    const H: usize = 13;

    impl Known {
        fn new(gpu: &Gpu, swiglus: usize, gathers: usize) -> Self {
            let mut rng = testing::rng("profile inputs");
            let up = |v: &[f32]| gpu.upload("t", "t", v).unwrap();
            let buffers = |count: usize, len: usize| (0..count).map(|_| up(&vec![0.0; len])).collect::<Vec<_>>();
            Known {
                swiglu: pollster::block_on(SwiGlu::new(gpu)).unwrap(),
                embedding: pollster::block_on(Embedding::new(gpu, VOCAB, H, Dtype::F32)).unwrap(),
                inputs: [
                    up(&testing::normal(&mut rng, 2 * N)),
                    up(&testing::normal(&mut rng, VOCAB * H)),
                    gpu.upload("t", "ids", &[3u32, 0, 36, 5]).unwrap(),
                ],
                swiglu_out: buffers(swiglus, N),
                gather_out: buffers(gathers, 4 * H),
                copied: up(&[0.0; N]),
                cleared: up(&[0.0; N]),
            }
        }

        fn outputs(&self) -> impl Iterator<Item = &GpuBuffer> {
            self.swiglu_out.iter().chain(&self.gather_out).chain([&self.copied, &self.cleared])
        }

        /// Poisons the outputs, then submits the work as one batch named `known`.
        fn submit(&self, gpu: &Gpu) {
            self.outputs().for_each(|b| gpu.fill_f32(b, f32::NAN));
            let [gate_up, table, ids] = &self.inputs;
            let mut b = gpu.batch("known");
            for out in &self.swiglu_out {
                self.swiglu.forward(&mut b, 1, N, gate_up, out).unwrap();
            }
            for out in &self.gather_out {
                self.embedding.record(&mut b, ids, 4, &[(0, table)], out).unwrap();
            }
            b.copy(&self.swiglu_out[0], &self.copied, N as u64 * 4);
            b.clear(&self.cleared);
            pollster::block_on(b.submit()).unwrap();
        }

        fn bits(&self, gpu: &Gpu) -> Vec<u32> {
            self.outputs()
                .flat_map(|b| pollster::block_on(gpu.read::<f32>("t", b)).unwrap())
                .map(f32::to_bits)
                .collect()
        }
    }

    #[test]
    fn a_profile_counts_each_family_and_leaves_results_bit_identical() {
        let Some(gpu) = own_gpu() else { return };
        let known = Known::new(&gpu, 3, 2);
        known.submit(&gpu);
        let before = known.bits(&gpu);
        assert!(before.iter().all(|&b| !f32::from_bits(b).is_nan()), "every output written");

        gpu.profile_start(Timing::Host);
        known.submit(&gpu);
        let host = gpu.profile_take();
        assert_eq!(known.bits(&gpu), before, "a host-profiled submission computes the same bits");
        gpu.profile_start(Timing::Gpu);
        known.submit(&gpu);
        let profile = gpu.profile_take();
        assert_eq!(known.bits(&gpu), before, "a GPU-profiled submission computes the same bits");
        known.submit(&gpu);
        assert_eq!(known.bits(&gpu), before, "and profiling off again too");

        assert!(!host.timestamps && host.kernels.iter().all(|k| k.gpu_s == 0.0));
        let counts = |p: &Profile| p.kernels.iter().map(|k| (k.variant.clone(), k.dispatches)).collect::<Vec<_>>();
        assert_eq!(counts(&host), counts(&profile), "both timings count the same dispatches");

        let families = profile.families(&["known"]);
        let count = |f: &str| families.iter().find(|x| x.family == f).map(|x| x.dispatches);
        assert_eq!((count("swiglu"), count("embedding")), (Some(3), Some(2)), "{families:?}");
        assert_eq!(families.len(), 2);
        let op = profile.op("known").expect("the batch's op");
        assert_eq!((op.submits, op.dispatches, op.other_steps), (1, 5, 2));
        assert!(op.record_s > 0.0 && op.submit_s > 0.0, "{op:?}");
        assert_eq!(profile.ops.len(), 1, "reads after profile_take are not counted: {:?}", profile.ops);
        assert!(profile.kernels.iter().all(|k| k.variant.starts_with(&k.family)));
        assert_eq!(profile.timestamps, gpu.summary().timestamp_queries);
        if profile.timestamps {
            assert!(families.iter().all(|f| f.gpu_s > 0.0), "{families:?}");
            assert!(op.gpu_span_s >= op.gpu_s && op.gpu_s > 0.0, "{op:?}");
        } else {
            eprintln!("no timestamp queries on this adapter: GPU times not checked");
        }
    }

    #[test]
    fn batches_longer_than_one_query_set_are_timed_whole() {
        let Some(gpu) = own_gpu() else { return };
        let dispatches = DISPATCHES_PER_QUERY_SET as usize + 10;
        let known = Known::new(&gpu, dispatches, 1);
        gpu.profile_start(Timing::Gpu);
        known.submit(&gpu);
        known.submit(&gpu);
        let profile = gpu.profile_take();
        let op = profile.op("known").expect("the batch's op");
        assert_eq!((op.submits, op.dispatches), (2, 2 * (dispatches as u64 + 1)));
        let swiglu = profile.families(&["known"]).into_iter().find(|f| f.family == "swiglu").unwrap();
        assert_eq!(swiglu.dispatches, 2 * dispatches as u64);
        if profile.timestamps {
            assert!(swiglu.gpu_s > 0.0);
        }
    }
}
