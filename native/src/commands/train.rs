//! `convrec train`: Stage 2, reinforcement learning from the SFT adapter with Rank-GRPO (rank-level
//! importance ratios and per-rank advantages) or the GRPO / GSPO baselines (RANK_GRPO.md §5–8).
//! The step itself is `convrec_core::rl::trainer::RlTrainer`; this command reads the files, shows
//! progress, writes metrics JSONL, validates over training, checkpoints atomically and resumes.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use convrec_core::GpuOptions;
use convrec_core::rec::evaluation::EvalOptions;
use convrec_core::rl::rollout::RewardKind;
use convrec_core::rl::trainer::{Aggregation, Algo, Prompt, RlConfig, RlTrainer, rl_prompts, step_prompts};
use convrec_core::workers::Workers;
use serde::{Deserialize, Serialize};
use serde_json::json;

use convrec::run_dir::{RunDir, Start};
use convrec::session::Session;
use convrec::validation::{Validation, describe};

#[derive(clap::Args, Clone, Serialize, Deserialize)]
pub struct Args {
    /// rank-grpo (per-rank rewards and rank-level ratios), grpo or gspo (sequence reward, token- or
    /// sequence-level ratios).
    #[arg(long, default_value = "rank-grpo")]
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
    /// Output folder: adapter/, checkpoint/, metrics.jsonl, adapters/step-N/ (validated adapters).
    #[arg(long)]
    pub out: PathBuf,
    /// Per-rank rewards: exp_inf (own hit) or log (discounted hits from this rank on).
    #[arg(long, default_value = "exp_inf")]
    pub reward: RewardKind,
    /// Completions sampled per prompt (G).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=1024))]
    pub group_size: u64,
    /// Prompts per optimiser step (the paper: 48).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub prompts_per_step: u64,
    /// Optimiser steps (default: one pass over the rows).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Constant learning rate. The paper's 1e-6 is for full weights; LoRA adapters move less
    /// per step, hence a larger default.
    #[arg(long, default_value_t = 1e-5, value_parser = super::flags::positive)]
    pub lr: f32,
    /// KL coefficient (default 1e-3).
    #[arg(long, value_parser = super::flags::non_negative)]
    pub beta: Option<f32>,
    /// Lower clip (default: the algorithm's, RANK_GRPO.md §7).
    #[arg(long, value_parser = super::flags::non_negative)]
    pub eps_low: Option<f32>,
    /// Upper clip (default: the algorithm's).
    #[arg(long, value_parser = super::flags::non_negative)]
    pub eps_high: Option<f32>,
    /// Updates per generation batch: 1 (on-policy) or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub mu: u64,
    /// token-mean ("bnpo": every token of the step weighs the same) or rank-mean (the paper's).
    #[arg(long, default_value = "token-mean")]
    pub aggregation: Aggregation,
    /// Sampling temperature (log-probs are taken at the same temperature).
    #[arg(long, default_value_t = 1.0, value_parser = super::flags::positive)]
    pub temperature: f32,
    /// New tokens per completion (default: what a 20-item list in the rows' own style takes, plus
    /// a margin, so that lists are not cut).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_new_tokens: Option<u64>,
    /// Prompts are cut from the left to this many tokens.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_prompt_length: u64,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub micro_batch: u64,
    /// Use only the first N rows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub save_every: u64,
    /// Continue from a checkpoint (DIR/checkpoint of an earlier run, or the run folder DIR).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start a new run in an --out folder that holds an earlier run, replacing it.
    #[arg(long, conflicts_with = "resume")]
    #[serde(default)]
    pub overwrite: bool,
    /// Keep only each layer's input during the forward and recompute the rest in the backward:
    /// activation memory stops growing with depth, for about one more forward of compute.
    #[arg(long)]
    #[serde(default)]
    pub recompute: bool,
    /// Held-out rows answered greedily and scored over training (validation Recall/NDCG@k in the
    /// metrics, each validated adapter kept in adapters/step-N/).
    #[arg(long)]
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    /// Validate every N steps (and at the start and the end).
    #[arg(long, requires = "eval_data")]
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Validate on the first N held-out rows only.
    #[arg(long, requires = "eval_data", value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(default)]
    pub eval_limit: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct TrainState {
    step: u64,
    args: Args,
    /// Data-parallel workers of the run (a resume needs as many).
    #[serde(default = "convrec::checkpoint::one_worker")]
    workers: usize,
}

impl Args {
    fn config(&self, max_new_tokens: usize) -> RlConfig {
        RlConfig {
            aggregation: self.aggregation,
            reward: self.reward,
            group_size: self.group_size as usize,
            mu: self.mu,
            lr: self.lr,
            beta: self.beta,
            eps_low: self.eps_low,
            eps_high: self.eps_high,
            temperature: self.temperature,
            max_new_tokens,
            micro_batch: self.micro_batch as usize,
            seed: self.seed,
            recompute: self.recompute,
            ..RlConfig::new(self.algo)
        }
    }
}

pub fn run(gpu_options: &GpuOptions, args: Args, workers: Rc<dyn Workers>) -> anyhow::Result<()> {
    run_in(&Session::open(gpu_options, args.model.as_deref())?.with_workers(workers), &args)
}

/// The run in an open session (the demo and the experiment share one across stages).
pub fn run_in(session: &Session, args: &Args) -> anyhow::Result<()> {
    let (gpu, tm, base_name) = (&session.gpu, &session.tm, &session.base_name);
    let catalog = convrec::datasets::read_catalog(&args.catalog)?;
    let rows = convrec::datasets::read_rows(&args.data, args.limit.map(|n| n as usize))?;
    let rec_num = RlConfig::new(args.algo).rec_num;
    let max_new_tokens = super::token_budget(tm, &rows, rec_num, args.max_new_tokens, "--max-new-tokens")?;
    let config = args.config(max_new_tokens);
    config.validate()?;
    let prompts = rl_prompts(tm, rows, args.max_prompt_length as usize, &args.data.display().to_string())?;
    let validation = match &args.eval_data {
        Some(data) => Some(Validation::load(
            data,
            catalog.clone(),
            args.eval_limit.map(|n| n as usize),
            args.eval_every.unwrap_or(0),
            EvalOptions {
                max_new_tokens,
                max_prompt_length: args.max_prompt_length as usize,
                batch_size: args.micro_batch.max(8) as usize,
                ..EvalOptions::default()
            },
        )?),
        None => None,
    };

    let longest_prompt = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0).max(match &validation {
        Some(v) => v.longest_prompt(tm)?,
        None => 0,
    });
    let base = session.upload(longest_prompt + max_new_tokens + 16)?;
    let (layout, start) = convrec::adapter_files::load_adapter(&args.adapter, &tm.config)?;
    let workers = session.workers.count();
    let mut trainer =
        pollster::block_on(RlTrainer::new(gpu, &base, layout, &start, config))?.with_workers(session.workers.clone());
    let start = match &args.resume {
        Some(dir) => {
            let state: TrainState = convrec::checkpoint::restore(dir, &mut trainer.lora, gpu, |s: &TrainState| s.step)?;
            convrec::checkpoint::same_workers(dir, state.workers, workers)?;
            eprintln!("resuming at step {}", state.step);
            for change in convrec::checkpoint::changed_args(&state.args, args) {
                eprintln!("warning: --resume with a changed option ({change})");
            }
            Start::Resume { step: state.step }
        }
        None => Start::Fresh { overwrite: args.overwrite },
    };
    // Worker 0 alone keeps the run: metrics, validation, checkpoints, the adapter.
    let mut run = if session.writes() { Some(RunDir::open(&args.out, start)?) } else { None };

