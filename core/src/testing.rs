//! Helpers for tests of GPU code, shared by the core's unit tests and the cross-crate tests.
//!
//! A GPU test that finds no adapter fails under `CI=true` (CI must run GPU code, on lavapipe if
//! nothing else) and is skipped loudly elsewhere.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng, rngs::StdRng};

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

/// Approximately standard-normal values (sum of uniforms), enough to exercise kernels.
pub fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.732).collect()
}

pub use crate::numeric::rel_err;

/// Widens to f64 (references and finite differences run in f64).
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Narrows to f32 for comparison with GPU output.
pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_err64(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// Central finite differences of a scalar function, in f64.
pub fn fd_grad(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * (1.0 + x[i].abs());
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
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
