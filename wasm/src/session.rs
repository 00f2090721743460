//! A loaded model in the page's worker: the WebGPU device, the weights on it (with an adapter
//! merged in, if one was given), the text side and an optional catalog. Recommend and Evaluate
//! call the same core code as `convrec generate`/`convrec eval`.
//!
//! wasm-bindgen futures must not borrow `self`, so the state sits behind an `Rc` and each async
//! method returns a `Promise` that owns a clone of it.

use std::cell::RefCell;
use std::rc::Rc;

use convrec_core::model::ModelConfig;
use convrec_core::model::chat::Message;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gguf::GgufModel;
use convrec_core::model::gguf::reader::GgufFile;
use convrec_core::model::gpu::GpuModel;
use convrec_core::model::safetensors_io::read_tensors;
use convrec_core::model::text::ChatText;
use convrec_core::model::tokenizer::from_hf_files;
use convrec_core::ops::decode::SamplingConfig;
use convrec_core::rec::evaluation::{EvalOptions, evaluate_rows};
use convrec_core::rec::{Catalog, conversation_prompt, parse_completion, parse_dataset};
use convrec_core::train::adapter_view::{AdapterMode, AdapterView};
use convrec_core::train::lora::LoraLayout;
use convrec_core::train::peft::{from_peft, to_peft};
use convrec_core::{Gpu, GpuOptions};
use serde_json::json;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::js_err;
use crate::training::{RlSettings, SftSettings, Training, start_rl, start_sft};

/// Positions prepared for RoPE: the model's own limit, capped (the tables are small, but a 128k
/// limit would still cost memory for nothing in a demo).
const MAX_POSITIONS: usize = 4096;

struct State {
    gpu: Gpu,
    base: GpuModel,
    merged: Option<AdapterView>,
    text: ChatText,
    config: ModelConfig,
    model_name: String,
    /// The current adapter: loaded with the model, or trained in the page.
    lora: Option<(LoraLayout, Vec<f32>)>,
    catalog: Option<(String, Catalog)>,
    training: Option<Training>,
}

impl State {
    fn model(&self) -> &GpuModel {
        self.merged.as_ref().map_or(&self.base, |m| &m.model)
    }

    fn adapter_summary(&self) -> Option<serde_json::Value> {
        self.lora.as_ref().map(|(layout, params)| {
            json!({"r": layout.config.r, "alpha": layout.config.alpha,
                "targets": layout.config.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
                "parameters": params.len()})
        })
    }
}

#[wasm_bindgen]
pub struct Session {
    state: Rc<RefCell<State>>,
}

/// The files of a model, as the page read them (from the server or a file picker).
#[wasm_bindgen]
#[derive(Default)]
pub struct ModelFiles {
    name: String,
    gguf: Option<Vec<u8>>,
    config_json: Option<String>,
    safetensors: Vec<(String, Vec<u8>)>,
    tokenizer_json: Option<Vec<u8>>,
    tokenizer_config_json: Option<Vec<u8>>,
    chat_template: Option<String>,
    adapter_config: Option<String>,
    adapter_weights: Option<Vec<u8>>,
}

#[wasm_bindgen]
impl ModelFiles {
    #[wasm_bindgen(constructor)]
    pub fn new(name: String) -> ModelFiles {
        ModelFiles { name, ..Default::default() }
    }

    /// Adds one file by its name: `*.gguf`, `config.json`, `*.safetensors`, `tokenizer.json`,
    /// `tokenizer_config.json`, `chat_template.jinja`, `adapter_config.json`,
    /// `adapter_model.safetensors` (adapter files are told apart by name).
    pub fn add(&mut self, file_name: &str, bytes: Vec<u8>) -> Result<(), JsValue> {
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| js_err(format!("{file_name} is not UTF-8 text")));
        match file_name {
            n if n.ends_with(".gguf") => self.gguf = Some(bytes),
            "adapter_config.json" => self.adapter_config = Some(text(bytes)?),
            "adapter_model.safetensors" => self.adapter_weights = Some(bytes),
            "config.json" => self.config_json = Some(text(bytes)?),
            "tokenizer.json" => self.tokenizer_json = Some(bytes),
            "tokenizer_config.json" => self.tokenizer_config_json = Some(bytes),
            "chat_template.jinja" => self.chat_template = Some(text(bytes)?),
            n if n.ends_with(".safetensors") => self.safetensors.push((n.to_string(), bytes)),
            other => return Err(js_err(format!("{other}: not a model or adapter file convrec reads"))),
        }
        Ok(())
    }
}

