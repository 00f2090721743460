//! Training in the page: the core's SFT and RL trainers (the same code `convrec sft` and
//! `convrec train` drive), stepped one optimiser step per call so that the page's script owns the
//! loop — it draws each step's numbers, and stopping is simply not asking for another step.
//!
//! SFT starts a new adapter on the base model; RL starts from the current adapter (the one loaded
//! with the model, or the page's SFT result) and keeps it as the KL reference. When a run ends
//! the trained adapter becomes the session's: Recommend and Evaluate use it, and the page can
//! download it as PEFT files that native `convrec eval --adapter` reads.

use convrec_core::Gpu;
use convrec_core::model::gpu::GpuModel;
use convrec_core::model::text::ChatText;
use convrec_core::rec::{Catalog, Row, budget};
use convrec_core::rl::trainer::{Algo, Prompt, RlConfig, RlTrainer, rl_prompts, step_prompts};
use convrec_core::train::TrainError;
use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
use convrec_core::train::sft::{SftConfig, SftTrainer, sft_examples};
use serde::Deserialize;
use serde_json::json;

/// SFT settings the page sends (JSON; every field optional).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftSettings {
    pub lora_r: usize,
    pub lora_alpha: f32,
    pub lr: f32,
    pub batch_size: usize,
    pub epochs: usize,
    pub max_length: usize,
    pub warmup_ratio: f32,
    pub seed: u64,
    /// Use the first N rows (0: all).
    pub limit: usize,
}

impl Default for SftSettings {
    /// The demo's SFT stage: enough for a small model to learn the list format from a few rows.
    fn default() -> Self {
        SftSettings {
            lora_r: 16,
            lora_alpha: 32.0,
            lr: 1e-3,
            batch_size: 2,
            epochs: 1,
            max_length: 512,
            warmup_ratio: 0.05,
            seed: 0,
            limit: 0,
        }
    }
}

/// RL settings the page sends (JSON; every field optional).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlSettings {
    pub algo: String,
    pub group_size: usize,
    pub prompts_per_step: usize,
    pub lr: f32,
    /// None: what a 20-item list in the rows' style takes (`rec::budget`).
    pub max_new_tokens: Option<usize>,
    pub max_prompt_length: usize,
    pub micro_batch: usize,
    pub beta: Option<f32>,
    pub seed: u64,
    pub limit: usize,
}

impl Default for RlSettings {
    fn default() -> Self {
        let c = RlConfig::new(Algo::RankGrpo);
        RlSettings {
            algo: "rank-grpo".into(),
            group_size: 4,
            prompts_per_step: 1,
            lr: c.lr,
            max_new_tokens: None,
            max_prompt_length: 1024,
            micro_batch: c.micro_batch,
            beta: None,
            seed: 0,
            limit: 0,
        }
    }
}

/// A run in progress.
pub enum Training {
    Sft(Box<SftTrainer>),
    Rl { trainer: Box<RlTrainer>, prompts: Vec<Prompt>, per_step: usize, seed: u64 },
}

fn rows_of(mut rows: Vec<Row>, limit: usize) -> Vec<Row> {
    if limit > 0 {
        rows.truncate(limit);
    }
    rows
}

/// A new SFT run on `rows` from a fresh adapter; the JSON says how many steps it will take.
pub async fn start_sft(
    gpu: &Gpu,
    config: &convrec_core::model::ModelConfig,
    text: &ChatText,
    source: &str,
    rows: Vec<Row>,
    settings: &SftSettings,
) -> Result<(Training, serde_json::Value), TrainError> {
    let rows = rows_of(rows, settings.limit);
    let examples = sft_examples(text, &rows, settings.max_length, source)?;
    let lora = LoraConfig { r: settings.lora_r, alpha: settings.lora_alpha, targets: Target::ALL.to_vec() };
    let layout = LoraLayout::checked(config, lora).map_err(|e| TrainError::Invalid(format!("LoRA: {e}")))?;
    let sft = SftConfig {
        lr: settings.lr,
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        grad_accum: 1,
        warmup_ratio: settings.warmup_ratio,
        seed: settings.seed,
        recompute: false,
    };
    let trainer = SftTrainer::new(gpu, layout.clone(), &layout.init(settings.seed), examples, sft).await?;
    let info = json!({"stage": "sft", "rows": rows.len(), "steps": trainer.total_steps(), "parameters": layout.len});
    Ok((Training::Sft(Box::new(trainer)), info))
}

