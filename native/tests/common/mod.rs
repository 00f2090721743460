//! What the CLI training tests share: a tiny model folder the commands accept (a random fixture
//! model with a hand-made byte-level tokenizer and ChatML special tokens), a dataset in the
//! Reddit-v2 schema with its catalog, and helpers to run `convrec` and read its outputs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

/// The fixture model the folders copy: Llama, vocab 320, 2 layers, hidden 64, 128 positions.
pub const FIXTURE: &str = "llama_gqa";
/// Its vocabulary size (the tokenizer fills exactly this many ids).
pub const VOCAB: usize = 320;
/// Ids of the special tokens after the 256 byte tokens.
pub const ENDOFTEXT: u32 = 256;
pub const IM_START: u32 = 257;
pub const IM_END: u32 = 258;

/// The `convrec` binary, started through `CONVREC_TEST_RUNNER` when that is set: the same hook
/// as cargo's `target.<triple>.runner`, for the CI stage that runs the tensor-core tests on a
/// newer lavapipe under its own C library (`.ci/tensor-cores`).
pub fn convrec() -> Command {
    let binary = env!("CARGO_BIN_EXE_convrec");
    match std::env::var_os("CONVREC_TEST_RUNNER").filter(|r| !r.is_empty()) {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// A fresh folder for one test's files.
pub fn scratch(group: &str, test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(group).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}

/// The byte-level tokenizer of `convrec_core::testing` at the fixture's vocabulary size.
pub fn tokenizer_json() -> String {
    convrec_core::testing::byte_level_tokenizer_json(VOCAB)
}

/// `dir/model`: the fixture's config and weights with the tokenizer above. No chat template:
/// the built-in ChatML applies (`<|im_start|>` and `<|im_end|>` are tokens), and `<|im_end|>`
/// ends a turn.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(FIXTURE);
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), model.join(f)).unwrap_or_else(|e| panic!("copying {f}: {e}"));
    }
    std::fs::write(model.join("tokenizer.json"), tokenizer_json()).unwrap();
    std::fs::write(
        model.join("tokenizer_config.json"),
        json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}).to_string(),
    )
    .unwrap();
    model
}

/// [`tiny_model`] with every weight stored in bf16, as Hub checkpoints are published.
pub fn tiny_model_bf16(dir: &Path) -> PathBuf {
    let model = tiny_model(dir);
    let files = convrec::model_files::load_hf_folder(&model).expect("the f32 fixture");
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = files
        .tensors
        .iter()
        .map(|(name, t)| {
            let bits = t.to_f32().into_iter().flat_map(|x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect();
            (name.clone(), t.shape.clone(), bits)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(name, shape, b)| {
            (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(model.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    model
}

/// The catalog: `title<TAB>year` with a header.
pub const CATALOG: [(&str, i32); 6] =
    [("Up", 2009), ("Heat", 1995), ("Jaws", 1975), ("Alien", 1979), ("Big", 1988), ("Fargo", 1996)];

pub fn write_catalog(path: &Path) {
    let mut text = String::from("title\tyear\n");
    for (t, y) in CATALOG {
        text.push_str(&format!("{t}\t{y}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// `n` rows in the Reddit-v2 schema: a short user turn, a one-item completion and its ground truth
/// (both the completion's item, so imitating it is rewarded).
pub fn write_dataset(path: &Path, n: usize) {
    let mut text = String::new();
    for i in 0..n {
        let (seen, _) = CATALOG[i % CATALOG.len()];
        let (title, year) = CATALOG[(i + 1) % CATALOG.len()];
        let row = json!({
            "sample_id": format!("train_{i}"),
            "prompt": [{"role": "user", "content": format!("Liked {seen}. More?")}],
            "completion": [{"role": "assistant", "content": format!("{title} ({year})")}],
            "seen_titles": [seen],
            "groundtruth_with_release_year": [[title, year.to_string()]],
        });
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// `dir/sft/adapter`: an SFT adapter (r 4) that memorised `dir/train.jsonl` (`epochs` passes in
/// micro-batches of `batch_size`), so that samples of the rows are rewarded.
pub fn memorising_sft(dir: &Path, epochs: usize, batch_size: usize) {
    run_ok(
        convrec()
            .current_dir(dir)
            .args(["sft", "--model", "model", "--data", "train.jsonl", "--out", "sft"])
            .args(["--epochs", &epochs.to_string(), "--batch-size", &batch_size.to_string()])
            .args(["--lora-r", "4", "--lora-alpha", "8", "--lr", "2e-2", "--max-length", "64", "--save-every", "1000"]),
    );
}

/// Runs a command and fails the test with its stderr unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run convrec");
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// The JSON lines of a file.
pub fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad JSON line {l:?}: {e}", path.display())))
        .collect()
}

/// An adapter folder's layout and parameters, read as `convrec` reads them.
pub fn load_adapter(
    model: &Path,
    dir: &Path,
) -> (convrec_core::train::lora::LoraLayout, Vec<f32>, convrec_core::model::ModelConfig) {
    let config = convrec::model_files::load_hf_folder(model).expect("the model folder").config;
    let (layout, params) = convrec::adapter_files::load_adapter(dir, &config)
        .unwrap_or_else(|e| panic!("loading the adapter in {}: {e:#}", dir.display()));
    (layout, params, config)
}
