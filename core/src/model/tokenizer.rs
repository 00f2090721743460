//! Tokenizers as Hugging Face builds them: from a model folder's `tokenizer.json` (+
//! `tokenizer_config.json`), or rebuilt from a GGUF file's `tokenizer.ggml.*` metadata into the
//! same pipeline the model's own `tokenizer.json` describes, so both tokenize identically.
//!
//! A GGUF carries the vocabulary, the merges, each token's type and the name of the
//! pre-tokenizer (`tokenizer.ggml.pre`), but not the pipeline itself. The pipelines below are the
//! ones in the `tokenizer.json` of the model families llama.cpp names that way (its
//! `llama-vocab.cpp` regexes are re-spellings of the same splits).

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::gguf::{GgufError, GgufFile};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF tokenizer: missing {0}")]
    Missing(&'static str),
    #[error("GGUF tokenizer: tokenizer.ggml.model {0:?} is not supported (only \"gpt2\", byte-level BPE, is)")]
    UnsupportedModel(String),
    #[error(
        "GGUF tokenizer: pre-tokenizer {0:?} (tokenizer.ggml.pre) is not supported; known: smollm, starcoder, \
         refact, qwen2, deepseek-r1-qwen, llama-bpe, gpt-2, default"
    )]
    UnsupportedPreTokenizer(String),
    #[error("GGUF tokenizer: {0}")]
    Invalid(String),
    #[error("GGUF tokenizer metadata: {0}")]
    Metadata(#[from] Box<GgufError>),
    #[error("tokenizer.json: {0}")]
    HfJson(String),
    #[error("tokenizer_config.json: {0}")]
    HfConfig(String),
    #[error("tokenizing: {0}")]
    Encode(String),
}

impl From<GgufError> for TokenizerError {
    fn from(e: GgufError) -> Self {
        TokenizerError::Metadata(Box::new(e))
    }
}

/// A special token: its id and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialToken {
    pub id: u32,
    pub content: String,
}

/// The special tokens a model names, and whether plain encoding adds BOS/EOS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    /// End of turn, where the file names one apart from EOS (Llama 3's `<|eot_id|>`).
    pub eot: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    pub unk: Option<SpecialToken>,
    pub add_bos: bool,
    pub add_eos: bool,
}

impl SpecialTokens {
    /// Ids that end generation: EOS, then EOT when it differs.
    pub fn end_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos.iter().chain(self.eot.iter()).map(|t| t.id).collect();
        ids.dedup();
        ids
    }
}

/// A tokenizer with the special tokens and chat template that came with it.
#[derive(Clone, Debug)]
pub struct LoadedTokenizer {
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
}

/// Token ids of `text`, as HF's `tokenizer(text, add_special_tokens=...)["input_ids"]`.
pub fn encode(tokenizer: &Tokenizer, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
    tokenizer
        .encode(text, add_special_tokens)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| TokenizerError::Encode(e.to_string()))
}

