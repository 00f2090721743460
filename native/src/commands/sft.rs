//! `convrec sft`: Stage 1, behaviour cloning. The training itself is
//! `convrec_core::train::sft::SftTrainer`; this command reads the files, shows progress, writes
//! metrics JSONL (and the held-out NLL, and — given a catalog — validation Recall/NDCG@k over
//! training), checkpoints atomically and resumes.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;
use convrec_core::GpuOptions;
use convrec_core::rec::evaluation::EvalOptions;
use convrec_core::train::adapter_view::AdapterView;
use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
use convrec_core::train::sft::{SftConfig, SftPosition, SftTrainer, sft_examples};
use convrec_core::workers::Workers;
use serde::{Deserialize, Serialize};
use serde_json::json;

use convrec::run_dir::{RunDir, Start};
use convrec::session::Session;
use convrec::validation::{Validation, describe};

#[derive(clap::Args, Clone, Serialize, Deserialize)]
pub struct Args {
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training rows (JSONL, Reddit-v2 schema, with `completion`).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: adapter/, checkpoint/, metrics.jsonl, adapters/step-N/ (validated adapters).
    #[arg(long)]
    pub out: PathBuf,
    /// Held-out rows: their completion NLL before and after training (and at each validation),
    /// and with --catalog, greedy answers scored over training.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// The catalog the validation answers are scored against (with --eval-data).
    #[arg(long, requires = "eval_data")]
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Validate every N optimiser steps (and at the start and the end).
    #[arg(long, requires = "eval_data")]
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Use only the first N evaluation rows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub eval_limit: Option<u64>,
    /// New tokens of each validation answer (default: what a 20-item list in the style of the
    /// training rows takes, with a margin).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    #[serde(default)]
    pub max_new_tokens: Option<u64>,
    /// LoRA rank.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub lora_r: u64,
    #[arg(long, default_value_t = 32.0, value_parser = super::flags::positive)]
    pub lora_alpha: f32,
    /// Projections to adapt.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    pub targets: Vec<String>,
    #[arg(long, default_value_t = 5e-5, value_parser = super::flags::positive)]
    pub lr: f32,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub epochs: u64,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub grad_accum: u64,
    /// Prompt + completion tokens per row (prompts are cut from the left to fit).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    pub max_length: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of steps of linear warm-up before the cosine decay.
    #[arg(long, default_value_t = 0.05, value_parser = super::flags::unit)]
    pub warmup_ratio: f32,
    /// Use only the first N training rows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Write a checkpoint every N optimiser steps (and always at the end).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
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
}

