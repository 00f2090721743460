//! A chat model as the commands use it: weights and config (`model_files`), its tokenizer, special
//! tokens and chat template — from a GGUF file or an HF folder (`tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`) — and the default model when none is given.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use convrec_core::model::chat::{ChatTemplate, Message};
use convrec_core::model::tokenizer::{SpecialTokens, decode, encode, from_hf_files};
use convrec_core::model::{HostTensor, ModelConfig};

pub struct TextModel {
    pub source: PathBuf,
    pub config: ModelConfig,
    pub tensors: Vec<(String, HostTensor)>,
    pub tokenizer: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    pub chat: ChatTemplate,
    /// Ids that end an assistant turn.
    pub stop_ids: Vec<u32>,
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
    let chat = ChatTemplate::for_model(template.as_deref(), &special, config.architecture, |t| {
        tokenizer.token_to_id(t).is_some()
    })
    .with_context(|| format!("chat template of {}", path.display()))?;
    let mut stop_ids = config.eos_token_ids.clone();
    stop_ids.extend(special.end_ids());
    for marker in ["<|im_end|>", "<|eot_id|>"] {
        if let Some(id) = tokenizer.token_to_id(marker) {
            stop_ids.push(id);
        }
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();
    Ok(TextModel { source: path.to_path_buf(), config, tensors, tokenizer, special, chat, stop_ids })
}

impl TextModel {
    /// Token ids of the chat-templated conversation, ready for the assistant's turn (as HF's
    /// `apply_chat_template(messages, add_generation_prompt=True)` then tokenising without
    /// adding special tokens again).
    pub fn prompt_ids(&self, messages: &[Message]) -> anyhow::Result<Vec<u32>> {
        let text = self.chat.render(messages, true)?;
        Ok(encode(&self.tokenizer, &text, false)?)
    }

    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(encode(&self.tokenizer, text, false)?)
    }

    /// Completion text without special tokens.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        Ok(decode(&self.tokenizer, ids, true)?)
    }

    /// The decoded text of each token alone (special tokens kept): what segmentation counts
    /// newlines in.
    pub fn token_texts(&self, ids: &[u32]) -> anyhow::Result<Vec<String>> {
        ids.iter().map(|&id| Ok(decode(&self.tokenizer, &[id], false)?)).collect()
    }
}
