//! `convrec train`: Stage 2, reinforcement learning from the SFT adapter with Rank-GRPO (rank-level
//! importance ratios and per-rank advantages) or the GRPO / GSPO baselines (RANK_GRPO.md §5–8).
//!
//! One step: merge the current adapter into the base on the GPU, sample G completions for each of
//! the step's prompts (shared prefill, temperature 1), score the decoded text, segment tokens into
//! ranks, normalise rewards within each prompt's group, then — μ times — a forward pass for the
//! current log-probs (and, once, the reference adapter's), the objective and its gradient with
//! respect to each token's log-prob on the GPU, and the backward through the LoRA model with those
//! gradients as per-token weights, followed by one AdamW step. Metrics per step go to JSONL;
//! checkpoints are atomic and `--resume` continues from one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use convrec_core::model::chat::Message;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gpu::GpuModel;
use convrec_core::ops::adamw::AdamWConfig;
use convrec_core::ops::decode::SamplingConfig;
use convrec_core::rec::dataset::parse_dataset;
use convrec_core::rec::{Catalog, MatchConfig, Row};
use convrec_core::rl::advantage::{Level, token_advantages};
use convrec_core::rl::objective::{GroupTokens, Objective, ObjectiveConfig, rank_mean_weights};
use convrec_core::rl::rollout::{RewardKind, SampleStats, ScoredCompletion, score_completion};
use convrec_core::train::merge::LoraMerge;
use convrec_core::train::trainer::{LoraTrainer, MicroBatch, Schedule};
use convrec_core::{Gpu, GpuOptions};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::json;

use convrec::text_model::TextModel;

/// The RL algorithm: which importance-ratio level and which rewards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Algo {
    /// Per-rank rewards and advantages, rank-level (geometric-mean) ratios.
    RankGrpo,
    /// Sequence reward (DCG), token-level ratios.
    Grpo,
    /// Sequence reward (DCG), sequence-level ratios.
    Gspo,
}

impl Algo {
    pub fn level(self) -> Level {
        match self {
            Algo::RankGrpo => Level::Item,
            Algo::Grpo => Level::Token,
            Algo::Gspo => Level::Sequence,
        }
    }
}

/// How each token's loss is weighted in the step's loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Aggregation {
    /// Σ_t L_t / (tokens in the step) — "bnpo".
    TokenMean,
    /// The paper's form: mean over a rank's tokens, then over ranks, then over completions.
    RankMean,
}

#[derive(clap::Args, Clone, Serialize, Deserialize)]
pub struct Args {
    #[arg(long, value_enum, default_value = "rank-grpo")]
    pub algo: Algo,
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The SFT adapter (PEFT folder): the starting point and the KL reference.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Training rows (JSONL, Reddit-v2 schema, with ground truth).
    #[arg(long)]
    pub data: PathBuf,
    /// The catalog (TSV `title<TAB>year` with a header, or a JSON list).
    #[arg(long)]
    pub catalog: PathBuf,
    /// Output folder: adapter/, checkpoint/, metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Per-rank rewards: exp_inf (own hit) or log (discounted hits from this rank on).
    #[arg(long, default_value = "exp_inf")]
    pub reward: RewardKind,
    /// Completions sampled per prompt (G).
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// Prompts per optimiser step (the paper: 48).
    #[arg(long, default_value_t = 4)]
    pub prompts_per_step: usize,
    /// Optimiser steps (default: one pass over the rows).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Constant learning rate. The paper's 1e-6 is for full weights; LoRA adapters move less
    /// per step, hence a larger default.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    /// KL coefficient (default 1e-3).
    #[arg(long)]
    pub beta: Option<f32>,
    /// Lower clip (default: the algorithm's, RANK_GRPO.md §7).
    #[arg(long)]
    pub eps_low: Option<f32>,
    /// Upper clip (default: the algorithm's).
    #[arg(long)]
    pub eps_high: Option<f32>,
    /// Updates per generation batch: 1 (on-policy) or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub mu: u64,
    #[arg(long, value_enum, default_value = "token-mean")]
    pub aggregation: Aggregation,
    /// Sampling temperature (log-probs are taken at the same temperature).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Prompts are cut from the left to this many tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_prompt_length: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 4)]
    pub micro_batch: usize,
    /// Use only the first N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 10)]
    pub save_every: u64,
    /// Continue from a checkpoint folder (DIR/checkpoint of an earlier run).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Keep only each layer's input during the forward and recompute the rest in the backward:
    /// activation memory stops growing with depth, for about one more forward of compute.
    #[arg(long)]
    #[serde(default)]
    pub recompute: bool,
}

