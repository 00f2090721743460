//! GGUF models (llama.cpp's single-file format) for the `llama` and `qwen2` architectures:
//! configuration from metadata, weights under their Hugging Face names and in PyTorch order,
//! quantised types dequantised to f32, and the tokenizer and chat template the file carries.

mod names;
pub mod quant;
pub mod reader;

#[cfg(test)]
pub(crate) mod tests;

pub use names::{permute_rows, unpermute_rows};
pub use quant::GgmlType;
pub use reader::{GgufFile, MetaValue, TensorInfo};

use super::config::{Architecture, ConfigError, Field, ModelConfig, derived_head_dim};
use super::rope_scaling::RopeScaling;
use super::tensor::{HostTensor, TensorData};
use super::tokenizer::{self, SpecialTokens, TokenizerError};
use crate::dtype::Dtype;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file: the magic is {0:02x?}, not \"GGUF\"")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (versions 2 and 3, little-endian, are)")]
    UnsupportedVersion(String),
    #[error("GGUF file is truncated at offset {offset}: {what} runs past the end")]
    Truncated { offset: u64, what: String },
    #[error("GGUF string {what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64, what: String },
    #[error("GGUF metadata {key}: unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("GGUF metadata {key}: {message}")]
    BadMetadata { key: String, message: String },
    #[error(
        "GGUF tensor {name}: unknown or unsupported tensor type {type_id} (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K are supported)"
    )]
    UnknownTensorType { name: String, type_id: u32 },
    #[error("GGUF tensor {name}: {message}")]
    BadTensor { name: String, message: String },
    #[error("GGUF tensor {name}: data [{start}, {start}+{size}) is out of bounds of the {file_len}-byte file")]
    DataOutOfBounds { name: String, start: u64, size: u64, file_len: u64 },
    #[error("GGUF architecture {name:?} is not supported ({supported} are)")]
    UnsupportedArchitecture { name: String, supported: String },
    #[error("GGUF metadata: missing {0}")]
    MissingKey(String),
    #[error("GGUF model: {0}")]
    Unsupported(String),
    #[error("GGUF model: missing tensor {0}")]
    MissingTensor(String),
    #[error("GGUF model: shape mismatch for {name}: the file has {found:?}, the config needs {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("GGUF model: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] Box<TokenizerError>),
}

impl From<TokenizerError> for GgufError {
    fn from(e: TokenizerError) -> Self {
        GgufError::Tokenizer(Box::new(e))
    }
}

/// A model read from a GGUF file.
pub struct GgufModel {
    pub config: ModelConfig,
    /// Every tensor of `config.expected_tensors()`, in that order, under HF names and shapes.
    pub tensors: Vec<(String, HostTensor)>,
    pub tokenizer: tokenizers::Tokenizer,
    pub special_tokens: SpecialTokens,
    /// `tokenizer.chat_template`, when the file has one (see `chat::ChatTemplate::for_model`).
    pub chat_template: Option<String>,
    /// `general.name`, for messages.
    pub name: Option<String>,
}

/// Short: the tokenizer's and tensors' own Debug would print the whole vocabulary and weights.
impl std::fmt::Debug for GgufModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModel")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("tensors", &self.tensors.len())
            .field("special_tokens", &self.special_tokens)
            .field("chat_template", &self.chat_template.as_ref().map(|t| t.len()))
            .finish_non_exhaustive()
    }
}

impl GgufModel {
    /// Reads a whole model: configuration, tokenizer and every weight.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GgufError> {
        let file = GgufFile::parse(bytes)?;
        let tok = tokenizer::from_gguf(&file)?;
        let config = config_from_metadata(&file, &tok.special, tok.chat_template.as_deref())?;
        let tensors = load_tensors(&file, &config)?;
        Ok(GgufModel {
            config,
            tensors,
            tokenizer: tok.tokenizer,
            special_tokens: tok.special,
            chat_template: tok.chat_template,
            name: file.get_str("general.name")?.map(str::to_string),
        })
    }

    /// Ids that end generation (EOS, EOT and the chat template's end-of-turn token).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.config.eos_token_ids
    }

    pub fn eot_token_id(&self) -> Option<u32> {
        self.special_tokens.eot.as_ref().map(|t| t.id)
    }
}

