//! Helpers for tests of GPU code, shared by the core's unit tests and the cross-crate tests.
//!
//! A GPU test that finds no adapter fails under `CI=true` (CI must run GPU code, on lavapipe if
//! nothing else) and is skipped loudly elsewhere.

use std::sync::OnceLock;

use rand::{SeedableRng, rngs::StdRng};

use crate::gpu::{Gpu, GpuOptions};
use crate::model::{Architecture, HostTensor, ModelConfig};

/// True when running under CI (`CI=true`), where missing GPU support is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| !v.is_empty() && v != "false" && v != "0").unwrap_or(false)
}

/// The shared test device, or `None` (outside CI) when this machine has no adapter.
pub fn gpu() -> Option<Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    shared(&GPU, GpuOptions::default())
}

/// A second device on the same adapter that picks the GPU-adapter kernel variants
/// (`GpuOptions::gpu_kernels`): on lavapipe, the model runs the kernels a real GPU would.
pub fn gpu_with_gpu_kernels() -> Option<Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    shared(&GPU, GpuOptions { gpu_kernels: true, ..GpuOptions::default() })
}

/// A device opened for mixed precision (`GpuOptions::cooperative_matrix`), or `None` (test
/// skipped, loudly) where the adapter offers no usable cooperative matrices. Set
/// `CONVREC_REQUIRE_TENSOR_CORES=1` to make that a failure (CI does, on a lavapipe that has them).
pub fn gpu_with_tensor_cores() -> Option<Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let gpu = shared(&GPU, GpuOptions { cooperative_matrix: true, ..GpuOptions::default() })?;
    if gpu.tensor_cores().is_some() {
        return Some(gpu);
    }
    let why = format!("{} offers no cooperative matrices this kernel can use", gpu.summary().name);
    if std::env::var_os(REQUIRE_TENSOR_CORES).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{REQUIRE_TENSOR_CORES} is set but {why}");
    }
    eprintln!("SKIPPED ({why}); set {REQUIRE_TENSOR_CORES}=1 to make this fail");
    None
}

/// The variable that turns a missing tensor-core adapter into a test failure.
pub const REQUIRE_TENSOR_CORES: &str = "CONVREC_REQUIRE_TENSOR_CORES";

fn shared(cell: &'static OnceLock<Result<Gpu, String>>, options: GpuOptions) -> Option<Gpu> {
    match cell.get_or_init(|| pollster::block_on(Gpu::new(&options)).map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu.clone()),
        Err(e) if in_ci() => panic!("CI=true but no GPU adapter could be opened: {e}"),
        Err(e) => {
            eprintln!("SKIPPED (no GPU adapter: {e}); under CI=true this fails");
            None
        }
    }
}

/// A seeded RNG for one test: fresh each run (seed printed), or fixed by `CONVREC_TEST_SEED`.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("CONVREC_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    eprintln!("{test}: CONVREC_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

pub use crate::numeric::{f32s, f64s, fd_grad, normal, rel_err};

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_err64(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable Latin-1 bytes stand for
/// themselves, the others for U+0100 onwards in byte order. Test tokenizers are built on it.
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 0x100;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("Latin-1")
            } else {
                next += 1;
                char::from_u32(next - 1).expect("U+0100 onwards")
            }
        })
        .collect()
}

/// A byte-level BPE `tokenizer.json` without merges: id b < 256 is byte b, then
/// `<|endoftext|>` (256), `<|im_start|>` (257), `<|im_end|>` (258) as special tokens, then filler
/// tokens up to `vocab` so that every id a model can sample decodes to something.
pub fn byte_level_tokenizer_json(vocab: usize) -> String {
    use serde_json::{Value, json};
    let mut map = serde_json::Map::new();
    for (b, c) in byte_chars().iter().enumerate() {
        map.insert(c.to_string(), json!(b));
    }
    let specials = [(256, "<|endoftext|>"), (257, "<|im_start|>"), (258, "<|im_end|>")];
    for (id, text) in specials {
        map.insert(text.to_string(), json!(id));
    }
    for id in 259..vocab {
        map.insert(format!("<x{id}>"), json!(id));
    }
    let added: Vec<Value> = specials
        .iter()
        .map(|(id, text)| {
            json!({"id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": map, "merges": []}
    })
    .to_string()
}

/// The text side of a test model: [`byte_level_tokenizer_json`] at `vocab` 320 with `<|im_end|>`
/// as EOS and the built-in ChatML template (one token per byte, so token counts are byte counts).
pub fn byte_level_chat_text() -> crate::model::text::ChatText {
    chat_text_from_json(&byte_level_tokenizer_json(320), 320)
}

/// A [`ChatText`](crate::model::text::ChatText) from a `tokenizer.json`, with `<|im_end|>` as EOS
/// and ChatML, for a Llama-shaped test model of vocabulary `vocab`.
pub fn chat_text_from_json(tokenizer_json: &str, vocab: usize) -> crate::model::text::ChatText {
    let config = serde_json::json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}).to_string();
    let loaded = crate::model::tokenizer::from_hf_files(tokenizer_json.as_bytes(), Some(config.as_bytes()), None)
        .expect("a valid test tokenizer");
    let mut model = tiny_config(crate::model::Architecture::Llama, true);
    model.vocab_size = vocab;
    crate::model::text::ChatText::new(loaded.tokenizer, loaded.special, None, &model).expect("ChatML applies")
}

/// A tiny random-weight model configuration (vocabulary 97, 2 layers, hidden 32, GQA 4/2 heads).
pub fn tiny_config(arch: Architecture, tied: bool) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        vocab_size: 97,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rope_theta: 10000.0,
        rope_scaling: crate::model::RopeScaling::None,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: tied,
        attention_bias: arch == Architecture::Qwen2,
        max_position_embeddings: 128,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

pub fn random_tensors(config: &ModelConfig, rng: &mut rand::rngs::StdRng) -> Vec<(String, HostTensor)> {
    config
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let scale = if name.ends_with("norm.weight") { 0.2 } else { 0.3 };
            let mut v: Vec<f32> = normal(rng, n).into_iter().map(|x| x * scale).collect();
            if name.ends_with("norm.weight") {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            (name, HostTensor::f32(shape, v))
        })
        .collect()
}

/// Several files in one fuzz input (the adapter's config and weights, a tokenizer with its config
/// and template): each part but the last behind its length as a little-endian u32. The fuzz
/// targets split with [`fuzz_parts`]; their seeds (`fuzz/seeds/`) are written with this.
pub fn fuzz_join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            out.extend((part.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(part);
    }
    out
}

/// The `n` parts of a fuzz input written by [`fuzz_join`]; any bytes split somehow (a length
/// past the end takes what is there, missing parts are empty).
pub fn fuzz_parts(mut data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    for _ in 1..n {
        let len = data.get(..4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        data = data.get(4..).unwrap_or_default();
        let (part, rest) = data.split_at(len.min(data.len()));
        parts.push(part);
        data = rest;
    }
    parts.push(data);
    parts
}
