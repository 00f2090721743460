//! The GGUF loader (reader, configuration, tokenizer, tensors) on arbitrary bytes: never a panic,
//! a hang or an allocation the file cannot justify; what loads is a model convrec can size (its
//! configuration passes the shared checks, every weight is finite and as long as its shape).
#![no_main]

use convrec_core::model::gguf::GgufModel;
use convrec_core::model::text::ChatText;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = GgufModel::from_bytes(data) else { return };
    assert!(model.config.check(&|f| f.gguf_key().to_string()).is_ok(), "{:?}", model.config);
    for (name, t) in &model.tensors {
        assert_eq!(t.len(), t.shape.iter().product::<usize>(), "{name}");
        assert!(t.first_non_finite().is_none(), "{name}");
    }
    let _ = ChatText::from_gguf(model);
});
