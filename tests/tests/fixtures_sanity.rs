//! The model parity fixtures (`tests/fixtures/models/`, made by
//! `scripts/fixtures/make_model_fixtures.py`) are present and well-formed: every config parses, the
//! weights cover `ModelConfig::expected_tensors()` with the right shapes, and the expected outputs
//! and LoRA files hold the documented tensors with consistent shapes. The parity tests read them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use convrec_core::model::{Architecture, ModelConfig};
use convrec_tests::workspace_root;
use safetensors::{Dtype, SafeTensors};

/// One fixture model as the README describes it.
struct Fixture {
    name: &'static str,
    architecture: Architecture,
    weights: Dtype,
    sharded: bool,
    lora: bool,
    tied: bool,
    rope_theta: f32,
    heads: (usize, usize, usize), // attention heads, key/value heads, head_dim
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "llama_gqa",
        architecture: Architecture::Llama,
        weights: Dtype::F32,
        sharded: false,
        lora: true,
        tied: false,
        rope_theta: 10_000.0,
        heads: (4, 2, 16),
    },
    Fixture {
        name: "llama_tied_mha",
        architecture: Architecture::Llama,
        weights: Dtype::F32,
        sharded: false,
        lora: false,
        tied: true,
        rope_theta: 500_000.0,
        heads: (4, 4, 16),
    },
    Fixture {
        name: "llama_hd32_bf16",
        architecture: Architecture::Llama,
        weights: Dtype::BF16,
        sharded: false,
        lora: false,
        tied: false,
        rope_theta: 10_000.0,
        heads: (2, 1, 32),
    },
    Fixture {
        name: "qwen2_gqa",
        architecture: Architecture::Qwen2,
        weights: Dtype::F32,
        sharded: false,
        lora: true,
        tied: true,
        rope_theta: 1_000_000.0,
        heads: (4, 2, 16),
    },
    Fixture {
        name: "qwen2_sharded",
        architecture: Architecture::Qwen2,
        weights: Dtype::F32,
        sharded: true,
        lora: false,
        tied: false,
        rope_theta: 1_000_000.0,
        heads: (4, 1, 16),
    },
];

const GREEDY_NEW: usize = 8;
const LORA_R: usize = 4;
const LORA_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn models_dir() -> PathBuf {
    workspace_root().join("tests").join("fixtures").join("models")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!("{}: {e} (regenerate with python3 scripts/fixtures/make_model_fixtures.py)", path.display())
    })
}

fn read_text(path: &Path) -> String {
    String::from_utf8(read(path)).unwrap_or_else(|e| panic!("{}: not UTF-8: {e}", path.display()))
}

fn open<'a>(bytes: &'a [u8], path: &Path) -> SafeTensors<'a> {
    SafeTensors::deserialize(bytes).unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", path.display()))
}

/// Name -> (dtype, shape) of every tensor in a file.
fn layout(st: &SafeTensors, path: &Path) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let out: BTreeMap<_, _> = st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec()))).collect();
    assert!(!out.is_empty(), "{}: no tensors", path.display());
    out
}

fn config(f: &Fixture) -> (ModelConfig, serde_json::Value) {
    let path = models_dir().join(f.name).join("config.json");
    let text = read_text(&path);
    let config = ModelConfig::from_hf_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    (config, json)
}

/// The tensor `name`, checked to have `dtype` and `shape`, as raw little-endian bytes.
fn tensor<'a>(st: &'a SafeTensors, file: &str, name: &str, dtype: Dtype, shape: &[usize]) -> &'a [u8] {
    let view = st.tensor(name).unwrap_or_else(|_| panic!("{file}: no tensor {name}"));
    assert_eq!(view.dtype(), dtype, "{file}: {name} dtype");
    assert_eq!(view.shape(), shape, "{file}: {name} shape");
    view.data()
}

fn i64s(st: &SafeTensors, file: &str, name: &str, shape: &[usize]) -> Vec<i64> {
    let data = tensor(st, file, name, Dtype::I64, shape);
    data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn f32s(st: &SafeTensors, file: &str, name: &str, shape: &[usize]) -> Vec<f32> {
    let data = tensor(st, file, name, Dtype::F32, shape);
    let v: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert!(v.iter().all(|x| x.is_finite()), "{file}: {name} has non-finite values");
    v
}

fn shape_of(st: &SafeTensors, file: &str, name: &str) -> Vec<usize> {
    st.tensor(name).unwrap_or_else(|_| panic!("{file}: no tensor {name}")).shape().to_vec()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &x)| if x > row[best] { i } else { best })
}

#[test]
fn every_fixture_folder_is_listed_here() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(models_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", models_dir().display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = FIXTURES.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(on_disk, listed, "fixture folders on disk vs this test's list");
    assert!(models_dir().join("README.md").is_file());
}

