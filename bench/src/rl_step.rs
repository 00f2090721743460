//! `convrec-bench rl-step`: one Rank-GRPO step at SmolLM2-135M's shape — sampling P prompts × G
//! completions forced to the full token budget, then `RlTrainer::update` (reference-adapter pass,
//! β = 1e-3, μ = 1) on them with synthetic per-token advantages and rank ids — its two halves
//! timed apart, beside PyTorch's (HF `generate` with sampling, and a GRPO-like update with peft
//! under bf16 autocast) in the same run.

use std::io::Write as _;
use std::time::Instant;

use anyhow::Context;
use convrec_core::Gpu;
use convrec_core::model::generate::{Completion, GenerateRequest, generate};
use convrec_core::model::gpu::GpuModel;
use convrec_core::ops::decode::SamplingConfig;
use convrec_core::rl::trainer::{Algo, RlConfig, RlTrainer, Rollout};
use serde::Serialize;
use serde_json::json;

use crate::bench_model::{self, ShapeArgs, mib};
use crate::python::{Row, TorchArgs, print_comparison};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    torch: TorchArgs,
    /// Prompts per step (P).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    prompts: u32,
    /// Completions per prompt (G).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..))]
    group: u32,
    /// Prompt length (tokens).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    prompt_len: u32,
    /// New tokens per completion, all of them sampled (no stop token).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    new: u32,
    /// Sequences per forward/backward pass (`convrec train --micro-batch`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    micro_batch: u32,
    /// Recompute activations in the backward (`convrec train --recompute`).
    #[arg(long)]
    recompute: bool,
    /// Timed steps after the warm-up (each reported; the summary is the last).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<String>,
}

/// Items (ranks) a completion's tokens are spread over, as in a 20-item list.
const RANKS: usize = 20;
/// Baseline precision on CUDA: what a TRL user runs.
const ON_CUDA: [&str; 1] = ["bf16"];

#[derive(Serialize, Clone)]
struct StepTimes {
    sampling_s: f64,
    training_s: f64,
    sample_tok_s: f64,
    train_tok_s: f64,
    /// Peak GPU memory the buffer pool held during the step (model weights included).
    peak_mib: f64,
}

pub fn run(gpu: &Gpu, args: Args) -> anyhow::Result<()> {
    let (p, g, len, new) = (args.prompts as usize, args.group as usize, args.prompt_len as usize, args.new as usize);
    let (c, model) = bench_model::upload(gpu, &args.shape, len + new + 16)?;
    println!("{}", bench_model::header(gpu, &args.shape, &c, &model));
    let layout = bench_model::lora_layout(&c);
    let init = layout.init(0);
    let config = RlConfig {
        beta: Some(1e-3),
        mu: 1,
        temperature: 1.0,
        max_new_tokens: new,
        micro_batch: args.micro_batch as usize,
        recompute: args.recompute,
        ..RlConfig::new(Algo::RankGrpo)
    };
    let mut trainer = pollster::block_on(RlTrainer::new(gpu, &model, layout, &init, config))?;
    let prompts = bench_model::prompts(p, len);

    // Warm-up at the step's batch with two new tokens, and an update on one micro-batch of it:
    // kernel compilation stays out of the timed step.
    let warm = sample(gpu, &trainer, &prompts, g, new.min(2), 0)?;
    let one_micro_batch = (args.micro_batch as usize).min(warm.len());
    pollster::block_on(trainer.update(gpu, &model, &rollout(&prompts, g, &warm[..one_micro_batch])))?;

    let mut times = Vec::new();
    for step in 0..args.steps {
        gpu.pool().reset_peak();
        let start = Instant::now();
        let completions = sample(gpu, &trainer, &prompts, g, new, 1 + step as u64)?;
        let sampling_s = start.elapsed().as_secs_f64();
        let batch = rollout(&prompts, g, &completions);
        let start = Instant::now();
        pollster::block_on(trainer.update(gpu, &model, &batch))?;
        let training_s = start.elapsed().as_secs_f64();
        let t = StepTimes {
            sampling_s,
            training_s,
            sample_tok_s: (p * g * new) as f64 / sampling_s,
            train_tok_s: batch.tokens() as f64 / training_s,
            peak_mib: mib(gpu.pool().device_bytes().1),
        };
        println!(
            "step {}: sampling {:.3} s, training {:.3} s, {:.0} MiB",
            step + 1,
            t.sampling_s,
            t.training_s,
            t.peak_mib
        );
        times.push(t);
    }
    let ours = times.last().expect("at least one step").clone();

    let case =
        json!({"prompts": p, "group": g, "prompt": len, "new": new, "micro_batch": args.micro_batch, "beta": 1e-3});
    let torch = args.torch.run("rl", &bench_model::baseline_config(&c, case.clone()), &ON_CUDA);
    println!(
        "\nRL step: {p} prompts × {g} completions = {} sequences of {len} + {new} tokens, micro-batch {}{}",
        p * g,
        args.micro_batch,
        if args.recompute { ", recompute" } else { "" }
    );
    let theirs = |key: &str| torch.iter().map(|b| b.number(&[key])).collect::<Vec<_>>();
    let whole = theirs("sampling_s").iter().zip(theirs("training_s")).map(|(s, t)| Some(s.as_ref()? + t?)).collect();
    let rows = [
        Row::lower("sampling, s", ours.sampling_s, theirs("sampling_s")),
        Row::lower("training (reference pass included), s", ours.training_s, theirs("training_s")),
        Row::lower("whole step, s", ours.sampling_s + ours.training_s, whole),
        Row::higher("sampled tokens/s", ours.sample_tok_s, theirs("sample_tok_s")),
        Row::higher("trained tokens/s (prompt + completion)", ours.train_tok_s, theirs("train_tok_s")),
        Row::lower("GPU memory, MiB (convrec: pool peak, weights incl.)", ours.peak_mib, theirs("peak_mib")),
    ];
    print_comparison("rl-step", &torch, &rows);
    crate::model::print_versions(&torch, &args.torch.torch_device);
    if let Some(path) = &args.json {
        let baselines: serde_json::Map<String, serde_json::Value> = torch
            .iter()
            .map(|b| (b.label.clone(), b.result.clone().unwrap_or_else(|e| json!({"unavailable": e}))))
            .collect();
        let out = json!({"adapter": gpu.summary().name, "case": case, "convrec": times, "baselines": baselines});
        let mut f = std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
        writeln!(f, "{out}")?;
    }
    Ok(())
}

