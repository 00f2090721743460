//! Parity with Hugging Face `transformers` and `peft`, against the fixtures that
//! `scripts/fixtures/make_model_fixtures.py` generated (see `tests/fixtures/models/README.md`):
//! logits of a sequence and of a left-padded batch, greedy generation, and with a LoRA adapter
//! the logits, the loss and the gradient of every LoRA tensor.

use std::path::PathBuf;

use convrec_core::Gpu;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gpu::{AttentionMode, ForwardInputs, ForwardPlan, GpuModel, LogitsOp, sequence_logits};
use convrec_core::model::safetensors_io::read_numbers;
use convrec_core::numeric::rel_err;
use convrec_core::ops::decode::SamplingConfig;
use convrec_core::train::adapter_view::AdapterView;
use convrec_core::train::grads::lora_loss_and_grads;

const MODELS: [&str; 5] = ["llama_gqa", "llama_tied_mha", "llama_hd32_bf16", "qwen2_gqa", "qwen2_sharded"];

fn fixture(model: &str) -> PathBuf {
    convrec_tests::workspace_root().join("tests/fixtures/models").join(model)
}

struct Expected(Vec<u8>, String);

impl Expected {
    fn load(path: PathBuf) -> Self {
        Expected(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())), path.display().to_string())
    }
    fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        read_numbers(&self.0, &self.1, name).unwrap()
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name).1.into_iter().map(|x| x as u32).collect()
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.get(name).1.into_iter().map(|x| x as f32).collect()
    }
}

fn load_model(gpu: &Gpu, name: &str) -> GpuModel {
    let files = convrec::model_files::load_hf_folder(&fixture(name)).unwrap();
    GpuModel::upload(gpu, files.config, files.tensors, 64).unwrap()
}

#[test]
fn logits_match_transformers_for_every_fixture_model() {
    let Some(gpu) = convrec_core::testing::gpu() else { return };
    for name in MODELS {
        let model = load_model(&gpu, name);
        let exp = Expected::load(fixture(name).join("expected.safetensors"));
        let ids = exp.ids("input_ids");
        let got = pollster::block_on(sequence_logits(&gpu, &model, &ids)).unwrap();
        let err = rel_err(&got, &exp.f32s("logits"));
        eprintln!("{name}: logits rel. error {err:.2e}");
        assert!(err <= 1e-4, "{name}: ‖ours − HF‖/‖HF‖ = {err:e} > 1e-4");
    }
}

