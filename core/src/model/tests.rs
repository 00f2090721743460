//! Model-level consistency on small random models: the decode path (KV cache, broadcast, left
//! padding, GPU argmax) must agree with the full forward. Parity with Hugging Face lives in the
//! cross-crate tests, against fixtures.

use super::config::Architecture;
use super::generate::{GenerateRequest, generate};
use super::gpu::{GpuModel, sequence_logits};
use crate::ops::decode::SamplingConfig;
use crate::testing;

pub use crate::testing::{random_tensors, tiny_config};

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a))).unwrap() as u32
}

#[test]
fn greedy_decode_matches_the_full_forward_for_left_padded_batches() {
    let Some(gpu) = testing::gpu() else { return };
    decode_matches_full_forward(&gpu, "model decode consistency");
}

/// The same with the GPU-adapter kernels (flash attention, tiled matmuls, RMSNorm rows), on
/// whatever adapter runs the tests.
#[test]
fn greedy_decode_matches_the_full_forward_with_gpu_kernel_variants() {
    let Some(gpu) = testing::gpu_with_gpu_kernels() else { return };
    decode_matches_full_forward(&gpu, "model decode consistency, gpu kernels");
}

/// Full-forward logits are the same whichever kernel variants compute them.
#[test]
fn gpu_kernel_variants_give_the_same_logits() {
    let (Some(cpu), Some(gpu)) = (testing::gpu(), testing::gpu_with_gpu_kernels()) else { return };
    let mut rng = testing::rng("model logits across kernel variants");
    let config = tiny_config(Architecture::Llama, false);
    let tensors = random_tensors(&config, &mut rng);
    let ids: Vec<u32> = (0..70).map(|i| (i * 37 % config.vocab_size) as u32).collect();
    let logits = |gpu: &crate::Gpu| {
        let model = GpuModel::upload(gpu, config.clone(), tensors.clone(), 128).unwrap();
        pollster::block_on(sequence_logits(gpu, &model, &ids)).unwrap()
    };
    let err = testing::rel_err(&logits(&gpu), &logits(&cpu));
    assert!(err <= 1e-5, "{err:e}");
}

/// Weights kept quantised on the GPU (`--weights q8|q4`, and GGUF files' blocks, embedding
/// included) give the logits of an f32 model holding the same values — the kernels dequantise
/// exactly what the CPU's `dtype::unpack` does — and the quantised model decodes as its own full
/// forward.
#[test]
fn quantised_weights_give_the_logits_of_their_values() {
    use crate::dtype::{Dtype, WeightFormat};
    let Some(gpu) = testing::gpu() else { return };
    let mut rng = testing::rng("model quantised weights");
    for config in [tiny_config(Architecture::Llama, false), tiny_config(Architecture::Qwen2, true)] {
        let tensors = random_tensors(&config, &mut rng);
        let ids: Vec<u32> = (0..40).map(|i| (i * 37 % config.vocab_size) as u32).collect();
        for (format, dtype) in [(WeightFormat::Q8, Dtype::Q8), (WeightFormat::Q4, Dtype::Q4)] {
            // The embedding (the tied head, for Qwen2) stored quantised too, as GGUF files do.
            let stored: Vec<_> = tensors
                .iter()
                .map(|(n, t)| {
                    let t = if n == "model.embed_tokens.weight" { t.clone().converted(dtype) } else { t.clone() };
                    (n.clone(), t)
                })
                .collect();
            let quantised = GpuModel::upload_as(&gpu, config.clone(), stored.clone(), 64, format).unwrap();
            assert_eq!(quantised.embed.dtype, dtype);
            assert_eq!(quantised.layers[0].weight(crate::model::Target::QProj).dtype, dtype);
            // What `--weights` did, on the host: the f32 model of the same values.
            let widened: Vec<_> = stored
                .into_iter()
                .map(|(n, t)| {
                    let dtype = format.dtype_for(&n, &t.shape, t.dtype());
                    let t = t.converted(dtype);
                    (n, crate::model::HostTensor::f32(t.shape.clone(), t.to_f32()))
                })
                .collect();
            let reference = GpuModel::upload(&gpu, config.clone(), widened, 64).unwrap();
            assert!(quantised.weight_bytes() < reference.weight_bytes() / 2, "{format}: weights take less memory");
            let got = pollster::block_on(sequence_logits(&gpu, &quantised, &ids)).unwrap();
            let want = pollster::block_on(sequence_logits(&gpu, &reference, &ids)).unwrap();
            let err = testing::rel_err(&got, &want);
            assert!(err <= 1e-5, "{:?} {format}: {err:e}", config.architecture);
        }
    }
    let mut config = tiny_config(Architecture::Llama, true);
    config.intermediate_size = 64; // every projection's rows whole Q4 blocks
    decode_matches_full_forward_as(&gpu, "model decode consistency, q4", &[config], WeightFormat::Q4);
}