/// A new RL run on `rows` from the adapter `start`.
#[allow(clippy::too_many_arguments)]
pub async fn start_rl(
    gpu: &Gpu,
    base: &GpuModel,
    text: &ChatText,
    source: &str,
    rows: Vec<Row>,
    start: (&LoraLayout, &[f32]),
    settings: &RlSettings,
) -> Result<(Training, serde_json::Value), TrainError> {
    let algo: Algo = settings.algo.parse().map_err(TrainError::Invalid)?;
    let rows = rows_of(rows, settings.limit);
    let defaults = RlConfig::new(algo);
    let max_new_tokens = match settings.max_new_tokens {
        Some(n) => n,
        None => budget::list_token_budget(text, &rows, defaults.rec_num)?.unwrap_or(256),
    };
    let config = RlConfig {
        group_size: settings.group_size,
        lr: settings.lr,
        max_new_tokens,
        micro_batch: settings.micro_batch,
        beta: settings.beta,
        seed: settings.seed,
        ..defaults
    };
    config.validate()?;
    let prompts = rl_prompts(text, rows, settings.max_prompt_length, source)?;
    if prompts.is_empty() {
        return Err(TrainError::Invalid(format!("{source}: no rows")));
    }
    let longest = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    if longest + max_new_tokens > base.rope.max_pos {
        return Err(TrainError::Invalid(format!(
            "a {longest}-token prompt and {max_new_tokens} new tokens exceed the {} positions the page prepared",
            base.rope.max_pos
        )));
    }
    let trainer = RlTrainer::new(gpu, base, start.0.clone(), start.1, config).await?;
    let per_step = settings.prompts_per_step.max(1);
    let info = json!({"stage": "rl", "algo": algo, "prompts": prompts.len(), "max_new_tokens": max_new_tokens,
        "steps_per_epoch": prompts.len().div_ceil(per_step), "parameters": start.0.len});
    Ok((Training::Rl { trainer: Box::new(trainer), prompts, per_step, seed: settings.seed }, info))
}

impl Training {
    /// One optimiser step; JSON with the step's statistics and `done` (SFT: its epochs are over).
    pub async fn step(
        &mut self,
        gpu: &Gpu,
        base: &GpuModel,
        text: &ChatText,
        catalog: Option<&Catalog>,
        now: &dyn Fn() -> f64,
    ) -> Result<serde_json::Value, TrainError> {
        match self {
            Training::Sft(trainer) => {
                let start = now();
                let s = trainer.step(gpu, base).await?;
                Ok(json!({"stage": "sft", "step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr,
                    "grad_norm": s.grad_norm, "tokens": s.tokens, "exploded": s.exploded, "step_s": now() - start, "done": trainer.done()}))
            }
            Training::Rl { trainer, prompts, per_step, seed } => {
                let catalog = catalog.ok_or_else(|| TrainError::Invalid("RL needs a catalog: set one first".into()))?;
                let chosen: Vec<&Prompt> = step_prompts(trainer.lora.step, prompts.len(), *per_step, *seed)
                    .into_iter()
                    .map(|i| &prompts[i])
                    .collect();
                let s = trainer.step(gpu, base, text, catalog, &chosen, now).await?;
                let mean_reward =
                    s.samples.reward_per_rank.iter().sum::<f64>() / s.samples.reward_per_rank.len().max(1) as f64;
                let mut out = serde_json::to_value(&s).map_err(|e| TrainError::Invalid(e.to_string()))?;
                out["stage"] = json!("rl");
                out["mean_reward"] = json!(mean_reward);
                out["done"] = json!(false);
                Ok(out)
            }
        }
    }

    /// The adapter as trained so far.
    pub async fn adapter(&self, gpu: &Gpu) -> Result<(LoraLayout, Vec<f32>), TrainError> {
        let lora = match self {
            Training::Sft(t) => &t.lora,
            Training::Rl { trainer, .. } => &trainer.lora,
        };
        Ok((lora.layout.clone(), lora.read_params(gpu).await?))
    }
}
