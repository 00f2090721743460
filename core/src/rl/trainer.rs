//! Stage 2, reinforcement learning from the SFT adapter (RANK_GRPO.md §5–8): the RL trainer that
//! `convrec train`, the demo, the experiment and the browser page all drive.
//!
//! One step: merge the current adapter into the base on the GPU, sample G completions for each
//! of the step's prompts (shared prefill, temperature 1), score the decoded text, segment tokens
//! into ranks and normalise rewards within each prompt's group ([`RlTrainer::rollout`]); then — μ
//! times — the current log-probs (and, once, the reference adapter's), the objective and its
//! gradient with respect to each token's log-prob on the GPU, the backward through the LoRA model
//! with those gradients as per-token weights, and one AdamW step ([`RlTrainer::update`]).

use std::rc::Rc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::advantage::{Level, token_advantages};
use super::objective::{GroupTokens, Objective, ObjectiveConfig, rank_mean_weights};
use super::rollout::{RewardKind, SampleStats, ScoredCompletion, score_completion};
use crate::gpu::{Gpu, GpuBuffer};
use crate::model::generate::{GenerateRequest, generate};
use crate::model::gpu::GpuModel;
use crate::model::text::ChatText;
use crate::ops::adamw::AdamWConfig;
use crate::ops::decode::SamplingConfig;
use crate::rec::{Catalog, InputError, MatchConfig, Row};
use crate::train::TrainError;
use crate::train::adapter_view::AdapterView;
use crate::train::lora::LoraLayout;
use crate::train::trainer::{LoraTrainer, MicroBatch, Schedule};
use crate::workers::{Single, Workers, share};

/// The RL algorithm: which importance-ratio level and which rewards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// Per-rank rewards and advantages, rank-level (geometric-mean) ratios.
    RankGrpo,
    /// Sequence reward (DCG), token-level ratios.
    Grpo,
    /// Sequence reward (DCG), sequence-level ratios.
    Gspo,
}

impl Algo {
    pub const ALL: [Algo; 3] = [Algo::RankGrpo, Algo::Grpo, Algo::Gspo];

    pub fn level(self) -> Level {
        match self {
            Algo::RankGrpo => Level::Item,
            Algo::Grpo => Level::Token,
            Algo::Gspo => Level::Sequence,
        }
    }

    /// The name used on the command line, in metrics and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Algo::RankGrpo => "rank-grpo",
            Algo::Grpo => "grpo",
            Algo::Gspo => "gspo",
        }
    }
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Algo::ALL
            .into_iter()
            .find(|a| a.name() == s.to_ascii_lowercase().replace('_', "-"))
            .ok_or_else(|| format!("unknown algorithm `{s}` (rank-grpo, grpo or gspo)"))
    }
}

/// How each token's loss is weighted in the step's loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Σ_t L_t / (tokens in the step) — "bnpo".
    TokenMean,
    /// The paper's form: mean over a rank's tokens, then over ranks, then over completions.
    RankMean,
}

impl std::str::FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "token-mean" | "token_mean" => Ok(Aggregation::TokenMean),
            "rank-mean" | "rank_mean" => Ok(Aggregation::RankMean),
            other => Err(format!("unknown aggregation `{other}` (token-mean or rank-mean)")),
        }
    }
}

/// What a front end chooses for an RL run. `None` means the algorithm's default (§7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlConfig {
    pub algo: Algo,
    pub aggregation: Aggregation,
    pub reward: RewardKind,
    /// Completions sampled per prompt (G).
    pub group_size: usize,
    /// Updates per generation batch: 1 (on-policy) or more (then the ratios matter).
    pub mu: u64,
    /// Constant learning rate.
    pub lr: f32,
    pub beta: Option<f32>,
    pub eps_low: Option<f32>,
    pub eps_high: Option<f32>,
    /// Sampling temperature (log-probs are taken at the same temperature).
    pub temperature: f32,
    pub max_new_tokens: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Items a list should hold (the paper: 20).
    pub rec_num: usize,
    /// Seeds the prompt order and the sampling.
    pub seed: u64,
    pub recompute: bool,
}

