//! The model every end-to-end benchmark runs: SmolLM2-135M's shape with random weights (speed does
//! not depend on their values), and the inputs the benchmarks feed it.

use std::time::Instant;

use convrec_core::Gpu;
use convrec_core::model::gpu::GpuModel;
use convrec_core::model::{Architecture, HostTensor, ModelConfig};
use convrec_core::ops::adamw::AdamWConfig;
use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
use convrec_core::train::trainer::{LoraTrainer, MicroBatch};
use serde_json::json;

/// The shape options every model benchmark takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ShapeArgs {
    /// Decoder layers (SmolLM2-135M has 30; fewer make a quick smoke run).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub layers: u32,
}

/// The generation figures' options, shared by `model` and `weights`.
#[derive(clap::Args, Clone, Debug)]
pub struct GenerationArgs {
    /// Prompt length (tokens).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub prompt: u32,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub new: u32,
}

/// The training step's options, shared by `model` and `profile`.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Training micro-batch: sequences × tokens.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub train_batch: u32,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..))]
    pub train_seq: u32,
    /// Recompute activations in the training step's backward (`convrec sft --recompute`).
    #[arg(long)]
    pub recompute: bool,
}

/// LoRA rank of every training benchmark (all 7 projections, alpha = 2r).
pub const LORA_R: usize = 16;

pub fn config(shape: &ShapeArgs) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: shape.layers as usize,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rope_theta: 100000.0,
        rope_scaling: convrec_core::model::RopeScaling::None,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        attention_bias: false,
        max_position_embeddings: 8192,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// The PyTorch baseline script's config: the shape as it reads it, and the fields of `case`.
pub fn baseline_config(c: &ModelConfig, case: serde_json::Value) -> serde_json::Value {
    let mut out = json!({"vocab": c.vocab_size, "hidden": c.hidden_size, "ffn": c.intermediate_size,
        "layers": c.num_layers, "heads": c.num_heads, "kv_heads": c.num_kv_heads, "r": LORA_R});
    if let (Some(out), serde_json::Value::Object(case)) = (out.as_object_mut(), case) {
        out.extend(case);
    }
    out
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

/// The model on the GPU (random f32 weights, kept as `--weights` says) with room for `positions`
/// positions.
pub fn upload(gpu: &Gpu, shape: &ShapeArgs, positions: usize) -> anyhow::Result<(ModelConfig, GpuModel)> {
    upload_as(gpu, shape, positions, gpu.weight_format())
}

/// As `upload`, the frozen weights kept as `weights` says.
pub fn upload_as(
    gpu: &Gpu,
    shape: &ShapeArgs,
    positions: usize,
    weights: convrec_core::dtype::WeightFormat,
) -> anyhow::Result<(ModelConfig, GpuModel)> {
    let c = config(shape);
    let model = GpuModel::upload_as(gpu, c.clone(), random_weights(&c), positions, weights)?;
    Ok((c, model))
}

/// The line every model benchmark starts with: the adapter, the model and how its weights are kept.
pub fn header(gpu: &Gpu, c: &ModelConfig, model: &GpuModel) -> String {
    let s = gpu.summary();
    format!(
        "adapter: {} ({}, {}); SmolLM2-135M shape ({} layers), weights {} ({:.1} MiB on the GPU)",
        s.name,
        s.backend,
        s.driver_info,
        c.num_layers,
        gpu.weight_format(),
        mib(model.weight_bytes())
    )
}

/// `n` distinct prompts of `len` ordinary token ids.
pub fn prompts(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n).map(|p| (0..len as u32).map(|i| 4 + (i * 7 + p as u32) % 40000).collect()).collect()
}

/// The adapter every training benchmark trains.
pub fn lora_layout(c: &ModelConfig) -> LoraLayout {
    LoraLayout::new(c, LoraConfig { r: LORA_R, alpha: 2.0 * LORA_R as f32, targets: Target::ALL.to_vec() })
}

/// A supervised micro-batch of `batch` sequences of `seq` tokens, every token after the first
/// in the loss (token-mean).
pub fn train_batch(batch: usize, seq: usize) -> MicroBatch {
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = (0..batch)
        .map(|s| (vec![5u32; 1], (0..seq as u32 - 1).map(|i| 4 + (i * 13 + s as u32) % 40000).collect()))
        .collect();
    let n = (batch * (seq - 1)) as f32;
    MicroBatch::from_sequences(&seqs, 1, |_, _| -1.0 / n)
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// A LoRA trainer of [`lora_layout`] from its initial adapter, AdamW at its defaults.
pub fn lora_trainer(gpu: &Gpu, c: &ModelConfig, recompute: bool) -> anyhow::Result<LoraTrainer> {
    let layout = lora_layout(c);
    let init = layout.init(0);
    let mut trainer = pollster::block_on(LoraTrainer::new(gpu, layout, &init, AdamWConfig::default()))?;
    trainer.recompute = recompute;
    Ok(trainer)
}

/// One training step on `mb` (forward, backward, AdamW), wall seconds until its gradient norm is
/// back.
pub fn lora_step(gpu: &Gpu, trainer: &mut LoraTrainer, model: &GpuModel, mb: &MicroBatch) -> anyhow::Result<f64> {
    let start = Instant::now();
    pollster::block_on(trainer.run(gpu, model, mb, true, 1.0))?;
    pollster::block_on(trainer.optimizer_step(gpu, 1e-4, 1.0))?;
    Ok(start.elapsed().as_secs_f64())
}
