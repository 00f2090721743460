//! The RL step's gradient end to end: the objective's ∂loss/∂logp (GPU), fed to the LoRA backward
//! as per-token weights on the completion tokens of left-padded micro-batches (as `convrec train`
//! does), must be the gradient of the objective with respect to the adapter, i.e. match central
//! finite differences of `loss_ref(cfg, group, logp(θ))` with logp(θ) from the model's forward.

use super::advantage::Level;
use super::objective::{GroupTokens, Objective, ObjectiveConfig, loss_ref};
use crate::gpu::Gpu;
use crate::model::Architecture;
use crate::model::gpu::GpuModel;
use crate::model::tests::{random_tensors, tiny_config};
use crate::ops::adamw::AdamWConfig;
use crate::testing;
use crate::train::lora::{LoraConfig, LoraLayout, Target};
use crate::train::trainer::{LoraTrainer, MicroBatch};
use rand::Rng;
use rand::rngs::StdRng;

type Seq = (Vec<u32>, Vec<u32>);

/// How far every importance ratio starts from a clip bound.
const MARGIN: f64 = 0.06;

/// Per completion token log-probs, `micro_batch` sequences per pass; with `grads`, the backward
/// runs with `grads[s][j]` as the weight of completion token j of sequence s (accumulating into
/// `trainer.grads`). The same bookkeeping as `convrec train`'s `completion_logp`.
fn completion_logp(
    gpu: &Gpu,
    model: &GpuModel,
    trainer: &mut LoraTrainer,
    seqs: &[Seq],
    micro_batch: usize,
    temperature: f32,
    grads: Option<&[Vec<f32>]>,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for (c, chunk) in seqs.chunks(micro_batch).enumerate() {
        let first = c * micro_batch;
        let mb = MicroBatch::from_sequences(chunk, 16, |s, j| grads.map_or(0.0, |g| g[first + s][j]));
        let stats = pollster::block_on(trainer.run(gpu, model, &mb, grads.is_some(), temperature)).unwrap();
        for (s, (prompt, completion)) in chunk.iter().enumerate() {
            let row0 = s * mb.t + mb.key_start[s] as usize + prompt.len() - 1;
            out.push(stats.logp[row0..row0 + completion.len()].to_vec());
        }
    }
    out
}

/// Item ids of a completion: ranks of 1–4 tokens each.
fn random_items(rng: &mut StdRng, len: usize) -> Vec<usize> {
    let mut item = 0;
    let mut left = rng.random_range(1..5);
    (0..len)
        .map(|_| {
            if left == 0 {
                item += 1;
                left = rng.random_range(1..5);
            }
            left -= 1;
            item
        })
        .collect()
}

/// The importance ratio of every token as `loss_ref` forms it (per token, or the geometric mean
/// over the token's rank).
fn ratios(cfg: &ObjectiveConfig, g: &GroupTokens) -> Vec<f64> {
    let mut out = Vec::new();
    for &(s, l) in &g.spans {
        let rho: Vec<f64> = (s..s + l).map(|t| g.logp[t] as f64 - g.old_logp[t] as f64).collect();
        for t in s..s + l {
            let ell = match cfg.level {
                Level::Token => rho[t - s],
                Level::Sequence => rho.iter().sum::<f64>() / l as f64,
                Level::Item => {
                    let same: Vec<f64> = (s..s + l).filter(|&u| g.items[u] == g.items[t]).map(|u| rho[u - s]).collect();
                    same.iter().sum::<f64>() / same.len() as f64
                }
            };
            out.push(ell.exp());
        }
    }
    out
}