/// Text of `ids`, as HF's `tokenizer.decode(ids, skip_special_tokens=...)`.
pub fn decode(tokenizer: &Tokenizer, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
    tokenizer.decode(ids, skip_special_tokens).map_err(|e| TokenizerError::Encode(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// From GGUF metadata

/// llama.cpp's `llama_token_type` values in `tokenizer.ggml.token_type`.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// The text splits of the byte-level families, as their `tokenizer.json` spells them.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a byte-level BPE family splits text before the merges run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's regex inside ByteLevel.
    Gpt2,
    /// Every digit alone, then GPT-2's regex (StarCoder, SmolLM, SmolLM2).
    DigitsGpt2,
    /// NFC, then Qwen2's regex (single digits).
    Qwen2,
    /// Llama 3's regex (digits in threes); its BPE also looks whole words up before merging.
    Llama3,
}

impl PreTokenizer {
    /// The pipeline for a `tokenizer.ggml.pre` name (absent: llama.cpp's default, GPT-2).
    pub fn from_gguf_name(pre: Option<&str>) -> Result<Self, TokenizerError> {
        Ok(match pre {
            None | Some("default" | "gpt-2" | "gpt2") => PreTokenizer::Gpt2,
            Some("smollm" | "starcoder" | "refact") => PreTokenizer::DigitsGpt2,
            Some("qwen2" | "deepseek-r1-qwen") => PreTokenizer::Qwen2,
            Some("llama-bpe" | "llama3" | "llama-v3") => PreTokenizer::Llama3,
            Some(other) => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        })
    }
}

fn split(pattern: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let s = Split::new(SplitPattern::Regex(pattern.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| TokenizerError::Invalid(format!("split regex: {e}")))?;
    Ok(PreTokenizerWrapper::Split(s))
}

/// Builds the tokenizer a GGUF's metadata describes.
pub fn from_gguf(file: &GgufFile) -> Result<LoadedTokenizer, TokenizerError> {
    let model = file.get_str("tokenizer.ggml.model")?.ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(model.to_string()));
    }
    let tokens =
        file.get_str_array("tokenizer.ggml.tokens")?.ok_or(TokenizerError::Missing("tokenizer.ggml.tokens"))?;
    let merges =
        file.get_str_array("tokenizer.ggml.merges")?.ok_or(TokenizerError::Missing("tokenizer.ggml.merges"))?;
    let types = file.get_int_array("tokenizer.ggml.token_type")?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(TokenizerError::Invalid(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    if tokens.len() > u32::MAX as usize {
        return Err(TokenizerError::Invalid(format!("{} tokens do not fit u32 ids", tokens.len())));
    }
    let pre = PreTokenizer::from_gguf_name(file.get_str("tokenizer.ggml.pre")?)?;

    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, &t) in tokens.iter().enumerate() {
        // A repeated spelling keeps its first id, as llama.cpp's text-to-token map does.
        vocab.entry(t.to_string()).or_insert(id as u32);
    }
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Invalid(format!("merge {m:?} is not two tokens separated by a space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre == PreTokenizer::Llama3)
        .build()
        .map_err(|e| TokenizerError::Invalid(format!("BPE: {e}")))?;

    let mut tok = Tokenizer::new(bpe);
    let byte_level = |trim_offsets: bool, use_regex: bool| ByteLevel::new(false, trim_offsets, use_regex);
    let pre_tokenizer = match pre {
        PreTokenizer::Gpt2 => PreTokenizerWrapper::ByteLevel(byte_level(true, true)),
        PreTokenizer::DigitsGpt2 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level(true, true)),
        ])),
        PreTokenizer::Qwen2 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(QWEN2_SPLIT)?,
            PreTokenizerWrapper::ByteLevel(byte_level(false, false)),
        ])),
        PreTokenizer::Llama3 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(LLAMA3_SPLIT)?,
            PreTokenizerWrapper::ByteLevel(byte_level(true, false)),
        ])),
    };
    if pre == PreTokenizer::Qwen2 {
        tok.with_normalizer(Some(NFC));
    }
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(byte_level(true, true)));

    // Control tokens (`<|im_start|>`) are matched whole anywhere in the text and count as special;
    // user-defined ones (`<think>`) are matched whole too but are ordinary text to decoding.
    let kind = |i: usize| types.get(i).copied().unwrap_or(1);
    let added = |special: bool, wanted: i64| -> Vec<AddedToken> {
        tokens
            .iter()
            .enumerate()
            // An empty "token" would match everywhere; no real vocabulary has one.
            .filter(|&(i, t)| kind(i) == wanted && !t.is_empty())
            .map(|(_, &t)| AddedToken::from(t, special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(&added(true, TOKEN_CONTROL));
    tok.add_tokens(&added(false, TOKEN_USER_DEFINED));

    let special_at = |key: &'static str| -> Result<Option<SpecialToken>, TokenizerError> {
        match file.get_u64(key)? {
            None => Ok(None),
            Some(id) => usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get(i))
                .map(|&t| Some(SpecialToken { id: id as u32, content: t.to_string() }))
                .ok_or_else(|| TokenizerError::Invalid(format!("{key} = {id} is past the {} tokens", tokens.len()))),
        }
    };
    let special = SpecialTokens {
        bos: special_at("tokenizer.ggml.bos_token_id")?,
        eos: special_at("tokenizer.ggml.eos_token_id")?,
        eot: special_at("tokenizer.ggml.eot_token_id")?,
        pad: special_at("tokenizer.ggml.padding_token_id")?,
        unk: special_at("tokenizer.ggml.unknown_token_id")?,
        add_bos: file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        add_eos: file.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
    };
    tok.with_post_processor(Some(post_processor(&special, pre)?));
    let chat_template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
    Ok(LoadedTokenizer { tokenizer: tok, special, chat_template })
}

