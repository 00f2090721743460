//! Model hyper-parameters, read from a Hugging Face `config.json` (`LlamaForCausalLM`,
//! `Qwen2ForCausalLM`) or built by the GGUF loader. Options convrec does not implement are
//! refused with a clear error rather than silently ignored.

use serde::{Deserialize, Serialize};

use super::decoder::Decoder;
use super::rope_scaling::RopeScaling;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    Llama,
    Qwen2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    /// How RoPE's frequencies are scaled (Llama 3, YaRN, …); `RopeScaling::None` for plain RoPE.
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f32,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (HF allows a list).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("config.json: {0}")]
    Unsupported(String),
    #[error("config.json: missing field {0}")]
    Missing(&'static str),
}

/// The subset of HF's config fields convrec reads.
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f32>,
    rms_norm_eps: Option<f32>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes `{rope_theta, rope_type}` here instead of a top-level rope_theta.
    rope_parameters: Option<serde_json::Value>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    pretraining_tp: Option<usize>,
}

/// Token ids of `bos_token_id` / `eos_token_id` (a number or a list); one past u32 is refused
/// rather than truncated into another token.
fn ids(field: &str, v: &Option<serde_json::Value>) -> Result<Vec<u32>, ConfigError> {
    let id = |x: &serde_json::Value| -> Result<Option<u32>, ConfigError> {
        match x.as_u64() {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| ConfigError::Unsupported(format!("{field}: {n} is not a token id"))),
        }
    };
    Ok(match v {
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(id).filter_map(Result::transpose).collect::<Result<_, _>>()?
        }
        Some(x) => id(x)?.into_iter().collect(),
        None => Vec::new(),
    })
}

/// A field of the configuration, for messages that name it as the file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    VocabSize,
    HiddenSize,
    IntermediateSize,
    NumLayers,
    NumHeads,
    NumKvHeads,
    HeadDim,
    MaxPositions,
    RopeTheta,
    RmsNormEps,
    EosTokenId,
}

impl Field {
    /// The name in Hugging Face's `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Field::VocabSize => "vocab_size",
            Field::HiddenSize => "hidden_size",
            Field::IntermediateSize => "intermediate_size",
            Field::NumLayers => "num_hidden_layers",
            Field::NumHeads => "num_attention_heads",
            Field::NumKvHeads => "num_key_value_heads",
            Field::HeadDim => "head_dim",
            Field::MaxPositions => "max_position_embeddings",
            Field::RopeTheta => "rope_theta",
            Field::RmsNormEps => "rms_norm_eps",
            Field::EosTokenId => "eos_token_id",
        }
    }

    /// The GGUF metadata key after `{architecture}.` (the vocabulary is the token list's length).
    pub fn gguf_key(self) -> &'static str {
        match self {
            Field::VocabSize => "vocab_size",
            Field::HiddenSize => "embedding_length",
            Field::IntermediateSize => "feed_forward_length",
            Field::NumLayers => "block_count",
            Field::NumHeads => "attention.head_count",
            Field::NumKvHeads => "attention.head_count_kv",
            Field::HeadDim => "attention.key_length",
            Field::MaxPositions => "context_length",
            Field::RopeTheta => "rope.freq_base",
            Field::RmsNormEps => "attention.layer_norm_rms_epsilon",
            Field::EosTokenId => "eos_token_id",
        }
    }
}

/// The largest size convrec accepts per field: far above any released Llama/Qwen2 model (vocab
/// 152k, hidden 16k, 126 layers, 128 heads, head size 128, FFN 53k, 1M positions), and low
/// enough that nothing derived from them (tensor names, shapes, buffer sizes) overflows or
/// exhausts memory before the weights are compared with them.
const SIZE_LIMITS: [(Field, usize); 8] = [
    (Field::VocabSize, 1 << 22),
    (Field::HiddenSize, 1 << 17),
    (Field::IntermediateSize, 1 << 20),
    (Field::NumLayers, 1 << 10),
    (Field::NumHeads, 1 << 10),
    (Field::NumKvHeads, 1 << 10),
    (Field::HeadDim, 1 << 10),
    (Field::MaxPositions, 1 << 24),
];