impl RlConfig {
    /// The paper's recipe where it applies to LoRA (§6–8), for `algo`: G = 8, on-policy, token-mean.
    /// The learning rate is larger than the paper's 1e-6 for full weights: LoRA adapters move less
    /// per step.
    pub fn new(algo: Algo) -> Self {
        RlConfig {
            algo,
            aggregation: Aggregation::TokenMean,
            reward: RewardKind::ExpInf,
            group_size: 8,
            mu: 1,
            lr: 1e-5,
            beta: None,
            eps_low: None,
            eps_high: None,
            temperature: 1.0,
            max_new_tokens: 256,
            micro_batch: 4,
            rec_num: 20,
            seed: 0,
            recompute: false,
        }
    }

    /// The objective's settings: the algorithm's defaults, overridden where given.
    pub fn objective(&self) -> ObjectiveConfig {
        let defaults = ObjectiveConfig::defaults(self.algo.level());
        ObjectiveConfig {
            eps_low: self.eps_low.unwrap_or(defaults.eps_low),
            eps_high: self.eps_high.unwrap_or(defaults.eps_high),
            beta: self.beta.unwrap_or(defaults.beta),
            rec_num: self.rec_num,
            ..defaults
        }
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Invalid(what));
        if self.group_size < 2 {
            return bad("the group size must be at least 2: advantages are relative to the group".into());
        }
        if self.mu == 0 {
            return bad("at least one update per generation batch (μ ≥ 1) is needed".into());
        }
        if self.max_new_tokens == 0 {
            return bad("at least one new token per completion is needed".into());
        }
        if self.micro_batch == 0 {
            return bad("the micro-batch must hold at least one sequence".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be a positive number".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("the sampling temperature must be positive (RL samples; greedy has no group)".into());
        }
        if self.rec_num == 0 || self.rec_num > super::objective::MAX_REC_NUM {
            return bad(format!("a list length of 1 to {} items is supported", super::objective::MAX_REC_NUM));
        }
        let o = self.objective();
        if !(o.eps_low.is_finite() && o.eps_high.is_finite() && o.eps_low >= 0.0 && o.eps_high >= 0.0) {
            return bad("the clip ranges must be non-negative numbers".into());
        }
        if !(o.beta.is_finite() && o.beta >= 0.0) {
            return bad("the KL coefficient must be a non-negative number".into());
        }
        Ok(())
    }
}

/// A prompt ready to sample from: its row and chat-templated, left-truncated ids.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub row: Row,
    pub ids: Vec<u32>,
}

/// The rows' conversations as prompts, cut from the left to `max_prompt_length` tokens. Every row
/// needs ground truth (it is what the reward scores). `origin` names the rows' source in errors.
pub fn rl_prompts(
    text: &ChatText,
    rows: Vec<Row>,
    max_prompt_length: usize,
    origin: &str,
) -> Result<Vec<Prompt>, TrainError> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        if row.groundtruth.is_empty() {
            return Err(InputError::entry(origin, i, "the row has no ground truth to reward").into());
        }
        let mut ids = text.prompt_ids(&row.chat_messages())?;
        if ids.len() > max_prompt_length {
            ids.drain(..ids.len() - max_prompt_length);
        }
        out.push(Prompt { row, ids });
    }
    Ok(out)
}

/// The prompts (indices) of 0-based optimiser step `step`: a seeded permutation per epoch,
/// walked in order, so that a run resumes from its step count alone.
pub fn step_prompts(step: u64, prompts: usize, per_step: usize, seed: u64) -> Vec<usize> {
    let per_step = per_step.max(1);
    let steps_per_epoch = prompts.div_ceil(per_step).max(1) as u64;
    let epoch = step / steps_per_epoch;
    let mut order: Vec<usize> = (0..prompts).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch)));
    let first = ((step % steps_per_epoch) as usize) * per_step;
    order[first..(first + per_step).min(prompts)].to_vec()
}

/// The sampled half of a step: sequences to train on and their per-token inputs.
#[derive(Clone, Debug, Default)]
pub struct Rollout {
    /// (prompt ids, completion ids up to and including the end token) per completion.
    pub seqs: Vec<(Vec<u32>, Vec<u32>)>,
    pub scored: Vec<ScoredCompletion>,
    /// Per completion, per token.
    pub advantages: Vec<Vec<f32>>,
    /// Per completion, per token: the rank the token belongs to.
    pub items: Vec<Vec<usize>>,
}

