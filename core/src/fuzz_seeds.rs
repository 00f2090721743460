//! The fuzz targets' seed corpora (`fuzz/seeds/<target>/`), made from the test fixtures and kept
//! small (a few KiB each). The test checks that the committed files are what the fixtures give —
//! `CONVREC_WRITE_SEEDS=1` rewrites them — and that every seed loads, so each fuzz run starts from
//! valid inputs of its kind and mutates from there.

use std::path::{Path, PathBuf};

use crate::model::gguf::GgufModel;
use crate::model::safetensors_io::read_tensors;
use crate::model::text::ChatText;
use crate::model::tokenizer::from_hf_files;
use crate::model::{Architecture, ModelConfig};
use crate::rec::{parse_completion, parse_dataset};
use crate::testing::{byte_level_tokenizer_json, fuzz_join, fuzz_parts};
use crate::train::lora::{LoraConfig, LoraLayout, Target};
use crate::train::peft::{from_peft, to_peft};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = root().join("tests/fixtures").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Some tensors of a fixture's weights, re-serialised in their own types.
fn some_tensors(rel: &str, keep: impl Fn(&str) -> bool, at_most: usize) -> Vec<u8> {
    let bytes = fixture(rel);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().filter(|n| keep(n)).map(str::to_string).collect();
    names.sort();
    names.truncate(at_most);
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        names.into_iter().map(|n| (n.clone(), st.tensor(&n).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

/// An adapter for the `qwen2_gqa` fixture at a small rank (its own adapter is 34 KiB).
fn adapter(r: usize, targets: Vec<Target>) -> Vec<u8> {
    let model =
        ModelConfig::from_hf_json(&String::from_utf8(fixture("models/qwen2_gqa/config.json")).unwrap()).unwrap();
    let layout = LoraLayout::new(&model, LoraConfig { r, alpha: 8.0, targets });
    let params: Vec<f32> = (0..layout.len).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let (cfg, weights) = to_peft(&layout, &params, "qwen2_gqa").unwrap();
    fuzz_join(&[cfg.as_bytes(), &weights])
}

/// A tokenizer input: tokenizer.json, tokenizer_config.json, chat_template.jinja.
fn tokenizer(config: &str, jinja: &str) -> Vec<u8> {
    fuzz_join(&[byte_level_tokenizer_json(320).as_bytes(), config.as_bytes(), jinja.as_bytes()])
}

/// Reddit-v2 rows of the Arrow fixture as JSONL.
fn rows(split_file: &str, n: usize) -> (String, Vec<crate::rec::Row>) {
    let rows = crate::rec::arrow::parse_arrow(split_file, &fixture(&format!("reddit_v2_arrow/{split_file}"))).unwrap();
    let rows: Vec<_> = rows.into_iter().take(n).collect();
    (crate::rec::movielens::to_jsonl(rows.iter()), rows)
}

/// (target, file name, contents).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::model::chat::builtin::{QWEN2_5, SMOLLM2};
    use crate::model::gguf::tests::tiny_model;
    let mut out = vec![
        ("gguf", "tiny_llama.gguf".into(), tiny_model(Architecture::Llama, true).bytes()),
        ("gguf", "tiny_qwen2.gguf".into(), tiny_model(Architecture::Qwen2, false).bytes()),
        (
            "safetensors",
            "bf16_norms.safetensors".into(),
            some_tensors("models/llama_hd32_bf16/model.safetensors", |n| n.ends_with("norm.weight"), 2),
        ),
        (
            "safetensors",
            "f32_biases.safetensors".into(),
            some_tensors("models/qwen2_gqa/model.safetensors", |n| n.ends_with("bias"), 3),
        ),
        ("adapter", "r1_all.bin".into(), adapter(1, Target::ALL.to_vec())),
        ("adapter", "r2_q_v.bin".into(), adapter(2, vec![Target::QProj, Target::VProj])),
        (
            "tokenizer",
            "config_template.bin".into(),
            tokenizer(
                &serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": SMOLLM2})
                    .to_string(),
                "",
            ),
        ),
        ("tokenizer", "jinja_template.bin".into(), tokenizer(r#"{"eos_token": "<|endoftext|>"}"#, QWEN2_5)),
    ];
    for name in ["llama_gqa", "llama_tied_mha", "qwen2_gqa"] {
        out.push(("model_config", format!("{name}.json"), fixture(&format!("models/{name}/config.json"))));
    }
    let (train, train_rows) = rows("train/data-00000-of-00002.arrow", 2);
    let (test, _) = rows("test/data-00000-of-00001.arrow", 2);
    out.push(("jsonl_rows", "train.jsonl".into(), train.into_bytes()));
    out.push(("jsonl_rows", "test.jsonl".into(), test.into_bytes()));
    for (i, row) in train_rows.iter().enumerate() {
        let text = row.completion.as_ref().and_then(|c| c.scored_text()).unwrap_or_default();
        out.push(("parse_completion", format!("completion_{i}.txt"), text.as_bytes().to_vec()));
    }
    out
}

/// Each seed is what its target reads successfully.
fn loads(target: &str, bytes: &[u8]) -> bool {
    let config = || ModelConfig::from_hf_json(&String::from_utf8(fixture("models/qwen2_gqa/config.json")).unwrap());
    match target {
        "gguf" => GgufModel::from_bytes(bytes).is_ok_and(|m| ChatText::from_gguf(m).is_ok()),
        "safetensors" => read_tensors(bytes, "seed").is_ok_and(|t| !t.is_empty()),
        "model_config" => ModelConfig::from_hf_json(std::str::from_utf8(bytes).unwrap()).is_ok(),
        "adapter" => {
            let [cfg, weights] = fuzz_parts(bytes, 2)[..] else { return false };
            from_peft(&config().unwrap(), std::str::from_utf8(cfg).unwrap(), weights).is_ok()
        }
        "tokenizer" => {
            let [tok, cfg, jinja] = fuzz_parts(bytes, 3)[..] else { return false };
            let jinja = (!jinja.is_empty()).then(|| std::str::from_utf8(jinja).unwrap());
            from_hf_files(tok, Some(cfg), jinja).is_ok_and(|t| {
                ChatText::new(t.tokenizer, t.special, t.chat_template.as_deref(), &config().unwrap()).is_ok()
            })
        }
        "jsonl_rows" => parse_dataset("seed", std::str::from_utf8(bytes).unwrap()).is_ok_and(|r| !r.is_empty()),
        "parse_completion" => !parse_completion(std::str::from_utf8(bytes).unwrap()).is_empty(),
        other => panic!("no loader for target {other}"),
    }
}

#[test]
fn fuzz_seeds_are_the_fixtures_and_load() {
    let write = std::env::var_os("CONVREC_WRITE_SEEDS").is_some();
    let dir = root().join("fuzz/seeds");
    let seeds = seeds();
    for (target, name, bytes) in &seeds {
        assert!(bytes.len() <= 16 << 10, "{target}/{name} is {} bytes: keep seeds small", bytes.len());
        assert!(loads(target, bytes), "{target}/{name} does not load");
        let path = dir.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(&committed == bytes, "{} is stale: CONVREC_WRITE_SEEDS=1 rewrites it", path.display());
        }
    }
    // No seed left over from a fixture that is gone.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let target_dir = entry.unwrap().path();
        for file in std::fs::read_dir(&target_dir).unwrap() {
            let path = file.unwrap().path();
            let (target, name) = (target_dir.file_name().unwrap().to_str().unwrap(), path.file_name().unwrap());
            assert!(
                seeds.iter().any(|(t, n, _)| *t == target && n.as_str() == name),
                "{} is not made from a fixture",
                path.display()
            );
        }
    }
}

#[test]
fn fuzz_parts_split_what_fuzz_join_wrote_and_anything_else() {
    let joined = fuzz_join(&[b"ab", b"", b"cde"]);
    assert_eq!(fuzz_parts(&joined, 3), [&b"ab"[..], b"", b"cde"]);
    assert_eq!(fuzz_parts(b"\xff\xff\xff\xffxy", 2), [&b"xy"[..], b""], "a length past the end");
    assert_eq!(fuzz_parts(b"", 3), [&b""[..], b"", b""]);
}