    let per_step = args.prompts_per_step as usize;
    let total_steps = args.steps.unwrap_or(prompts.len().div_ceil(per_step) as u64);
    let bar = super::progress_bar(total_steps, args.algo.name(), session.writes())?;
    bar.set_position(trainer.lora.step);
    let clock = Instant::now();
    let now = || clock.elapsed().as_secs_f64();
    let mut tokens_seen = 0usize;
    // Every worker validates (each answers its share of the rows); worker 0, holding `run`, writes.
    let validate = |trainer: &RlTrainer, run: Option<&mut RunDir>| -> anyhow::Result<()> {
        let Some(v) = &validation else { return Ok(()) };
        let step = trainer.lora.step;
        if !v.due(step, total_steps) {
            return Ok(());
        }
        let model = pollster::block_on(trainer.adapted(gpu))?;
        let params = pollster::block_on(trainer.lora.read_params(gpu))?;
        let layout = &trainer.lora.layout;
        let summary = v.run(gpu, model, tm, step, session.workers.as_ref(), run, layout, &params, base_name)?;
        bar.println(describe(step, &summary));
        Ok(())
    };
    if trainer.lora.step == 0 {
        validate(&trainer, run.as_mut())?;
    }
    while trainer.lora.step < total_steps {
        let chosen: Vec<&Prompt> = step_prompts(trainer.lora.step, prompts.len(), per_step, args.seed)
            .into_iter()
            .map(|i| &prompts[i])
            .collect();
        let exchanged = session.workers.exchange_seconds();
        let step = pollster::block_on(trainer.step(gpu, &base, tm, &catalog, &chosen, &now))?;
        let exchange_s = session.workers.exchange_seconds() - exchanged;
        tokens_seen += step.tokens;
        let tokens_per_s = step.tokens as f64 / step.step_s.max(1e-9);
        bar.set_position(step.step);
        bar.set_message(format!(
            "NDCG@20 {:.3} · reward {:.3} · KL {:.4} · {tokens_per_s:.0} tok/s",
            step.samples.ndcg20,
            step.samples.reward_per_rank.iter().sum::<f64>() / step.samples.reward_per_rank.len().max(1) as f64,
            step.update.kl,
        ));
        if let Some(run) = run.as_mut() {
            let mut record = serde_json::to_value(&step)?;
            record.as_object_mut().expect("a step serialises to an object").extend(
                json!({"algo": args.algo, "tokens_per_s": tokens_per_s, "elapsed_s": now(), "tokens_seen": tokens_seen,
                       "workers": workers, "exchange_s": exchange_s})
                .as_object()
                .expect("an object")
                .clone(),
            );
            run.log(&record)?;
            if step.step.is_multiple_of(args.save_every) {
                let state = TrainState { step: step.step, args: args.clone(), workers };
                convrec::checkpoint::save(&run.checkpoint(), &trainer.lora, gpu, &state, base_name)?;
            }
        }
        validate(&trainer, run.as_mut())?;
    }
    bar.finish_and_clear();
    let Some(run) = run else { return Ok(()) };
    let state = TrainState { step: trainer.lora.step, args: args.clone(), workers };
    convrec::checkpoint::save(&run.checkpoint(), &trainer.lora, gpu, &state, base_name)?;
    let params = pollster::block_on(trainer.lora.read_params(gpu))?;
    convrec::adapter_files::save_adapter(&run.adapter(), &trainer.lora.layout, &params, base_name)?;
    eprintln!("{} steps; adapter written to {}", trainer.lora.step, run.adapter().display());
    Ok(())
}