/// A size from the metadata, if present.
fn optional(file: &GgufFile, key: &str) -> Result<Option<usize>, GgufError> {
    match file.get_u64(key)? {
        None => Ok(None),
        Some(v) => usize::try_from(v)
            .map(Some)
            .map_err(|_| GgufError::BadMetadata { key: key.to_string(), message: format!("{v} is too large") }),
    }
}

fn required(file: &GgufFile, key: String) -> Result<usize, GgufError> {
    optional(file, &key)?.ok_or(GgufError::MissingKey(key))
}

/// Builds the configuration from `{arch}.*` metadata. `special` gives BOS/EOS ids; the chat
/// template's end-of-turn marker (`<|im_end|>`, `<|eot_id|>`) is added to the EOS ids, as
/// llama.cpp does, because a chat model ends its turns with it even where EOS names another token.
pub fn config_from_metadata(
    file: &GgufFile,
    special: &SpecialTokens,
    chat_template: Option<&str>,
) -> Result<ModelConfig, GgufError> {
    let arch_name =
        file.get_str("general.architecture")?.ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?;
    let architecture = crate::model::decoder::ALL
        .iter()
        .find(|d| d.gguf_name == arch_name)
        .ok_or_else(|| GgufError::UnsupportedArchitecture {
            name: arch_name.to_string(),
            supported: crate::model::decoder::supported_gguf_names(),
        })?
        .architecture;
    let key = |k: &str| format!("{arch_name}.{k}");
    let name = |f: Field| key(f.gguf_key());
    let hidden_size = required(file, key("embedding_length"))?;
    let num_heads = required(file, key("attention.head_count"))?;
    let num_kv_heads = optional(file, &key("attention.head_count_kv"))?.unwrap_or(num_heads);
    let head_dim = match optional(file, &key("attention.key_length"))? {
        Some(n) => n,
        None => derived_head_dim(hidden_size, num_heads, &name).map_err(GgufError::Unsupported)?,
    };
    if let Some(v) = optional(file, &key("attention.value_length"))?.filter(|&v| v != head_dim) {
        return Err(GgufError::Unsupported(format!("value head size {v} differs from key head size {head_dim}")));
    }
    if let Some(r) = optional(file, &key("rope.dimension_count"))?.filter(|&r| r != head_dim) {
        return Err(GgufError::Unsupported(format!("partial RoPE ({r} of {head_dim} dims) is not implemented")));
    }
    let rope_scaling = rope_scaling(file, &key, head_dim)?;
    if let Some(n) = file.get_u64(&key("expert_count"))?.filter(|&n| n > 0) {
        return Err(GgufError::Unsupported(format!("mixture of experts ({n} experts) is not implemented")));
    }
    let vocab_size = match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(tokens) => tokens.len(),
        None => required(file, key("vocab_size"))?,
    };
    let mut eos_token_ids = special.end_ids();
    for marker in ["<|im_end|>", "<|eot_id|>"] {
        let id = chat_template.filter(|t| t.contains(marker)).and_then(|_| token_id(file, marker));
        if let Some(id) = id.filter(|id| !eos_token_ids.contains(id)) {
            eos_token_ids.push(id);
        }
    }
    let attention_bias = architecture == Architecture::Qwen2 || file.tensor("blk.0.attn_q.bias").is_some();
    let config = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: required(file, key("feed_forward_length"))?,
        num_layers: required(file, key("block_count"))?,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta: file.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
        rope_scaling,
        rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6) as f32,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias,
        max_position_embeddings: optional(file, &key("context_length"))?.unwrap_or(2048),
        bos_token_id: special.bos.as_ref().map(|t| t.id),
        eos_token_ids,
    };
    // The checks HF configs get (sizes, finite RoPE base and epsilon), naming GGUF's keys: corrupt
    // metadata must not make later code build billions of tensor names or overflow.
    config.check(&name).map_err(GgufError::Unsupported)?;
    Ok(config)
}