type Weights = (ModelConfig, convrec_core::model::NamedTensors, ChatText);

/// What the page's wasm32 memory can give a GGUF file and its weights as read together (quantised
/// blocks stay blocks; both are held while the tensors are read): the address space is 4 GiB, and
/// the code, the tokenizer and the allocator's slack need the rest.
const FILE_AND_WEIGHTS_BUDGET: u64 = 7 << 29; // 3.5 GiB

/// Refuses a file whose bytes and weights as read would not fit the page's memory beside each
/// other (an allocation past 4 GiB aborts the page's module instead of failing with a message).
fn fits_page_memory(name: &str, file_bytes: u64, kept: u64) -> Result<(), String> {
    if file_bytes + kept <= FILE_AND_WEIGHTS_BUDGET {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(format!(
        "{name}: the file ({:.1} GiB) and its weights as read ({:.1} GiB) need more than the {:.1} GiB a \
         browser's 4 GiB wasm32 memory can give them; use a smaller model here (or the native convrec)",
        gib(file_bytes),
        gib(kept),
        gib(FILE_AND_WEIGHTS_BUDGET)
    ))
}

fn read_model(files: &mut ModelFiles) -> Result<Weights, String> {
    if let Some(bytes) = files.gguf.take() {
        let file = GgufFile::parse(&bytes).map_err(|e| format!("{}: {e}", files.name))?;
        let kept: u64 = file.tensors.iter().map(convrec_core::model::gguf::kept_bytes).sum();
        fits_page_memory(&files.name, bytes.len() as u64, kept)?;
        let m = GgufModel::from_bytes(&bytes).map_err(|e| format!("{}: {e}", files.name))?;
        drop(bytes);
        return ChatText::from_gguf(m).map_err(|e| format!("{}: {e}", files.name));
    }
    let config_json = files.config_json.take().ok_or("neither a .gguf file nor config.json was given")?;
    let config = ModelConfig::from_hf_json(&config_json).map_err(|e| format!("config.json: {e}"))?;
    if files.safetensors.is_empty() {
        return Err("config.json without *.safetensors weights".into());
    }
    let mut tensors = Vec::new();
    files.safetensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, bytes) in std::mem::take(&mut files.safetensors) {
        tensors.extend(read_tensors(&bytes, &name).map_err(|e| e.to_string())?);
    }
    let tok_json = files.tokenizer_json.take().ok_or("an HF model needs tokenizer.json")?;
    let tok = from_hf_files(&tok_json, files.tokenizer_config_json.as_deref(), files.chat_template.as_deref())
        .map_err(|e| format!("tokenizer.json: {e}"))?;
    let text =
        ChatText::new(tok.tokenizer, tok.special, tok.chat_template.as_deref(), &config).map_err(|e| e.to_string())?;
    Ok((config, tensors, text))
}

async fn load(mut files: ModelFiles) -> Result<Session, String> {
    let (config, tensors, text) = read_model(&mut files)?;
    // Adapters unmerged over a 16-bit or quantised base: a tab's GPU memory stays near the base's.
    let options = GpuOptions { adapters: AdapterMode::lean_for(&tensors), ..GpuOptions::default() };
    let gpu = Gpu::new(&options).await.map_err(|e| e.to_string())?;
    let positions = config.max_position_embeddings.clamp(1, MAX_POSITIONS);
    let base = GpuModel::upload(&gpu, config.clone(), tensors, positions)
        .map_err(|e| format!("{} does not fit this adapter: {e}", files.name))?;
    let (merged, lora) = match (files.adapter_config.take(), files.adapter_weights.take()) {
        (Some(cfg), Some(weights)) => {
            let (layout, params) = from_peft(&config, &cfg, &weights).map_err(|e| format!("adapter: {e}"))?;
            let merge = AdapterView::apply(&gpu, &base, &layout, &params).await.map_err(|e| format!("adapter: {e}"))?;
            (Some(merge), Some((layout, params)))
        }
        (None, None) => (None, None),
        _ => return Err("an adapter needs both adapter_config.json and adapter_model.safetensors".into()),
    };
    let state = State { gpu, base, merged, text, config, model_name: files.name, lora, catalog: None, training: None };
    Ok(Session { state: Rc::new(RefCell::new(state)) })
}

fn call(f: &js_sys::Function, value: &serde_json::Value) {
    let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&value.to_string()));
}

