//! `convrec tokenize`: the token ids a model sees for a text, or for a one-message chat rendered
//! with the model's chat template (as HF's `apply_chat_template(..., add_generation_prompt=True)`).
//! Reads only the tokenizer and template, never the weights; needs no GPU.

use std::path::{Path, PathBuf};

use anyhow::Context;
use convrec_core::model::chat::{ChatTemplate, Message};
use convrec_core::model::gguf::GgufFile;
use convrec_core::model::tokenizer::{LoadedTokenizer, decode, encode, from_gguf, from_hf_files};
use convrec_core::model::{Architecture, ModelConfig};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a Hugging Face model folder (`tokenizer.json`, `tokenizer_config.json`);
    /// the default model (SmolLM2-135M-Instruct) when omitted.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to tokenize.
    #[arg(long)]
    text: String,
    /// Treat the text as a user message: render the chat template, ready for the assistant's
    /// reply, and tokenize that.
    #[arg(long)]
    chat: bool,
    /// A system message before the user's (with `--chat`).
    #[arg(long, requires = "chat")]
    system: Option<String>,
}

/// The one JSON line printed.
#[derive(Serialize)]
struct Output {
    /// What was tokenized (the rendered prompt with `--chat`).
    text: String,
    ids: Vec<u32>,
    /// Each id's text alone.
    tokens: Vec<String>,
}

/// The tokenizer (with special tokens and template) and the architecture of a model file/folder.
fn load_tokenizer(path: &Path) -> anyhow::Result<(LoadedTokenizer, Architecture)> {
    if path.is_dir() {
        let read = |name: &str| std::fs::read(path.join(name)).ok();
        let json = read("tokenizer.json").with_context(|| format!("{}: no tokenizer.json", path.display()))?;
        let jinja = read("chat_template.jinja").map(|b| String::from_utf8_lossy(&b).into_owned());
        let tok = from_hf_files(&json, read("tokenizer_config.json").as_deref(), jinja.as_deref())
            .with_context(|| format!("tokenizer of {}", path.display()))?;
        // The architecture only picks a built-in template when the folder has none.
        let arch = read("config.json")
            .and_then(|b| ModelConfig::from_hf_json(&String::from_utf8_lossy(&b)).ok())
            .map_or(Architecture::Llama, |c| c.architecture);
        return Ok((tok, arch));
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = GgufFile::parse(&bytes).with_context(|| format!("{}", path.display()))?;
    let tok = from_gguf(&file).with_context(|| format!("{}", path.display()))?;
    let name = file.get_str("general.architecture")?;
    let arch = convrec_core::model::decoder::ALL
        .iter()
        .find(|d| Some(d.gguf_name) == name)
        .map_or(Architecture::Llama, |d| d.architecture);
    Ok((tok, arch))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = match args.model {
        Some(p) => p,
        None => convrec::default_model_path().context("fetching the default model (SmolLM2-135M-Instruct)")?,
    };
    let (tok, arch) = load_tokenizer(&path)?;
    let (text, add_special_tokens) = if args.chat {
        let template = ChatTemplate::for_model(tok.chat_template.as_deref(), &tok.special, arch, |t| {
            tok.tokenizer.token_to_id(t).is_some()
        })?;
        let mut messages: Vec<Message> = args.system.into_iter().map(Message::system).collect();
        messages.push(Message::user(args.text));
        // The template writes the special tokens itself: encode without adding more.
        (template.render(&messages, true)?, false)
    } else {
        (args.text, true)
    };
    let ids = encode(&tok.tokenizer, &text, add_special_tokens)?;
    let tokens = ids.iter().map(|&id| decode(&tok.tokenizer, &[id], false)).collect::<Result<_, _>>()?;
    println!("{}", serde_json::to_string(&Output { text, ids, tokens })?);
    Ok(())
}
