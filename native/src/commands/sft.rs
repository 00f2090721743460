//! `convrec sft`: Stage 1, behaviour cloning. Rows in the Reddit-v2 schema become a chat-templated
//! prompt (the template's default system message applies) and the demonstration as the assistant's
//! turn; the loss is the mean NLL of the completion tokens, end-of-turn included. LoRA on a frozen
//! base, AdamW with a cosine schedule and warm-up, gradient accumulation; a progress bar, metrics
//! as JSONL, checkpoints written atomically and `--resume`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use convrec_core::GpuOptions;
use convrec_core::model::chat::Message;
use convrec_core::model::gpu::GpuModel;
use convrec_core::ops::adamw::AdamWConfig;
use convrec_core::rec::dataset::parse_dataset;
use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
use convrec_core::train::trainer::{LoraTrainer, MicroBatch, Schedule};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use convrec::text_model::TextModel;

#[derive(clap::Args, Clone, Serialize, Deserialize)]
pub struct Args {
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training rows (JSONL, Reddit-v2 schema, with `completion`).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: adapter/, checkpoint/, metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Held-out rows for the NLL evaluation.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f32,
    /// Projections to adapt.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    pub targets: Vec<String>,
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f32,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of steps of linear warm-up before the cosine decay.
    #[arg(long, default_value_t = 0.05)]
    pub warmup_ratio: f32,
    /// Use only the first N training rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only the first N evaluation rows.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Write a checkpoint every N optimiser steps (and always at the end).
    #[arg(long, default_value_t = 50)]
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

/// Prompt and completion ids of one example.
pub type Example = (Vec<u32>, Vec<u32>);

/// The end-of-turn token the completion ends with (ChatML's `<|im_end|>`, Llama 3's
/// `<|eot_id|>`, else EOS).
pub fn end_of_turn(tm: &TextModel) -> anyhow::Result<u32> {
    for marker in ["<|im_end|>", "<|eot_id|>"] {
        if let Some(id) = tm.tokenizer.token_to_id(marker) {
            return Ok(id);
        }
    }
    tm.special.eos.as_ref().map(|t| t.id).context("the model names no end-of-turn or EOS token")
}

/// Reads rows and tokenises them; prompts are truncated from the left to fit `max_length`.
pub fn examples(tm: &TextModel, path: &Path, limit: Option<usize>, max_length: usize) -> anyhow::Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = parse_dataset(&path.display().to_string(), &text)?;
    if let Some(n) = limit {
        rows.truncate(n);
    }
    let eot = end_of_turn(tm)?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let messages: Vec<Message> =
            row.prompt.iter().map(|m| Message::new(m.role.clone(), m.content.clone())).collect();
        let completion = row
            .completion
            .as_ref()
            .and_then(|c| c.scored_text())
            .with_context(|| format!("{}: row {} has no assistant completion to imitate", path.display(), i + 1))?;
        let mut prompt = tm.prompt_ids(&messages)?;
        let mut comp = tm.encode(completion)?;
        comp.push(eot);
        comp.truncate(max_length.saturating_sub(1).max(1));
        let room = max_length.saturating_sub(comp.len());
        if prompt.len() > room {
            prompt.drain(..prompt.len() - room);
        }
        if prompt.is_empty() {
            bail!("{}: row {}: max-length {max_length} leaves no room for the prompt", path.display(), i + 1);
        }
        out.push((prompt, comp));
    }
    Ok(out)
}

