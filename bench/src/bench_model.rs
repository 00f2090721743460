//! The model every end-to-end benchmark runs: a real checkpoint's shape (SmolLM2-135M by default;
//! `--shape`) with random weights — speed and memory do not depend on their values — and the
//! inputs the benchmarks feed it.

use std::time::Instant;

use convrec_core::Gpu;
use convrec_core::dtype::WeightFormat;
use convrec_core::model::gpu::GpuModel;
use convrec_core::model::{Architecture, HostTensor, ModelConfig};
use convrec_core::ops::adamw::AdamWConfig;
use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
use convrec_core::train::trainer::{LoraTrainer, MicroBatch};
use serde_json::json;

/// The shape options every model benchmark takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ShapeArgs {
    /// The checkpoint whose shape the model has (its config.json's sizes, random weights).
    #[arg(long, value_enum, default_value = "smollm2-135m")]
    pub shape: ModelShape,
    /// Decoder layers (default: the checkpoint's; fewer make a quick smoke run).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub layers: Option<u32>,
}

/// The shapes of the models the paper trains and their small relatives, from their
/// `config.json` files on the Hub.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelShape {
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
    #[value(name = "qwen2.5-0.5b")]
    Qwen25_0_5b,
    #[value(name = "qwen2.5-1.5b")]
    Qwen25_1_5b,
    #[value(name = "llama-3.2-1b")]
    Llama32_1b,
    #[value(name = "llama-3.2-3b")]
    Llama32_3b,
}

impl ModelShape {
    pub fn name(self) -> &'static str {
        match self {
            ModelShape::Smollm2_135m => "SmolLM2-135M",
            ModelShape::Qwen25_0_5b => "Qwen2.5-0.5B",
            ModelShape::Qwen25_1_5b => "Qwen2.5-1.5B",
            ModelShape::Llama32_1b => "Llama-3.2-1B",
            ModelShape::Llama32_3b => "Llama-3.2-3B",
        }
    }

    /// (vocab, hidden, intermediate, layers, heads, kv heads, head size).
    fn sizes(self) -> (usize, usize, usize, usize, usize, usize, usize) {
        match self {
            ModelShape::Smollm2_135m => (49152, 576, 1536, 30, 9, 3, 64),
            ModelShape::Qwen25_0_5b => (151936, 896, 4864, 24, 14, 2, 64),
            ModelShape::Qwen25_1_5b => (151936, 1536, 8960, 28, 12, 2, 128),
            ModelShape::Llama32_1b => (128256, 2048, 8192, 16, 32, 8, 64),
            ModelShape::Llama32_3b => (128256, 3072, 8192, 28, 24, 8, 128),
        }
    }
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
    let (vocab_size, hidden_size, intermediate_size, layers, num_heads, num_kv_heads, head_dim) = shape.shape.sizes();
    let qwen = matches!(shape.shape, ModelShape::Qwen25_0_5b | ModelShape::Qwen25_1_5b);
    let llama3 = matches!(shape.shape, ModelShape::Llama32_1b | ModelShape::Llama32_3b);
    ModelConfig {
        architecture: if qwen { Architecture::Qwen2 } else { Architecture::Llama },
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers: shape.layers.map_or(layers, |l| l as usize),
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta: match shape.shape {
            ModelShape::Smollm2_135m => 100000.0,
            _ if qwen => 1000000.0,
            _ => 500000.0,
        },
        rope_scaling: if llama3 {
            convrec_core::model::RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }
        } else {
            convrec_core::model::RopeScaling::None
        },
        rms_norm_eps: if qwen { 1e-6 } else { 1e-5 },
        tie_word_embeddings: true,
        attention_bias: qwen,
        max_position_embeddings: if qwen { 32768 } else { 8192 },
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

/// Random weights, each converted as `weights` keeps it as soon as it is drawn: a 3B model's f32
/// weights (13 GB) are never all on the host at once.
fn random_weights(c: &ModelConfig, weights: WeightFormat) -> Vec<(String, HostTensor)> {
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
            let dtype = weights.dtype_for(&n, &shape, convrec_core::dtype::Dtype::F32);
            (n, HostTensor::f32(shape, v).converted(dtype))
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
    weights: WeightFormat,
) -> anyhow::Result<(ModelConfig, GpuModel)> {
    let c = config(shape);
    let model = GpuModel::upload_as(gpu, c.clone(), random_weights(&c, weights), positions, weights)?;
    Ok((c, model))
}

/// The line every model benchmark starts with: the adapter, the model and how its weights are kept.
pub fn header(gpu: &Gpu, shape: &ShapeArgs, c: &ModelConfig, model: &GpuModel) -> String {
    format!(
        "{}, weights {} ({:.1} MiB on the GPU)",
        adapter_and_shape(gpu, shape, c),
        gpu.weight_format(),
        mib(model.weight_bytes())
    )
}

/// "adapter: NAME (backend, driver); SHAPE shape (N layers)".
pub fn adapter_and_shape(gpu: &Gpu, shape: &ShapeArgs, c: &ModelConfig) -> String {
    let s = gpu.summary();
    format!(
        "adapter: {} ({}, {}); {} shape ({} layers)",
        s.name,
        s.backend,
        s.driver_info,
        shape.shape.name(),
        c.num_layers
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shape is its checkpoint: the parameter count its model card states.
    #[test]
    fn shapes_have_their_checkpoints_parameter_counts() {
        for (shape, published) in [
            (ModelShape::Smollm2_135m, 134_515_008),
            (ModelShape::Qwen25_0_5b, 494_032_768),
            (ModelShape::Qwen25_1_5b, 1_543_714_304),
            (ModelShape::Llama32_1b, 1_235_814_400),
            (ModelShape::Llama32_3b, 3_212_749_824),
        ] {
            let c = config(&ShapeArgs { shape, layers: None });
            c.validate().unwrap();
            assert_eq!(c.parameter_count(), published, "{shape:?}");
        }
    }
}
