//! Decode-time ops: broadcasting one prompt's KV cache to G rows, and sampling the next token on
//! the GPU (a step's keys and values are written by `ops::attention_input`). WGSL: `shaders/kv_cache.wgsl`,
//! `shaders/sampling.wgsl`.

use std::sync::Arc;

use super::launch::{WG_1D, grid_1d, need, variant_1d};
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct KvParams {
    batch: u32,
    t: u32,
    kv_heads: u32,
    head_dim: u32,
    capacity: u32,
    pos0: u32,
    stride_y: u32,
    src_row: u32,
}

fn kv_variant(entry: &'static str) -> Variant {
    variant_1d("kv_cache", entry, vec![])
}

const SAMPLE_WG: u32 = 256;
const SAMPLE_ITERS: u32 = 32;

fn sample_variant() -> Variant {
    Variant {
        shader: "sampling",
        entry: "sample",
        defs: vec![Def::U32("WG", SAMPLE_WG), Def::U32("ITERS", SAMPLE_ITERS)],
    }
}

pub fn specializations() -> Vec<Variant> {
    vec![kv_variant("kv_broadcast"), sample_variant()]
}

/// Head-major cache geometry `[batch, kv_heads, capacity, head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub batch: usize,
    pub kv_heads: usize,
    pub capacity: usize,
    pub head_dim: usize,
}

impl CacheShape {
    pub fn elems(&self) -> usize {
        self.batch * self.kv_heads * self.capacity * self.head_dim
    }
}

/// Cache copies (writing a step's keys and values is `ops::attention_input`'s).
pub struct KvOps {
    broadcast: Arc<Kernel>,
}

const KV: &str = "kv cache";

impl KvOps {
    pub async fn new(gpu: &Gpu) -> GpuResult<Self> {
        let b = [Access::Read, Access::ReadWrite];
        Ok(KvOps { broadcast: gpu.kernel(&kv_variant("kv_broadcast"), &b).await? })
    }

    /// Copies the first `t` positions of row `src_row` of `src` (shape `src_shape`) to rows
    /// `dst_rows` of `dst` (shape `dst_shape`; same heads and capacity).
    #[allow(clippy::too_many_arguments)]
    pub fn broadcast(
        &self,
        b: &mut Batch,
        src_shape: CacheShape,
        src_row: usize,
        dst_shape: CacheShape,
        dst_rows: std::ops::Range<usize>,
        t: usize,
        src: &GpuBuffer,
        dst: &GpuBuffer,
    ) -> GpuResult<()> {
        if src_shape.capacity != dst_shape.capacity
            || src_shape.kv_heads != dst_shape.kv_heads
            || src_row >= src_shape.batch
            || t > src_shape.capacity
            || dst_rows.end > dst_shape.batch
            || dst_rows.is_empty()
        {
            return Err(GpuError::shape(
                KV,
                format!("cannot broadcast row {src_row} of {src_shape:?} into {dst_shape:?}"),
            ));
        }
        need(KV, "source cache", src, src_shape.elems())?;
        need(KV, "cache", dst, dst_shape.elems())?;
        let n = dst_rows.len() * dst_shape.kv_heads * t * dst_shape.head_dim;
        let (groups, stride_y) = grid_1d(b.gpu(), KV, n, WG_1D)?;
        let p = KvParams {
            batch: dst_rows.len() as u32,
            t: t as u32,
            kv_heads: dst_shape.kv_heads as u32,
            head_dim: dst_shape.head_dim as u32,
            capacity: dst_shape.capacity as u32,
            pos0: dst_rows.start as u32,
            stride_y,
            src_row: src_row as u32,
        };
        b.dispatch(&self.broadcast, &p, &[src, dst], groups);
        Ok(())
    }
}

/// Sampling settings, with Hugging Face's meanings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingConfig {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// ≥ 1 disables top-p.
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SampleParams {
    rows: u32,
    vocab: u32,
    top_k: u32,
    step: u32,
    temperature: f32,
    top_p: f32,
    seed_lo: u32,
    seed_hi: u32,
}

pub struct Sampler {
    kernel: Arc<Kernel>,
}

