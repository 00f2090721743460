//! Finding and reading a model on disk: a Hugging Face folder (`config.json`, `*.safetensors`
//! single or sharded with `model.safetensors.index.json`, `tokenizer.json`,
//! `tokenizer_config.json`) or a GGUF file. Errors name the file and what is wrong.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use convrec_core::model::gguf::GgufModel;
use convrec_core::model::safetensors_io::read_tensors;
use convrec_core::model::tokenizer::SpecialTokens;
use convrec_core::model::{HostTensor, ModelConfig};

/// A model's weights and configuration, as read from disk.
pub struct ModelFiles {
    pub source: PathBuf,
    pub config: ModelConfig,
    pub tensors: Vec<(String, HostTensor)>,
    /// From a GGUF file: its tokenizer, special tokens and chat template.
    pub gguf: Option<(tokenizers::Tokenizer, SpecialTokens, Option<String>)>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The safetensors files of an HF folder, in shard order.
fn weight_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map =
            json["weight_map"].as_object().with_context(|| format!("{}: no weight_map object", index.display()))?;
        let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!("{}: neither model.safetensors nor model.safetensors.index.json is there", dir.display())
}

/// Reads an HF model folder.
pub fn load_hf_folder(dir: &Path) -> anyhow::Result<ModelFiles> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config = ModelConfig::from_hf_json(&text).with_context(|| format!("{}", config_path.display()))?;
    let mut tensors = Vec::new();
    for file in weight_files(dir)? {
        let bytes = read(&file)?;
        tensors.extend(read_tensors(&bytes, &file.display().to_string())?);
    }
    Ok(ModelFiles { source: dir.to_path_buf(), config, tensors, gguf: None })
}

/// Reads a model from an HF folder or a GGUF file.
pub fn load(path: &Path) -> anyhow::Result<ModelFiles> {
    if path.is_dir() {
        return load_hf_folder(path);
    }
    if !path.exists() {
        bail!("{}: no such file or folder (give an HF model folder or a .gguf file)", path.display());
    }
    let bytes = read(path)?;
    let m = GgufModel::from_bytes(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(ModelFiles {
        source: path.to_path_buf(),
        config: m.config,
        tensors: m.tensors,
        gguf: Some((m.tokenizer, m.special_tokens, m.chat_template)),
    })
}