#[test]
fn rl_step_gradient_is_the_gradient_of_the_objective_wrt_the_adapter() {
    let Some(gpu) = testing::gpu() else { return };
    let mut rng = testing::rng("rl backward fd");
    let config = tiny_config(Architecture::Llama, false);
    let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 64).unwrap();
    let layout = LoraLayout::new(
        &config,
        LoraConfig { r: 4, alpha: 8.0, targets: vec![Target::QProj, Target::VProj, Target::UpProj, Target::DownProj] },
    );
    // PEFT's init has B = 0 (no gradient reaches A): give B random values.
    let mut params = layout.init(rng.random());
    for f in layout.factors.iter().filter(|f| !f.is_a) {
        for p in &mut params[f.offset..f.offset + f.len()] {
            *p = rng.random_range(-0.2..0.2);
        }
    }
    let mut trainer =
        pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &params, AdamWConfig::default())).unwrap();
    let objective = pollster::block_on(Objective::new(&gpu)).unwrap();
    let vocab = config.vocab_size as u32;
    // Four sequences, two per micro-batch, of different lengths (so rows are left-padded).
    let seqs: Vec<Seq> = (0..4)
        .map(|_| {
            let p = rng.random_range(3..9);
            let c = rng.random_range(5..12);
            ((0..p).map(|_| rng.random_range(0..vocab)).collect(), (0..c).map(|_| rng.random_range(0..vocab)).collect())
        })
        .collect();
    let micro_batch = 2;

    for (level, temperature) in [(Level::Item, 1.0f32), (Level::Token, 0.5)] {
        let cfg = ObjectiveConfig { beta: 0.1, ..ObjectiveConfig::defaults(level) };
        let logp = completion_logp(&gpu, &model, &mut trainer, &seqs, micro_batch, temperature, None);
        let items: Vec<Vec<usize>> = seqs.iter().map(|(_, c)| random_items(&mut rng, c.len())).collect();
        let advantages: Vec<Vec<f32>> =
            seqs.iter().map(|(_, c)| (0..c.len()).map(|_| rng.random_range(-1.5f32..1.5)).collect()).collect();
        let reference: Vec<Vec<f32>> =
            logp.iter().map(|l| l.iter().map(|x| x + rng.random_range(-0.3f32..0.3)).collect()).collect();
        // Old log-probs off the current ones (as at μ = 2): each ratio (per token, or per rank at
        // the item level) is drawn below, between or above the clip bounds, at least `MARGIN`
        // from them (the loss has kinks there), and tokens of a rank get zero-mean jitter.
        let (lo, hi) = (1.0 - cfg.eps_low as f64, 1.0 + cfg.eps_high as f64);
        let regions = [(lo - 0.2, lo - MARGIN), (lo + MARGIN, hi - MARGIN), (hi + MARGIN, hi + 0.2)];
        let old: Vec<Vec<f32>> = logp
            .iter()
            .zip(&items)
            .map(|(lp, its)| {
                let mut old = vec![0f32; lp.len()];
                let ranks = if level == Level::Item { *its.last().unwrap() + 1 } else { lp.len() };
                for rank in 0..ranks {
                    let (a, b) = regions[rng.random_range(0..3)];
                    let log_ratio = rng.random_range(a..b).ln();
                    let tokens: Vec<usize> = (0..lp.len())
                        .filter(|&t| if level == Level::Item { its[t] == rank } else { t == rank })
                        .collect();
                    let jitter: Vec<f64> = tokens.iter().map(|_| rng.random_range(-0.05..0.05)).collect();
                    let mean = jitter.iter().sum::<f64>() / jitter.len() as f64;
                    for (&t, j) in tokens.iter().zip(&jitter) {
                        let j = if level == Level::Item { j - mean } else { 0.0 };
                        old[t] = (lp[t] as f64 - log_ratio - j) as f32;
                    }
                }
                old
            })
            .collect();
        let group = GroupTokens::concat(&items, &advantages, &logp, &old, &reference).unwrap();
        let r = ratios(&cfg, &group);
        assert!(r.iter().all(|&w| (w - lo).abs() > 0.9 * MARGIN && (w - hi).abs() > 0.9 * MARGIN), "{r:?}");

        // The training step's gradient: objective → per-token weights → LoRA backward.
        let out = pollster::block_on(objective.run(&gpu, &cfg, &group)).unwrap();
        let want = loss_ref(&cfg, &group, &testing::f64s(&group.logp));
        assert!((out.loss - want).abs() <= 1e-5 * (1.0 + want.abs()), "{level:?}: loss {} vs {want}", out.loss);
        assert!(out.clip_fraction > 0.0 && out.clip_fraction < 1.0, "{level:?}: clip fraction {}", out.clip_fraction);
        pollster::block_on(trainer.zero_grads(&gpu)).unwrap();
        completion_logp(&gpu, &model, &mut trainer, &seqs, micro_batch, temperature, Some(&group.split(&out.grad)));
        let grads = pollster::block_on(gpu.read::<f32>("test", &trainer.grads)).unwrap();
        assert!(grads.iter().all(|g| g.is_finite()));
        for f in &layout.factors {
            assert!(
                grads[f.offset..f.offset + f.len()].iter().any(|&g| g != 0.0),
                "{level:?}: {} has no gradient",
                f.peft_key()
            );
        }

        // Central differences of the objective along random directions in the adapter's space.
        // The step shrinks until no log-prob moves by more than 0.05 (so no ratio reaches a clip
        // bound, `MARGIN` away) and, to be sure, no token changes branch (clipped or not). Steps
        // stay as large as that allows: f32 log-probs leave ~2e-7 of noise in the loss.
        let clipped = |g: &GroupTokens| -> Vec<bool> { ratios(&cfg, g).iter().map(|&w| w < lo || w > hi).collect() };
        let base_clip = clipped(&group);
        let logp_at = |trainer: &mut LoraTrainer, p: &[f32]| -> Vec<f32> {
            gpu.write(&trainer.params, bytemuck::cast_slice(p));
            completion_logp(&gpu, &model, trainer, &seqs, micro_batch, temperature, None).concat()
        };
        for k in 0..3 {
            // Direction 0 spans every factor, 1 and 2 only the B factors.
            let dir: Vec<f32> = (0..layout.len)
                .map(|i| {
                    let is_b = layout.factors.iter().any(|f| !f.is_a && (f.offset..f.offset + f.len()).contains(&i));
                    if k == 0 || is_b { rng.random_range(-1.0f32..1.0) } else { 0.0 }
                })
                .collect();
            // Central difference at step h, if no log-prob moves by more than 0.05 and no token
            // changes branch.
            let mut central = |h: f32| -> Option<f64> {
                let shifted =
                    |sign: f32| -> Vec<f32> { params.iter().zip(&dir).map(|(p, d)| p + sign * h * d).collect() };
                let (up, down) = (logp_at(&mut trainer, &shifted(1.0)), logp_at(&mut trainer, &shifted(-1.0)));
                let moved = up.iter().chain(&down).zip(group.logp.iter().chain(&group.logp));
                let moved = moved.map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let same_branch = [&up, &down].iter().all(|lp| {
                    let g = GroupTokens { logp: lp.to_vec(), ..group.clone() };
                    clipped(&g) == base_clip
                });
                let loss = |lp: &[f32]| loss_ref(&cfg, &group, &testing::f64s(lp));
                (moved <= 0.05 && same_branch).then(|| (loss(&up) - loss(&down)) / (2.0 * h as f64))
            };
            let mut eps = 2e-3f32;
            let numeric = loop {
                if let Some(coarse) = central(eps) {
                    // Richardson extrapolation cancels the O(h²) term of the central difference.
                    let fine = central(eps / 2.0).expect("a smaller step stays on the same branches");
                    break (4.0 * fine - coarse) / 3.0;
                }
                eps /= 2.0;
                assert!(eps > 1e-6, "{level:?} direction {k}: log-probs move too fast for finite differences");
            };
            let analytic: f64 = grads.iter().zip(&dir).map(|(g, d)| *g as f64 * *d as f64).sum();
            // Relative to the derivative, or to its typical size (the norm of the per-parameter
            // terms) when a random direction happens to nearly cancel.
            let typical = grads.iter().zip(&dir).map(|(g, d)| (*g as f64 * *d as f64).powi(2)).sum::<f64>().sqrt();
            assert!(typical > 0.0, "{level:?} direction {k}: no gradient along it");
            let err = (numeric - analytic).abs() / analytic.abs().max(0.25 * typical);
            eprintln!(
                "{level:?} direction {k} (step {eps:.1e}): analytic {analytic:.6e}, finite difference {numeric:.6e}, rel. error {err:.2e}"
            );
            assert!(
                err <= 1e-2,
                "{level:?} direction {k}: directional derivative {analytic} vs finite difference {numeric} (rel. error {err:e})"
            );
        }
        gpu.write(&trainer.params, bytemuck::cast_slice(&params));
    }
}
