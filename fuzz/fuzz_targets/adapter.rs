//! PEFT adapters (`adapter_config.json` + `adapter_model.safetensors`, joined as in
//! `convrec_core::testing::fuzz_join`) for the `qwen2_gqa` fixture model: never a panic or an
//! allocation past what the model's dimensions allow; what loads has finite parameters laid out
//! for that model.
#![no_main]

use convrec_core::model::ModelConfig;
use convrec_core::testing::fuzz_parts;
use convrec_core::train::peft::from_peft;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let model = ModelConfig::from_hf_json(include_str!("../../tests/fixtures/models/qwen2_gqa/config.json"))
        .expect("the fixture's config");
    let [config, weights] = fuzz_parts(data, 2)[..] else { unreachable!() };
    let Ok((layout, params)) = from_peft(&model, &String::from_utf8_lossy(config), weights) else { return };
    assert_eq!(params.len(), layout.len);
    assert!(params.iter().all(|p| p.is_finite()));
    assert!(layout.config.check(&model).is_ok());
});
