//! A chat model as the commands use it: weights and config (`model_files`) and its text side
//! (`convrec_core::model::text::ChatText`: tokenizer, special tokens, chat template, stop ids) —
//! from a GGUF file or an HF folder (`tokenizer.json`, `tokenizer_config.json`,
//! `chat_template.jinja`) — and the default model when none is given.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use convrec_core::model::text::ChatText;
use convrec_core::model::tokenizer::from_hf_files;
use convrec_core::model::{HostTensor, ModelConfig};

pub struct TextModel {
    pub source: PathBuf,
    pub config: ModelConfig,
    pub tensors: Vec<(String, HostTensor)>,
    pub text: ChatText,
}

/// The text side's methods (`prompt_ids`, `decode`, `stop_ids`, …) read as the model's own.
impl std::ops::Deref for TextModel {
    type Target = ChatText;
    fn deref(&self) -> &ChatText {
        &self.text
    }
}

/// `--model PATH`, or the default model (fetched into the cache on first use).
pub fn model_path(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.to_path_buf()),
        None => crate::default_model_path().context("fetching the default model (SmolLM2-135M-Instruct)"),
    }
}

/// The Hub id of the default model's weights (the GGUF is a Q4_1 quantisation of them).
pub const DEFAULT_MODEL_HUB_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// What an adapter records as `base_model_name_or_path`: adapters are shared, so never a path of
/// this machine. The Hub id for the default model; an HF folder's own `_name_or_path` when it
/// names a Hub repository (`owner/name`); otherwise the file or folder name.
pub fn base_model_name(arg: Option<&Path>, resolved: &Path) -> String {
    if arg.is_none() {
        return DEFAULT_MODEL_HUB_ID.to_string();
    }
    let file_name =
        || resolved.file_name().map_or_else(|| resolved.display().to_string(), |n| n.to_string_lossy().into_owned());
    if !resolved.is_dir() {
        return file_name();
    }
    let own_name = std::fs::read(resolved.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("_name_or_path")?.as_str().map(str::to_string));
    match own_name {
        Some(id) if looks_like_hub_id(&id) => id,
        _ => file_name(),
    }
}

/// `owner/name` with Hub-legal characters — not an absolute or relative path of some machine.
fn looks_like_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let legal = |p: &str| {
        !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if legal(a) && legal(b))
}

pub fn load(path: &Path) -> anyhow::Result<TextModel> {
    let (config, tensors, tokenizer, special, template) = if path.is_dir() {
        let files = crate::model_files::load_hf_folder(path)?;
        let read = |name: &str| std::fs::read(path.join(name)).ok();
        let tok_json = read("tokenizer.json").with_context(|| format!("{}: no tokenizer.json", path.display()))?;
        let jinja = read("chat_template.jinja").map(|b| String::from_utf8_lossy(&b).into_owned());
        let tok = from_hf_files(&tok_json, read("tokenizer_config.json").as_deref(), jinja.as_deref())
            .with_context(|| format!("tokenizer of {}", path.display()))?;
        (files.config, files.tensors, tok.tokenizer, tok.special, tok.chat_template)
    } else if path.exists() {
        let files = crate::model_files::load(path)?;
        let gguf = files.gguf.context("a model file that is not GGUF")?;
        (files.config, files.tensors, gguf.0, gguf.1, gguf.2)
    } else {
        bail!("{}: no such file or folder (give an HF model folder or a .gguf file)", path.display());
    };
    let text = ChatText::new(tokenizer, special, template.as_deref(), &config)
        .with_context(|| format!("chat template of {}", path.display()))?;
    Ok(TextModel { source: path.to_path_buf(), config, tensors, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_name_their_base_without_a_local_path() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        std::fs::write(&gguf, b"").unwrap();
        assert_eq!(base_model_name(None, &gguf), DEFAULT_MODEL_HUB_ID);
        assert_eq!(base_model_name(Some(&gguf), &gguf), "SmolLM2-135M-Instruct.Q4_1.gguf");

        let folder = dir.path().join("qwen-local");
        std::fs::create_dir(&folder).unwrap();
        let with_name = |name: &str| {
            std::fs::write(folder.join("config.json"), serde_json::json!({ "_name_or_path": name }).to_string())
                .unwrap();
            base_model_name(Some(&folder), &folder)
        };
        assert_eq!(with_name("Qwen/Qwen2.5-0.5B-Instruct"), "Qwen/Qwen2.5-0.5B-Instruct");
        assert_eq!(with_name("/home/someone/models/qwen"), "qwen-local");
        assert_eq!(with_name("../models/qwen"), "qwen-local");
        assert_eq!(with_name("C:\\models\\qwen"), "qwen-local");
        std::fs::remove_file(folder.join("config.json")).unwrap();
        assert_eq!(base_model_name(Some(&folder), &folder), "qwen-local");
    }
}
