//! One description of a decoder architecture, walked by everything that touches a layer.
//!
//! A [`Decoder`] says what a layer is made of — its norms, its projections (with their widths,
//! biases and file names) and the sequence of pre-norm residual [`Block`]s that use them — once.
//! From it come the tensor list a checkpoint must hold ([`Decoder::tensors`]), llama.cpp's names
//! ([`Decoder::hf_name`]), the uploaded [`LayerWeights`](super::gpu::LayerWeights), LoRA's factor
//! shapes and PEFT keys, and the compute: the inference plan (`model::gpu::ForwardPlan`) and the
//! training forward and backward (`train::backprop`) both walk `blocks`, one routine per
//! [`Mixer`] kind. A new architecture is one file here (see `llama.rs`) plus its tests; a new
//! kind of mixer, norm or activation is a new variant and its kernels.

mod llama;

use serde::{Deserialize, Serialize};

use super::config::{Architecture, ModelConfig};

pub use llama::{LLAMA, QWEN2};

/// A projection of a decoder layer — also what a LoRA adapter can target — under the module name
/// PEFT's `target_modules` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::QProj,
        Target::KProj,
        Target::VProj,
        Target::OProj,
        Target::GateProj,
        Target::UpProj,
        Target::DownProj,
    ];

    pub fn module_name(self) -> &'static str {
        match self {
            Target::QProj => "q_proj",
            Target::KProj => "k_proj",
            Target::VProj => "v_proj",
            Target::OProj => "o_proj",
            Target::GateProj => "gate_proj",
            Target::UpProj => "up_proj",
            Target::DownProj => "down_proj",
        }
    }

    pub fn from_module_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.module_name() == name)
    }
}

/// A width of the model, as a projection's input or output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Hidden,
    Intermediate,
    /// All query heads: `num_heads · head_dim`.
    QueryHeads,
    /// All key/value heads: `num_kv_heads · head_dim`.
    KvHeads,
}

impl Width {
    pub fn of(self, c: &ModelConfig) -> usize {
        match self {
            Width::Hidden => c.hidden_size,
            Width::Intermediate => c.intermediate_size,
            Width::QueryHeads => c.num_heads * c.head_dim,
            Width::KvHeads => c.num_kv_heads * c.head_dim,
        }
    }
}

/// When a projection carries a bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    Never,
    /// When the configuration's `attention_bias` is set (always for Qwen2).
    WithAttentionBias,
}

/// A linear layer `y = x·Wᵀ (+ b)` of every decoder layer, with `W` `[output, input]`.
#[derive(Debug)]
pub struct Projection {
    pub target: Target,
    /// The module path inside a layer in Hugging Face's names (`self_attn.q_proj`).
    pub module: &'static str,
    /// llama.cpp's name inside a block (`attn_q`).
    pub gguf: &'static str,
    pub input: Width,
    pub output: Width,
    pub bias: Bias,
}

impl Projection {
    /// (in, out) features.
    pub fn dims(&self, c: &ModelConfig) -> (usize, usize) {
        (self.input.of(c), self.output.of(c))
    }
    pub fn has_bias(&self, c: &ModelConfig) -> bool {
        self.bias == Bias::WithAttentionBias && c.attention_bias
    }
}

/// An RMS norm's weight `[hidden]`.
#[derive(Debug)]
pub struct Norm {
    /// Hugging Face's module path inside a layer (`input_layernorm`).
    pub module: &'static str,
    /// llama.cpp's name inside a block (`attn_norm`).
    pub gguf: &'static str,
}

/// What a block computes from its normed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mixer {
    /// Causal grouped-query self-attention, RoPE applied to `q` and `k`; `o` maps the heads back
    /// to the hidden width.
    Attention { q: Target, k: Target, v: Target, o: Target },
    /// `down(silu(gate·x) ⊙ up·x)`.
    GatedMlp { gate: Target, up: Target, down: Target },
}

impl Mixer {
    /// Its projections, in the order it applies them.
    pub fn projections(self) -> Vec<Target> {
        match self {
            Mixer::Attention { q, k, v, o } => vec![q, k, v, o],
            Mixer::GatedMlp { gate, up, down } => vec![gate, up, down],
        }
    }

    /// The projections that read the block's normed input, in the order their outputs are packed
    /// side by side (q | k | v, gate | up): inference stores their weights stacked and runs them
    /// as one product (`model::gpu::StackedProjections`).
    pub fn inputs(self) -> Vec<Target> {
        match self {
            Mixer::Attention { q, k, v, .. } => vec![q, k, v],
            Mixer::GatedMlp { gate, up, .. } => vec![gate, up],
        }
    }

    /// The projection whose output is added to the residual stream.
    pub fn output(self) -> Target {
        match self {
            Mixer::Attention { o, .. } => o,
            Mixer::GatedMlp { down, .. } => down,
        }
    }
}

/// A pre-norm residual block: `x += mixer(norm(x))`.
#[derive(Debug)]
pub struct Block {
    /// Index into [`Decoder::norms`].
    pub norm: usize,
    pub mixer: Mixer,
}

