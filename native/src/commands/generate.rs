//! `convrec generate`: chat-templated prompt in, completions out, sampled on the GPU.

use std::path::PathBuf;

use anyhow::Context;
use convrec_core::GpuOptions;
use convrec_core::model::chat::Message;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gpu::GpuModel;
use convrec_core::ops::decode::SamplingConfig;

#[derive(clap::Args)]
pub struct Args {
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// A system message (default: the chat template's own, if it has one).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0, value_parser = super::flags::non_negative)]
    temperature: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// 1 disables top-p.
    #[arg(long, default_value_t = 1.0, value_parser = super::flags::unit)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Completions of the prompt (they share its prefill).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    num_samples: usize,
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let path = convrec::text_model::model_path(args.model.as_deref())?;
    let tm = convrec::text_model::load(&path)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::system(system.clone()));
    }
    messages.push(Message::user(args.prompt.clone()));
    let prompt = tm.prompt_ids(&messages)?;
    let gpu = super::open_gpu(gpu_options)?;
    let base = GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), prompt.len() + args.max_new_tokens + 1)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut merged = None;
    let model = super::with_adapter(&gpu, &base, args.adapter.as_deref(), &mut merged)?;
    let req = GenerateRequest {
        prompts: vec![prompt],
        num_samples: args.num_samples.max(1),
        first_sequence: 0,
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_ids: tm.stop_ids.clone(),
    };
    let out = pollster::block_on(generate(&gpu, model, &req, |_, _| {}))?;
    for c in &out {
        if out.len() > 1 {
            println!("--- sample {}", c.sample);
        }
        println!("{}", tm.decode(&c.tokens)?);
    }
    Ok(())
}