/// Mean completion NLL over `examples` (no training).
pub fn eval_nll(
    gpu: &convrec_core::Gpu,
    model: &GpuModel,
    trainer: &mut LoraTrainer,
    examples: &[Example],
    batch: usize,
) -> anyhow::Result<f64> {
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let mb = MicroBatch::from_sequences(chunk, 16, |_, _| 1.0);
        let stats = pollster::block_on(trainer.run(gpu, model, &mb, false, 1.0))?;
        for (lp, w) in stats.logp.iter().zip(&mb.weights) {
            if *w != 0.0 {
                sum -= *lp as f64;
                count += 1;
            }
        }
    }
    Ok(sum / count.max(1) as f64)
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: usize,
    /// Micro-batches of the current epoch already consumed.
    batch_in_epoch: usize,
    args: Args,
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let path = convrec::text_model::model_path(args.model.as_deref())?;
    let tm = convrec::text_model::load(&path)?;
    let train = examples(&tm, &args.data, args.limit, args.max_length)?;
    let eval = match &args.eval_data {
        Some(p) => examples(&tm, p, args.eval_limit, args.max_length)?,
        None => Vec::new(),
    };
    if train.is_empty() {
        bail!("{}: no training rows", args.data.display());
    }
    let gpu = super::open_gpu(gpu_options)?;
    let model = GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), args.max_length + 16)
        .with_context(|| format!("loading {}", path.display()))?;
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| Target::from_module_name(t).with_context(|| format!("--targets: {t} is not a projection")))
        .collect::<anyhow::Result<_>>()?;
    let layout = LoraLayout::new(&tm.config, LoraConfig { r: args.lora_r, alpha: args.lora_alpha, targets });
    let adamw = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 };
    let mut trainer = pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &layout.init(args.seed), adamw))?;
    trainer.recompute = args.recompute;

    let steps_per_epoch = train.len().div_ceil(args.batch_size * args.grad_accum);
    let total_steps = (steps_per_epoch * args.epochs) as u64;
    let warmup = (total_steps as f32 * args.warmup_ratio).round() as u64;
    let schedule = Schedule::Cosine { warmup, total: total_steps };
    let (mut epoch, mut batch_in_epoch) = (0usize, 0usize);
    if let Some(dir) = &args.resume {
        let state: TrainerState = convrec::checkpoint::restore(dir, &mut trainer, &gpu, |s: &TrainerState| s.step)?;
        for change in convrec::checkpoint::changed_args(&state.args, &args) {
            eprintln!("warning: --resume with a changed option ({change})");
        }
        (epoch, batch_in_epoch) = (state.epoch, state.batch_in_epoch);
        eprintln!("resuming at step {} (epoch {}, micro-batch {})", state.step, epoch + 1, batch_in_epoch);
    }

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let base_name = convrec::text_model::base_model_name(args.model.as_deref(), &path);
    if !eval.is_empty() && trainer.step == 0 {
        let nll = eval_nll(&gpu, &model, &mut trainer, &eval, args.batch_size)?;
        eprintln!("held-out NLL before training: {nll:.4}");
        writeln!(metrics, "{}", serde_json::json!({"step": 0, "eval_nll": nll}))?;
    }
    let bar = indicatif::ProgressBar::new(total_steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} sft [{bar:30}] {pos}/{len} steps · {msg} · ETA {eta}")?
            .progress_chars("=> "),
    );
    bar.set_position(trainer.step);
    let start = Instant::now();
    let mut tokens_seen = 0usize;
    while epoch < args.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(epoch as u64)));
        let batches: Vec<&[usize]> = order.chunks(args.batch_size).collect();
        while batch_in_epoch < batches.len() {
            let window = &batches[batch_in_epoch..(batch_in_epoch + args.grad_accum).min(batches.len())];
            let mut loss = 0f64;
            for idx in window {
                let seqs: Vec<Example> = idx.iter().map(|&i| train[i].clone()).collect();
                let n: usize = seqs.iter().map(|s| s.1.len()).sum();
                let mb = MicroBatch::from_sequences(&seqs, 16, |_, _| -1.0 / n as f32);
                let stats = pollster::block_on(trainer.run(&gpu, &model, &mb, true, 1.0))?;
                loss += stats.logp.iter().zip(&mb.weights).map(|(l, w)| (*l * *w) as f64).sum::<f64>()
                    / window.len() as f64;
                tokens_seen += mb.ids.len();
            }
            let lr = args.lr * schedule.factor(trainer.step);
            let grad_norm = pollster::block_on(trainer.optimizer_step(&gpu, lr, 1.0 / window.len() as f32))?;
            batch_in_epoch += window.len();
            let elapsed = start.elapsed().as_secs_f64();
            let tps = tokens_seen as f64 / elapsed.max(1e-9);
            bar.set_position(trainer.step);
            bar.set_message(format!("loss {loss:.4} · {tps:.0} tok/s"));
            writeln!(
                metrics,
                "{}",
                serde_json::json!({"step": trainer.step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps, "elapsed_s": elapsed})
            )?;
            let state = TrainerState { step: trainer.step, epoch, batch_in_epoch, args: args.clone() };
            if trainer.step % args.save_every.max(1) == 0 {
                convrec::checkpoint::save(&args.out.join("checkpoint"), &trainer, &gpu, &state, &base_name)?;
            }
        }
        epoch += 1;
        batch_in_epoch = 0;
    }
    bar.finish_and_clear();
    let state = TrainerState { step: trainer.step, epoch, batch_in_epoch, args: args.clone() };
    convrec::checkpoint::save(&args.out.join("checkpoint"), &trainer, &gpu, &state, &base_name)?;
    let params = pollster::block_on(trainer.read_params(&gpu))?;
    convrec::adapter_files::save_adapter(&args.out.join("adapter"), &trainer.layout, &params, &base_name)?;
    if !eval.is_empty() {
        let nll = eval_nll(&gpu, &model, &mut trainer, &eval, args.batch_size)?;
        eprintln!("held-out NLL after training: {nll:.4}");
        writeln!(metrics, "{}", serde_json::json!({"step": trainer.step, "eval_nll": nll}))?;
    }
    eprintln!("adapter written to {}", args.out.join("adapter").display());
    Ok(())
}
