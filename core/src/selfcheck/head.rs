//! The output head (log-softmax statistics over vocabulary chunks, and its backward into the
//! hidden states) and sampling (greedy argmax exactly; seeded draws within the top-k / top-p set
//! and reproducible).

use rand::Rng;

use super::{Checker, rng};
use crate::dtype::{self, Dtype};
use crate::gpu::{Gpu, GpuResult};
use crate::numeric::{f32s, f64s, normal};
use crate::ops::decode::{Sampler, SamplingConfig, allowed_tokens, sample_once};
use crate::ops::output_head::{HeadShape, OutputHead, head_backward_ref, head_once, head_ref};

/// Log-sum-exp, log-prob and entropy over ≤ 700 logits, each a 16-term f32 dot product, folded
/// in f32 blocks: the kernel tests' bound against the f64 reference.
const HEAD_BOUND: f64 = 1e-5;

pub(super) async fn output_head(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("output head");
    // Several chunks with a ragged last one; bf16 and Q8 weights split into two row shards.
    for (rows, hidden, vocab, chunk, dt, temperature, starts) in [
        (3usize, 16usize, 700usize, 256usize, Dtype::F32, 1.0f32, vec![0usize]),
        (5, 20, 301, 128, Dtype::Bf16, 0.7, vec![0, 150]),
        // A quantised embedding as the tied head (SmolLM2's GGUF stores it as Q8_0).
        (4, 32, 257, 128, Dtype::Q8, 1.0, vec![0, 100]),
    ] {
        let s = HeadShape { rows, hidden, vocab, chunk };
        let h = normal(&mut rng, rows * hidden);
        let w = dtype::round_trip(dt, &normal(&mut rng, vocab * hidden));
        let targets: Vec<u32> = (0..rows).map(|_| rng.random_range(0..vocab as u32)).collect();
        let dlogp = normal(&mut rng, rows);
        let dh0 = normal(&mut rng, rows * hidden);
        let head = OutputHead::new(gpu, s, dt, &starts).await?;
        let shards: Vec<(usize, &[f32])> = starts
            .iter()
            .enumerate()
            .map(|(i, &r0)| (r0, &w[r0 * hidden..starts.get(i + 1).copied().unwrap_or(vocab) * hidden]))
            .collect();
        let (stats, dh) = head_once(gpu, &head, &shards, &h, &targets, &dlogp, &dh0, temperature).await?;
        let (hd, wd) = (f64s(&h), f64s(&w));
        let want = head_ref(&hd, &wd, &targets, s, temperature as f64);
        // row_stats is [rows, 4]: z_target, then the (lse, logp, entropy) the reference gives.
        let got: Vec<f32> = stats.chunks(4).flat_map(|r| r[1..4].to_vec()).collect();
        let want: Vec<f32> = want.iter().flat_map(|r| f32s(r)).collect();
        let name = format!("{rows} rows x {hidden}, vocab {vocab} in chunks of {chunk}, W {dt:?}, T={temperature}");
        c.close("head lse, logp, entropy", name.clone(), got, &want, super::product_bound(gpu, HEAD_BOUND));
        let grad = head_backward_ref(&hd, &wd, &targets, &f64s(&dlogp), s, temperature as f64);
        let dh_want: Vec<f32> = grad.iter().zip(&dh0).map(|(g, d)| (g + *d as f64) as f32).collect();
        c.close("head dh += ∂logp/∂h", name, dh, &dh_want, super::product_bound(gpu, HEAD_BOUND));
    }
    Ok(())
}

pub(super) async fn sampling(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("sampling");
    let sampler = Sampler::new(gpu).await?;
    // Greedy: the argmax of each row, the lowest id on ties.
    let (rows, vocab) = (5usize, 1003usize);
    let mut logits = normal(&mut rng, rows * vocab);
    logits[2 * vocab + 17] = 50.0;
    logits[2 * vocab + 900] = 50.0;
    let greedy = SamplingConfig::greedy();
    let got = sample_once(gpu, &sampler, &logits, vocab, &greedy, 0).await?;
    let want: Vec<u32> = logits.chunks(vocab).map(|row| allowed_tokens(row, &greedy)[0] as u32).collect();
    c.exact("greedy argmax", format!("{rows} rows x {vocab}, a tie"), got, &want);

    // Seeded draws: each within the set the temperature → top-k → top-p warpers keep, and the
    // same seed and step draw the same ids.
    let (rows, vocab) = (32usize, 50usize);
    let logits: Vec<f32> = (0..rows * vocab).map(|_| rng.random::<f32>() * 4.0).collect();
    for cfg in [
        SamplingConfig { temperature: 0.8, top_k: 5, top_p: 1.0, seed: 7 },
        SamplingConfig { temperature: 1.3, top_k: 10, top_p: 0.6, seed: 9 },
    ] {
        let name = format!("{rows} rows x {vocab}, T={} top-k {} top-p {}", cfg.temperature, cfg.top_k, cfg.top_p);
        let allowed: Vec<Vec<usize>> = logits.chunks(vocab).map(|row| allowed_tokens(row, &cfg)).collect();
        let first = sample_once(gpu, &sampler, &logits, vocab, &cfg, 3).await?;
        c.drawn_from("sample within top-k/top-p", name.clone(), first.clone(), &allowed);
        let again = sample_once(gpu, &sampler, &logits, vocab, &cfg, 3).await?;
        c.exact("sample reproducible (seed, step)", name, again, &first);
    }
    Ok(())
}
