//! `convrec demo`, the main job end to end on the default model and data: build the
//! MovieLens-100K conversations, SFT a LoRA adapter on SmolLM2-135M-Instruct, evaluate it on
//! held-out rows, continue with Rank-GRPO, evaluate again, print the before/after table and write
//! SVG plots of the training curves. All stages share one session (GPU and model loaded once) and
//! the command modules' entry points; the training loops are the core's trainers. The default size
//! is a smoke-sized run that finishes in under 20 minutes on a 2-core CPU through lavapipe; the
//! flags scale every stage up for a real GPU (`convrec experiment` is the full comparison).

use std::path::{Path, PathBuf};

use anyhow::Context;
use convrec::plots::{Series, field_series, line_chart};
use convrec::session::Session;
use convrec_core::GpuOptions;
use convrec_core::rec::compare::markdown_table;
use convrec_core::rl::trainer::Algo;
use serde_json::Value;

use super::{compare, eval, sft, train};

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (data/, sft/, rl/, eval-*/, plots/, summary.json).
    #[arg(long, default_value = "convrec-demo")]
    pub out: PathBuf,
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training rows for SFT.
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub sft_rows: usize,
    /// Rows per SFT step (small: more updates for the same compute at the demo's size).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub sft_batch_size: u64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub sft_epochs: u64,
    #[arg(long, default_value_t = 1e-3, value_parser = super::flags::positive)]
    pub sft_lr: f32,
    /// rank-grpo, grpo or gspo.
    #[arg(long, default_value = "rank-grpo")]
    pub algo: Algo,
    /// RL optimiser steps.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub rl_steps: u64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub prompts_per_step: u64,
    /// Completions per prompt (G).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=1024))]
    pub group_size: u64,
    #[arg(long, default_value_t = 1e-5, value_parser = super::flags::positive)]
    pub rl_lr: f32,
    /// Held-out (test) rows evaluated before and after RL.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub eval_rows: usize,
    /// New tokens per completion. A 20-item list of MovieLens titles takes about 250 tokens
    /// (without the flag: measured from the SFT rows, ~280); the smoke-sized default cuts lists at
    /// 160 tokens to stay under 20 minutes on a CPU, and the evaluation reports how many it cut.
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_new_tokens: u64,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub micro_batch: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Writes the first `n` lines of `src` (from line `skip`) to `dst`.
fn slice_rows(src: &Path, dst: &Path, skip: usize, n: usize) -> anyhow::Result<()> {
    let text = convrec::read_text(src)?;
    let lines: Vec<&str> = text.lines().skip(skip).take(n).collect();
    anyhow::ensure!(!lines.is_empty(), "{}: fewer than {} rows", src.display(), skip + 1);
    convrec::fetch::write_atomic(dst, (lines.join("\n") + "\n").as_bytes())
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let out = &args.out;
    let stage = |n: usize, what: &str| eprintln!("\n[{n}/5] {what} ({:.0} s so far)", started.elapsed().as_secs_f64());

    stage(1, "GPU self-check, then MovieLens-100K conversations in the Reddit-v2 schema and the catalog");
    let session = Session::open(gpu_options, args.model.as_deref())?;
    super::self_check(&session.gpu)?;
    let data = out.join("data");
    if !data.join("catalog.tsv").exists() {
        super::data::movielens_into(&data, 0)?;
    }
    let (train_rows, test_rows, catalog) =
        (data.join("train.jsonl"), data.join("test.jsonl"), data.join("catalog.tsv"));
    // SFT and RL see different training conversations; evaluation uses the test split.
    let (sft_data, rl_data, eval_data) =
        (out.join("sft-rows.jsonl"), out.join("rl-rows.jsonl"), out.join("eval-rows.jsonl"));
    slice_rows(&train_rows, &sft_data, 0, args.sft_rows)?;
    slice_rows(&train_rows, &rl_data, args.sft_rows, (args.rl_steps * args.prompts_per_step).max(1) as usize)?;
    slice_rows(&test_rows, &eval_data, 0, args.eval_rows)?;

    stage(2, "SFT (behaviour cloning) of a LoRA adapter");
    let sft_out = out.join("sft");
    sft::run_in(
        &session,
        &sft::Args {
            model: args.model.clone(),
            lr: args.sft_lr,
            epochs: args.sft_epochs,
            batch_size: args.sft_batch_size,
            max_length: 512,
            seed: args.seed,
            save_every: 1000,
            // A demo run starts afresh each time: an earlier demo's files would mix in.
            overwrite: true,
            ..super::stage_args(&[("data", &sft_data), ("out", &sft_out)])?
        },
    )?;

    let evaluate = |adapter: &Path, dir: &str| -> anyhow::Result<Value> {
        eval::run_in(
            &session,
            &eval::Args {
                model: args.model.clone(),
                adapter: Some(adapter.to_path_buf()),
                out: Some(out.join(dir)),
                max_new_tokens: Some(args.max_new_tokens),
                ..super::stage_args(&[("data", &eval_data), ("catalog", &catalog)])?
            },
        )
    };
    stage(3, "evaluation of the SFT adapter on held-out conversations");
    let before = evaluate(&sft_out.join("adapter"), "eval-sft")?;

    stage(4, &format!("{} from the SFT adapter", args.algo));
    let rl_out = out.join("rl");
    train::run_in(
        &session,
        &train::Args {
            algo: args.algo,
            model: args.model.clone(),
            group_size: args.group_size,
            prompts_per_step: args.prompts_per_step,
            steps: Some(args.rl_steps),
            lr: args.rl_lr,
            max_new_tokens: Some(args.max_new_tokens),
            micro_batch: args.micro_batch,
            seed: args.seed,
            save_every: 1000,
            overwrite: true,
            ..super::stage_args(&[
                ("adapter", &sft_out.join("adapter")),
                ("data", &rl_data),
                ("catalog", &catalog),
                ("out", &rl_out),
            ])?
        },
    )?;

    stage(5, "evaluation after RL");
    let after = evaluate(&rl_out.join("adapter"), "eval-rl")?;

    let runs = [("sft".to_string(), out.join("eval-sft")), (args.algo.name().to_string(), out.join("eval-rl"))];
    let metrics: Vec<String> = [5, 10, 20]
        .iter()
        .flat_map(|k| [format!("recall@{k}"), format!("ndcg@{k}")])
        .chain(["in_catalog".to_string()])
        .collect();
    let paired = compare::compare_runs(&runs, &metrics)?;
    println!("\n{}", markdown_table(&paired));
    println!(
        "({} held-out rows, paired: the same rows answered by both adapters; cut at the token budget: SFT {:.2}, \
         after RL {:.2}. These sizes are a smoke test — `convrec experiment --preset gpu-15min` on a GPU)",
        args.eval_rows,
        before["cut_rate"].as_f64().unwrap_or(0.0),
        after["cut_rate"].as_f64().unwrap_or(0.0),
    );

    let plots = out.join("plots");
    let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()));
    let sft_metrics = read(sft_out.join("metrics.jsonl"))?;
    let rl_metrics = read(rl_out.join("metrics.jsonl"))?;
    line_chart(
        &plots.join("sft_loss.svg"),
        "SFT: completion NLL per step",
        "step",
        "NLL",
        &[Series { label: String::new(), points: field_series(&sft_metrics, "step", "loss") }],
    )?;
    let label = args.algo.name().to_string();
    line_chart(
        &plots.join("rl_ndcg.svg"),
        "RL: NDCG@20 of the sampled completions",
        "step",
        "NDCG@20",
        &[Series { label: label.clone(), points: field_series(&rl_metrics, "step", "ndcg20") }],
    )?;
    line_chart(
        &plots.join("rl_kl.svg"),
        "RL: KL to the SFT adapter",
        "step",
        "KL",
        &[Series { label, points: field_series(&rl_metrics, "step", "kl") }],
    )?;
    let summary = serde_json::json!({"sft": before, "rl": after, "algo": args.algo, "paired": paired,
                                     "seconds": started.elapsed().as_secs_f64()});
    convrec::fetch::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    println!(
        "plots in {}, summary in {} ({:.0} s)",
        plots.display(),
        out.join("summary.json").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