/// A decoder-only architecture: embedding, `num_layers` layers of `blocks`, a final RMS norm and
/// an output head (the embedding when tied).
#[derive(Debug)]
pub struct Decoder {
    pub architecture: Architecture,
    /// `architectures[0]` and `model_type` values of Hugging Face's `config.json`.
    pub hf_names: &'static [&'static str],
    /// GGUF's `general.architecture`.
    pub gguf_name: &'static str,
    pub norms: &'static [Norm],
    pub projections: &'static [Projection],
    pub blocks: &'static [Block],
    /// llama.cpp's converter stores the rows of the rotated projections (q, k) of this
    /// architecture interleaved per head; the GGUF loader undoes it.
    pub gguf_permutes_rotary_rows: bool,
}

/// Tensors outside the layers: (Hugging Face name, llama.cpp name).
pub const EMBEDDING: (&str, &str) = ("model.embed_tokens.weight", "token_embd.weight");
pub const FINAL_NORM: (&str, &str) = ("model.norm.weight", "output_norm.weight");
pub const HEAD: (&str, &str) = ("lm_head.weight", "output.weight");

/// Every architecture convrec runs.
pub static ALL: [&Decoder; 2] = [&LLAMA, &QWEN2];

/// The Hugging Face name of a layer's tensor.
pub fn layer_tensor(layer: usize, module: &str, kind: &str) -> String {
    format!("model.layers.{layer}.{module}.{kind}")
}

/// (module, kind) of a name [`layer_tensor`] writes: `model.layers.3.self_attn.q_proj.bias` →
/// (`self_attn.q_proj`, `bias`).
fn split_layer_tensor(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix("model.layers.")?.split_once('.')?.1.rsplit_once('.')
}

/// The Hugging Face `architectures` names convrec runs, for messages.
pub fn supported_hf_names() -> String {
    ALL.iter().map(|d| d.hf_names[0]).collect::<Vec<_>>().join(", ")
}

/// The GGUF `general.architecture` names convrec runs, for error messages.
pub fn supported_gguf_names() -> String {
    ALL.iter().map(|d| d.gguf_name).collect::<Vec<_>>().join(", ")
}