fn decode_matches_full_forward(gpu: &crate::Gpu, test: &str) {
    let configs = [tiny_config(Architecture::Llama, false), tiny_config(Architecture::Qwen2, true)];
    decode_matches_full_forward_for(gpu, test, &configs);
}

/// Head sizes off the common list go through the general kernel paths (per-row attention where
/// the flash blocking does not fit): the whole model still decodes as its full forward says.
#[test]
fn uncommon_head_sizes_decode_like_the_full_forward() {
    let configs: Vec<_> = [(8, 4, 2), (80, 2, 1), (4, 8, 4)]
        .into_iter()
        .map(|(head_dim, heads, kv_heads)| {
            let mut c = tiny_config(Architecture::Llama, false);
            (c.head_dim, c.num_heads, c.num_kv_heads) = (head_dim, heads, kv_heads);
            c
        })
        .collect();
    if let Some(gpu) = testing::gpu() {
        decode_matches_full_forward_for(&gpu, "model decode, uncommon head sizes", &configs);
    }
    if let Some(gpu) = testing::gpu_with_gpu_kernels() {
        decode_matches_full_forward_for(&gpu, "model decode, uncommon head sizes, gpu kernels", &configs);
    }
}

fn decode_matches_full_forward_for(gpu: &crate::Gpu, test: &str, configs: &[crate::model::ModelConfig]) {
    decode_matches_full_forward_as(gpu, test, configs, crate::dtype::WeightFormat::Stored);
}

fn decode_matches_full_forward_as(
    gpu: &crate::Gpu,
    test: &str,
    configs: &[crate::model::ModelConfig],
    weights: crate::dtype::WeightFormat,
) {
    let gpu = gpu.clone();
    let mut rng = testing::rng(test);
    for config in configs {
        let (config, arch) = (config.clone(), config.architecture);
        let model = GpuModel::upload_as(&gpu, config.clone(), random_tensors(&config, &mut rng), 64, weights).unwrap();
        let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 3, 88, 42], vec![9], vec![60, 61, 2]];
        let req = GenerateRequest {
            prompts: prompts.clone(),
            num_samples: 2,
            first_sequence: 0,
            max_new_tokens: 6,
            sampling: SamplingConfig::greedy(),
            stop_ids: vec![],
        };
        let out = pollster::block_on(generate(&gpu, &model, &req, |_, _| {})).unwrap();
        assert_eq!(out.len(), 6);
        for c in &out {
            // Reference: extend the sequence one greedy token at a time with the full forward.
            let mut seq = prompts[c.prompt].clone();
            for &tok in &c.tokens {
                let logits = pollster::block_on(sequence_logits(&gpu, &model, &seq)).unwrap();
                let last = &logits[(seq.len() - 1) * config.vocab_size..];
                let want = argmax(last);
                // A near-tie may legitimately flip between two summation orders.
                let mut sorted = last.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                if sorted[0] - sorted[1] > 1e-4 {
                    assert_eq!(tok, want, "{arch:?}: prompt {} sample {} after {:?}", c.prompt, c.sample, seq);
                }
                seq.push(want);
            }
        }
    }
}

#[test]
fn sampled_generation_is_reproducible_and_stops_at_stop_ids() {
    let Some(gpu) = testing::gpu() else { return };
    let mut rng = testing::rng("model sampling");
    let config = tiny_config(Architecture::Llama, true);
    let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 64).unwrap();
    let req = GenerateRequest {
        prompts: vec![vec![1, 2, 3], vec![4, 5]],
        num_samples: 4,
        first_sequence: 0,
        max_new_tokens: 12,
        sampling: SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 11 },
        stop_ids: vec![],
    };
    let a = pollster::block_on(generate(&gpu, &model, &req, |_, _| {})).unwrap();
    let b = pollster::block_on(generate(&gpu, &model, &req, |_, _| {})).unwrap();
    assert_eq!(a, b, "same seed, same completions");
    assert!(a.iter().any(|c| c.tokens != a[0].tokens), "samples of a prompt differ at temperature 1");
    // Stop on the first token the first completion produced: that completion ends there.
    let stop = a[0].tokens[0];
    let stopped =
        pollster::block_on(generate(&gpu, &model, &GenerateRequest { stop_ids: vec![stop], ..req }, |_, _| {}))
            .unwrap();
    assert_eq!(stopped[0].tokens, vec![stop]);
    assert!(stopped[0].stopped);
    for c in &stopped {
        let first_stop = c.tokens.iter().position(|&t| t == stop);
        assert!(first_stop.is_none_or(|i| i + 1 == c.tokens.len()), "tokens continue after a stop id");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let Some(gpu) = testing::gpu() else { return };
    let mut rng = testing::rng("model errors");
    let config = tiny_config(Architecture::Llama, true);
    let mut tensors = random_tensors(&config, &mut rng);
    tensors.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    let err = GpuModel::upload(&gpu, config.clone(), tensors, 64).err().unwrap().to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight is missing"), "{err}");
    let mut tensors = random_tensors(&config, &mut rng);
    let q = tensors.iter_mut().find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight").unwrap();
    q.1.shape.reverse();
    let err = GpuModel::upload(&gpu, config.clone(), tensors, 64).err().unwrap().to_string();
    assert!(err.contains("has shape"), "{err}");
    let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 8).unwrap();
    let err = pollster::block_on(sequence_logits(&gpu, &model, &[1, 500])).unwrap_err().to_string();
    assert!(err.contains("token id 500 is outside the vocabulary of 97"), "{err}");
    let long = GenerateRequest {
        prompts: vec![vec![1; 5]],
        num_samples: 1,
        first_sequence: 0,
        max_new_tokens: 10,
        sampling: SamplingConfig::greedy(),
        stop_ids: vec![],
    };
    let err = pollster::block_on(generate(&gpu, &model, &long, |_, _| {})).unwrap_err().to_string();
    assert!(err.contains("exceeds the 8 positions"), "{err}");
}

