//! A chat model's text side, the same natively and in the browser: its tokenizer, special tokens,
//! chat template and the ids that end an assistant turn, with the conversions every command needs
//! (conversation → prompt ids, completion ids → text, one token → its text).

use super::chat::{ChatError, ChatTemplate, Message};
use super::gguf::GgufModel;
use super::tokenizer::{SpecialTokens, TokenizerError, decode, encode};
use super::{ModelConfig, NamedTensors};

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

pub struct ChatText {
    pub tokenizer: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    pub chat: ChatTemplate,
    /// Ids that end an assistant turn (EOS ids, the template's end-of-turn token, and the
    /// ChatML/Llama-3 end markers when the vocabulary has them), sorted.
    pub stop_ids: Vec<u32>,
}

impl ChatText {
    /// `template` is the model's own chat template, if it ships one; otherwise one is chosen from
    /// the vocabulary's markers (see [`ChatTemplate::for_model`]).
    pub fn new(
        tokenizer: tokenizers::Tokenizer,
        special: SpecialTokens,
        template: Option<&str>,
        config: &ModelConfig,
    ) -> Result<Self, TextError> {
        let chat =
            ChatTemplate::for_model(template, &special, config.architecture, |t| tokenizer.token_to_id(t).is_some())?;
        let mut stop_ids = config.eos_token_ids.clone();
        stop_ids.extend(special.end_ids());
        for marker in ["<|im_end|>", "<|eot_id|>"] {
            if let Some(id) = tokenizer.token_to_id(marker) {
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Self { tokenizer, special, chat, stop_ids })
    }

    /// Splits a GGUF model into its weights (and configuration) and its text side.
    pub fn from_gguf(model: GgufModel) -> Result<(ModelConfig, NamedTensors, Self), TextError> {
        let text = Self::new(model.tokenizer, model.special_tokens, model.chat_template.as_deref(), &model.config)?;
        Ok((model.config, model.tensors, text))
    }

    /// Token ids of the chat-templated conversation, ready for the assistant's turn (as HF's
    /// `apply_chat_template(messages, add_generation_prompt=True)` then tokenising without
    /// adding special tokens again).
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, TextError> {
        let text = self.chat.render(messages, true)?;
        Ok(encode(&self.tokenizer, &text, false)?)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        Ok(encode(&self.tokenizer, text, false)?)
    }

    /// Completion text without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        Ok(decode(&self.tokenizer, ids, true)?)
    }

    /// The decoded text of each token alone (special tokens kept): what segmentation counts
    /// newlines in.
    pub fn token_texts(&self, ids: &[u32]) -> Result<Vec<String>, TextError> {
        ids.iter().map(|&id| Ok(decode(&self.tokenizer, &[id], false)?)).collect()
    }
}