/// What plain encoding appends: BOS/EOS where the file asks for them (as HF's
/// `TemplateProcessing` in such models' `tokenizer.json`), else only ByteLevel's offset fix-up
/// (with Qwen2's `trim_offsets: false`), which changes no ids.
fn post_processor(special: &SpecialTokens, pre: PreTokenizer) -> Result<PostProcessorWrapper, TokenizerError> {
    let bos = special.bos.as_ref().filter(|_| special.add_bos);
    let eos = special.eos.as_ref().filter(|_| special.add_eos);
    if bos.is_none() && eos.is_none() {
        return Ok(PostProcessorWrapper::ByteLevel(ByteLevel::new(false, pre != PreTokenizer::Qwen2, true)));
    }
    let (b, e) = (bos.map(|t| format!("{} ", t.content)), eos.map(|t| format!(" {}", t.content)));
    let (b, e) = (b.as_deref().unwrap_or(""), e.as_deref().unwrap_or(""));
    let single = format!("{b}$A{e}");
    let pair = format!("{b}$A{e} {b}$B:1{e}");
    let tokens: Vec<(String, u32)> = bos.iter().chain(eos.iter()).map(|t| (t.content.clone(), t.id)).collect();
    let template = TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| TokenizerError::Invalid(format!("post-processor template: {e}")))?
        .special_tokens(tokens)
        .build()
        .map_err(|e| TokenizerError::Invalid(format!("post-processor: {e}")))?;
    Ok(PostProcessorWrapper::Template(template))
}

// ---------------------------------------------------------------------------------------------
// From a Hugging Face folder

/// A special token in `tokenizer_config.json`: a string or an AddedToken-like object.
fn config_token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

/// The chat template of `tokenizer_config.json`: a string, or a list of named templates of which
/// HF uses `default`.
fn config_template(v: Option<&serde_json::Value>) -> Result<Option<String>, TokenizerError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |n: &str| list.iter().find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n));
            Ok(named("default").and_then(|t| t.get("template")).and_then(|t| t.as_str()).map(str::to_string))
        }
        Some(other) => Err(TokenizerError::HfConfig(format!("chat_template is neither a string nor a list: {other}"))),
    }
}

/// Reads an HF folder's `tokenizer.json` and, when there is one, `tokenizer_config.json` (special
/// tokens, chat template). A separate `chat_template.jinja` (newer transformers) is passed as
/// `chat_template_jinja` and wins over the config's, as in transformers.
/// `tokenizers` 0.22 panics (an `expect`) on some malformed `tokenizer.json`: a decoder whose JSON
/// does not parse, a precompiled normalizer it cannot read. Invalid JSON is refused first, with
/// serde's line and column; a panic left in the library becomes an error where panics unwind
/// (natively; a wasm32 build aborts instead).
fn tokenizer_from_json(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
    // A full parse (escapes such as a lone surrogate are checked only when strings are read).
    serde_json::from_slice::<serde_json::Value>(bytes)
        .map_err(|e| TokenizerError::HfJson(format!("not valid JSON: {e}")))?;
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)) {
        Ok(loaded) => loaded.map_err(|e| TokenizerError::HfJson(e.to_string())),
        Err(panic) => {
            let why = panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
            Err(TokenizerError::HfJson(format!(
                "the tokenizers library cannot read it ({})",
                why.unwrap_or("it panicked")
            )))
        }
    }
}