#[test]
fn left_padded_batches_match_transformers_at_real_positions() {
    let Some(gpu) = convrec_core::testing::gpu() else { return };
    for name in MODELS {
        let model = load_model(&gpu, name);
        let exp = Expected::load(fixture(name).join("expected.safetensors"));
        let (shape, ids) = exp.get("batch_input_ids");
        let (batch, t) = (shape[0], shape[1]);
        let mask = exp.ids("batch_attention_mask");
        let ids: Vec<u32> = ids.into_iter().map(|x| x as u32).collect();
        let key_start: Vec<u32> =
            (0..batch).map(|b| mask[b * t..(b + 1) * t].iter().take_while(|&&m| m == 0).count() as u32).collect();
        let positions: Vec<u32> =
            (0..batch * t).map(|i| (i % t) as u32 - key_start[i / t].min((i % t) as u32)).collect();
        let plan = pollster::block_on(ForwardPlan::new(&gpu, &model, batch, t)).unwrap();
        let logits = pollster::block_on(LogitsOp::new(&gpu, &model, batch * t)).unwrap();
        let up = |v: &[u32]| gpu.upload("test", "t", v).unwrap();
        let inputs = ForwardInputs { ids: &up(&ids), positions: &up(&positions), key_start: &up(&key_start) };
        let mut b = gpu.batch("test");
        plan.record(&mut b, &model, &inputs, &AttentionMode::SelfOnly).unwrap();
        logits.record(&mut b, &model, &plan.hidden, 0, 1).unwrap();
        pollster::block_on(b.submit()).unwrap();
        let got = pollster::block_on(gpu.read::<f32>("test", &logits.logits)).unwrap();
        let want = exp.f32s("batch_logits");
        let v = model.config.vocab_size;
        let real = |x: &[f32]| -> Vec<f32> {
            (0..batch * t).filter(|&i| mask[i] == 1).flat_map(|i| x[i * v..(i + 1) * v].to_vec()).collect()
        };
        let err = rel_err(&real(&got), &real(&want));
        assert!(err <= 1e-4, "{name}: batch logits ‖ours − HF‖/‖HF‖ = {err:e}");
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let Some(gpu) = convrec_core::testing::gpu() else { return };
    for name in MODELS {
        let model = load_model(&gpu, name);
        let exp = Expected::load(fixture(name).join("expected.safetensors"));
        let req = GenerateRequest {
            prompts: vec![exp.ids("input_ids")],
            num_samples: 1,
            first_sequence: 0,
            max_new_tokens: 8,
            sampling: SamplingConfig::greedy(),
            stop_ids: vec![],
        };
        let out = pollster::block_on(generate(&gpu, &model, &req, |_, _| {})).unwrap();
        assert_eq!(out[0].tokens, exp.ids("greedy_ids"), "{name}");
    }
}

#[test]
fn lora_logits_loss_and_gradients_match_peft() {
    let Some(gpu) = convrec_core::testing::gpu() else { return };
    for name in ["llama_gqa", "qwen2_gqa"] {
        let files = convrec::model_files::load_hf_folder(&fixture(name)).unwrap();
        let (layout, params) =
            convrec::adapter_files::load_adapter(&fixture(name).join("lora"), &files.config).unwrap();
        let model = GpuModel::upload(&gpu, files.config, files.tensors, 64).unwrap();
        let exp = Expected::load(fixture(name).join("lora/expected.safetensors"));
        let ids = exp.ids("input_ids");
        let k = exp.get("labels_from").1[0] as usize;

        // Logits with the adapter merged on the GPU.
        let merge = pollster::block_on(AdapterView::new(&gpu, &model, &layout)).unwrap();
        let pb = gpu.upload("test", "adapter", &params).unwrap();
        let mut b = gpu.batch("test");
        merge.record(&mut b, &layout, &pb).unwrap();
        pollster::block_on(b.submit()).unwrap();
        let got = pollster::block_on(sequence_logits(&gpu, &merge.model, &ids)).unwrap();
        let err = rel_err(&got, &exp.f32s("logits"));
        assert!(err <= 1e-4, "{name}: adapter logits {err:e}");

        // Loss and gradients through the unmerged adapter path.
        let (loss, grads) = pollster::block_on(lora_loss_and_grads(&gpu, &model, &layout, &params, &ids, k)).unwrap();
        let want_loss = exp.get("loss").1[0];
        assert!((loss - want_loss).abs() <= 1e-4 * want_loss.abs(), "{name}: loss {loss} vs peft {want_loss}");
        for f in &layout.factors {
            let want = exp.f32s(&format!("grad.{}", f.peft_key()));
            let err = rel_err(&grads[f.offset..f.offset + f.len()], &want);
            assert!(err <= 1e-3, "{name}: {} gradient rel. error {err:e}", f.peft_key());
        }
    }
}

/// An adapter convrec writes is one `peft` loads: `scripts/fixtures/peft_loads_convrec_adapter.py`
/// loaded the committed `lora_convrec/` folders with `PeftModel.from_pretrained` and recorded its
/// logits against the original PEFT adapter's (`peft_check.json`); this test checks that convrec
/// still writes exactly those files from the same parameters. `CONVREC_BLESS=1` rewrites them
/// (then rerun the script).
#[test]
fn adapters_convrec_writes_are_the_files_peft_was_checked_on() {
    let bless = std::env::var("CONVREC_BLESS").is_ok_and(|v| v == "1");
    for name in ["llama_gqa", "qwen2_gqa"] {
        let files = convrec::model_files::load_hf_folder(&fixture(name)).unwrap();
        let (layout, params) =
            convrec::adapter_files::load_adapter(&fixture(name).join("lora"), &files.config).unwrap();
        let committed = fixture(name).join("lora_convrec");
        if bless {
            convrec::adapter_files::save_adapter(&committed, &layout, &params, "..").unwrap();
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let written = dir.path().join("adapter");
        convrec::adapter_files::save_adapter(&written, &layout, &params, "..").unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            let (got, want) =
                (std::fs::read(written.join(file)).unwrap(), std::fs::read(committed.join(file)).unwrap());
            assert!(got == want, "{name}/{file}: convrec now writes different bytes than the file peft was checked on");
        }
        let check: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(committed.join("peft_check.json")).unwrap()).unwrap();
        let diff = check["max_abs_logit_diff_vs_peft_adapter"].as_f64().unwrap();
        assert!(diff <= 1e-5, "{name}: peft's logits with the convrec adapter differ by {diff}");
        assert_eq!(check["tensors_loaded"].as_u64().unwrap() as usize, layout.factors.len(), "{name}");
    }
}

