//! End-to-end model benchmarks at SmolLM2-135M's shape (random weights): prefill and decode
//! tokens/s for batch 1 and 8 and for G = 8 samples of one prompt, and a LoRA training step;
//! PyTorch (fp32 eager and/or bf16 autocast + SDPA + peft) measured in the same run as the ratio.

use std::time::Instant;

use convrec_core::Gpu;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gpu::{AttentionMode, ForwardInputs, ForwardPlan, GpuModel, left_pad};
use convrec_core::ops::decode::SamplingConfig;
use serde_json::json;

use crate::bench_model::{self, GenerationArgs, ShapeArgs, TrainArgs, mib};
use crate::python::{Baseline, Row, TorchArgs, print_comparison};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    torch: TorchArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// Which parts: generate, train.
    #[arg(long, value_delimiter = ',', default_value = "generate,train")]
    parts: Vec<String>,
}

/// Both precisions on CUDA: fp32 continues the recorded column, bf16 is what users run.
const ON_CUDA: [&str; 2] = ["fp32", "bf16"];

pub fn run(gpu: &Gpu, args: Args) -> anyhow::Result<()> {
    let (prompt, new) = (args.generation.prompt as usize, args.generation.new as usize);
    let (train_batch, train_seq) = (args.train.train_batch as usize, args.train.train_seq as usize);
    let (c, model) = bench_model::upload(gpu, &args.shape, (prompt + new).max(train_seq) + 8)?;
    println!("{}", bench_model::header(gpu, &args.shape, &c, &model));
    let shape = bench_model::baseline_config(
        &c,
        json!({"prompt": prompt, "new": new, "batches": [1, 8], "batch": train_batch, "seq": train_seq}),
    );
    if args.parts.iter().any(|p| p == "generate") {
        let torch = args.torch.run("generate", &shape, &ON_CUDA);
        let mut rows = Vec::new();
        for (label, prompts, g) in [("batch 1", 1usize, 1usize), ("batch 8", 8, 1), ("G = 8 samples of 1 prompt", 1, 8)]
        {
            let (prefill, decode) = generation_rates(gpu, &model, prompts, g, prompt, new)?;
            // HF generate has no shared-prefill sampling: G = 8 compares with its batch-8 decode.
            let key = if prompts == 8 || g == 8 { "8" } else { "1" };
            let theirs = |metric: &str| torch.iter().map(|b| b.number(&[key, metric])).collect();
            rows.push(Row::higher(&format!("{label}: prefill tok/s"), prefill, theirs("prefill_tok_s")));
            rows.push(Row::higher(&format!("{label}: decode tok/s"), decode, theirs("decode_tok_s")));
        }
        println!();
        print_comparison("generation (G = 8 vs torch batch 8)", &torch, &rows);
        print_versions(&torch, &args.torch.torch_device);
    }
    if args.parts.iter().any(|p| p == "train") {
        let mut trainer = bench_model::lora_trainer(gpu, &c, args.train.recompute)?;
        let mb = bench_model::train_batch(train_batch, train_seq);
        gpu.pool().reset_peak();
        let mut best = f64::MAX;
        for _ in 0..3 {
            best = best.min(bench_model::lora_step(gpu, &mut trainer, &model, &mb)?);
        }
        let (_, peak) = gpu.pool().device_bytes();
        let tokens = (train_batch * train_seq) as f64;
        let torch = args.torch.run("train", &shape, &ON_CUDA);
        println!(
            "\nLoRA r={} (all 7 projections) training step, {train_batch}×{train_seq} tokens: {best:.3} s",
            bench_model::LORA_R
        );
        let theirs = |key: &str| torch.iter().map(|b| b.number(&[key])).collect();
        let rows = [
            Row::higher("tokens/s", tokens / best, theirs("tok_s")),
            Row::lower("GPU memory, MiB (convrec: pool peak, weights incl.)", mib(peak), theirs("peak_mib")),
        ];
        print_comparison("training", &torch, &rows);
        print_versions(&torch, &args.torch.torch_device);
    }
    Ok(())
}

/// Prefill tokens/s (one forward over the padded batch, best of two) and decode tokens/s (the
/// rest of a greedy `generate`) for `prompts` prompts × `g` samples.
pub fn generation_rates(
    gpu: &Gpu,
    model: &GpuModel,
    prompts: usize,
    g: usize,
    prompt: usize,
    new: usize,
) -> anyhow::Result<(f64, f64)> {
    let seqs = bench_model::prompts(prompts, prompt);
    let (ids, positions, key_start, t) = left_pad(&seqs);
    let plan = pollster::block_on(ForwardPlan::new(gpu, model, prompts, t))?;
    let up = |v: &[u32]| gpu.upload("bench", "t", v);
    let inputs = ForwardInputs { ids: &up(&ids)?, positions: &up(&positions)?, key_start: &up(&key_start)? };
    let mut prefill = f64::MAX;
    for _ in 0..2 {
        let mut b = gpu.batch("bench prefill");
        plan.record(&mut b, model, &inputs, &AttentionMode::SelfOnly)?;
        let start = Instant::now();
        pollster::block_on(b.submit())?;
        pollster::block_on(gpu.finish())?;
        prefill = prefill.min(start.elapsed().as_secs_f64());
    }
    let req = GenerateRequest {
        prompts: seqs,
        num_samples: g,
        first_sequence: 0,
        max_new_tokens: new,
        sampling: SamplingConfig::greedy(),
        stop_ids: vec![],
    };
    let start = Instant::now();
    let out = pollster::block_on(generate(gpu, model, &req, |_, _| {}))?;
    let total = start.elapsed().as_secs_f64();
    let new_tokens: usize = out.iter().map(|c| c.tokens.len()).sum();
    Ok(((prompts * prompt) as f64 / prefill, new_tokens as f64 / (total - prefill).max(1e-9)))
}

/// The baselines' torch versions and where they ran.
pub fn print_versions(torch: &[Baseline], device: &str) {
    for b in torch {
        if let Ok(v) = &b.result {
            let threads = std::env::var("TORCH_THREADS").unwrap_or("2".into());
            let on =
                if device.starts_with("cuda") { device.to_string() } else { format!("{device}, {threads} threads") };
            println!("({}: torch {} on {on})", b.label, v["torch"].as_str().unwrap_or("?"));
        }
    }
}