// Recommend and evaluate hold a shared borrow of the state across their awaits: the page's worker
// runs one command at a time, and the only mutation (`set_catalog`) uses `try_borrow_mut` and
// answers "busy" instead of panicking.
#[allow(clippy::await_holding_refcell_ref)]
#[wasm_bindgen]
impl Session {
    /// Reads the model (and adapter) files, uploads the weights, merges the adapter. Resolves to
    /// a `Session`; rejects with a message naming the file and the problem.
    pub fn load(files: ModelFiles) -> js_sys::Promise {
        future_to_promise(async move { load(files).await.map(JsValue::from).map_err(js_err) })
    }

    /// JSON: the adapter (device, features, limits), the model's shape and the adapter's.
    pub fn info(&self) -> String {
        let s = self.state.borrow();
        let c = &s.config;
        json!({
            "adapter": s.gpu.summary(),
            "model": {"name": s.model_name, "architecture": format!("{:?}", c.architecture),
                "layers": c.num_layers, "hidden": c.hidden_size, "heads": c.num_heads,
                "kv_heads": c.num_kv_heads, "vocab": c.vocab_size},
            "lora": s.adapter_summary(),
            "catalog": s.catalog.as_ref().map(|(name, c)| json!({"name": name, "titles": c.len()})),
        })
        .to_string()
    }

    /// Sets the catalog (TSV `title<TAB>year` with a header, or a JSON list); returns its size.
    pub fn set_catalog(&self, name: &str, text: &str) -> Result<usize, JsValue> {
        let catalog = Catalog::parse(name, text).map_err(js_err)?;
        let n = catalog.len();
        let mut state = self.state.try_borrow_mut().map_err(|_| js_err("busy: wait for the running task to finish"))?;
        state.catalog = Some((name.to_string(), catalog));
        Ok(n)
    }