#[test]
fn configs_parse_and_weights_cover_the_expected_tensors() {
    for f in FIXTURES {
        let dir = models_dir().join(f.name);
        let (c, _) = config(f);
        assert_eq!(c.architecture, f.architecture, "{}", f.name);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), f.heads, "{}", f.name);
        assert_eq!(c.tie_word_embeddings, f.tied, "{}", f.name);
        assert_eq!(c.rope_theta, f.rope_theta, "{}: rope_theta", f.name);
        assert_eq!(c.attention_bias, f.architecture == Architecture::Qwen2, "{}", f.name);
        assert!(c.eos_token_ids.contains(&2), "{}", f.name);

        // Every tensor of the checkpoint, with the file that holds it.
        let mut found: BTreeMap<String, (Dtype, Vec<usize>)> = BTreeMap::new();
        if f.sharded {
            assert!(!dir.join("model.safetensors").exists(), "{}: sharded but has model.safetensors", f.name);
            let index_path = dir.join("model.safetensors.index.json");
            let index: serde_json::Value = serde_json::from_str(&read_text(&index_path)).unwrap();
            let map = index["weight_map"].as_object().expect("weight_map");
            let shards: BTreeSet<&str> = map.values().map(|v| v.as_str().expect("shard name")).collect();
            assert!(shards.len() >= 2, "{}: {} shard(s)", f.name, shards.len());
            for shard in &shards {
                let path = dir.join(shard);
                let bytes = read(&path);
                for (name, info) in layout(&open(&bytes, &path), &path) {
                    assert_eq!(map.get(&name).and_then(|v| v.as_str()), Some(*shard), "{shard}: {name} vs the index");
                    assert!(found.insert(name.clone(), info).is_none(), "{name} in two shards");
                }
            }
            assert_eq!(found.len(), map.len(), "{}: index lists tensors no shard has", f.name);
        } else {
            let path = dir.join("model.safetensors");
            found = layout(&open(&read(&path), &path), &path);
        }

        let expected: BTreeMap<String, Vec<usize>> = c.expected_tensors().into_iter().collect();
        let names: BTreeSet<&String> = found.keys().collect();
        assert_eq!(names, expected.keys().collect(), "{}: tensor names", f.name);
        for (name, (dtype, shape)) in &found {
            assert_eq!(*dtype, f.weights, "{}: {name} dtype", f.name);
            assert_eq!(shape, &expected[name], "{}: {name} shape", f.name);
        }
    }
}

#[test]
fn expected_outputs_have_the_documented_tensors() {
    for f in FIXTURES {
        let (c, json) = config(f);
        let pad = json["pad_token_id"].as_i64().expect("pad_token_id");
        let v = c.vocab_size;
        let path = models_dir().join(f.name).join("expected.safetensors");
        let bytes = read(&path);
        let st = open(&bytes, &path);
        let file = format!("{}/expected.safetensors", f.name);
        let names: BTreeSet<String> = st.names().into_iter().map(str::to_string).collect();
        let documented = [
            "input_ids",
            "logits",
            "greedy_ids",
            "greedy_margins",
            "batch_input_ids",
            "batch_attention_mask",
            "batch_position_ids",
            "batch_logits",
        ];
        assert_eq!(names, documented.iter().map(|s| s.to_string()).collect(), "{file}: tensor names");

        let t = shape_of(&st, &file, "input_ids")[0];
        let ids = i64s(&st, &file, "input_ids", &[t]);
        assert!(t >= 2 && ids.iter().all(|&i| (0..v as i64).contains(&i)), "{file}: input_ids");
        let logits = f32s(&st, &file, "logits", &[t, v]);
        let greedy = i64s(&st, &file, "greedy_ids", &[GREEDY_NEW]);
        let eos: Vec<i64> = c.eos_token_ids.iter().map(|&e| e as i64).collect();
        assert!(greedy.iter().all(|&g| (0..v as i64).contains(&g) && !eos.contains(&g)), "{file}: greedy_ids");
        // The first greedy token is the argmax of the last prompt position.
        assert_eq!(argmax(&logits[(t - 1) * v..]) as i64, greedy[0], "{file}: greedy_ids[0] vs logits");
        let margins = f32s(&st, &file, "greedy_margins", &[GREEDY_NEW]);
        assert!(margins.iter().all(|&m| m > 0.0), "{file}: greedy_margins");

        let t2 = shape_of(&st, &file, "batch_input_ids")[1];
        let b_ids = i64s(&st, &file, "batch_input_ids", &[2, t2]);
        let mask = i64s(&st, &file, "batch_attention_mask", &[2, t2]);
        let pos = i64s(&st, &file, "batch_position_ids", &[2, t2]);
        f32s(&st, &file, "batch_logits", &[2, t2, v]);
        assert!(mask.contains(&0), "{file}: the batch case has no padding");
        for row in 0..2 {
            let r = row * t2..(row + 1) * t2;
            let (ids, mask, pos) = (&b_ids[r.clone()], &mask[r.clone()], &pos[r]);
            let pads = mask.iter().take_while(|&&m| m == 0).count();
            assert!(mask[pads..].iter().all(|&m| m == 1), "{file}: row {row} is not left-padded: {mask:?}");
            assert!(pads < t2, "{file}: row {row} is all padding");
            assert!(ids[..pads].iter().all(|&i| i == pad), "{file}: row {row} pads are not {pad}");
            assert!(ids[pads..].iter().all(|&i| (0..v as i64).contains(&i)), "{file}: row {row} ids");
            // cumsum(mask) - 1, then 1 at padded positions.
            let want: Vec<i64> = (0..t2).map(|j| if j < pads { 1 } else { (j - pads) as i64 }).collect();
            assert_eq!(pos, &want[..], "{file}: row {row} position ids");
        }
    }
}

