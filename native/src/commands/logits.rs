//! `convrec logits`: one sequence through the model (no chat template), every position's logits
//! written as tensor `logits`, f32 `[T, vocab]`, to a safetensors file (written atomically).

use std::path::PathBuf;

use anyhow::Context;
use convrec_core::GpuOptions;
use convrec_core::model::gpu::{GpuModel, sequence_logits};
use convrec_core::model::safetensors_io::write_f32;

#[derive(clap::Args)]
pub struct Args {
    /// An HF model folder or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter folder, merged into the weights on the GPU.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let files = convrec::model_files::load(&args.model)?;
    let gpu = super::open_gpu(gpu_options)?;
    let vocab = files.config.vocab_size;
    let model = GpuModel::upload(&gpu, files.config, files.tensors, args.ids.len())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut merged = None;
    let model = super::with_adapter(&gpu, &model, args.adapter.as_deref(), &mut merged)?;
    let logits = pollster::block_on(sequence_logits(&gpu, model, &args.ids))?;
    let bytes = write_f32(&[("logits".to_string(), vec![args.ids.len(), vocab], logits)])?;
    convrec::fetch::write_atomic(&args.out, &bytes)?;
    eprintln!("wrote logits [{}, {vocab}] to {}", args.ids.len(), args.out.display());
    Ok(())
}
