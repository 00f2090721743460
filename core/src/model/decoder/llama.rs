//! The Llama family — Llama 2/3, SmolLM, Mistral-style checkpoints and Qwen2/2.5 — as transformers'
//! `LlamaDecoderLayer` / `Qwen2DecoderLayer` compute it:
//!
//! ```text
//! x += o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))   n = input_layernorm(x)
//! x += down_proj(silu(gate_proj(n)) ⊙ up_proj(n))                      n = post_attention_layernorm(x)
//! ```
//!
//! Qwen2 is the same layer with biases on q/k/v always on (its config sets `attention_bias`), and
//! llama.cpp stores its q/k rows as Hugging Face does, where it interleaves Llama's.

use super::{Bias, Block, Decoder, Mixer, Norm, Projection, Target, Width};
use crate::model::config::Architecture;

const NORMS: [Norm; 2] = [
    Norm { module: "input_layernorm", gguf: "attn_norm" },
    Norm { module: "post_attention_layernorm", gguf: "ffn_norm" },
];

const fn projection(
    target: Target,
    module: &'static str,
    gguf: &'static str,
    io: (Width, Width),
    bias: Bias,
) -> Projection {
    Projection { target, module, gguf, input: io.0, output: io.1, bias }
}

const PROJECTIONS: [Projection; 7] = [
    projection(
        Target::QProj,
        "self_attn.q_proj",
        "attn_q",
        (Width::Hidden, Width::QueryHeads),
        Bias::WithAttentionBias,
    ),
    projection(Target::KProj, "self_attn.k_proj", "attn_k", (Width::Hidden, Width::KvHeads), Bias::WithAttentionBias),
    projection(Target::VProj, "self_attn.v_proj", "attn_v", (Width::Hidden, Width::KvHeads), Bias::WithAttentionBias),
    projection(Target::OProj, "self_attn.o_proj", "attn_output", (Width::QueryHeads, Width::Hidden), Bias::Never),
    projection(Target::GateProj, "mlp.gate_proj", "ffn_gate", (Width::Hidden, Width::Intermediate), Bias::Never),
    projection(Target::UpProj, "mlp.up_proj", "ffn_up", (Width::Hidden, Width::Intermediate), Bias::Never),
    projection(Target::DownProj, "mlp.down_proj", "ffn_down", (Width::Intermediate, Width::Hidden), Bias::Never),
];

const BLOCKS: [Block; 2] = [
    Block {
        norm: 0,
        mixer: Mixer::Attention { q: Target::QProj, k: Target::KProj, v: Target::VProj, o: Target::OProj },
    },
    Block { norm: 1, mixer: Mixer::GatedMlp { gate: Target::GateProj, up: Target::UpProj, down: Target::DownProj } },
];

pub static LLAMA: Decoder = Decoder {
    architecture: Architecture::Llama,
    hf_names: &["LlamaForCausalLM", "llama"],
    gguf_name: "llama",
    norms: &NORMS,
    projections: &PROJECTIONS,
    blocks: &BLOCKS,
    gguf_permutes_rotary_rows: true,
};

pub static QWEN2: Decoder = Decoder {
    architecture: Architecture::Qwen2,
    hf_names: &["Qwen2ForCausalLM", "qwen2"],
    gguf_name: "qwen2",
    norms: &NORMS,
    projections: &PROJECTIONS,
    blocks: &BLOCKS,
    gguf_permutes_rotary_rows: false,
};
