//! End-to-end model benchmarks at SmolLM2-135M's shape (random weights: speed does not depend
//! on their values): prefill and decode tokens/s for batch 1 and 8 and for G = 8 samples of one
//! prompt, and a LoRA training step; PyTorch on the CPU measured in the same run as the ratio.

use std::process::Command;
use std::time::Instant;

use convrec_core::Gpu;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gpu::{AttentionMode, ForwardInputs, ForwardPlan, GpuModel, left_pad};
use convrec_core::model::{Architecture, HostTensor, ModelConfig};
use convrec_core::ops::adamw::AdamWConfig;
use convrec_core::ops::decode::SamplingConfig;
use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
use convrec_core::train::trainer::{LoraTrainer, MicroBatch};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Prompt length (tokens).
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 32)]
    new: usize,
    /// Training micro-batch (sequences × tokens).
    #[arg(long, default_value_t = 4)]
    train_batch: usize,
    #[arg(long, default_value_t = 256)]
    train_seq: usize,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Recompute activations in the LoRA step's backward (see `convrec sft --recompute`).
    #[arg(long)]
    recompute: bool,
    /// Run the PyTorch baseline on this device (e.g. cuda) instead of the CPU.
    #[arg(long, default_value = "cpu")]
    torch_device: String,
    /// Python with torch/transformers/peft for the baseline.
    #[arg(long, env = "CONVREC_TORCH_PYTHON", default_value = "python3")]
    python: String,
    /// Which parts: generate, train.
    #[arg(long, value_delimiter = ',', default_value = "generate,train")]
    parts: Vec<String>,
}

fn smollm2() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rope_theta: 100000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        attention_bias: false,
        max_position_embeddings: 8192,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

fn random_weights(c: &ModelConfig) -> Vec<(String, HostTensor)> {
    let mut state = 0x12345678u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32 - 0.5) * 0.05
    };
    c.expected_tensors()
        .into_iter()
        .map(|(n, shape)| {
            let len: usize = shape.iter().product();
            let v = if n.ends_with("norm.weight") { vec![1.0; len] } else { (0..len).map(|_| next()).collect() };
            (n, HostTensor::f32(shape, v))
        })
        .collect()
}

fn baseline(python: &str, mode: &str, cfg: &serde_json::Value) -> Option<serde_json::Value> {
    // Beside the sources when run where it was built, else from the repository root (a copy).
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/baselines/torch_model.py");
    let script = if std::path::Path::new(built).exists() { built } else { "bench/baselines/torch_model.py" };
    let out = Command::new(python).args([script, mode, &cfg.to_string()]).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "PyTorch baseline unavailable: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
        return None;
    }
    serde_json::from_slice(String::from_utf8_lossy(&out.stdout).lines().last()?.as_bytes()).ok()
}