#[test]
fn vocabulary_shards_change_nothing() {
    let Some(gpu) = testing::gpu() else { return };
    let mut rng = testing::rng("vocab shards");
    for tied in [true, false] {
        let config = tiny_config(Architecture::Llama, tied);
        let tensors = random_tensors(&config, &mut rng);
        let whole = GpuModel::upload(&gpu, config.clone(), tensors.clone(), 32).unwrap();
        let split = GpuModel::upload_with(&gpu, config.clone(), tensors, 32, Some(30)).unwrap();
        assert_eq!(split.head().shard_starts(), vec![0, 30, 60, 90]);
        let ids = [3u32, 96, 31, 60, 59, 7];
        let a = pollster::block_on(sequence_logits(&gpu, &whole, &ids)).unwrap();
        let b = pollster::block_on(sequence_logits(&gpu, &split, &ids)).unwrap();
        assert!(crate::numeric::rel_err(&b, &a) < 1e-6, "tied={tied}");
        let layout = crate::train::lora::LoraLayout::new(
            &config,
            crate::train::lora::LoraConfig { r: 4, alpha: 8.0, targets: vec![crate::train::lora::Target::QProj] },
        );
        let params: Vec<f32> = (0..layout.len).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
        let (la, ga) =
            pollster::block_on(crate::train::grads::lora_loss_and_grads(&gpu, &whole, &layout, &params, &ids, 2))
                .unwrap();
        let (lb, gb) =
            pollster::block_on(crate::train::grads::lora_loss_and_grads(&gpu, &split, &layout, &params, &ids, 2))
                .unwrap();
        assert!((la - lb).abs() < 1e-5 && crate::numeric::rel_err(&gb, &ga) < 1e-5, "tied={tied}: loss {la} vs {lb}");
    }
}

/// Mixed precision (f16 operands on tensor cores, f32 accumulation) moves the logits of a
/// random model only by f16 rounding; greedy choices with a clear margin do not change.
#[test]
fn mixed_precision_logits_stay_close_to_f32() {
    let (Some(f32_gpu), Some(mixed)) = (testing::gpu(), testing::gpu_with_tensor_cores()) else { return };
    let mut rng = testing::rng("model logits in mixed precision");
    for (arch, tied) in [(Architecture::Llama, false), (Architecture::Qwen2, true)] {
        let config = tiny_config(arch, tied);
        let tensors = random_tensors(&config, &mut rng);
        let ids: Vec<u32> = (0..70).map(|i| (i * 37 % config.vocab_size) as u32).collect();
        let logits = |gpu: &crate::Gpu| {
            let model = GpuModel::upload(gpu, config.clone(), tensors.clone(), 128).unwrap();
            pollster::block_on(sequence_logits(gpu, &model, &ids)).unwrap()
        };
        let (want, got) = (logits(&f32_gpu), logits(&mixed));
        let err = testing::rel_err(&got, &want);
        eprintln!("{arch:?}: mixed vs f32 logits, relative error {err:e}");
        assert!(err <= MIXED_LOGITS_BOUND, "{arch:?}: {err:e}");
        assert!(err > 0.0, "{arch:?}: identical logits: the mixed path did not run");
        for (row_got, row_want) in got.chunks(config.vocab_size).zip(want.chunks(config.vocab_size)) {
            let mut sorted = row_want.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 1e-2 {
                assert_eq!(argmax(row_got), argmax(row_want), "{arch:?}: a clear greedy choice changed");
            }
        }
    }
    assert!(!pollster::block_on(mixed.take_f16_overflow()).unwrap());
}