    /// Recommends for a typed conversation (wrapped as Reddit-v2 prompts are). `on_text` gets the
    /// text so far after every token; resolves to JSON `{text, items: [{title, year, in_catalog}],
    /// tokens, stopped}`. Temperature 0 is greedy.
    pub fn recommend(
        &self,
        conversation: String,
        temperature: f32,
        max_new_tokens: usize,
        seed: u32,
        on_text: js_sys::Function,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let s = state.borrow();
            let messages = [Message::user(conversation_prompt(&conversation))];
            let prompt = s.text.prompt_ids(&messages).map_err(js_err)?;
            let req = GenerateRequest {
                prompts: vec![prompt],
                num_samples: 1,
                first_sequence: 0,
                max_new_tokens,
                sampling: SamplingConfig { temperature, top_k: 0, top_p: 1.0, seed: seed as u64 },
                stop_ids: s.text.stop_ids.clone(),
            };
            let out = generate(&s.gpu, s.model(), &req, |_, so_far| {
                if let Ok(text) = s.text.decode(&so_far[0].tokens) {
                    call(&on_text, &json!(text));
                }
            })
            .await
            .map_err(js_err)?;
            let c = &out[0];
            let text = s.text.decode(&c.tokens).map_err(js_err)?;
            let items: Vec<_> = parse_completion(&text)
                .into_iter()
                .map(|i| {
                    let in_catalog = s.catalog.as_ref().map(|(_, cat)| cat.contains(&i.title, i.year));
                    json!({"title": i.title, "year": i.year, "in_catalog": in_catalog})
                })
                .collect();
            let result = json!({"text": text, "items": items, "tokens": c.tokens.len(), "stopped": c.stopped});
            Ok(JsValue::from_str(&result.to_string()))
        })
    }

    /// Evaluates rows in the Reddit-v2 schema (JSONL text; the first `limit` rows, 0 for all)
    /// against the catalog set before, greedily, as `convrec eval` does. `on_progress` gets
    /// `{prompts_done, prompts, step, max_steps}`; resolves to JSON `{summary, rows}` with the
    /// summary in `convrec eval`'s form.
    pub fn evaluate(
        &self,
        source: String,
        rows_jsonl: String,
        limit: usize,
        batch_size: usize,
        max_new_tokens: usize,
        on_progress: js_sys::Function,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let s = state.borrow();
            let (_, catalog) = s.catalog.as_ref().ok_or_else(|| js_err("set a catalog before evaluating"))?;
            let mut rows = parse_dataset(&source, &rows_jsonl).map_err(js_err)?;
            if limit > 0 {
                rows.truncate(limit);
            }
            let options = EvalOptions { batch_size, max_new_tokens, ..Default::default() };
            let eval =
                evaluate_rows(&s.gpu, s.model(), &s.text, &rows, catalog, &options, |p| call(&on_progress, &json!(p)))
                    .await
                    .map_err(js_err)?;
            let result = json!({"summary": eval.summary.to_json(), "rows": eval.rows});
            Ok(JsValue::from_str(&result.to_string()))
        })
    }

    /// Starts an SFT run (a new adapter on the base model) on rows in the Reddit-v2 schema with
    /// `settings` (JSON, see `training::SftSettings`). Resolves to `{stage, rows, steps, parameters}`.
    pub fn start_sft(&self, source: String, rows_jsonl: String, settings: String) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let settings: SftSettings =
                serde_json::from_str(&settings).map_err(|e| js_err(format!("SFT settings: {e}")))?;
            let rows = parse_dataset(&source, &rows_jsonl).map_err(js_err)?;
            let mut s = state.try_borrow_mut().map_err(|_| js_err("busy: wait for the running task to finish"))?;
            s.training = None; // a new run frees the last one's buffers first
            let (training, info) =
                start_sft(&s.gpu, &s.config, &s.text, &source, rows, &settings).await.map_err(train_err)?;
            s.training = Some(training);
            Ok(JsValue::from_str(&info.to_string()))
        })
    }

    /// Starts an RL run from the current adapter (loaded, or the page's SFT result) on rows with
    /// ground truth, scored against the catalog; `settings` is JSON (see `training::RlSettings`).
    /// Resolves to `{stage, algo, prompts, max_new_tokens, steps_per_epoch, parameters}`.
    pub fn start_rl(&self, source: String, rows_jsonl: String, settings: String) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let settings: RlSettings =
                serde_json::from_str(&settings).map_err(|e| js_err(format!("RL settings: {e}")))?;
            let rows = parse_dataset(&source, &rows_jsonl).map_err(js_err)?;
            let mut s = state.try_borrow_mut().map_err(|_| js_err("busy: wait for the running task to finish"))?;
            if s.catalog.is_none() {
                return Err(js_err("RL scores lists against a catalog: set one first"));
            }
            let Some((layout, params)) = s.lora.clone() else {
                return Err(js_err("RL starts from an adapter: load one with the model, or run SFT first"));
            };
            // The trainer merges its own copy; the session's merged model would double the memory.
            s.training = None;
            s.merged = None;
            let (training, info) = start_rl(&s.gpu, &s.base, &s.text, &source, rows, (&layout, &params), &settings)
                .await
                .map_err(train_err)?;
            s.training = Some(training);
            Ok(JsValue::from_str(&info.to_string()))
        })
    }

    /// One optimiser step of the running SFT or RL run; resolves to the step's statistics (JSON:
    /// SFT `{step, loss, lr, grad_norm, …, done}`, RL the fields of a `convrec train` metrics line
    /// plus `mean_reward`).
    pub fn train_step(&self) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut guard = state.try_borrow_mut().map_err(|_| js_err("busy: wait for the running task to finish"))?;
            let s = &mut *guard;
            let training = s.training.as_mut().ok_or_else(|| js_err("start an SFT or RL run first"))?;
            let catalog = s.catalog.as_ref().map(|(_, c)| c);
            let out = training.step(&s.gpu, &s.base, &s.text, catalog, &crate::now_secs).await.map_err(train_err)?;
            Ok(JsValue::from_str(&out.to_string()))
        })
    }

    /// Ends the running run: its adapter becomes the session's (merged for Recommend and
    /// Evaluate, and what `adapter_files` returns). Resolves to the adapter's summary.
    pub fn finish_training(&self) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut s = state.try_borrow_mut().map_err(|_| js_err("busy: wait for the running task to finish"))?;
            let training = s.training.take().ok_or_else(|| js_err("no run to finish"))?;
            let (layout, params) = training.adapter(&s.gpu).await.map_err(train_err)?;
            drop(training);
            s.merged = None;
            let merge = AdapterView::apply(&s.gpu, &s.base, &layout, &params).await.map_err(js_err)?;
            s.merged = Some(merge);
            s.lora = Some((layout, params));
            Ok(JsValue::from_str(&s.adapter_summary().unwrap_or_default().to_string()))
        })
    }

    /// The current adapter as PEFT files: `adapter_config.json` (text).
    pub fn adapter_config(&self) -> Result<String, JsValue> {
        Ok(self.peft_files()?.0)
    }

    /// The current adapter as PEFT files: `adapter_model.safetensors` (bytes).
    pub fn adapter_weights(&self) -> Result<Vec<u8>, JsValue> {
        Ok(self.peft_files()?.1)
    }
}