pub fn run(gpu: &Gpu, args: Args) -> anyhow::Result<()> {
    let c = smollm2();
    println!("adapter: {} ({}); SmolLM2-135M shape, f32 weights", gpu.summary().name, gpu.summary().backend);
    let model = GpuModel::upload(gpu, c.clone(), random_weights(&c), (args.prompt + args.new).max(args.train_seq) + 8)?;
    let shape = json!({"vocab": c.vocab_size, "hidden": c.hidden_size, "ffn": c.intermediate_size, "layers": c.num_layers,
        "heads": c.num_heads, "kv_heads": c.num_kv_heads, "prompt": args.prompt, "new": args.new, "batches": [1, 8],
        "batch": args.train_batch, "seq": args.train_seq, "r": 16, "device": args.torch_device});
    if args.parts.iter().any(|p| p == "generate") {
        let torch = if args.no_baseline { None } else { baseline(&args.python, "generate", &shape) };
        println!(
            "\n{:<28} {:>14} {:>14} {:>14} {:>14}",
            "case", "prefill tok/s", "decode tok/s", "torch prefill", "torch decode"
        );
        for (label, prompts, g) in [("batch 1", 1usize, 1usize), ("batch 8", 8, 1), ("G = 8 samples of 1 prompt", 1, 8)]
        {
            let seqs: Vec<Vec<u32>> = (0..prompts)
                .map(|p| (0..args.prompt as u32).map(|i| 4 + (i * 7 + p as u32) % 40000).collect())
                .collect();
            // Prefill alone: one forward over the padded batch.
            let (ids, positions, key_start, t) = left_pad(&seqs);
            let plan = pollster::block_on(ForwardPlan::new(gpu, &model, prompts, t))?;
            let up = |v: &[u32]| gpu.upload("bench", "t", v);
            let inputs = ForwardInputs { ids: &up(&ids)?, positions: &up(&positions)?, key_start: &up(&key_start)? };
            let mut prefill = f64::MAX;
            for _ in 0..2 {
                let mut b = gpu.batch("bench prefill");
                plan.record(&mut b, &model, &inputs, &AttentionMode::SelfOnly)?;
                let start = Instant::now();
                pollster::block_on(b.submit())?;
                pollster::block_on(gpu.finish())?;
                prefill = prefill.min(start.elapsed().as_secs_f64());
            }
            let req = GenerateRequest {
                prompts: seqs,
                num_samples: g,
                max_new_tokens: args.new,
                sampling: SamplingConfig::greedy(),
                stop_ids: vec![],
            };
            let start = Instant::now();
            let out = pollster::block_on(generate(gpu, &model, &req, |_, _| {}))?;
            let total = start.elapsed().as_secs_f64();
            let new_tokens: usize = out.iter().map(|c| c.tokens.len()).sum();
            let decode_rate = new_tokens as f64 / (total - prefill).max(1e-9);
            let prefill_rate = (prompts * args.prompt) as f64 / prefill;
            // HF generate has no shared-prefill sampling: G = 8 compares with its batch-8 decode.
            let key = if prompts == 8 || g == 8 { "8" } else { "1" };
            let tp = torch.as_ref().and_then(|t| t[key]["prefill_tok_s"].as_f64());
            let td = torch.as_ref().and_then(|t| t[key]["decode_tok_s"].as_f64());
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
            println!("{label:<28} {prefill_rate:>14.0} {decode_rate:>14.1} {:>14} {:>14}", f(tp), f(td));
        }
        if let Some(t) = &torch {
            println!(
                "(torch {} on {} ({} CPU threads); G = 8 is compared with its batch-8 decode)",
                t["torch"],
                args.torch_device,
                std::env::var("TORCH_THREADS").unwrap_or("2".into())
            );
        }
    }
    if args.parts.iter().any(|p| p == "train") {
        let layout = LoraLayout::new(&c, LoraConfig { r: 16, alpha: 32.0, targets: Target::ALL.to_vec() });
        let init = layout.init(0);
        let mut trainer = pollster::block_on(LoraTrainer::new(gpu, layout, &init, AdamWConfig::default()))?;
        trainer.recompute = args.recompute;
        let seqs: Vec<(Vec<u32>, Vec<u32>)> = (0..args.train_batch)
            .map(|s| (vec![5u32; 1], (0..args.train_seq as u32 - 1).map(|i| 4 + (i * 13 + s as u32) % 40000).collect()))
            .collect();
        let n = (args.train_batch * (args.train_seq - 1)) as f32;
        let mb = MicroBatch::from_sequences(&seqs, 1, |_, _| -1.0 / n);
        gpu.pool().reset_peak();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            pollster::block_on(trainer.run(gpu, &model, &mb, true, 1.0))?;
            pollster::block_on(trainer.optimizer_step(gpu, 1e-4, 1.0))?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        let (_, peak) = gpu.pool().device_bytes();
        let tokens = (args.train_batch * args.train_seq) as f64;
        let torch = if args.no_baseline { None } else { baseline(&args.python, "train", &shape) };
        let torch_rate = torch.as_ref().and_then(|t| t["tok_s"].as_f64());
        let torch_mem = torch.as_ref().and_then(|t| t["peak_mib"].as_f64());
        println!(
            "GPU memory held during the step (model weights included): {:.0} MiB{}",
            peak as f64 / (1 << 20) as f64,
            torch_mem.map_or(String::new(), |m| format!("; torch peak allocated {m:.0} MiB"))
        );
        println!(
            "\nLoRA r=16 (all 7 projections) training step, {}×{} tokens: {:.2} s, {:.0} tokens/s{}",
            args.train_batch,
            args.train_seq,
            best,
            tokens / best,
            torch_rate.map_or(String::new(), |t| format!(
                "; torch+peft ({}) {t:.0} tokens/s, ratio {:.2}",
                args.torch_device,
                tokens / best / t
            ))
        );
    }
    Ok(())
}