impl Rollout {
    /// Tokens of every sequence (prompt and completion).
    pub fn tokens(&self) -> usize {
        self.seqs.iter().map(|(p, c)| p.len() + c.len()).sum()
    }
}

/// What the learning half of a step did (the last of its μ updates).
#[derive(Clone, Debug, Default, Serialize)]
pub struct UpdateStats {
    pub loss: f64,
    /// Mean k3 KL to the reference adapter over the step's tokens.
    pub kl: f64,
    pub clip_fraction: f64,
    pub grad_norm: f32,
    pub lr: f32,
}

/// What one RL step did.
#[derive(Clone, Debug, Serialize)]
pub struct RlStep {
    /// Optimiser steps taken so far (this step's included).
    pub step: u64,
    #[serde(flatten)]
    pub update: UpdateStats,
    #[serde(flatten)]
    pub samples: SampleStats,
    pub tokens: usize,
    /// Seconds spent sampling, and on the whole step (by the clock the caller passed).
    pub generate_s: f64,
    pub step_s: f64,
}

pub struct RlTrainer {
    pub lora: LoraTrainer,
    pub config: RlConfig,
    objective_cfg: ObjectiveConfig,
    match_cfg: MatchConfig,
    /// The starting adapter, frozen: the KL reference.
    reference: GpuBuffer,
    view: AdapterView,
    objective: Objective,
    /// The run's workers: each samples, scores and trains on its share of every step's prompts
    /// (see `workers`).
    workers: Rc<dyn Workers>,
}

/// Each completion's per-token log-probs from a micro-batch's row statistics (row pad + P − 1 + j
/// predicts completion token j).
fn completion_rows(mb: &MicroBatch, seqs: &[(Vec<u32>, Vec<u32>)], logp: &[f32]) -> Vec<Vec<f32>> {
    seqs.iter()
        .enumerate()
        .map(|(s, (prompt, completion))| {
            let row0 = s * mb.t + mb.key_start[s] as usize + prompt.len() - 1;
            logp[row0..row0 + completion.len()].to_vec()
        })
        .collect()
}