impl Session {
    fn peft_files(&self) -> Result<(String, Vec<u8>), JsValue> {
        let s = self.state.try_borrow().map_err(|_| js_err("busy: wait for the running task to finish"))?;
        let (layout, params) = s.lora.as_ref().ok_or_else(|| js_err("no adapter: load one or train one"))?;
        to_peft(layout, params, &s.model_name).map_err(js_err)
    }
}

/// A training error in words, saying when the model does not fit the adapter's limits.
fn train_err(e: convrec_core::train::TrainError) -> JsValue {
    use convrec_core::gpu::GpuError;
    use convrec_core::model::gpu::ModelError;
    use convrec_core::train::TrainError;
    match e {
        TrainError::Gpu(g @ GpuError::TooLarge { .. })
        | TrainError::Model(ModelError::Gpu(g @ GpuError::TooLarge { .. })) => {
            js_err(format!("this model is too large to train on this adapter in the browser: {g}"))
        }
        other => js_err(other),
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama_gqa");
        std::fs::read(root.join(name)).unwrap()
    }

    fn add(files: &mut ModelFiles, name: &str, bytes: Vec<u8>) {
        // `add` only builds a JsValue on error, which cannot exist off wasm: unwrap the Ok path.
        assert!(files.add(name, bytes).is_ok(), "{name}");
    }

    /// Sizes of Q4_K_M files: Qwen2.5-Coder-1.5B's (1.04 GiB, 1.54 GiB as read — measured,
    /// docs/BROWSER.md) fits beside its file; Llama-3.2-3B's (2.02 GB, about 3.1 GB as read from
    /// its tensor types) does not, and says so.
    #[test]
    fn files_whose_bytes_and_weights_do_not_fit_the_page_are_refused() {
        let gib = |x: f64| (x * (1u64 << 30) as f64) as u64;
        assert!(fits_page_memory("qwen-1.5b.gguf", gib(1.04), gib(1.54)).is_ok());
        let err = fits_page_memory("llama-3b.gguf", 2_020_000_000, 3_100_000_000).unwrap_err();
        assert!(err.starts_with("llama-3b.gguf: the file (1.9 GiB) and its weights as read (2.9 GiB)"), "{err}");
    }

    #[test]
    fn reads_an_hf_folder_picked_file_by_file() {
        let mut files = ModelFiles::new("llama_gqa".into());
        add(&mut files, "config.json", fixture("config.json"));
        add(&mut files, "model.safetensors", fixture("model.safetensors"));
        add(&mut files, "tokenizer.json", convrec_core::testing::byte_level_tokenizer_json(320).into_bytes());
        add(&mut files, "tokenizer_config.json", br#"{"eos_token": "<|im_end|>"}"#.to_vec());
        let (config, tensors, text) = read_model(&mut files).unwrap();
        assert_eq!(config.num_layers, 2);
        assert_eq!(tensors.len(), config.expected_tensors().len());
        assert!(text.stop_ids.contains(&258), "<|im_end|> ends a turn: {:?}", text.stop_ids);
        let ids = text.prompt_ids(&[Message::user("hi")]).unwrap();
        assert_eq!(&ids[..1], &[257], "ChatML starts with <|im_start|>");
    }

    fn error_of(files: &mut ModelFiles) -> String {
        match read_model(files) {
            Ok(_) => panic!("{} was accepted", files.name),
            Err(e) => e,
        }
    }

    #[test]
    fn incomplete_models_are_refused_with_a_reason() {
        let mut files = ModelFiles::new("no weights".into());
        add(&mut files, "config.json", fixture("config.json"));
        assert!(error_of(&mut files).contains("safetensors"));

        let mut files = ModelFiles::new("no tokenizer".into());
        add(&mut files, "config.json", fixture("config.json"));
        add(&mut files, "model.safetensors", fixture("model.safetensors"));
        assert!(error_of(&mut files).contains("tokenizer.json"));

        assert!(error_of(&mut ModelFiles::new("empty".into())).contains("neither a .gguf"));

        let mut files = ModelFiles::new("broken.gguf".into());
        add(&mut files, "broken.gguf", b"GGUF\x03\x00".to_vec());
        assert!(error_of(&mut files).starts_with("broken.gguf: "));
    }
}