impl Sampler {
    pub async fn new(gpu: &Gpu) -> GpuResult<Self> {
        Ok(Sampler { kernel: gpu.kernel(&sample_variant(), &[Access::Read, Access::Read, Access::ReadWrite]).await? })
    }

    /// Draws one token per row of `logits [rows, vocab]` into `out_ids [rows]` (u32).
    /// `row_ids` (u32 per row) name each sequence for the RNG; `step` advances it.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        b: &mut Batch,
        cfg: &SamplingConfig,
        rows: usize,
        vocab: usize,
        step: u32,
        logits: &GpuBuffer,
        row_ids: &GpuBuffer,
        out_ids: &GpuBuffer,
    ) -> GpuResult<()> {
        need("sampling", "logits", logits, rows * vocab)?;
        need("sampling", "row ids", row_ids, rows)?;
        need("sampling", "output ids", out_ids, rows)?;
        let groups = b.gpu().check_workgroups("sampling", "rows", [rows as u64, 1, 1])?;
        let p = SampleParams {
            rows: rows as u32,
            vocab: vocab as u32,
            top_k: cfg.top_k,
            step,
            temperature: cfg.temperature.max(0.0),
            top_p: cfg.top_p,
            seed_lo: cfg.seed as u32,
            seed_hi: (cfg.seed >> 32) as u32,
        };
        b.dispatch(&self.kernel, &p, &[logits, row_ids, out_ids], groups);
        Ok(())
    }
}

/// The set of tokens a sampler may draw from (HF's temperature → top-k → top-p warpers), for
/// checking the GPU's draws: ids sorted by decreasing logit.
pub fn allowed_tokens(logits: &[f32], cfg: &SamplingConfig) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if cfg.temperature <= 0.0 {
        return vec![order[0]];
    }
    let t = cfg.temperature as f64;
    let mut kept = order.clone();
    if cfg.top_k > 0 && (cfg.top_k as usize) < kept.len() {
        let kth = logits[kept[cfg.top_k as usize - 1]];
        kept.retain(|&i| logits[i] >= kth);
    }
    if cfg.top_p < 1.0 {
        let m = logits[kept[0]] as f64 / t;
        let w: Vec<f64> = kept.iter().map(|&i| (logits[i] as f64 / t - m).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let mut n = 0;
        for wi in &w {
            acc += wi / total;
            n += 1;
            if acc >= cfg.top_p as f64 - 1e-6 {
                break;
            }
        }
        kept.truncate(n.max(1));
    }
    kept
}

