//! Scaled RoPE against `transformers`: tiny random models with Llama 3, linear, dynamic and YaRN
//! scaling (`scripts/fixtures/make_rope_fixtures.py`, `tests/fixtures/rope/`), over 100 positions —
//! past each scheme's original context, so every frequency band is used.

use std::path::PathBuf;

use convrec_core::model::RopeScaling;
use convrec_core::model::gpu::{GpuModel, sequence_logits};
use convrec_core::model::safetensors_io::read_numbers;
use convrec_core::numeric::rel_err;

fn fixture(name: &str) -> PathBuf {
    convrec_tests::workspace_root().join("tests/fixtures/rope").join(name)
}

/// The fixture's model, the input ids and transformers' logits.
fn load(name: &str) -> (convrec::model_files::ModelFiles, Vec<u32>, Vec<f32>) {
    let files = convrec::model_files::load_hf_folder(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let path = fixture(name).join("expected.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let get = |t: &str| read_numbers(&bytes, &path.display().to_string(), t).unwrap().1;
    let ids = get("input_ids").into_iter().map(|x| x as u32).collect();
    let logits = get("logits").into_iter().map(|x| x as f32).collect();
    (files, ids, logits)
}

#[test]
fn scaled_rope_logits_match_transformers() {
    let Some(gpu) = convrec_core::testing::gpu() else { return };
    for (name, scaled) in [("llama3", true), ("linear", true), ("yarn_qwen2", true), ("dynamic", false)] {
        let (files, ids, want) = load(name);
        assert_ne!(files.config.rope_scaling, RopeScaling::None, "{name}: the scaling was not read");
        let logits = |config: convrec_core::model::ModelConfig| {
            let model = GpuModel::upload(&gpu, config, files.tensors.clone(), 128).unwrap();
            pollster::block_on(sequence_logits(&gpu, &model, &ids)).unwrap()
        };
        let err = rel_err(&logits(files.config.clone()), &want);
        eprintln!("{name}: {:?}: logits rel. error {err:.2e}", files.config.rope_scaling);
        assert!(err <= 1e-4, "{name}: ‖ours − HF‖/‖HF‖ = {err:e}");
        // The same weights with plain RoPE: the scaling must matter (dynamic NTK within the
        // trained context is plain RoPE, in transformers too).
        let plain = convrec_core::model::ModelConfig { rope_scaling: RopeScaling::None, ..files.config.clone() };
        let plain_err = rel_err(&logits(plain), &want);
        if scaled {
            assert!(plain_err > 1e-2, "{name}: plain RoPE is as close ({plain_err:e}): the fixture tests nothing");
        } else {
            assert!(plain_err <= 1e-4, "{name}: {plain_err:e}");
        }
    }
}

#[test]
fn dynamic_rope_past_the_trained_context_is_refused() {
    let Some(gpu) = convrec_core::testing::gpu() else { return };
    let (files, _, _) = load("dynamic");
    let err = GpuModel::upload(&gpu, files.config, files.tensors, 200).err().expect("refused").to_string();
    assert!(err.contains("dynamic RoPE") && err.contains("128"), "{err}");
}