/// RoPE scaling as llama.cpp stores it: `rope.scaling.type` `linear` or `yarn` with its factor
/// (and YaRN's original context and betas), or the per-frequency divisors of `rope_freqs.weight`
/// (its form of Llama 3 scaling).
fn rope_scaling(file: &GgufFile, key: &dyn Fn(&str) -> String, head_dim: usize) -> Result<RopeScaling, GgufError> {
    let factor =
        || file.get_f64(&key("rope.scaling.factor"))?.ok_or_else(|| GgufError::MissingKey(key("rope.scaling.factor")));
    let mut scaling = match file.get_str(&key("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear { factor: factor()? as f32 },
        Some("yarn") => {
            let factor = factor()?;
            let original = file
                .get_u64(&key("rope.scaling.original_context_length"))?
                .ok_or_else(|| GgufError::MissingKey(key("rope.scaling.original_context_length")))?;
            let beta = |k: &str, default: f64| -> Result<f64, GgufError> {
                Ok(file.get_f64(&key(k))?.filter(|&b| b != 0.0).unwrap_or(default))
            };
            RopeScaling::Yarn {
                factor: factor as f32,
                original_max_position_embeddings: original as usize,
                beta_fast: beta("rope.scaling.yarn_beta_fast", 32.0)?,
                beta_slow: beta("rope.scaling.yarn_beta_slow", 1.0)?,
                attention_factor: if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 },
                truncate: true,
            }
        }
        Some(other) => {
            return Err(GgufError::Unsupported(format!(
                "rope scaling {other:?} is not implemented (linear, yarn and rope_freqs.weight are)"
            )));
        }
    };
    if let Some(info) = file.tensor("rope_freqs.weight") {
        if info.dims.iter().product::<u64>() != head_dim as u64 / 2 {
            return Err(GgufError::Unsupported(format!(
                "rope_freqs.weight has shape {:?}, the head size {head_dim} needs {} values",
                info.dims,
                head_dim / 2
            )));
        }
        scaling = RopeScaling::FreqFactors(read_tensor(file, info).to_f32());
    }
    Ok(scaling)
}

fn token_id(file: &GgufFile, text: &str) -> Option<u32> {
    let tokens = file.get("tokenizer.ggml.tokens")?.as_array()?;
    tokens.iter().position(|t| t.as_str() == Some(text)).map(|i| i as u32)
}