#[test]
fn lora_fixtures_have_peft_keys_and_gradients() {
    for f in FIXTURES.iter().filter(|f| f.lora) {
        let (c, _) = config(f);
        let dir = models_dir().join(f.name).join("lora");
        let acfg: serde_json::Value = serde_json::from_str(&read_text(&dir.join("adapter_config.json"))).unwrap();
        assert_eq!(acfg["peft_type"], "LORA", "{}", f.name);
        assert_eq!(acfg["r"], LORA_R, "{}", f.name);
        assert_eq!(acfg["lora_alpha"], 8, "{}", f.name);
        assert_eq!(acfg["bias"], "none", "{}", f.name);
        assert_eq!(acfg["lora_dropout"], 0.0, "{}", f.name);
        assert_ne!(acfg["use_dora"], true, "{}", f.name);
        assert_ne!(acfg["use_rslora"], true, "{}", f.name);
        let targets: BTreeSet<&str> =
            acfg["target_modules"].as_array().expect("target_modules").iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(targets, LORA_TARGETS.into_iter().collect(), "{}", f.name);
        let base = acfg["base_model_name_or_path"].as_str().unwrap_or("");
        assert!(!base.starts_with('/'), "{}: base_model_name_or_path is a machine path", f.name);

        // PEFT key -> shape: lora_A is [r, in], lora_B is [out, r].
        let (h, ff) = (c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut want: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for l in 0..c.num_layers {
            for (module, din, dout) in [
                ("self_attn.q_proj", h, qd),
                ("self_attn.k_proj", h, kvd),
                ("self_attn.v_proj", h, kvd),
                ("self_attn.o_proj", qd, h),
                ("mlp.gate_proj", h, ff),
                ("mlp.up_proj", h, ff),
                ("mlp.down_proj", ff, h),
            ] {
                let p = format!("base_model.model.model.layers.{l}.{module}");
                want.insert(format!("{p}.lora_A.weight"), vec![LORA_R, din]);
                want.insert(format!("{p}.lora_B.weight"), vec![dout, LORA_R]);
            }
        }
        let path = dir.join("adapter_model.safetensors");
        let bytes = read(&path);
        let adapter = layout(&open(&bytes, &path), &path);
        assert_eq!(adapter.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{}: adapter keys", f.name);
        for (name, (dtype, shape)) in &adapter {
            assert_eq!((*dtype, shape), (Dtype::F32, &want[name]), "{}: {name}", f.name);
        }

        let path = dir.join("expected.safetensors");
        let bytes = read(&path);
        let st = open(&bytes, &path);
        let file = format!("{}/lora/expected.safetensors", f.name);
        let t = shape_of(&st, &file, "input_ids")[0];
        let ids = i64s(&st, &file, "input_ids", &[t]);
        assert!(ids.iter().all(|&i| (0..c.vocab_size as i64).contains(&i)), "{file}: input_ids");
        let k = i64s(&st, &file, "labels_from", &[])[0];
        assert!(k >= 1 && (k as usize) < t, "{file}: labels_from {k} with T = {t}");
        f32s(&st, &file, "logits", &[t, c.vocab_size]);
        let loss = f32s(&st, &file, "loss", &[])[0];
        assert!(loss > 0.0, "{file}: loss {loss}");
        let mut grads = BTreeSet::new();
        for name in st.names() {
            let Some(key) = name.strip_prefix("grad.") else {
                assert!(["input_ids", "labels_from", "logits", "loss"].contains(&name), "{file}: {name}");
                continue;
            };
            let shape = want.get(key).unwrap_or_else(|| panic!("{file}: {name} is not an adapter tensor"));
            let g = f32s(&st, &file, name, shape);
            assert!(g.iter().any(|&x| x != 0.0), "{file}: {name} is all zero");
            grads.insert(key.to_string());
        }
        assert_eq!(grads, want.keys().cloned().collect(), "{file}: a gradient per adapter tensor");
    }
}
