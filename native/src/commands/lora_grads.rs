//! `convrec lora-grads`: the mean next-token NLL of one sequence over target positions ≥ K (HF's
//! label shift) and the gradient of every LoRA tensor, written under its PEFT key.

use std::path::PathBuf;

use anyhow::Context;
use convrec_core::GpuOptions;
use convrec_core::model::gpu::GpuModel;
use convrec_core::model::safetensors_io::write_f32;
use convrec_core::train::grads::lora_loss_and_grads;

#[derive(clap::Args)]
pub struct Args {
    /// An HF model folder or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter folder.
    #[arg(long)]
    adapter: PathBuf,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// First position whose token is a target (earlier labels are ignored).
    #[arg(long)]
    labels_from: usize,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let files = convrec::model_files::load(&args.model)?;
    let (layout, params) = convrec::adapter_files::load_adapter(&args.adapter, &files.config)?;
    let gpu = super::open_gpu(gpu_options)?;
    let model = GpuModel::upload(&gpu, files.config, files.tensors, args.ids.len())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let (loss, grads) =
        pollster::block_on(lora_loss_and_grads(&gpu, &model, &layout, &params, &args.ids, args.labels_from))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = layout
        .factors
        .iter()
        .map(|f| (f.peft_key(), f.shape.to_vec(), grads[f.offset..f.offset + f.len()].to_vec()))
        .collect();
    tensors.push(("loss".into(), vec![], vec![loss as f32]));
    convrec::fetch::write_atomic(&args.out, &write_f32(&tensors)?)?;
    println!("loss {loss:.6}");
    eprintln!("wrote {} gradients to {}", layout.factors.len(), args.out.display());
    Ok(())
}