pub fn from_hf_files(
    tokenizer_json: &[u8],
    tokenizer_config_json: Option<&[u8]>,
    chat_template_jinja: Option<&str>,
) -> Result<LoadedTokenizer, TokenizerError> {
    let tokenizer = tokenizer_from_json(tokenizer_json)?;
    let config: serde_json::Value = match tokenizer_config_json {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| TokenizerError::HfConfig(e.to_string()))?,
        None => serde_json::Value::Null,
    };
    let token = |key: &str| -> Result<Option<SpecialToken>, TokenizerError> {
        let Some(content) = config_token(config.get(key)) else { return Ok(None) };
        let id = tokenizer
            .token_to_id(&content)
            .ok_or_else(|| TokenizerError::HfConfig(format!("{key} {content:?} is not in the vocabulary")))?;
        Ok(Some(SpecialToken { id, content }))
    };
    let flag = |key: &str| config.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let special = SpecialTokens {
        bos: token("bos_token")?,
        eos: token("eos_token")?,
        eot: None,
        pad: token("pad_token")?,
        unk: token("unk_token")?,
        add_bos: flag("add_bos_token"),
        add_eos: flag("add_eos_token"),
    };
    let chat_template = match chat_template_jinja {
        Some(t) => Some(t.to_string()),
        None => config_template(config.get("chat_template"))?,
    };
    Ok(LoadedTokenizer { tokenizer, special, chat_template })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::gguf::MetaValue;
    use crate::model::gguf::tests::Writer;
    use crate::testing::byte_chars;

    /// A GGUF with every byte as a token, a few merges and two control tokens (ids 256, 257).
    fn gguf_tokenizer(pre: Option<&str>, merges: &[&str], extra: &[(&str, i32)]) -> Vec<u8> {
        let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
        let mut types = vec![1; 256];
        for (t, ty) in [("<|endoftext|>", 3), ("<|im_end|>", 3)].iter().chain(extra) {
            tokens.push(t.to_string());
            types.push(*ty);
        }
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(1);
        }
        let mut w = Writer::new();
        w.kv("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
            .kv("tokenizer.ggml.tokens", MetaValue::Array(tokens.into_iter().map(MetaValue::Str).collect()))
            .kv("tokenizer.ggml.token_type", MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()))
            .kv(
                "tokenizer.ggml.merges",
                MetaValue::Array(merges.iter().map(|m| MetaValue::Str(m.to_string())).collect()),
            )
            .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(257))
            .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(256));
        if let Some(p) = pre {
            w.kv("tokenizer.ggml.pre", MetaValue::Str(p.into()));
        }
        w.bytes()
    }

    fn load(bytes: &[u8]) -> LoadedTokenizer {
        from_gguf(&GgufFile::parse(bytes).unwrap()).unwrap()
    }

    fn pieces(t: &Tokenizer, text: &str) -> Vec<String> {
        t.encode(text, true).unwrap().get_tokens().to_vec()
    }

    #[test]
    fn builds_the_pipelines_of_the_models_tokenizer_json() {
        let json_of =
            |pre: Option<&str>| serde_json::to_value(&load(&gguf_tokenizer(pre, &[], &[])).tokenizer).unwrap();
        let smol = json_of(Some("smollm"));
        assert_eq!(
            smol["pre_tokenizer"],
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]})
        );
        assert_eq!(smol["normalizer"], serde_json::Value::Null);
        assert_eq!(smol["decoder"]["type"], "ByteLevel");
        assert_eq!(smol["model"]["ignore_merges"], false);
        let specials: Vec<_> =
            smol["added_tokens"].as_array().unwrap().iter().map(|t| (t["id"].clone(), t["special"].clone())).collect();
        assert_eq!(specials, vec![(json!(256), json!(true)), (json!(257), json!(true))]);

        let qwen = json_of(Some("qwen2"));
        assert_eq!(qwen["normalizer"], json!({"type": "NFC"}));
        assert_eq!(qwen["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], QWEN2_SPLIT);
        assert_eq!(qwen["pre_tokenizer"]["pretokenizers"][0]["behavior"], "Isolated");
        assert_eq!(
            qwen["pre_tokenizer"]["pretokenizers"][1],
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
        );
        let llama3 = json_of(Some("llama-bpe"));
        assert_eq!(llama3["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], LLAMA3_SPLIT);
        assert_eq!(llama3["model"]["ignore_merges"], true);
        assert_eq!(json_of(None)["pre_tokenizer"]["type"], "ByteLevel");
    }

    #[test]
    fn splits_digits_words_and_special_tokens_per_family() {
        let merges = ["Ġ w", "o r", "Ġw or", "1 2", "12 3", "Ġ Ġ"];
        let smol = load(&gguf_tokenizer(Some("smollm"), &merges, &[("<think>", 4)])).tokenizer;
        // Digits one by one; spaces before a digit stay apart; "<|im_end|>" and "<think>" whole.
        assert_eq!(pieces(&smol, " wor 123<|im_end|>"), ["Ġwor", "Ġ", "1", "2", "3", "<|im_end|>"]);
        assert_eq!(pieces(&smol, "a  1<think>"), ["a", "ĠĠ", "1", "<think>"]);
        let gpt2 = load(&gguf_tokenizer(None, &merges, &[])).tokenizer;
        assert_eq!(pieces(&gpt2, " 123"), ["Ġ", "123"], "GPT-2 keeps the digits together (after their space)");
        let llama3 = load(&gguf_tokenizer(Some("llama-bpe"), &merges, &[])).tokenizer;
        assert_eq!(pieces(&llama3, "1234"), ["123", "4"], "Llama 3 splits digits in threes");
        let qwen = load(&gguf_tokenizer(Some("qwen2"), &merges, &[])).tokenizer;
        assert_eq!(pieces(&qwen, "123"), ["1", "2", "3"]);
        // NFC: e + combining acute becomes é (bytes C3 A9 → "Ã©").
        assert_eq!(pieces(&qwen, "e\u{301}"), ["Ã", "©"]);
        assert_eq!(pieces(&smol, "e\u{301}"), ["e", "Ì", "ģ"], "SmolLM2 has no normalizer");
        // Special tokens decode away on request; user-defined ones stay text.
        let ids = encode(&smol, "<think>a<|im_end|>", true).unwrap();
        assert_eq!(decode(&smol, &ids, true).unwrap(), "<think>a");
        assert_eq!(decode(&smol, &ids, false).unwrap(), "<think>a<|im_end|>");
    }

    #[test]
    fn reads_special_tokens_and_adds_bos_when_asked() {
        let loaded = load(&gguf_tokenizer(Some("smollm"), &[], &[]));
        let s = &loaded.special;
        assert_eq!(s.eos, Some(SpecialToken { id: 257, content: "<|im_end|>".into() }));
        assert_eq!((s.bos.as_ref().map(|t| t.id), s.eot.clone(), s.add_bos), (Some(256), None, false));
        assert_eq!(s.end_ids(), vec![257]);
        assert_eq!(
            encode(&loaded.tokenizer, "a", true).unwrap(),
            vec![u32::from(b'a')],
            "byte tokens are in byte order"
        );

        let mut bytes = gguf_tokenizer(Some("smollm"), &[], &[]);
        let mut file_with_bos = GgufFile::parse(&bytes).unwrap().metadata;
        file_with_bos.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(true)));
        let mut w = Writer::new();
        for (k, v) in file_with_bos {
            w.kv(&k, v);
        }
        bytes = w.bytes();
        let loaded = load(&bytes);
        let a = loaded.tokenizer.token_to_id("a").unwrap();
        assert_eq!(encode(&loaded.tokenizer, "a", true).unwrap(), vec![256, a]);
        assert_eq!(encode(&loaded.tokenizer, "a", false).unwrap(), vec![a]);
    }

    #[test]
    fn refuses_unknown_models_and_bad_merges() {
        let err = |bytes: &[u8]| from_gguf(&GgufFile::parse(bytes).unwrap()).unwrap_err().to_string();
        assert!(err(&gguf_tokenizer(Some("chatglm-bpe"), &[], &[])).contains("pre-tokenizer \"chatglm-bpe\""));
        assert!(err(&gguf_tokenizer(None, &["nospace"], &[])).contains("merge \"nospace\""));
        assert!(err(&Writer::new().bytes()).contains("missing tokenizer.ggml.model"));
    }

    #[test]
    fn reads_hugging_face_files() {
        let tokenizer_json = json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "h": 3, "i": 4, "hi": 5, "Ġ": 6},
                      "merges": [["h", "i"]]}
        });
        let config = json!({
            "bos_token": {"__type": "AddedToken", "content": "<|im_start|>"},
            "eos_token": "<|im_end|>",
            "pad_token": null,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
        });
        let tj = serde_json::to_vec(&tokenizer_json).unwrap();
        let cj = serde_json::to_vec(&config).unwrap();
        let t = from_hf_files(&tj, Some(&cj), None).unwrap();
        assert_eq!(encode(&t.tokenizer, "hi hi<|im_end|>", true).unwrap(), vec![5, 6, 5, 2]);
        assert_eq!(t.special.bos, Some(SpecialToken { id: 1, content: "<|im_start|>".into() }));
        assert_eq!((t.special.eos.as_ref().map(|t| t.id), t.special.pad.clone()), (Some(2), None));
        assert_eq!(t.chat_template.as_deref(), Some("D"));
        assert_eq!(from_hf_files(&tj, Some(&cj), Some("J")).unwrap().chat_template.as_deref(), Some("J"));
        assert_eq!(from_hf_files(&tj, None, None).unwrap().chat_template, None);
        assert!(from_hf_files(b"{", None, None).unwrap_err().to_string().starts_with("tokenizer.json"));
        let bad = serde_json::to_vec(&json!({"eos_token": "<nope>"})).unwrap();
        assert!(
            from_hf_files(&tj, Some(&bad), None)
                .unwrap_err()
                .to_string()
                .contains("\"<nope>\" is not in the vocabulary")
        );
    }

    /// Found by the `tokenizer` fuzz target: `tokenizers` 0.22 panics (`expect("Helper")`,
    /// `expect("Precompiled")`) on these instead of returning an error.
    #[test]
    fn malformed_tokenizer_json_is_an_error_not_a_panic() {
        let good = crate::testing::byte_level_tokenizer_json(300);
        assert!(from_hf_files(good.as_bytes(), None, None).is_ok());
        // A decoder whose JSON does not parse.
        let garbled = good.replacen(r#""decoder":{"#, r#""decoder":{"type":"ByteLevel",x,"#, 1);
        assert_ne!(garbled, good);
        let e = from_hf_files(garbled.as_bytes(), None, None).unwrap_err().to_string();
        assert!(e.starts_with("tokenizer.json: not valid JSON: "), "{e}");
        // Or whose string holds a lone surrogate (JSON that only a full parse refuses).
        let surrogate = good.replacen(r#""decoder":{"#, r#""decoder":{"x":"\udc00","#, 1);
        let e = from_hf_files(surrogate.as_bytes(), None, None).unwrap_err().to_string();
        assert!(e.starts_with("tokenizer.json: not valid JSON: "), "{e}");
        // A precompiled normalizer whose character map is not one.
        let precompiled = good.replacen(
            r#""normalizer":null"#,
            r#""normalizer":{"type":"Precompiled","precompiled_charsmap":"AAAA"}"#,
            1,
        );
        assert_ne!(precompiled, good);
        let e = from_hf_files(precompiled.as_bytes(), None, None).unwrap_err().to_string();
        assert!(e.starts_with("tokenizer.json: "), "{e}");
    }
}