impl Args {
    fn config(&self) -> SftConfig {
        SftConfig {
            lr: self.lr,
            epochs: self.epochs as usize,
            batch_size: self.batch_size as usize,
            grad_accum: self.grad_accum as usize,
            warmup_ratio: self.warmup_ratio,
            seed: self.seed,
            recompute: self.recompute,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    #[serde(flatten)]
    position: SftPosition,
    args: Args,
    /// Data-parallel workers of the run (a resume needs as many).
    #[serde(default = "convrec::checkpoint::one_worker")]
    workers: usize,
}

pub fn run(gpu_options: &GpuOptions, args: Args, workers: Rc<dyn Workers>) -> anyhow::Result<()> {
    args.config().validate()?;
    run_in(&Session::open(gpu_options, args.model.as_deref())?.with_workers(workers), &args)
}

/// The run in an open session (the demo and the experiment share one across stages).
pub fn run_in(session: &Session, args: &Args) -> anyhow::Result<()> {
    let config = args.config();
    config.validate()?;
    let (gpu, tm, base_name) = (&session.gpu, &session.tm, &session.base_name);
    let max_length = args.max_length as usize;
    let train_rows = convrec::datasets::read_rows(&args.data, args.limit.map(|n| n as usize))?;
    let train = sft_examples(tm, &train_rows, max_length, &args.data.display().to_string())?;
    let (held_out, validation) = match &args.eval_data {
        Some(p) => {
            let rows = convrec::datasets::read_rows(p, args.eval_limit.map(|n| n as usize))?;
            let examples = sft_examples(tm, &rows, max_length, &p.display().to_string())?;
            let validation = match &args.catalog {
                Some(c) => {
                    let max_new_tokens =
                        super::token_budget(tm, &train_rows, 20, args.max_new_tokens, "--max-new-tokens")?;
                    let options = EvalOptions {
                        max_new_tokens,
                        max_prompt_length: max_length,
                        batch_size: args.batch_size.max(8) as usize,
                        ..EvalOptions::default()
                    };
                    let catalog = convrec::datasets::read_catalog(c)?;
                    Some(Validation { rows, catalog, every: args.eval_every.unwrap_or(0), options })
                }
                None => None,
            };
            (examples, validation)
        }
        None => (Vec::new(), None),
    };

    let positions = match &validation {
        Some(v) => (v.longest_prompt(tm)? + v.options.max_new_tokens).max(max_length),
        None => max_length,
    };
    let model = session.upload(positions + 16)?;
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| Target::from_module_name(t).with_context(|| format!("--targets: {t} is not a projection")))
        .collect::<anyhow::Result<_>>()?;
    let lora = LoraConfig { r: args.lora_r as usize, alpha: args.lora_alpha, targets };
    let layout = LoraLayout::checked(&tm.config, lora).map_err(|e| anyhow::anyhow!("--lora-r/--lora-alpha: {e}"))?;
    let init = layout.init(args.seed);
    let workers = session.workers.count();
    let mut trainer =
        pollster::block_on(SftTrainer::new(gpu, layout, &init, train, config))?.with_workers(session.workers.clone());
    let start = match &args.resume {
        Some(dir) => {
            let state: TrainerState =
                convrec::checkpoint::restore(dir, &mut trainer.lora, gpu, |s: &TrainerState| s.position.step)?;
            convrec::checkpoint::same_workers(dir, state.workers, workers)?;
            for change in convrec::checkpoint::changed_args(&state.args, args) {
                eprintln!("warning: --resume with a changed option ({change})");
            }
            trainer.resume_at(state.position)?;
            let p = state.position;
            eprintln!("resuming at step {} (epoch {}, micro-batch {})", p.step, p.epoch + 1, p.batch_in_epoch);
            Start::Resume { step: p.step }
        }
        None => Start::Fresh { overwrite: args.overwrite },
    };
    // Worker 0 alone keeps the run: metrics, held-out scores, checkpoints, the adapter.
    let mut run = if session.writes() { Some(RunDir::open(&args.out, start)?) } else { None };
    let merge = match &validation {
        Some(_) => Some(pollster::block_on(AdapterView::new(gpu, &model, &trainer.lora.layout))?),
        None => None,
    };
    let total_steps = trainer.total_steps();
    let bar = super::progress_bar(total_steps, "sft", session.writes())?;
    bar.set_position(trainer.lora.step);
    // Every worker validates (each answers its share of the rows); worker 0 alone, the one holding
    // `run`, also scores the held-out NLL and writes.
    let evaluate = |trainer: &mut SftTrainer, mut run: Option<&mut RunDir>| -> anyhow::Result<()> {
        let step = trainer.lora.step;
        if let Some(run) = run.as_deref_mut()
            && !held_out.is_empty()
            && (step == 0 || step == total_steps || validation.as_ref().is_some_and(|v| v.due(step, total_steps)))
        {
            let nll = pollster::block_on(trainer.nll(gpu, &model, &held_out))?;
            bar.println(format!("held-out NLL at step {step}: {nll:.4}"));
            run.log(&json!({"step": step, "eval_nll": nll}))?;
        }
        if let (Some(v), Some(merge)) = (&validation, &merge)
            && v.due(step, total_steps)
        {
            let merged = pollster::block_on(merge.refresh(gpu, &trainer.lora.layout, &trainer.lora.params))?;
            let params = pollster::block_on(trainer.lora.read_params(gpu))?;
            let layout = &trainer.lora.layout;
            let summary = v.run(gpu, merged, tm, step, session.workers.as_ref(), run, layout, &params, base_name)?;
            bar.println(describe(step, &summary));
        }
        Ok(())
    };
    if trainer.lora.step == 0 {
        evaluate(&mut trainer, run.as_mut())?;
    }
    let clock = Instant::now();
    let mut tokens_seen = 0usize;
    let mut warned_explosion = false;
    let mut last = (0.0, session.workers.exchange_seconds());
    while !trainer.done() {
        let s = pollster::block_on(trainer.step(gpu, &model))?;
        tokens_seen += s.tokens;
        let elapsed = clock.elapsed().as_secs_f64();
        let exchanged = session.workers.exchange_seconds();
        let (step_s, exchange_s) = (elapsed - last.0, exchanged - last.1);
        last = (elapsed, exchanged);
        let tps = tokens_seen as f64 / elapsed.max(1e-9);
        bar.set_position(s.step);
        bar.set_message(format!("loss {:.4} · {tps:.0} tok/s", s.loss));
        if let Some(run) = run.as_mut() {
            run.log(&json!({"step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm,
                            "tokens": s.tokens, "tokens_per_s": tps, "elapsed_s": elapsed, "step_s": step_s,
                            "exploded": s.exploded, "workers": workers, "exchange_s": exchange_s}))?;
            if s.exploded && !warned_explosion {
                warned_explosion = true;
                bar.suspend(|| {
                    eprintln!(
                        "warning: step {}: the loss {:.3} has exploded (more than twice its lowest value in this \
                         run) — training is diverging; a lower --lr (now {}) usually helps. The run goes on; \
                         `exploded` in metrics.jsonl marks each such step",
                        s.step, s.loss, args.lr
                    )
                });
            }
            if s.step.is_multiple_of(args.save_every) {
                let state = TrainerState { position: trainer.position(), args: args.clone(), workers };
                convrec::checkpoint::save(&run.checkpoint(), &trainer.lora, gpu, &state, base_name)?;
            }
        }
        if !trainer.done() {
            evaluate(&mut trainer, run.as_mut())?;
        }
    }
    bar.finish_and_clear();
    if let Some(run) = &run {
        let state = TrainerState { position: trainer.position(), args: args.clone(), workers };
        convrec::checkpoint::save(&run.checkpoint(), &trainer.lora, gpu, &state, base_name)?;
        let params = pollster::block_on(trainer.lora.read_params(gpu))?;
        convrec::adapter_files::save_adapter(&run.adapter(), &trainer.lora.layout, &params, base_name)?;
    }
    evaluate(&mut trainer, run.as_mut())?;
    if let Some(run) = &run {
        eprintln!("adapter written to {}", run.adapter().display());
    }
    Ok(())
}