/// Reads every tensor the configuration needs, checks its shape, keeps it compact (F16/BF16 as
/// 16-bit, quantised matrices as GPU blocks with the same values; see `read_tensor`) and undoes
/// llama.cpp's q/k row order for `llama`.
pub fn load_tensors(file: &GgufFile, config: &ModelConfig) -> Result<Vec<(String, HostTensor)>, GgufError> {
    let decoder = config.decoder();
    let mut by_hf_name = std::collections::HashMap::new();
    for t in &file.tensors {
        if let Some(hf) = decoder.hf_name(&t.name) {
            by_hf_name.insert(hf, t);
        }
    }
    // Each layer has at least nine tensors: refuse a block count the file cannot hold before
    // listing names for it.
    if config.num_layers > file.tensors.len() {
        return Err(GgufError::MissingTensor(format!(
            "model.layers.{}.input_layernorm.weight (block_count {} exceeds the {} tensors in the file)",
            file.tensors.len(),
            config.num_layers,
            file.tensors.len()
        )));
    }
    let expected = config.expected_tensors();
    // A layer tensor the configuration has no place for (a llama file's attn_output.bias) would
    // be ignored: refuse the file instead.
    let wanted: std::collections::HashSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    let unexpected = by_hf_name
        .iter()
        .filter(|(hf, _)| decoder.names_layer_module(hf) && !wanted.contains(hf.as_str()))
        .map(|(_, t)| t)
        .min_by(|a, b| a.name.cmp(&b.name));
    if let Some(t) = unexpected {
        return Err(GgufError::BadTensor {
            name: t.name.clone(),
            message: format!("convrec's {} layer has no such tensor; it would answer without it", decoder.gguf_name),
        });
    }
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let info = by_hf_name.get(&name).ok_or_else(|| GgufError::MissingTensor(name.clone()))?;
        let found = info.shape();
        if found != shape {
            return Err(GgufError::ShapeMismatch { name, expected: shape, found });
        }
        let mut tensor = read_tensor(file, info);
        if let Some((i, v)) = tensor.first_non_finite() {
            return Err(GgufError::BadTensor {
                name: info.name.clone(),
                message: format!("({name}) element {i} is {v}; weights must be finite"),
            });
        }
        let permuted = if decoder.gguf_permutes_rotary_rows { decoder.rotary_heads(&name, config) } else { None };
        if let Some(n_head) = permuted {
            let row_len = if shape.len() == 2 { shape[1] } else { 1 };
            let bad = |message: String| GgufError::BadTensor { name: name.clone(), message };
            // Block formats move whole rows of words (a row is whole blocks).
            let row_words = tensor.dtype().storage_bytes(row_len) as usize / 4;
            tensor.data = match tensor.data {
                TensorData::F32(v) => TensorData::F32(unpermute_rows(&v, row_len, n_head).map_err(bad)?),
                TensorData::F16(v) => TensorData::F16(unpermute_rows(&v, row_len, n_head).map_err(bad)?),
                TensorData::Bf16(v) => TensorData::Bf16(unpermute_rows(&v, row_len, n_head).map_err(bad)?),
                TensorData::Q4(w) => TensorData::Q4(unpermute_rows(&w, row_words, n_head).map_err(bad)?),
                TensorData::Q8(w) => TensorData::Q8(unpermute_rows(&w, row_words, n_head).map_err(bad)?),
            };
        }
        out.push((name, tensor));
    }
    Ok(out)
}

/// Bytes `read_tensor` keeps `info` in on the host (and, stored as read, on the GPU).
pub fn kept_bytes(info: &TensorInfo) -> u64 {
    let n = info.n_elements();
    match (info.ggml_type, quant::gpu_dtype(info.ggml_type)) {
        (GgmlType::F16 | GgmlType::Bf16, _) => n * 2,
        (_, Some(dtype)) if info.shape().len() == 2 => dtype.storage_bytes(n as usize),
        _ => n * 4,
    }
}

/// One tensor's data in PyTorch order (GGUF's row-major layout with reversed dims is already
/// PyTorch's row-major layout, so only the shape is reversed). Quantised matrices become GPU
/// blocks (`quant::to_gpu_blocks`: the same values, dequantised inside the kernels); quantised
/// vectors, which no kernel reads as blocks, are dequantised.
pub fn read_tensor(file: &GgufFile, info: &TensorInfo) -> HostTensor {
    let bytes = file.tensor_bytes(info);
    let shape = info.shape();
    let bits16 = || bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    let data = match (info.ggml_type, quant::gpu_dtype(info.ggml_type)) {
        (GgmlType::F16, _) => TensorData::F16(bits16()),
        (GgmlType::Bf16, _) => TensorData::Bf16(bits16()),
        (t, Some(Dtype::Q4)) if shape.len() == 2 => TensorData::Q4(quant::to_gpu_blocks(t, bytes)),
        (t, Some(Dtype::Q8)) if shape.len() == 2 => TensorData::Q8(quant::to_gpu_blocks(t, bytes)),
        (t, _) => TensorData::F32(quant::dequantize(t, bytes)),
    };
    HostTensor { shape, data }
}
