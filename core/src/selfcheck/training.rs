//! The training families: AdamW with gradient-norm clipping, and the RL objective
//! (`rl::objective`: the clipped GRPO-family loss with its k3 KL, and ∂loss/∂logp per token).

use rand::Rng;

use super::{Checker, rng};
use crate::gpu::{Gpu, GpuResult};
use crate::numeric::{f32s, f64s, fd_grad, normal};
use crate::ops::adamw::{AdamWConfig, adamw_once, adamw_steps_ref};
use crate::rl::advantage::Level;
use crate::rl::objective::{GroupTokens, Objective, ObjectiveConfig, loss_ref};

/// Two AdamW steps in f32 against f64: parameters (the kernel tests' bound).
const ADAMW_BOUND: f64 = 1e-6;
/// The gradient norm: a two-pass f32 sum of ~3,000 squares.
const NORM_BOUND: f64 = 1e-5;
/// The loss: an f32 sum over ~30 tokens, relative to 1 + |loss|.
const LOSS_BOUND: f64 = 1e-5;
/// ∂loss/∂logp against central differences of the f64 reference loss: f32 exponentials and
/// means per token (~1e-6) plus the differences' error; the inputs keep every ratio away from
/// the clip boundaries, where the loss has kinks.
const GRAD_BOUND: f64 = 1e-5;

pub(super) async fn adamw(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("adamw");
    // Three norm partials (1,024 gradients each, the last ragged); clipping active.
    let n = 3001;
    let cfg = AdamWConfig { max_grad_norm: 0.5, ..Default::default() };
    let p0 = normal(&mut rng, n);
    let grads: Vec<Vec<f32>> = (0..2).map(|_| normal(&mut rng, n)).collect();
    let (params, norm) = adamw_once(gpu, cfg, &p0, &grads, 1e-2, 0.5).await?;
    let (want, want_norm) = adamw_steps_ref(&p0, &grads, 1e-2, 0.5, cfg);
    let name = format!("n={n}, 2 steps, clip 0.5");
    c.close("adamw parameters", name.clone(), params, &f32s(&want), ADAMW_BOUND);
    c.close("adamw gradient norm", name, vec![norm], &[want_norm as f32], NORM_BOUND);
    Ok(())
}

pub(super) async fn objective(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("rl objective");
    let obj = Objective::new(gpu).await?;
    // Rank-GRPO (item level), GRPO (token) and GSPO (sequence) on one off-policy group.
    let group = group(&mut rng);
    let logp = f64s(&group.logp);
    for level in [Level::Item, Level::Token, Level::Sequence] {
        let cfg = ObjectiveConfig { rec_num: 5, beta: 0.05, ..ObjectiveConfig::defaults(level) };
        let out = obj.run(gpu, &cfg, &group).await?;
        let name = format!("{level:?} level, {} completions, {} tokens", group.spans.len(), group.logp.len());
        c.scalar("objective loss", name.clone(), out.loss, loss_ref(&cfg, &group, &logp), LOSS_BOUND);
        let fd = fd_grad(&|x| loss_ref(&cfg, &group, x), &logp);
        c.close("objective ∂loss/∂logp", name, out.grad, &f32s(&fd), GRAD_BOUND);
    }
    Ok(())
}

/// A group of 4 completions of ragged lengths, items increasing along each, with log-probs that
/// moved since sampling (ratios within ±5%: some tokens on the clipped branch at every level).
fn group(rng: &mut rand::rngs::StdRng) -> GroupTokens {
    let lengths = [5usize, 9, 3, 12];
    let mut items = Vec::new();
    let (mut adv, mut logp, mut old, mut reference) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &len in &lengths {
        items.push((0..len).map(|t| t / 2).collect::<Vec<usize>>());
        let lp: Vec<f32> = (0..len).map(|_| -rng.random_range(0.05f32..3.0)).collect();
        old.push(lp.iter().map(|&x| x + rng.random_range(-0.05f32..0.05)).collect());
        reference.push(lp.iter().map(|&x| x + rng.random_range(-0.5f32..0.5)).collect());
        adv.push((0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect());
        logp.push(lp);
    }
    GroupTokens::concat(&items, &adv, &logp, &old, &reference).expect("consistent lists")
}