/// Relative logit error of mixed precision on the tiny random models (measured 2.3e-3–2.6e-3 on
/// lavapipe's 8×8 tiles, see docs/PRECISION.md).
const MIXED_LOGITS_BOUND: f64 = 1e-2;

/// A checkpoint tensor the configuration has no place for (here an o_proj bias, which
/// transformers' Llama has with attention_bias) is refused by name, not silently dropped; tensors
/// of no layer module (an old checkpoint's rotary inv_freq) are ignored as transformers does.
#[test]
fn tensors_the_layer_has_no_place_for_are_refused() {
    let Some(gpu) = testing::gpu() else { return };
    let mut rng = testing::rng("unexpected tensors");
    let config = tiny_config(Architecture::Llama, true);
    let mut tensors = random_tensors(&config, &mut rng);
    tensors.push((
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        crate::model::HostTensor::f32(vec![8], vec![1.0; 8]),
    ));
    assert!(GpuModel::upload(&gpu, config.clone(), tensors.clone(), 16).is_ok());
    tensors
        .push(("model.layers.1.self_attn.o_proj.bias".into(), crate::model::HostTensor::f32(vec![32], vec![0.5; 32])));
    let err = GpuModel::upload(&gpu, config, tensors, 16).err().expect("refused").to_string();
    assert!(err.contains("model.layers.1.self_attn.o_proj.bias") && err.contains("attention_bias = false"), "{err}");
}

/// Each mixer's inputs (q | k | v, gate | up) are uploaded as one stacked matrix that inference
/// runs as one product; the members are views into it, so memory is as before, and the model
/// answers as it does with the same inputs run as separate products into their columns.
#[test]
fn stacked_mixer_inputs_answer_as_separate_products() {
    use crate::dtype::WeightFormat;
    use crate::model::Target;
    let Some(gpu) = testing::gpu() else { return };
    let mut rng = testing::rng("model stacked inputs");
    for (config, weights) in [
        (tiny_config(Architecture::Llama, false), WeightFormat::Stored),
        (tiny_config(Architecture::Qwen2, true), WeightFormat::Stored), // q/k/v biases stacked too
        (tiny_config(Architecture::Qwen2, true), WeightFormat::Q4),
    ] {
        let arch = config.architecture;
        let tensors = random_tensors(&config, &mut rng);
        let stacked = GpuModel::upload_as(&gpu, config.clone(), tensors.clone(), 64, weights).unwrap();
        for layer in &stacked.layers {
            let targets: Vec<_> = layer.stacks.iter().map(|s| s.targets.clone()).collect();
            let attention = vec![Target::QProj, Target::KProj, Target::VProj];
            assert_eq!(targets, vec![attention.clone(), vec![Target::GateProj, Target::UpProj]], "{arch:?}");
            assert!(layer.stack(&attention).is_some());
            assert_eq!(layer.stacks[0].bias.is_some(), config.attention_bias);
        }
        if weights == WeightFormat::Stored && !config.attention_bias {
            // f32 throughout: every tensor counted once, the stacks' members not again.
            let elems: usize = tensors.iter().map(|(_, t)| t.len()).sum();
            assert_eq!(stacked.weight_bytes(), elems as u64 * 4, "{arch:?}");
        }
        let mut separate = stacked.clone();
        separate.layers.iter_mut().for_each(|l| l.stacks.clear());
        let ids: Vec<u32> = (0..23).map(|i| (i * 31 % config.vocab_size) as u32).collect();
        let got = pollster::block_on(sequence_logits(&gpu, &stacked, &ids)).unwrap();
        let want = pollster::block_on(sequence_logits(&gpu, &separate, &ids)).unwrap();
        let err = testing::rel_err(&got, &want);
        assert!(err <= 1e-6, "{arch:?} {weights}: {err:e}");
        // Decoding over the KV cache: the same greedy tokens.
        let req = GenerateRequest {
            prompts: vec![vec![5, 17, 3, 88], vec![9, 1]],
            num_samples: 2,
            first_sequence: 0,
            max_new_tokens: 6,
            sampling: SamplingConfig::greedy(),
            stop_ids: vec![],
        };
        let tokens = |m: &GpuModel| {
            let out = pollster::block_on(generate(&gpu, m, &req, |_, _| {})).unwrap();
            out.into_iter().map(|c| c.tokens).collect::<Vec<_>>()
        };
        assert_eq!(tokens(&stacked), tokens(&separate), "{arch:?} {weights}");
    }
}