/// G completions of each prompt at temperature 1 from the trainer's current adapter (merged into
/// the base first, as `RlTrainer::rollout` does), with no stop token: every one runs to `new`.
fn sample(
    gpu: &Gpu,
    trainer: &RlTrainer,
    prompts: &[Vec<u32>],
    g: usize,
    new: usize,
    seed: u64,
) -> anyhow::Result<Vec<Completion>> {
    let model: &GpuModel = pollster::block_on(trainer.adapted(gpu))?;
    let req = GenerateRequest {
        prompts: prompts.to_vec(),
        num_samples: g,
        first_sequence: 0,
        max_new_tokens: new,
        sampling: SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed },
        stop_ids: vec![],
    };
    Ok(pollster::block_on(generate(gpu, model, &req, |_, _| {}))?)
}

/// The sampled sequences with synthetic Rank-GRPO inputs: each completion's tokens split evenly
/// into 20 ranks, and one advantage in [-1, 1] per (completion, rank).
fn rollout(prompts: &[Vec<u32>], g: usize, completions: &[Completion]) -> Rollout {
    let mut out = Rollout::default();
    for (i, c) in completions.iter().enumerate() {
        debug_assert_eq!(c.prompt, i / g);
        let n = c.tokens.len();
        let items: Vec<usize> = (0..n).map(|j| (j * RANKS / n.max(1)).min(RANKS - 1)).collect();
        out.advantages.push(items.iter().map(|&k| ((i * 7 + k * 3) % 5) as f32 / 2.0 - 1.0).collect());
        out.items.push(items);
        out.seqs.push((prompts[c.prompt].clone(), c.tokens.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_rollouts_spread_tokens_over_twenty_ranks() {
        let completions: Vec<Completion> =
            (0..4).map(|i| Completion { prompt: i / 2, sample: i % 2, tokens: vec![7; 40], stopped: false }).collect();
        let r = rollout(&[vec![1, 2], vec![3]], 2, &completions);
        assert_eq!(r.seqs.len(), 4);
        assert_eq!(r.seqs[3].0, vec![3]);
        assert_eq!(r.items[0].iter().max(), Some(&19));
        assert_eq!(r.items[0][..2], [0, 0]);
        assert!(r.advantages.iter().flatten().all(|a| (-1.0..=1.0).contains(a)));
        assert_eq!(r.tokens(), 2 * (2 + 40) + 2 * (1 + 40));
    }
}