impl RlTrainer {
    /// A trainer that starts from (and keeps as its KL reference) the adapter `start`.
    pub async fn new(
        gpu: &Gpu,
        base: &GpuModel,
        layout: LoraLayout,
        start: &[f32],
        config: RlConfig,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        // RL recipe (§8): AdamW β = (0.9, 0.99), no weight decay, clip 1.0, constant lr.
        let adamw = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 };
        let mut lora = LoraTrainer::new(gpu, layout.clone(), start, adamw).await?;
        lora.recompute = config.recompute;
        let objective_cfg = config.objective();
        Ok(RlTrainer {
            reference: gpu.upload("rl", "reference adapter", start)?,
            view: AdapterView::new(gpu, base, &layout).await?,
            objective: Objective::new(gpu).await?,
            match_cfg: MatchConfig { rec_num: objective_cfg.rec_num, ..MatchConfig::default() },
            objective_cfg,
            lora,
            config,
            workers: Rc::new(Single),
        })
    }

    /// Runs as one of `workers`: every worker must be built alike, be given the same prompts each
    /// step, and step together; the run is then the one a single process would make (to rounding).
    pub fn with_workers(mut self, workers: Rc<dyn Workers>) -> Self {
        self.workers = workers;
        self
    }

    pub fn objective_config(&self) -> &ObjectiveConfig {
        &self.objective_cfg
    }

    /// Widths of the per-rank columns of the step's sample statistics (hit rates, rewards): fixed,
    /// so that workers' sums line up even when one of them sampled nothing.
    fn stat_widths(&self) -> (usize, usize) {
        let rewards = if self.config.algo.level() == Level::Item { self.objective_cfg.rec_num } else { 1 };
        (self.objective_cfg.rec_num, rewards)
    }

    /// The base with the current adapter applied (merged or unmerged, `AdapterView`): what
    /// sampling and validation run.
    pub async fn adapted(&self, gpu: &Gpu) -> Result<&GpuModel, TrainError> {
        Ok(self.view.refresh(gpu, &self.lora.layout, &self.lora.params).await?)
    }

    /// Samples G completions for each prompt of this worker's share of the step's `prompts` with
    /// the current adapter, scores them and computes the per-token advantages (within each
    /// prompt's group, so no worker needs another's samples).
    pub async fn rollout(
        &self,
        gpu: &Gpu,
        text: &ChatText,
        catalog: &Catalog,
        prompts: &[&Prompt],
    ) -> Result<Rollout, TrainError> {
        let level = self.config.algo.level();
        let mine = share(prompts.len(), self.workers.rank(), self.workers.count());
        let prompts = &prompts[mine.clone()];
        if prompts.is_empty() {
            return Ok(Rollout::default());
        }
        let model = self.adapted(gpu).await?;
        let req = GenerateRequest {
            prompts: prompts.iter().map(|p| p.ids.clone()).collect(),
            // A completion's draws depend on the run seed, the step and its prompt's place in the
            // step, not on which worker samples it.
            first_sequence: (mine.start * self.config.group_size) as u32,
            num_samples: self.config.group_size,
            max_new_tokens: self.config.max_new_tokens,
            sampling: SamplingConfig {
                temperature: self.config.temperature,
                top_k: 0,
                top_p: 1.0,
                seed: self.config.seed.wrapping_mul(0x9E37_79B9).wrapping_add(self.lora.step),
            },
            stop_ids: text.stop_ids.clone(),
        };
        let completions = generate(gpu, model, &req, |_, _| {}).await?;
        let mut rollout = Rollout::default();
        for (p, prompt) in prompts.iter().enumerate() {
            let mut scored = Vec::with_capacity(self.config.group_size);
            for c in completions.iter().filter(|c| c.prompt == p) {
                let s = score_completion(
                    &c.tokens,
                    &text.token_texts(&c.tokens)?,
                    &text.decode(&c.tokens)?,
                    &text.stop_ids,
                    &prompt.row,
                    catalog,
                    level,
                    self.config.reward,
                    &self.match_cfg,
                );
                rollout.seqs.push((prompt.ids.clone(), c.tokens[..s.len].to_vec()));
                scored.push(s);
            }
            let rewards: Vec<Vec<f64>> = scored.iter().map(|s| s.rewards.clone()).collect();
            let segmented: Vec<_> = scored.iter().map(|s| s.segmented.clone()).collect();
            rollout.advantages.extend(token_advantages(level, &rewards, &segmented, self.objective_cfg.rec_num));
            rollout.items.extend(segmented.into_iter().map(|s| s.items));
            rollout.scored.extend(scored);
        }
        Ok(rollout)
    }

    /// Per-token log-probs of every completion token, `micro_batch` sequences per pass; with
    /// `grads`, also the backward with them as per-token loss weights.
    async fn completion_logp(
        &mut self,
        gpu: &Gpu,
        base: &GpuModel,
        seqs: &[(Vec<u32>, Vec<u32>)],
        grads: Option<&[Vec<f32>]>,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let micro = self.config.micro_batch.max(1);
        let mut out = Vec::with_capacity(seqs.len());
        for (c, chunk) in seqs.chunks(micro).enumerate() {
            let first = c * micro;
            let mb = MicroBatch::from_sequences(chunk, 16, |s, j| grads.map_or(0.0, |g| g[first + s][j]));
            let stats = self.lora.run(gpu, base, &mb, grads.is_some(), self.config.temperature).await?;
            out.extend(completion_rows(&mb, chunk, &stats.logp));
        }
        Ok(out)
    }

    /// The reference adapter's log-probs of the rollout (not needed when β = 0).
    async fn reference_logp(
        &mut self,
        gpu: &Gpu,
        base: &GpuModel,
        rollout: &Rollout,
    ) -> Result<Option<Vec<Vec<f32>>>, TrainError> {
        if self.objective_cfg.beta == 0.0 {
            return Ok(None);
        }
        let current = std::mem::replace(&mut self.lora.params, self.reference.clone());
        let logp = self.completion_logp(gpu, base, &rollout.seqs, None).await;
        self.lora.params = current;
        Ok(Some(logp?))
    }

    /// μ updates on a rollout (this worker's share of the step): log-probs, objective, backward,
    /// then the gradients summed over the workers and AdamW.
    pub async fn update(&mut self, gpu: &Gpu, base: &GpuModel, rollout: &Rollout) -> Result<UpdateStats, TrainError> {
        let workers = self.workers.clone();
        // The step's loss is normalised by the whole step's tokens (token-mean) or completions
        // (rank-mean), all workers' together.
        let tokens: usize = rollout.items.iter().map(Vec::len).sum();
        let mut counts = [tokens as f64, rollout.seqs.len() as f64];
        workers.sum_f64(&mut counts);
        let [step_tokens, step_completions] = counts;
        let ref_logp = match rollout.seqs.is_empty() {
            true => None,
            false => self.reference_logp(gpu, base, rollout).await?,
        };
        let lr = self.config.lr * Schedule::Constant.factor(self.lora.step);
        let temperature = self.config.temperature;
        // On-policy with the whole batch in one micro-batch, the objective is evaluated between
        // the forward and the backward of a single pass (its weights need the forward's own
        // log-probs); otherwise a log-prob pass, then forward+backward passes.
        let single_pass = self.config.mu == 1 && rollout.seqs.len() <= self.config.micro_batch;
        let mut old_logp: Option<Vec<Vec<f32>>> = None;
        let mut stats = UpdateStats { lr, ..UpdateStats::default() };
        for _ in 0..self.config.mu {
            let step = self.lora.step + 1;
            // This worker's part of: the loss, Σ k3 KL, clipped tokens, f16 overflows.
            let mut sums = [0f64; 4];
            if !rollout.seqs.is_empty() {
                let (logp, pending) = if single_pass {
                    let mb = MicroBatch::from_sequences(&rollout.seqs, 16, |_, _| 0.0);
                    let fwd = self.lora.forward(gpu, base, &mb, temperature).await?;
                    (completion_rows(&mb, &rollout.seqs, &fwd.stats.logp), Some(fwd))
                } else {
                    (self.completion_logp(gpu, base, &rollout.seqs, None).await?, None)
                };
                let old = old_logp.get_or_insert_with(|| logp.clone());
                let reference = ref_logp.as_ref().unwrap_or(&logp);
                let mut group = GroupTokens::concat(&rollout.items, &rollout.advantages, &logp, old, reference)?;
                group.weights = match self.config.aggregation {
                    Aggregation::TokenMean => vec![1.0 / step_tokens.max(1.0) as f32; group.items.len()],
                    Aggregation::RankMean => rank_mean_weights(
                        &group.split(&group.items),
                        self.objective_cfg.rec_num,
                        step_completions as usize,
                    ),
                };
                let out = self.objective.run(gpu, &self.objective_cfg, &group).await?;
                sums[0] = out.loss;
                sums[1] = sum_k3_kl(&group.logp, &group.ref_logp);
                sums[2] = out.clip_fraction * group.items.len() as f64;
                let grads = group.split(&out.grad);
                match pending {
                    Some(fwd) => {
                        let weights = MicroBatch::from_sequences(&rollout.seqs, 16, |s, j| grads[s][j]).weights;
                        self.lora.backward(gpu, base, &fwd, &weights).await?;
                    }
                    None => {
                        self.completion_logp(gpu, base, &rollout.seqs, Some(&grads)).await?;
                    }
                }
            }
            // Sampling, the forward and the backward of this step all ran before this check.
            sums[3] = gpu.take_f16_overflow().await? as u8 as f64;
            workers.sum_f64(&mut sums);
            let [loss, kl, clipped, overflows] = sums;
            // Checked before the update, so that a diverged step never reaches the adapter.
            if !loss.is_finite() {
                self.lora.zero_grads(gpu).await?;
                return Err(TrainError::NonFinite { step, what: "loss", value: loss });
            }
            if overflows > 0.0 {
                self.lora.zero_grads(gpu).await?;
                return Err(TrainError::F16Overflow { step });
            }
            stats.loss = loss;
            stats.kl = kl / step_tokens.max(1.0);
            stats.clip_fraction = clipped / step_tokens.max(1.0);
            self.lora.sum_grads(gpu, workers.as_ref()).await?;
            stats.grad_norm = self.lora.optimizer_step(gpu, lr, 1.0).await?;
            if !stats.grad_norm.is_finite() {
                return Err(TrainError::NonFinite { step, what: "gradient norm", value: stats.grad_norm as f64 });
            }
        }
        Ok(stats)
    }

    /// One whole step on `prompts`: rollout, then update. `now` reads a clock in seconds
    /// (`Instant` natively, `performance.now()` in a page) for the step's timings.
    pub async fn step(
        &mut self,
        gpu: &Gpu,
        base: &GpuModel,
        text: &ChatText,
        catalog: &Catalog,
        prompts: &[&Prompt],
        now: &dyn Fn() -> f64,
    ) -> Result<RlStep, TrainError> {
        let start = now();
        let rollout = self.rollout(gpu, text, catalog, prompts).await?;
        let generate_s = now() - start;
        let update = self.update(gpu, base, &rollout).await?;
        // The step's sample statistics and token count over all workers' completions.
        let widths = self.stat_widths();
        let mut sums = SampleStats::of(&rollout.scored).to_sums(widths);
        sums.push(rollout.tokens() as f64);
        self.workers.sum_f64(&mut sums);
        let tokens = sums.pop().unwrap_or(0.0) as usize;
        Ok(RlStep {
            step: self.lora.step,
            update,
            samples: SampleStats::from_sums(&sums, widths),
            tokens,
            generate_s,
            step_s: now() - start,
        })
    }
}

