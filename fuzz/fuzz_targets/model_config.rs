//! Hugging Face `config.json` on arbitrary text: never a panic; what parses passes the shared
//! checks, so the tensor list and parameter count it implies stay small enough to build.
#![no_main]

use convrec_core::model::ModelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = ModelConfig::from_hf_json(&String::from_utf8_lossy(data)) else { return };
    assert!(config.check(&|f| f.hf_name().to_string()).is_ok());
    assert!(config.parameter_count() <= 1 << 40);
    assert!(config.num_layers <= 1024, "the tensor list stays buildable");
});