/// Parameters convrec accepts in one model (2^40, a trillion): beyond it no adapter holds the
/// weights, and element counts would come close to overflowing on 64-bit hosts.
const MAX_PARAMETERS: u64 = 1 << 40;

/// `hidden / heads` when a file gives no head size, refusing a remainder (a silently wrong head
/// size would mis-slice every projection). `name` names fields as the file does.
pub fn derived_head_dim(hidden: usize, heads: usize, name: &dyn Fn(Field) -> String) -> Result<usize, String> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "{} {hidden} is not a multiple of {} {heads}, and {} is not given",
            name(Field::HiddenSize),
            name(Field::NumHeads),
            name(Field::HeadDim)
        ));
    }
    Ok(hidden / heads)
}

impl ModelConfig {
    /// Parses HF `config.json` text.
    pub fn from_hf_json(text: &str) -> Result<Self, ConfigError> {
        let c: HfConfig = serde_json::from_str(text)?;
        let arch_name = c
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| c.model_type.clone())
            .ok_or(ConfigError::Missing("architectures"))?;
        let decoder =
            super::decoder::ALL.iter().find(|d| d.hf_names.contains(&arch_name.as_str())).ok_or_else(|| {
                ConfigError::Unsupported(format!(
                    "architecture {arch_name} is not supported ({} are)",
                    super::decoder::supported_hf_names()
                ))
            })?;
        let architecture = decoder.architecture;
        let max_position_embeddings = c.max_position_embeddings.unwrap_or(2048);
        // transformers 4.x: `rope_scaling` beside a top-level `rope_theta`; 5.x: both inside
        // `rope_parameters`.
        let mut rope_theta = c.rope_theta;
        let mut rope_scaling = RopeScaling::None;
        for (field, value) in [("rope_scaling", &c.rope_scaling), ("rope_parameters", &c.rope_parameters)] {
            let Some(params) = value.as_ref().filter(|v| !v.is_null()) else { continue };
            let scaling = RopeScaling::from_hf(params, max_position_embeddings)
                .map_err(|e| ConfigError::Unsupported(format!("{field}: {e}")))?;
            if scaling != RopeScaling::None {
                rope_scaling = scaling;
            }
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = Some(theta as f32);
            }
        }
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ConfigError::Unsupported(format!("hidden_act {act} is not implemented (only silu is)")));
        }
        if architecture == Architecture::Llama && c.attention_bias == Some(true) {
            // transformers' Llama then adds a bias to o_proj as well; convrec's Llama layer has none.
            return Err(ConfigError::Unsupported("attention_bias = true is not implemented for Llama".into()));
        }
        if c.mlp_bias == Some(true) {
            return Err(ConfigError::Unsupported("mlp_bias = true is not implemented".into()));
        }
        if c.pretraining_tp.is_some_and(|tp| tp > 1) {
            return Err(ConfigError::Unsupported("pretraining_tp > 1 is not implemented".into()));
        }
        if architecture == Architecture::Qwen2 && c.use_sliding_window == Some(true) {
            return Err(ConfigError::Unsupported("use_sliding_window = true is not implemented".into()));
        }
        let hidden = c.hidden_size.ok_or(ConfigError::Missing("hidden_size"))?;
        let heads = c.num_attention_heads.ok_or(ConfigError::Missing("num_attention_heads"))?;
        let head_dim = match c.head_dim {
            Some(d) => d,
            None => derived_head_dim(hidden, heads, &|f| f.hf_name().to_string()).map_err(ConfigError::Unsupported)?,
        };
        let config = ModelConfig {
            architecture,
            vocab_size: c.vocab_size.ok_or(ConfigError::Missing("vocab_size"))?,
            hidden_size: hidden,
            intermediate_size: c.intermediate_size.ok_or(ConfigError::Missing("intermediate_size"))?,
            num_layers: c.num_hidden_layers.ok_or(ConfigError::Missing("num_hidden_layers"))?,
            num_heads: heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(heads),
            head_dim,
            rope_theta: rope_theta.unwrap_or(10000.0),
            rope_scaling,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            // Qwen2 always has q/k/v biases; Llama has them only with attention_bias.
            attention_bias: architecture == Architecture::Qwen2 || c.attention_bias.unwrap_or(false),
            max_position_embeddings,
            bos_token_id: ids("bos_token_id", &c.bos_token_id)?.first().copied(),
            eos_token_ids: ids("eos_token_id", &c.eos_token_id)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the numbers fit together, naming fields as `config.json` does.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&|f| f.hf_name().to_string()).map_err(ConfigError::Unsupported)
    }

    /// Checks every size against its limit, the sizes against each other and the RoPE base and
    /// RMS epsilon for finite, sensible values — before anything is sized from them. `name`
    /// names a field as the file does (`config.json` keys, GGUF metadata keys).
    /// The rotary frequencies of this model (its base and scaling).
    pub fn rope_frequencies(&self) -> crate::ops::rope::RopeFrequencies {
        self.rope_scaling.frequencies(self.rope_theta, self.head_dim)
    }

    pub fn check(&self, name: &dyn Fn(Field) -> String) -> Result<(), String> {
        let sizes = [
            (Field::VocabSize, self.vocab_size),
            (Field::HiddenSize, self.hidden_size),
            (Field::IntermediateSize, self.intermediate_size),
            (Field::NumLayers, self.num_layers),
            (Field::NumHeads, self.num_heads),
            (Field::NumKvHeads, self.num_kv_heads),
            (Field::HeadDim, self.head_dim),
            (Field::MaxPositions, self.max_position_embeddings),
        ];
        for (field, value) in sizes {
            let limit = SIZE_LIMITS.iter().find(|l| l.0 == field).map_or(usize::MAX, |l| l.1);
            if value == 0 {
                return Err(format!("{} is 0; it must be positive", name(field)));
            }
            if value > limit {
                return Err(format!(
                    "{} = {value} is implausibly large (convrec accepts at most {limit})",
                    name(field)
                ));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "{} attention heads ({}) are not a multiple of {} key/value heads ({})",
                self.num_heads,
                name(Field::NumHeads),
                self.num_kv_heads,
                name(Field::NumKvHeads)
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("{} = {} must be even (RoPE rotates pairs)", name(Field::HeadDim), self.head_dim));
        }
        let params = self.parameter_count();
        if params > MAX_PARAMETERS || usize::try_from(params).is_err() {
            return Err(format!(
                "these sizes ({} {}, {} {}, {} {}, {} {}) make {params} parameters, more than convrec accepts ({})",
                name(Field::VocabSize),
                self.vocab_size,
                name(Field::HiddenSize),
                self.hidden_size,
                name(Field::IntermediateSize),
                self.intermediate_size,
                name(Field::NumLayers),
                self.num_layers,
                MAX_PARAMETERS.min(usize::MAX as u64)
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!("{} = {} must be a finite number above 1", name(Field::RopeTheta), self.rope_theta));
        }
        self.rope_scaling.check(self.head_dim)?;
        // An epsilon regularises the mean square of unit-scale activations: NaN, negative or
        // above 1 is a corrupt file, not a model.
        if !(self.rms_norm_eps.is_finite() && (0.0..=1.0).contains(&self.rms_norm_eps)) {
            return Err(format!("{} = {} must be in [0, 1]", name(Field::RmsNormEps), self.rms_norm_eps));
        }
        if let Some(id) =
            self.eos_token_ids.iter().chain(&self.bos_token_id).find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(format!(
                "token id {id} (BOS/EOS) is outside the vocabulary of {} ({})",
                self.vocab_size,
                name(Field::VocabSize)
            ));
        }
        Ok(())
    }

    /// Weights the configuration implies, counted in u64 (never overflows for sizes within
    /// their limits).
    pub fn parameter_count(&self) -> u64 {
        let u = |v: usize| v as u64;
        let embeddings = u(self.vocab_size) * u(self.hidden_size) * if self.tie_word_embeddings { 1 } else { 2 };
        embeddings + u(self.hidden_size) + u(self.num_layers) * self.decoder().layer_parameters(self)
    }

    /// The description of this model's layers.
    pub fn decoder(&self) -> &'static Decoder {
        Decoder::of(self.architecture)
    }

    /// Every weight the model needs, with its HF name and shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.decoder().tensors(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_qwen2_config_and_its_rope_scaling() {
        let text = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":151936,"hidden_size":896,
            "intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
            "rope_theta":1000000.0,"rms_norm_eps":1e-6,"tie_word_embeddings":true,"max_position_embeddings":32768,
            "eos_token_id":151645,"bos_token_id":151643,"hidden_act":"silu","rope_scaling":null,"use_sliding_window":false}"#;
        let c = ModelConfig::from_hf_json(text).unwrap();
        assert_eq!(
            (c.architecture, c.head_dim, c.attention_bias, c.eos_token_ids.clone(), c.rope_scaling.clone()),
            (Architecture::Qwen2, 64, true, vec![151645], RopeScaling::None)
        );
        assert_eq!(c.expected_tensors().len(), 2 + 24 * 12);
        // Qwen2.5's long-context form (transformers 4.x: `type`).
        let yarn = r#""rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"#;
        let scaled = ModelConfig::from_hf_json(&text.replace(r#""rope_scaling":null"#, yarn)).unwrap();
        assert!(matches!(
            scaled.rope_scaling,
            RopeScaling::Yarn { factor: 4.0, original_max_position_embeddings: 32768, .. }
        ));
        let longrope = text.replace(r#""rope_scaling":null"#, r#""rope_scaling":{"type":"longrope","factor":4.0}"#);
        let err = ModelConfig::from_hf_json(&longrope).unwrap_err().to_string();
        assert!(err.contains("rope_scaling") && err.contains("longrope"), "{err}");
        // transformers 5 layout: theta and scaling inside rope_parameters.
        let v5 = text.replace(
            r#""rope_theta":1000000.0,"#,
            r#""rope_parameters":{"rope_theta":500000.0,"rope_type":"default"},"#,
        );
        assert_eq!(ModelConfig::from_hf_json(&v5).unwrap().rope_theta, 500000.0);
        let v5_linear = v5.replace(r#""rope_type":"default""#, r#""rope_type":"linear","factor":2.0"#);
        let linear = ModelConfig::from_hf_json(&v5_linear).unwrap();
        assert_eq!((linear.rope_theta, linear.rope_scaling), (500000.0, RopeScaling::Linear { factor: 2.0 }));
        let v5_bad = v5.replace(r#""rope_type":"default""#, r#""rope_type":"linear","factor":-1.0"#);
        assert!(ModelConfig::from_hf_json(&v5_bad).unwrap_err().to_string().contains("factor"));
        let bad = text.replace(r#""num_key_value_heads":2"#, r#""num_key_value_heads":3"#);
        assert!(ModelConfig::from_hf_json(&bad).unwrap_err().to_string().contains("not a multiple"));
        assert!(ModelConfig::from_hf_json("{").unwrap_err().to_string().contains("not valid JSON"));
    }

    const SMALL: &str = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":320,"hidden_size":64,
        "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,
        "rope_theta":10000.0,"rms_norm_eps":1e-5,"eos_token_id":2,"bos_token_id":1}"#;

    /// The error for `SMALL` with one field set to `value` (JSON text).
    fn refused(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(SMALL).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        ModelConfig::from_hf_json(&v.to_string()).expect_err(&format!("{field} = {value}")).to_string()
    }

    #[test]
    fn sizes_are_checked_before_anything_is_sized_from_them() {
        assert!(ModelConfig::from_hf_json(SMALL).is_ok());
        // Each once made the loader build billions of tensor names or allocate without bound.
        for (field, value) in [
            ("num_hidden_layers", "1000000000"),
            ("vocab_size", "100000000000"),
            ("hidden_size", "1073741824"),
            ("intermediate_size", "4294967296"),
            ("num_attention_heads", "65536"),
            ("num_key_value_heads", "65536"),
            ("head_dim", "1000000"),
            ("max_position_embeddings", "18446744073709551615"),
        ] {
            let e = refused(field, value);
            assert!(e.starts_with(&format!("config.json: {field} = {value} is implausibly large")), "{e}");
        }
        let e = refused("num_hidden_layers", "0");
        assert!(e.contains("num_hidden_layers is 0"), "{e}");
        // Each within its limit, together past what any machine holds.
        let mut v: serde_json::Value = serde_json::from_str(SMALL).unwrap();
        v["num_hidden_layers"] = 1000.into();
        v["hidden_size"] = 65536.into();
        v["intermediate_size"] = 1000000.into();
        let e = ModelConfig::from_hf_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("parameters, more than convrec accepts"), "{e}");
    }

    #[test]
    fn options_the_llama_layer_lacks_are_refused() {
        // transformers' Llama adds an o_proj bias with attention_bias; ignoring it would answer wrong.
        assert!(refused("attention_bias", "true").contains("attention_bias = true is not implemented for Llama"));
        assert!(refused("mlp_bias", "true").contains("mlp_bias = true is not implemented"));
        let mut v: serde_json::Value = serde_json::from_str(SMALL).unwrap();
        v["attention_bias"] = false.into();
        assert!(!ModelConfig::from_hf_json(&v.to_string()).unwrap().attention_bias);
    }

    #[test]
    fn head_sizes_must_fit_the_heads() {
        // No head_dim: hidden_size must split evenly over the heads (64 / 3 would truncate).
        let mut v: serde_json::Value = serde_json::from_str(SMALL).unwrap();
        v.as_object_mut().unwrap().remove("head_dim");
        assert_eq!(ModelConfig::from_hf_json(&v.to_string()).unwrap().head_dim, 16);
        v["num_attention_heads"] = 3.into();
        v["num_key_value_heads"] = 1.into();
        let e = ModelConfig::from_hf_json(&v.to_string()).unwrap_err().to_string();
        assert!(
            e.contains("hidden_size 64 is not a multiple of num_attention_heads 3, and head_dim is not given"),
            "{e}"
        );
        let e = refused("head_dim", "15");
        assert!(e.contains("head_dim = 15 must be even"), "{e}");
        let e = refused("num_key_value_heads", "3");
        assert!(e.contains("not a multiple of 3 key/value heads"), "{e}");
        // An explicit head size other than hidden / heads is a valid Llama layout.
        let mut v: serde_json::Value = serde_json::from_str(SMALL).unwrap();
        v["head_dim"] = 32.into();
        assert_eq!(ModelConfig::from_hf_json(&v.to_string()).unwrap().head_dim, 32);
    }

    #[test]
    fn non_finite_or_negative_rope_base_and_epsilon_are_refused() {
        // 1e39 is past f32: it reads as infinity.
        for (field, value) in [("rope_theta", "1e39"), ("rope_theta", "-10000.0"), ("rope_theta", "0.5")] {
            assert!(refused(field, value).contains("rope_theta = "), "{field} {value}");
        }
        for value in ["1e39", "-1e-5", "2.0"] {
            let e = refused("rms_norm_eps", value);
            assert!(e.contains("rms_norm_eps = ") && e.contains("must be in [0, 1]"), "{e}");
        }
        assert!(refused("eos_token_id", "320").contains("token id 320 (BOS/EOS) is outside the vocabulary"));
        assert!(refused("eos_token_id", "[2, 4294967296]").contains("eos_token_id: 4294967296 is not a token id"));
    }
}