impl Decoder {
    pub fn of(architecture: Architecture) -> &'static Decoder {
        ALL.iter().copied().find(|d| d.architecture == architecture).expect("every architecture has a description")
    }

    pub fn projection(&'static self, target: Target) -> Option<&'static Projection> {
        self.projections.iter().find(|p| p.target == target)
    }

    /// `mixer`'s inputs and their columns `(target, start, end)` side by side in one packed row
    /// (q | k | v, gate | up), in [`Mixer::inputs`] order: what one product over their stacked
    /// weights writes.
    pub fn packed_inputs(&'static self, mixer: Mixer, c: &ModelConfig) -> Vec<(Target, usize, usize)> {
        let mut col = 0;
        mixer
            .inputs()
            .into_iter()
            .map(|t| {
                let (_, out) = self.projection(t).expect("a mixer's projection is the description's").dims(c);
                col += out;
                (t, col - out, col)
            })
            .collect()
    }

    /// Every weight the model needs, with its Hugging Face name and shape, in a fixed order.
    pub fn tensors(&self, c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let h = c.hidden_size;
        let mut out = vec![(EMBEDDING.0.to_string(), vec![c.vocab_size, h]), (FINAL_NORM.0.into(), vec![h])];
        if !c.tie_word_embeddings {
            out.push((HEAD.0.into(), vec![c.vocab_size, h]));
        }
        for l in 0..c.num_layers {
            for norm in self.norms {
                out.push((layer_tensor(l, norm.module, "weight"), vec![h]));
            }
            for p in self.projections {
                let (inp, outp) = p.dims(c);
                out.push((layer_tensor(l, p.module, "weight"), vec![outp, inp]));
                if p.has_bias(c) {
                    out.push((layer_tensor(l, p.module, "bias"), vec![outp]));
                }
            }
        }
        out
    }

    /// Weights per layer (norms, projections, biases).
    pub fn layer_parameters(&self, c: &ModelConfig) -> u64 {
        let norms = self.norms.len() as u64 * c.hidden_size as u64;
        let projections: u64 = self
            .projections
            .iter()
            .map(|p| {
                // u64: on wasm32 a large (or corrupt, still unchecked) size overflows usize.
                let (inp, out) = p.dims(c);
                let (inp, out) = (inp as u64, out as u64);
                out * inp + if p.has_bias(c) { out } else { 0 }
            })
            .sum();
        norms + projections
    }

    /// The Hugging Face name of a llama.cpp tensor, or `None` for tensors convrec has no use for.
    pub fn hf_name(&self, gguf: &str) -> Option<String> {
        for (hf, gg) in [EMBEDDING, FINAL_NORM, HEAD] {
            if gguf == gg {
                return Some(hf.to_string());
            }
        }
        let rest = gguf.strip_prefix("blk.")?;
        let (layer, rest) = rest.split_once('.')?;
        // Only plain decimal layer numbers ("07" or "+1" would alias another layer).
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0'))
        {
            return None;
        }
        let (part, kind) = rest.rsplit_once('.')?;
        if kind != "weight" && kind != "bias" {
            return None;
        }
        let module = self
            .projections
            .iter()
            .map(|p| (p.gguf, p.module))
            .chain(self.norms.iter().map(|n| (n.gguf, n.module)))
            .find(|(g, _)| *g == part)?
            .1;
        Some(format!("model.layers.{layer}.{module}.{kind}"))
    }

    /// Whether `name` is a tensor of a module this architecture's layers have
    /// (`model.layers.N.<module>.weight|bias`). A checkpoint's tensor of that form that the
    /// configuration does not expect (a bias with `attention_bias` off) must be refused, not
    /// dropped: the model would answer without it.
    pub fn names_layer_module(&self, name: &str) -> bool {
        split_layer_tensor(name).is_some_and(|(module, kind)| {
            (kind == "weight" || kind == "bias")
                && (self.projections.iter().any(|p| p.module == module)
                    || self.norms.iter().any(|n| n.module == module))
        })
    }

    /// For a projection RoPE rotates (an attention mixer's q or k), the heads its rows split into:
    /// what llama.cpp's row interleaving works per. `None` for every other tensor.
    pub fn rotary_heads(&self, hf_name: &str, c: &ModelConfig) -> Option<usize> {
        let (module, _) = split_layer_tensor(hf_name)?;
        let target = self.projections.iter().find(|p| p.module == module)?.target;
        self.blocks.iter().find_map(|b| match b.mixer {
            Mixer::Attention { q, .. } if q == target => Some(c.num_heads),
            Mixer::Attention { k, .. } if k == target => Some(c.num_kv_heads),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_description_is_consistent() {
        for d in ALL {
            // Each mixer's projections exist, each projection is used by exactly one mixer, each
            // norm by a block, and names are unique.
            let mut used = Vec::new();
            for b in d.blocks {
                assert!(b.norm < d.norms.len(), "{:?}", d.architecture);
                used.extend(b.mixer.projections());
            }
            used.sort();
            let mut listed: Vec<Target> = d.projections.iter().map(|p| p.target).collect();
            listed.sort();
            assert_eq!(used, listed, "{:?}: mixers use each projection once", d.architecture);
            let mut names: Vec<&str> =
                d.projections.iter().map(|p| p.module).chain(d.norms.iter().map(|n| n.module)).collect();
            let mut gguf: Vec<&str> =
                d.projections.iter().map(|p| p.gguf).chain(d.norms.iter().map(|n| n.gguf)).collect();
            names.sort();
            names.dedup();
            gguf.sort();
            gguf.dedup();
            assert_eq!(
                (names.len(), gguf.len()),
                (d.projections.len() + d.norms.len(), d.projections.len() + d.norms.len())
            );
            for p in d.projections {
                assert!(
                    p.module.ends_with(p.target.module_name()),
                    "PEFT's target_modules name is the module's last part"
                );
            }
            assert!(std::ptr::eq(Decoder::of(d.architecture), d));
        }
    }

    #[test]
    fn gguf_names_map_through_the_description() {
        let c = crate::testing::tiny_config(Architecture::Llama, false);
        let d = c.decoder();
        // Every layer tensor's llama.cpp name maps back to its Hugging Face name.
        for p in d.projections {
            assert_eq!(d.hf_name(&format!("blk.1.{}.weight", p.gguf)), Some(layer_tensor(1, p.module, "weight")));
        }
        assert_eq!(d.hf_name("blk.1.attn_norm.weight"), Some(layer_tensor(1, "input_layernorm", "weight")));
        assert_eq!(d.rotary_heads(&layer_tensor(0, "self_attn.q_proj", "weight"), &c), Some(c.num_heads));
        assert_eq!(d.rotary_heads(&layer_tensor(0, "self_attn.k_proj", "bias"), &c), Some(c.num_kv_heads));
        assert_eq!(d.rotary_heads(&layer_tensor(0, "self_attn.v_proj", "weight"), &c), None);
        assert_eq!(d.rotary_heads("model.norm.weight", &c), None);
        assert!(d.names_layer_module("model.layers.3.self_attn.o_proj.bias"));
        assert!(d.names_layer_module("model.layers.0.post_attention_layernorm.weight"));
        assert!(!d.names_layer_module("model.layers.0.self_attn.rotary_emb.inv_freq"));
        assert!(!d.names_layer_module("model.norm.weight"));
        // The parameter count agrees with the tensor list.
        for arch in [Architecture::Llama, Architecture::Qwen2] {
            let c = crate::testing::tiny_config(arch, false);
            let listed: u64 = c.decoder().tensors(&c).iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
            assert_eq!(listed, c.parameter_count(), "{arch:?}");
        }
    }
}
