//! The clipped GRPO-family objective on the GPU (`shaders/grpo_loss.wgsl`): loss and
//! ∂loss/∂logp per token for a group of completions, with a CPU reference.

use std::sync::Arc;

use super::advantage::Level;
use crate::gpu::{Access, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

/// Bins: up to 63 ranks plus the overflow bin.
const BINS: u32 = 64;

/// The largest `rec_num` the kernel takes (one bin stays for the overflow tokens).
pub const MAX_REC_NUM: usize = BINS as usize - 1;

fn variant() -> Variant {
    Variant { shader: "grpo_loss", entry: "grpo_loss", defs: vec![Def::U32("BINS", BINS), Def::U32("WG", 64)] }
}

pub fn specializations() -> Vec<Variant> {
    vec![variant()]
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectiveConfig {
    pub level: Level,
    pub eps_low: f32,
    pub eps_high: f32,
    pub beta: f32,
    pub rec_num: usize,
}

impl ObjectiveConfig {
    /// The paper's defaults for each level (§7).
    pub fn defaults(level: Level) -> Self {
        let (eps_low, eps_high) = match level {
            Level::Item => (0.06, 0.08),
            Level::Token => (0.2, 0.26),
            Level::Sequence => (3e-4, 4e-4),
        };
        ObjectiveConfig { level, eps_low, eps_high, beta: 1e-3, rec_num: 20 }
    }
}

/// Per-token inputs of a group (completions concatenated).
#[derive(Clone, Debug, Default)]
pub struct GroupTokens {
    /// (start, length) of each completion.
    pub spans: Vec<(usize, usize)>,
    pub items: Vec<u32>,
    pub advantages: Vec<f32>,
    /// Aggregation weight of each token's loss.
    pub weights: Vec<f32>,
    pub logp: Vec<f32>,
    pub old_logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
}

impl GroupTokens {
    /// A group's completions laid end to end, with token-mean ("bnpo") weights: the layout that
    /// `Objective::run` and `loss_ref` read. Every argument holds one list per completion, and each
    /// of a completion's lists must be as long as its `items` (checked: a mismatch would silently
    /// shift every later completion's tokens).
    pub fn concat(
        items: &[Vec<usize>],
        advantages: &[Vec<f32>],
        logp: &[Vec<f32>],
        old_logp: &[Vec<f32>],
        ref_logp: &[Vec<f32>],
    ) -> GpuResult<Self> {
        const OP: &str = "group tokens";
        let g = items.len();
        for (what, lists) in
            [("advantages", advantages), ("logp", logp), ("old_logp", old_logp), ("ref_logp", ref_logp)]
        {
            if lists.len() != g {
                return Err(GpuError::shape(OP, format!("{what} has {} completions, items {g}", lists.len())));
            }
            if let Some(i) = (0..g).find(|&i| lists[i].len() != items[i].len()) {
                let (got, want) = (lists[i].len(), items[i].len());
                return Err(GpuError::shape(OP, format!("completion {i}: {what} has {got} values for {want} tokens")));
            }
        }
        let mut out = GroupTokens::default();
        for (i, ids) in items.iter().enumerate() {
            out.spans.push((out.items.len(), ids.len()));
            // Ids past u32 cannot occur in practice; they would land in the overflow bin anyway.
            out.items.extend(ids.iter().map(|&k| u32::try_from(k).unwrap_or(u32::MAX)));
            out.advantages.extend(&advantages[i]);
            out.logp.extend(&logp[i]);
            out.old_logp.extend(&old_logp[i]);
            out.ref_logp.extend(&ref_logp[i]);
        }
        out.weights = token_mean_weights(&out.spans.iter().map(|s| s.1).collect::<Vec<_>>());
        Ok(out)
    }

    /// Splits a per-token vector (the gradient, say; one value per token) back into completions.
    pub fn split<T: Clone>(&self, flat: &[T]) -> Vec<Vec<T>> {
        self.spans.iter().map(|&(s, l)| flat[s..s + l].to_vec()).collect()
    }
}

/// Token-mean ("bnpo") weights: 1 / total tokens.
pub fn token_mean_weights(lengths: &[usize]) -> Vec<f32> {
    let total: usize = lengths.iter().sum();
    vec![1.0 / total.max(1) as f32; total]
}

/// The paper's aggregation: mean over tokens of a rank, then over the ranks of a completion,
/// then over the step's `completions` (more than these when other workers hold the rest).
pub fn rank_mean_weights(items_per_completion: &[Vec<u32>], rec_num: usize, completions: usize) -> Vec<f32> {
    let g = completions.max(1) as f32;
    let mut out = Vec::new();
    for items in items_per_completion {
        let bin = |k: u32| (k as usize).min(rec_num);
        let mut counts = vec![0usize; rec_num + 1];
        for &k in items {
            counts[bin(k)] += 1;
        }
        let ranks = counts.iter().filter(|&&c| c > 0).count().max(1) as f32;
        out.extend(items.iter().map(|&k| 1.0 / (g * ranks * counts[bin(k)] as f32)));
    }
    out
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    completions: u32,
    level: u32,
    rec_num: u32,
    _pad: u32,
    eps_low: f32,
    eps_high: f32,
    beta: f32,
    _pad1: f32,
}

pub struct Objective {
    kernel: Arc<Kernel>,
}

/// Loss, per-token gradient and the fraction of tokens on the clipped branch.
#[derive(Clone, Debug)]
pub struct ObjectiveOutput {
    pub loss: f64,
    pub grad: Vec<f32>,
    pub clip_fraction: f64,
}

impl Objective {
    pub async fn new(gpu: &Gpu) -> GpuResult<Self> {
        use Access::*;
        Ok(Objective {
            kernel: gpu.kernel(&variant(), &[Read, Read, Read, Read, Read, Read, ReadWrite, ReadWrite]).await?,
        })
    }

    pub async fn run(&self, gpu: &Gpu, cfg: &ObjectiveConfig, g: &GroupTokens) -> GpuResult<ObjectiveOutput> {
        const OP: &str = "grpo objective";
        let n = g.logp.len();
        if cfg.rec_num > MAX_REC_NUM {
            return Err(GpuError::shape(OP, format!("rec_num {} exceeds {MAX_REC_NUM}", cfg.rec_num)));
        }
        for (what, len) in [
            ("items", g.items.len()),
            ("advantages", g.advantages.len()),
            ("weights", g.weights.len()),
            ("old_logp", g.old_logp.len()),
            ("ref_logp", g.ref_logp.len()),
        ] {
            if len != n {
                return Err(GpuError::shape(OP, format!("{what} has {len} values for {n} tokens")));
            }
        }
        if g.spans.iter().any(|&(s, l)| s + l > n) || n == 0 {
            return Err(GpuError::shape(OP, "a completion span lies outside the tokens (or there are none)"));
        }
        let spans: Vec<u32> = g.spans.iter().flat_map(|&(s, l)| [s as u32, l as u32]).collect();
        let adv_weight: Vec<f32> = g.advantages.iter().chain(&g.weights).copied().collect();
        let grad = gpu.storage(OP, "gradient", n as u64 * 4)?;
        let loss = gpu.storage(OP, "loss per completion", (2 * g.spans.len()) as u64 * 4)?;
        let bufs: Vec<GpuBuffer> = vec![
            gpu.upload(OP, "spans", &spans)?,
            gpu.upload(OP, "items", &g.items)?,
            gpu.upload(OP, "advantages", &adv_weight)?,
            gpu.upload(OP, "logp", &g.logp)?,
            gpu.upload(OP, "old logp", &g.old_logp)?,
            gpu.upload(OP, "ref logp", &g.ref_logp)?,
        ];
        let params = Params {
            completions: g.spans.len() as u32,
            level: match cfg.level {
                Level::Item => 0,
                Level::Token => 1,
                Level::Sequence => 2,
            },
            rec_num: cfg.rec_num as u32,
            _pad: 0,
            eps_low: cfg.eps_low,
            eps_high: cfg.eps_high,
            beta: cfg.beta,
            _pad1: 0.0,
        };
        let groups = gpu.check_workgroups(OP, "completions", [(g.spans.len() as u64).div_ceil(64), 1, 1])?;
        let mut b = gpu.batch(OP);
        b.dispatch(
            &self.kernel,
            &params,
            &[&bufs[0], &bufs[1], &bufs[2], &bufs[3], &bufs[4], &bufs[5], &grad, &loss],
            groups,
        );
        b.submit().await?;
        let per = gpu.read::<f32>(OP, &loss).await?;
        Ok(ObjectiveOutput {
            loss: per.chunks(2).map(|c| c[0] as f64).sum(),
            grad: gpu.read::<f32>(OP, &grad).await?,
            clip_fraction: per.chunks(2).map(|c| c[1] as f64).sum::<f64>() / n as f64,
        })
    }
}

/// CPU reference of the loss (f64), for tests and finite differences.
pub fn loss_ref(cfg: &ObjectiveConfig, g: &GroupTokens, logp: &[f64]) -> f64 {
    let mut total = 0.0;
    for &(s, l) in &g.spans {
        let rho: Vec<f64> = (s..s + l).map(|t| logp[t] - g.old_logp[t] as f64).collect();
        let bin = |t: usize| (g.items[t] as usize).min(cfg.rec_num);
        for t in s..s + l {
            let ell = match cfg.level {
                Level::Token => rho[t - s],
                Level::Sequence => rho.iter().sum::<f64>() / l as f64,
                Level::Item => {
                    let same: Vec<f64> = (s..s + l).filter(|&u| bin(u) == bin(t)).map(|u| rho[u - s]).collect();
                    same.iter().sum::<f64>() / same.len() as f64
                }
            };
            let w = ell.exp();
            let a = g.advantages[t] as f64;
            let c = w.clamp(1.0 - cfg.eps_low as f64, 1.0 + cfg.eps_high as f64);
            let d = g.ref_logp[t] as f64 - logp[t];
            total += g.weights[t] as f64 * (-(w * a).min(c * a) + cfg.beta as f64 * (d.exp() - d - 1.0));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, fd_grad, rel_err};
    use rand::Rng;

    fn random_group(rng: &mut rand::rngs::StdRng, g: usize, rec_num: usize, near_policy: f32) -> GroupTokens {
        let mut out = GroupTokens::default();
        let mut items_per = Vec::new();
        for _ in 0..g {
            let len = rng.random_range(3..30);
            let start = out.logp.len();
            out.spans.push((start, len));
            let mut item = 0u32;
            let mut items = Vec::new();
            for _ in 0..len {
                items.push(item);
                if rng.random::<f32>() < 0.3 {
                    item += 1;
                }
            }
            out.items.extend(&items);
            items_per.push(items);
            for _ in 0..len {
                let lp = -rng.random_range(0.05f32..3.0);
                out.logp.push(lp);
                out.old_logp.push(if near_policy > 0.0 {
                    lp + rng.random_range(-near_policy..near_policy)
                } else {
                    lp
                });
                out.ref_logp.push(lp + rng.random_range(-0.5..0.5));
                out.advantages.push(rng.random_range(-2.0..2.0));
            }
        }
        let _ = rec_num;
        out.weights = token_mean_weights(&out.spans.iter().map(|s| s.1).collect::<Vec<_>>());
        out
    }

    #[test]
    fn on_policy_loss_is_minus_mean_advantage_plus_kl() {
        // μ = 1: old = logp, so every ratio is 1 and nothing is clipped.
        let mut rng = testing::rng("objective on-policy");
        let mut g = random_group(&mut rng, 4, 5, 0.0);
        g.old_logp = g.logp.clone();
        g.ref_logp = g.logp.clone();
        let cfg = ObjectiveConfig { rec_num: 5, ..ObjectiveConfig::defaults(Level::Item) };
        let lp: Vec<f64> = g.logp.iter().map(|&x| x as f64).collect();
        let want = -g.advantages.iter().zip(&g.weights).map(|(a, w)| (*a as f64) * (*w as f64)).sum::<f64>();
        assert!((loss_ref(&cfg, &g, &lp) - want).abs() < 1e-9);
    }

    #[test]
    fn gpu_loss_and_gradient_match_the_reference_and_finite_differences_at_every_level() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("objective gpu");
        let obj = pollster::block_on(Objective::new(&gpu)).unwrap();
        for level in [Level::Item, Level::Token, Level::Sequence] {
            for near in [0.0f32, 0.02, 0.3] {
                let mut cfg = ObjectiveConfig { rec_num: 5, ..ObjectiveConfig::defaults(level) };
                cfg.beta = 0.05;
                let g = random_group(&mut rng, 6, 5, near);
                let out = pollster::block_on(obj.run(&gpu, &cfg, &g)).unwrap();
                let lp: Vec<f64> = g.logp.iter().map(|&x| x as f64).collect();
                let want = loss_ref(&cfg, &g, &lp);
                assert!(
                    (out.loss - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{level:?} near {near}: loss {} vs {want}",
                    out.loss
                );
                let fd = fd_grad(&|x| loss_ref(&cfg, &g, x), &lp);
                // The loss has kinks at the clip boundaries; random ratios land within the
                // finite-difference step of one with negligible probability.
                let fd32: Vec<f32> = fd.iter().map(|&x| x as f32).collect();
                let err = rel_err(&out.grad, &fd32);
                assert!(err <= 1e-3, "{level:?} near {near}: gradient rel. error {err:e}");
            }
        }
    }

    #[test]
    fn concat_lays_completions_end_to_end_and_split_undoes_it() {
        let items = vec![vec![0, 0, 1], vec![], vec![0, 5]];
        let per = |base: f32| -> Vec<Vec<f32>> {
            items
                .iter()
                .enumerate()
                .map(|(i, it)| (0..it.len()).map(|t| base + (10 * i + t) as f32).collect())
                .collect()
        };
        let g = GroupTokens::concat(&items, &per(0.0), &per(100.0), &per(200.0), &per(300.0)).unwrap();
        assert_eq!(g.spans, vec![(0, 3), (3, 0), (3, 2)], "an empty completion keeps its place");
        assert_eq!(g.items, vec![0, 0, 1, 0, 5]);
        assert_eq!(g.advantages, vec![0.0, 1.0, 2.0, 20.0, 21.0]);
        assert_eq!(g.ref_logp[3], 320.0);
        assert_eq!(g.weights, vec![0.2; 5], "bnpo: 1 / tokens in the group");
        assert_eq!(g.split(&g.logp), per(100.0));

        let mut short = per(100.0);
        short[2].pop();
        let err = GroupTokens::concat(&items, &per(0.0), &short, &per(200.0), &per(300.0)).unwrap_err().to_string();
        assert!(err.contains("completion 2: logp has 1 values for 2 tokens"), "{err}");
        let err = GroupTokens::concat(&items, &per(0.0), &per(1.0), &per(2.0)[..2], &per(3.0)).unwrap_err().to_string();
        assert!(err.contains("old_logp has 2 completions"), "{err}");
    }

    #[test]
    fn paper_aggregation_weights_average_ranks_then_completions() {
        let w = rank_mean_weights(&[vec![0, 0, 1], vec![0]], 20, 2);
        // Completion 0: 2 ranks; rank 0 has 2 tokens → 1/(2·2·2); rank 1 → 1/(2·2·1).
        assert_eq!(w, vec![0.125, 0.125, 0.25, 0.5]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