/// Sum over tokens of the k3 estimator `exp(r − l) − (r − l) − 1` of KL(π‖π_ref).
fn sum_k3_kl(logp: &[f32], ref_logp: &[f32]) -> f64 {
    logp.iter()
        .zip(ref_logp)
        .map(|(&lp, &r)| {
            let d = (r - lp) as f64;
            d.exp() - d - 1.0
        })
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_and_aggregations_parse_from_their_names() {
        for a in Algo::ALL {
            assert_eq!(a.name().parse::<Algo>(), Ok(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
        }
        assert_eq!("Rank_GRPO".parse::<Algo>(), Ok(Algo::RankGrpo));
        assert!("ppo".parse::<Algo>().unwrap_err().contains("rank-grpo"));
        assert_eq!("rank-mean".parse::<Aggregation>(), Ok(Aggregation::RankMean));
    }

    #[test]
    fn step_prompts_walk_a_seeded_permutation_per_epoch() {
        // 10 prompts, 4 per step: steps 0..3 cover epoch 0 (4 + 4 + 2), then epoch 1 reshuffles.
        let epoch0: Vec<usize> = (0..3).flat_map(|s| step_prompts(s, 10, 4, 7)).collect();
        let mut sorted = epoch0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(step_prompts(2, 10, 4, 7).len(), 2);
        let epoch1: Vec<usize> = (3..6).flat_map(|s| step_prompts(s, 10, 4, 7)).collect();
        assert_ne!(epoch0, epoch1, "each epoch has its own order");
        assert_eq!(step_prompts(4, 10, 4, 7), step_prompts(4, 10, 4, 7), "deterministic");
    }

    #[test]
    fn configs_outside_their_ranges_are_refused() {
        let ok = RlConfig::new(Algo::RankGrpo);
        assert!(ok.validate().is_ok());
        for (bad, what) in [
            (RlConfig { group_size: 1, ..ok.clone() }, "group size"),
            (RlConfig { mu: 0, ..ok.clone() }, "μ"),
            (RlConfig { lr: f32::NAN, ..ok.clone() }, "learning rate"),
            (RlConfig { micro_batch: 0, ..ok.clone() }, "micro-batch"),
            (RlConfig { beta: Some(-1.0), ..ok.clone() }, "KL"),
            (RlConfig { rec_num: 64, ..ok.clone() }, "list length"),
            (RlConfig { temperature: 0.0, ..ok.clone() }, "temperature"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn k3_kl_is_zero_at_the_reference_and_positive_elsewhere() {
        assert_eq!(sum_k3_kl(&[-1.0, -2.0], &[-1.0, -2.0]), 0.0);
        assert!(sum_k3_kl(&[-1.0, -2.0], &[-1.5, -1.0]) > 0.0);
    }
}