/// Draws one token per row of `logits` (`[rows, vocab]`) once on the GPU, the rows named 0…rows−1
/// for the RNG; the output starts as `u32::MAX`, which no draw can leave.
pub async fn sample_once(
    gpu: &Gpu,
    sampler: &Sampler,
    logits: &[f32],
    vocab: usize,
    cfg: &SamplingConfig,
    step: u32,
) -> GpuResult<Vec<u32>> {
    const OP: &str = "sampling";
    let rows = logits.len() / vocab.max(1);
    let lb = gpu.upload(OP, "logits", logits)?;
    let ids = gpu.upload(OP, "row ids", &(0..rows as u32).collect::<Vec<_>>())?;
    let out = gpu.upload(OP, "out", &vec![u32::MAX; rows])?;
    let mut b = gpu.batch(OP);
    sampler.record(&mut b, cfg, rows, vocab, step, &lb, &ids, &out)?;
    b.submit().await?;
    gpu.read::<u32>(OP, &out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use rand::Rng;

    #[test]
    fn broadcast_copies_one_sequences_prefix_to_other_rows() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("kv cache");
        let ops = pollster::block_on(KvOps::new(&gpu)).unwrap();
        let s = CacheShape { batch: 2, kv_heads: 3, capacity: 7, head_dim: 4 };
        let t = 5;
        let src = testing::normal(&mut rng, s.elems());
        let cache = gpu.upload("t", "cache", &src).unwrap();
        let dst_shape = CacheShape { batch: 4, ..s };
        let dst = gpu.upload("t", "dst", &vec![f32::NAN; dst_shape.elems()]).unwrap();
        let mut b = gpu.batch("t");
        ops.broadcast(&mut b, s, 1, dst_shape, 1..4, t, &cache, &dst).unwrap();
        pollster::block_on(b.submit()).unwrap();
        let at = |b: usize, g: usize, pos: usize, d: usize| ((b * s.kv_heads + g) * s.capacity + pos) * s.head_dim + d;
        let got = pollster::block_on(gpu.read::<f32>("t", &dst)).unwrap();
        for row in 0..4 {
            for g in 0..s.kv_heads {
                for pos in 0..s.capacity {
                    for d in 0..s.head_dim {
                        let got = got[at(row, g, pos, d)];
                        if row >= 1 && pos < t {
                            assert_eq!(got, src[at(1, g, pos, d)], "row {row} head {g} position {pos}");
                        } else {
                            assert!(got.is_nan(), "row {row} position {pos} is not written");
                        }
                    }
                }
            }
        }
        let err = ops.broadcast(&mut gpu.batch("t"), s, 2, dst_shape, 0..1, t, &cache, &dst).unwrap_err();
        assert!(err.to_string().contains("cannot broadcast row 2"), "{err}");
    }

    fn draw(gpu: &Gpu, sampler: &Sampler, logits: &[f32], vocab: usize, cfg: &SamplingConfig, step: u32) -> Vec<u32> {
        pollster::block_on(sample_once(gpu, sampler, logits, vocab, cfg, step)).unwrap()
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("greedy");
        let sampler = pollster::block_on(Sampler::new(&gpu)).unwrap();
        let (rows, vocab) = (5, 1003);
        let mut logits = testing::normal(&mut rng, rows * vocab);
        logits[2 * vocab + 17] = 50.0;
        logits[2 * vocab + 900] = 50.0; // tie: the lower id wins
        let got = draw(&gpu, &sampler, &logits, vocab, &SamplingConfig::greedy(), 0);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            assert_eq!(got[r] as usize, allowed_tokens(row, &SamplingConfig::greedy())[0], "row {r}");
        }
        assert_eq!(got[2], 17);
    }

    #[test]
    fn draws_respect_top_k_and_top_p_and_follow_the_distribution() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("sampling");
        let sampler = pollster::block_on(Sampler::new(&gpu)).unwrap();
        let vocab = 50;
        let rows = 64;
        let base: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>() * 4.0).collect();
        let logits: Vec<f32> = (0..rows).flat_map(|_| base.clone()).collect();
        for cfg in [
            SamplingConfig { temperature: 0.8, top_k: 5, top_p: 1.0, seed: 7 },
            SamplingConfig { temperature: 1.0, top_k: 0, top_p: 0.6, seed: 8 },
            SamplingConfig { temperature: 1.3, top_k: 10, top_p: 0.9, seed: 9 },
        ] {
            let allowed = allowed_tokens(&base, &cfg);
            let mut counts = vec![0usize; vocab];
            for step in 0..40 {
                for id in draw(&gpu, &sampler, &logits, vocab, &cfg, step) {
                    assert!(allowed.contains(&(id as usize)), "{cfg:?}: drew {id}, allowed {allowed:?}");
                    counts[id as usize] += 1;
                }
            }
            // Frequencies follow softmax(z/T) renormalised over the allowed set (2,560 draws:
            // a standard error of at most 0.01).
            let t = cfg.temperature as f64;
            let w: Vec<f64> = allowed.iter().map(|&i| (base[i] as f64 / t).exp()).collect();
            let total: f64 = w.iter().sum();
            let draws = counts.iter().sum::<usize>() as f64;
            for (k, &i) in allowed.iter().enumerate() {
                let (freq, p) = (counts[i] as f64 / draws, w[k] / total);
                assert!((freq - p).abs() < 0.05, "{cfg:?}: token {i} drawn {freq:.3}, probability {p:.3}");
            }
        }
        // Same seed and step → same draws; another seed → different draws.
        let cfg = SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1 };
        let a = draw(&gpu, &sampler, &logits, vocab, &cfg, 3);
        assert_eq!(a, draw(&gpu, &sampler, &logits, vocab, &cfg, 3));
        assert_ne!(a, draw(&gpu, &sampler, &logits, vocab, &SamplingConfig { seed: 2, ..cfg }, 3));
    }
}
