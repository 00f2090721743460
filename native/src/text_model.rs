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
