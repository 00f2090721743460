//! Tokenizer and chat-template loading from an HF folder's files (`tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`, joined as in
//! `convrec_core::testing::fuzz_join`): never a panic or a hang; what loads renders a
//! conversation, encodes it and decodes the ids.
#![no_main]

use convrec_core::model::ModelConfig;
use convrec_core::model::chat::Message;
use convrec_core::model::text::ChatText;
use convrec_core::model::tokenizer::from_hf_files;
use convrec_core::testing::fuzz_parts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, even one `from_hf_files` contains and returns as an
    // error (the `tokenizers` crate's own `expect`s). Its default hook back: a contained panic is
    // printed and the run goes on; one that escapes still aborts (libfuzzer-sys catches it).
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    let [tokenizer, config, jinja] = fuzz_parts(data, 3)[..] else { unreachable!() };
    let jinja = String::from_utf8_lossy(jinja);
    let config = (!config.is_empty()).then_some(config);
    let Ok(loaded) = from_hf_files(tokenizer, config, (!jinja.is_empty()).then_some(&*jinja)) else { return };
    let model = ModelConfig::from_hf_json(include_str!("../../tests/fixtures/models/llama_gqa/config.json"))
        .expect("the fixture's config");
    let Ok(text) = ChatText::new(loaded.tokenizer, loaded.special, loaded.chat_template.as_deref(), &model) else {
        return;
    };
    let messages = [Message::system("Recommend films."), Message::user("Something like Alien (1979)?")];
    if let Ok(ids) = text.prompt_ids(&messages) {
        let _ = text.decode(&ids);
        let _ = text.token_texts(&ids[..ids.len().min(8)]);
    }
});