#[derive(Serialize, Deserialize)]
struct TrainState {
    step: u64,
    args: Args,
}

/// A prompt ready to sample from: its row and chat-templated, left-truncated ids.
struct Prompt {
    row: Row,
    ids: Vec<u32>,
}

fn prompts(tm: &TextModel, path: &Path, limit: Option<usize>, max_len: usize) -> anyhow::Result<Vec<Prompt>> {
    let name = path.display().to_string();
    let mut rows = parse_dataset(&name, &std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?)?;
    if let Some(n) = limit {
        rows.truncate(n);
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        if row.groundtruth.is_empty() {
            bail!("{name}: row {} has no ground truth to reward", i + 1);
        }
        let messages: Vec<Message> =
            row.prompt.iter().map(|m| Message::new(m.role.clone(), m.content.clone())).collect();
        let mut ids = tm.prompt_ids(&messages)?;
        if ids.len() > max_len {
            ids.drain(..ids.len() - max_len);
        }
        out.push(Prompt { row, ids });
    }
    Ok(out)
}

/// The sampled half of a step: sequences to train on and their per-token inputs.
struct Rollout {
    /// (prompt ids, completion ids up to and including the end token) per completion.
    seqs: Vec<(Vec<u32>, Vec<u32>)>,
    scored: Vec<ScoredCompletion>,
    advantages: Vec<Vec<f32>>,
    items: Vec<Vec<usize>>,
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

/// Per-token log-probs of every completion token, `micro_batch` sequences per pass.
fn completion_logp(
    gpu: &Gpu,
    model: &GpuModel,
    trainer: &mut LoraTrainer,
    seqs: &[(Vec<u32>, Vec<u32>)],
    micro_batch: usize,
    temperature: f32,
    grads: Option<&[Vec<f32>]>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(seqs.len());
    for (c, chunk) in seqs.chunks(micro_batch.max(1)).enumerate() {
        let first = c * micro_batch.max(1);
        let mb = MicroBatch::from_sequences(chunk, 16, |s, j| grads.map_or(0.0, |g| g[first + s][j]));
        let stats = pollster::block_on(trainer.run(gpu, model, &mb, grads.is_some(), temperature))?;
        out.extend(completion_rows(&mb, chunk, &stats.logp));
    }
    Ok(out)
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if args.group_size < 2 {
        bail!("--group-size must be at least 2: advantages are relative to the group");
    }
    let path = convrec::text_model::model_path(args.model.as_deref())?;
    let tm = convrec::text_model::load(&path)?;
    let catalog_name = args.catalog.display().to_string();
    let catalog = Catalog::parse(
        &catalog_name,
        &std::fs::read_to_string(&args.catalog).with_context(|| format!("reading {catalog_name}"))?,
    )?;
    let prompts = prompts(&tm, &args.data, args.limit, args.max_prompt_length)?;
    if prompts.is_empty() {
        bail!("{}: no rows", args.data.display());
    }
    let level = args.algo.level();
    let defaults = ObjectiveConfig::defaults(level);
    let objective_cfg = ObjectiveConfig {
        eps_low: args.eps_low.unwrap_or(defaults.eps_low),
        eps_high: args.eps_high.unwrap_or(defaults.eps_high),
        beta: args.beta.unwrap_or(defaults.beta),
        ..defaults
    };
    let match_cfg = MatchConfig { rec_num: objective_cfg.rec_num, ..MatchConfig::default() };

    let gpu = super::open_gpu(gpu_options)?;
    let longest = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0) + args.max_new_tokens + 16;
    let base = GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), longest)
        .with_context(|| format!("loading {}", path.display()))?;
    let (layout, start) = convrec::adapter_files::load_adapter(&args.adapter, &tm.config)?;
    // RL recipe (§8): AdamW β = (0.9, 0.99), no weight decay, clip 1.0, constant lr.
    let adamw = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 };
    let mut trainer = pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &start, adamw))?;
    trainer.recompute = args.recompute;
    let reference = gpu.upload("rl", "reference adapter", &start)?;
    let merge = pollster::block_on(LoraMerge::new(&gpu, &base, &layout))?;
    let objective = pollster::block_on(Objective::new(&gpu))?;
    if let Some(dir) = &args.resume {
        let state: TrainState = convrec::checkpoint::restore(dir, &mut trainer, &gpu, |s: &TrainState| s.step)?;
        eprintln!("resuming at step {}", state.step);
        for change in convrec::checkpoint::changed_args(&state.args, &args) {
            eprintln!("warning: --resume with a changed option ({change})");
        }
    }

    let steps_per_epoch = prompts.len().div_ceil(args.prompts_per_step) as u64;
    let total_steps = args.steps.unwrap_or(steps_per_epoch);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let base_name = convrec::text_model::base_model_name(args.model.as_deref(), &path);
    let end_ids = tm.stop_ids.clone();
    let bar = indicatif::ProgressBar::new(total_steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} steps · {msg} · ETA {eta}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{:?}", args.algo).to_lowercase());
    bar.set_position(trainer.step);
    let start_time = Instant::now();
    let mut tokens_seen = 0usize;
    let schedule = Schedule::Constant;
    while trainer.step < total_steps {
        let step_start = Instant::now();
        // The step's prompts: a seeded permutation per epoch, walked in order (resumable from
        // the step count alone).
        let epoch = trainer.step / steps_per_epoch;
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(epoch)));
        let first = ((trainer.step % steps_per_epoch) as usize) * args.prompts_per_step;
        let chosen: Vec<&Prompt> =
            order[first..(first + args.prompts_per_step).min(order.len())].iter().map(|&i| &prompts[i]).collect();

        // 1. Sample with the current adapter merged in.
        let mut b = gpu.batch("merge adapter");
        merge.record(&mut b, &layout, &trainer.params)?;
        pollster::block_on(b.submit())?;
        let req = GenerateRequest {
            prompts: chosen.iter().map(|p| p.ids.clone()).collect(),
            num_samples: args.group_size,
            max_new_tokens: args.max_new_tokens,
            sampling: SamplingConfig {
                temperature: args.temperature,
                top_k: 0,
                top_p: 1.0,
                seed: args.seed.wrapping_mul(0x9E37_79B9).wrapping_add(trainer.step),
            },
            stop_ids: end_ids.clone(),
        };
        let completions = pollster::block_on(generate(&gpu, &merge.model, &req, |_, _| {}))?;
        let gen_s = step_start.elapsed().as_secs_f64();

        // 2. Score, segment, and normalise within each prompt's group.
        let mut rollout = Rollout { seqs: Vec::new(), scored: Vec::new(), advantages: Vec::new(), items: Vec::new() };
        for (p, prompt) in chosen.iter().enumerate() {
            let group: Vec<_> = completions.iter().filter(|c| c.prompt == p).collect();
            let mut scored = Vec::with_capacity(group.len());
            for c in &group {
                let texts = tm.token_texts(&c.tokens)?;
                let text = tm.decode(&c.tokens)?;
                let s = score_completion(
                    &c.tokens,
                    &texts,
                    &text,
                    &end_ids,
                    &prompt.row,
                    &catalog,
                    level,
                    args.reward,
                    &match_cfg,
                );
                rollout.seqs.push((prompt.ids.clone(), c.tokens[..s.len].to_vec()));
                scored.push(s);
            }
            let rewards: Vec<Vec<f64>> = scored.iter().map(|s| s.rewards.clone()).collect();
            let segmented: Vec<_> = scored.iter().map(|s| s.segmented.clone()).collect();
            rollout.advantages.extend(token_advantages(level, &rewards, &segmented, objective_cfg.rec_num));
            rollout.items.extend(segmented.into_iter().map(|s| s.items));
            rollout.scored.extend(scored);
        }

        // 3. μ updates on this batch: log-probs, objective, backward, AdamW.
        let swap_params = |trainer: &mut LoraTrainer, buf: &convrec_core::gpu::GpuBuffer| {
            std::mem::replace(&mut trainer.params, buf.clone())
        };
        let mut old_logp: Option<Vec<Vec<f32>>> = None;
        let ref_logp = if objective_cfg.beta != 0.0 {
            let current = swap_params(&mut trainer, &reference);
            let r = completion_logp(&gpu, &base, &mut trainer, &rollout.seqs, args.micro_batch, args.temperature, None);
            trainer.params = current;
            Some(r?)
        } else {
            None
        };
        let (mut loss, mut kl, mut clip, mut grad_norm) = (0.0, 0.0, 0.0, 0.0);
        let lr = args.lr * schedule.factor(trainer.step);
        // On-policy with the whole batch in one micro-batch, the objective is evaluated between
        // the forward and the backward of a single pass (its weights need the forward's own
        // log-probs); otherwise a log-prob pass, then forward+backward passes.
        let single_pass = args.mu == 1 && rollout.seqs.len() <= args.micro_batch.max(1);
        for _ in 0..args.mu {
            let (logp, pending) = if single_pass {
                let mb = MicroBatch::from_sequences(&rollout.seqs, 16, |_, _| 0.0);
                let fwd = pollster::block_on(trainer.forward(&gpu, &base, &mb, args.temperature))?;
                (completion_rows(&mb, &rollout.seqs, &fwd.stats.logp), Some(fwd))
            } else {
                let lp = completion_logp(
                    &gpu,
                    &base,
                    &mut trainer,
                    &rollout.seqs,
                    args.micro_batch,
                    args.temperature,
                    None,
                )?;
                (lp, None)
            };
            let old = old_logp.get_or_insert_with(|| logp.clone());
            let reference_logp = ref_logp.as_ref().unwrap_or(&logp);
            let mut group = GroupTokens::concat(&rollout.items, &rollout.advantages, &logp, old, reference_logp)?;
            if args.aggregation == Aggregation::RankMean {
                group.weights = rank_mean_weights(&group.split(&group.items), objective_cfg.rec_num);
            }
            let out = pollster::block_on(objective.run(&gpu, &objective_cfg, &group))?;
            loss = out.loss;
            clip = out.clip_fraction;
            let n = group.logp.len().max(1) as f64;
            kl = group
                .logp
                .iter()
                .zip(&group.ref_logp)
                .map(|(&lp, &r)| {
                    let d = (r - lp) as f64;
                    d.exp() - d - 1.0
                })
                .sum::<f64>()
                / n;
            let grads = group.split(&out.grad);
            match pending {
                Some(fwd) => {
                    let weights = MicroBatch::from_sequences(&rollout.seqs, 16, |s, j| grads[s][j]).weights;
                    pollster::block_on(trainer.backward(&gpu, &base, &fwd, &weights))?;
                }
                None => {
                    completion_logp(
                        &gpu,
                        &base,
                        &mut trainer,
                        &rollout.seqs,
                        args.micro_batch,
                        args.temperature,
                        Some(&grads),
                    )?;
                }
            }
            grad_norm = pollster::block_on(trainer.optimizer_step(&gpu, lr, 1.0))?;
        }
        let tokens: usize = rollout.seqs.iter().map(|(p, c)| p.len() + c.len()).sum();
        tokens_seen += tokens;
        let stats = SampleStats::of(&rollout.scored);
        let elapsed = start_time.elapsed().as_secs_f64();
        let step_s = step_start.elapsed().as_secs_f64();
        bar.set_position(trainer.step);
        bar.set_message(format!(
            "NDCG@20 {:.3} · reward {:.3} · KL {:.4} · {:.0} tok/s",
            stats.ndcg20,
            stats.reward_per_rank.iter().sum::<f64>() / stats.reward_per_rank.len().max(1) as f64,
            kl,
            tokens as f64 / step_s
        ));
        writeln!(
            metrics,
            "{}",
            json!({
                "step": trainer.step, "algo": args.algo, "loss": loss, "kl": kl, "clip_fraction": clip,
                "grad_norm": grad_norm, "lr": lr, "ndcg20": stats.ndcg20,
                "reward_per_rank": stats.reward_per_rank, "hit_rate_per_rank": stats.hit_rate_per_rank,
                "mean_length": stats.mean_length, "mean_items": stats.mean_items,
                "overflow_rate": stats.overflow_rate, "early_stop_rate": stats.early_stop_rate,
                "cut_rate": stats.cut_rate, "completions": stats.completions,
                "tokens_per_s": tokens as f64 / step_s, "generate_s": gen_s, "step_s": step_s,
                "elapsed_s": elapsed, "tokens_seen": tokens_seen,
            })
        )?;
        let state = TrainState { step: trainer.step, args: args.clone() };
        if trainer.step % args.save_every.max(1) == 0 {
            convrec::checkpoint::save(&args.out.join("checkpoint"), &trainer, &gpu, &state, &base_name)?;
        }
    }
    bar.finish_and_clear();
    let state = TrainState { step: trainer.step, args: args.clone() };
    convrec::checkpoint::save(&args.out.join("checkpoint"), &trainer, &gpu, &state, &base_name)?;
    let params = pollster::block_on(trainer.read_params(&gpu))?;
    convrec::adapter_files::save_adapter(&args.out.join("adapter"), &trainer.layout, &params, &base_name)?;
    eprintln!("{} steps; adapter written to {}", trainer.step, args.out.join("adapter").display());
    Ok(())
}