/// Mixed precision (`--precision mixed`: f16 operands on tensor cores, f32 accumulation) against
/// the same transformers / peft fixtures, at the bounds measured on lavapipe's 8×8 tiles
/// (docs/PRECISION.md): f16 rounding of the operands, nothing more.
#[test]
fn mixed_precision_stays_near_transformers_and_peft() {
    let Some(gpu) = convrec_core::testing::gpu_with_tensor_cores() else { return };
    for name in MODELS {
        let model = load_model(&gpu, name);
        let exp = Expected::load(fixture(name).join("expected.safetensors"));
        let got = pollster::block_on(sequence_logits(&gpu, &model, &exp.ids("input_ids"))).unwrap();
        let err = rel_err(&got, &exp.f32s("logits"));
        eprintln!("{name}: mixed-precision logits rel. error {err:.2e}");
        assert!(err <= MIXED_LOGITS, "{name}: ‖ours − HF‖/‖HF‖ = {err:e} > {MIXED_LOGITS:e}");
    }
    for name in ["llama_gqa", "qwen2_gqa"] {
        let files = convrec::model_files::load_hf_folder(&fixture(name)).unwrap();
        let (layout, params) =
            convrec::adapter_files::load_adapter(&fixture(name).join("lora"), &files.config).unwrap();
        let model = GpuModel::upload(&gpu, files.config, files.tensors, 64).unwrap();
        let exp = Expected::load(fixture(name).join("lora/expected.safetensors"));
        let k = exp.get("labels_from").1[0] as usize;
        let (loss, grads) =
            pollster::block_on(lora_loss_and_grads(&gpu, &model, &layout, &params, &exp.ids("input_ids"), k)).unwrap();
        let want_loss = exp.get("loss").1[0];
        let loss_err = (loss - want_loss).abs() / want_loss.abs();
        let grad_err = layout
            .factors
            .iter()
            .map(|f| rel_err(&grads[f.offset..f.offset + f.len()], &exp.f32s(&format!("grad.{}", f.peft_key()))))
            .fold(0.0, f64::max);
        eprintln!("{name}: mixed-precision loss rel. error {loss_err:.2e}, worst gradient rel. error {grad_err:.2e}");
        assert!(loss_err <= MIXED_LOSS, "{name}: loss {loss} vs peft {want_loss}");
        assert!(grad_err <= MIXED_GRADS, "{name}: worst LoRA gradient rel. error {grad_err:e}");
    }
    assert!(!pollster::block_on(gpu.take_f16_overflow()).unwrap(), "the fixtures fit f16");
}

const MIXED_LOGITS: f64 = 5e-3; // measured 6.5e-4–1.2e-3
const MIXED_LOSS: f64 = 1e-3; // measured 1.7e-5–1.8e-4
const MIXED_GRADS: f64 = 1e-2; // measured 2.9e-3–3.3e-3
