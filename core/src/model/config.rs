//! Model hyper-parameters, read from a Hugging Face `config.json` (`LlamaForCausalLM`,
//! `Qwen2ForCausalLM`) or built by the GGUF loader. Options convrec does not implement are
//! refused with a clear error rather than silently ignored.

use serde::{Deserialize, Serialize};

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

fn ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
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
        let architecture = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ConfigError::Unsupported(format!(
                    "architecture {other} is not supported (LlamaForCausalLM and Qwen2ForCausalLM are)"
                )));
            }
        };
        if let Some(scaling) = c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(ConfigError::Unsupported(format!(
                "rope_scaling {scaling} is not implemented (only plain RoPE is)"
            )));
        }
        let mut rope_theta = c.rope_theta;
        if let Some(params) = c.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            let rope_type = params.get("rope_type").and_then(|t| t.as_str()).unwrap_or("default");
            if rope_type != "default" {
                return Err(ConfigError::Unsupported(format!(
                    "rope_parameters.rope_type {rope_type} is not implemented (only default RoPE is)"
                )));
            }
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = Some(theta as f32);
            }
        }
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ConfigError::Unsupported(format!("hidden_act {act} is not implemented (only silu is)")));
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
        let config = ModelConfig {
            architecture,
            vocab_size: c.vocab_size.ok_or(ConfigError::Missing("vocab_size"))?,
            hidden_size: hidden,
            intermediate_size: c.intermediate_size.ok_or(ConfigError::Missing("intermediate_size"))?,
            num_layers: c.num_hidden_layers.ok_or(ConfigError::Missing("num_hidden_layers"))?,
            num_heads: heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(heads),
            head_dim: c.head_dim.unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
            rope_theta: rope_theta.unwrap_or(10000.0),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            // Qwen2 always has q/k/v biases; Llama has them only with attention_bias.
            attention_bias: architecture == Architecture::Qwen2 || c.attention_bias.unwrap_or(false),
            max_position_embeddings: c.max_position_embeddings.unwrap_or(2048),
            bos_token_id: ids(&c.bos_token_id).first().copied(),
            eos_token_ids: ids(&c.eos_token_id),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Unsupported(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 || self.intermediate_size == 0 {
            return bad("vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }

    /// Every weight the model needs, with its HF name and shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, f, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (qd, kvd) = (self.num_heads * d, self.num_kv_heads * d);
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h]),
            ("model.norm.weight".into(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![qd, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kvd, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kvd, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, qd]));
            if self.attention_bias {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![qd]));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kvd]));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kvd]));
            }
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_qwen2_config_and_refuses_rope_scaling() {
        let text = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":151936,"hidden_size":896,
            "intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
            "rope_theta":1000000.0,"rms_norm_eps":1e-6,"tie_word_embeddings":true,"max_position_embeddings":32768,
            "eos_token_id":151645,"bos_token_id":151643,"hidden_act":"silu","rope_scaling":null,"use_sliding_window":false}"#;
        let c = ModelConfig::from_hf_json(text).unwrap();
        assert_eq!(
            (c.architecture, c.head_dim, c.attention_bias, c.eos_token_ids.clone()),
            (Architecture::Qwen2, 64, true, vec![151645])
        );
        assert_eq!(c.expected_tensors().len(), 2 + 24 * 12);
        let scaled = text.replace(r#""rope_scaling":null"#, r#""rope_scaling":{"type":"yarn","factor":4.0}"#);
        let err = ModelConfig::from_hf_json(&scaled).unwrap_err().to_string();
        assert!(err.contains("rope_scaling") && err.contains("yarn"), "{err}");
        // transformers 5 layout
        let v5 = text.replace(
            r#""rope_theta":1000000.0,"#,
            r#""rope_parameters":{"rope_theta":500000.0,"rope_type":"default"},"#,
        );
        assert_eq!(ModelConfig::from_hf_json(&v5).unwrap().rope_theta, 500000.0);
        let v5_yarn = v5.replace(r#""rope_type":"default""#, r#""rope_type":"yarn""#);
        assert!(ModelConfig::from_hf_json(&v5_yarn).unwrap_err().to_string().contains("rope_type yarn"));
        let bad = text.replace(r#""num_key_value_heads":2"#, r#""num_key_value_heads":3"#);
        assert!(ModelConfig::from_hf_json(&bad).unwrap_err().to_string().contains("not a multiple"));
        assert!(ModelConfig::from_hf_json("{").unwrap_err().to_string().contains("not valid JSON"));
    }
}
