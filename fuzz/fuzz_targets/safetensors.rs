//! The safetensors reader (model weights, adapters) on arbitrary bytes: never a panic; what loads
//! is finite and as long as its shape says.
#![no_main]

use convrec_core::model::safetensors_io::read_tensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = read_tensors(data, "fuzz.safetensors") else { return };
    for (name, t) in &tensors {
        assert_eq!(t.len(), t.shape.iter().product::<usize>(), "{name}");
        assert!(t.first_non_finite().is_none(), "{name}");
    }
});
