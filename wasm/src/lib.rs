//! convrec in the browser: the core's GPU code through WebGPU, exposed to JavaScript. The page
//! (`wasm/www/`) runs this module in a Web Worker (`worker.js`) so that it never freezes; every
//! function returns JSON text or rejects with a message.

use wasm_bindgen::prelude::*;

use convrec_core::bench::{self, MODELS, Timer};
use convrec_core::{Gpu, GpuOptions, selfcheck};

mod session;
mod training;

pub use session::{ModelFiles, Session};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// The WebGPU adapter the browser hands out: name, backend, features and limits.
#[wasm_bindgen]
pub async fn adapter_info() -> Result<String, JsValue> {
    let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_err)?;
    serde_json::to_string(gpu.summary()).map_err(js_err)
}

/// Runs every kernel family on WebGPU, forward and backward, and compares each with its CPU
/// reference (the same Rust code as `convrec devices --check`). Returns the report as JSON: the
/// adapter, the families that ran and whether each passed, and every case with its bound.
#[wasm_bindgen]
pub async fn self_check() -> Result<String, JsValue> {
    let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_err)?;
    let report = selfcheck::run(&gpu).await;
    serde_json::to_string(&report).map_err(js_err)
}

/// `performance.now()` in seconds, in a window or a worker.
pub(crate) fn now_secs() -> f64 {
    let perf = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance")).ok();
    let now = perf.as_ref().and_then(|p| js_sys::Reflect::get(p, &JsValue::from_str("now")).ok());
    match (perf, now.and_then(|f| f.dyn_into::<js_sys::Function>().ok())) {
        (Some(p), Some(f)) => f.call0(&p).ok().and_then(|v| v.as_f64()).unwrap_or(0.0) / 1e3,
        _ => js_sys::Date::now() / 1e3,
    }
}

/// The kernel benchmarks of `convrec-bench kernels` (same cases, same timing, from the core) at
/// one model's shapes (`smollm2` or `qwen2.5`) and token count; `group` picks `linear`, `other`
/// or `all`. `on_case` gets each case as it is measured (JSON with `op`, `shape`, `secs`,
/// `gflops`, `gbps`); resolves to `{adapter, model, tokens, cases}`.
#[wasm_bindgen]
pub async fn benchmark(
    model: String,
    tokens: usize,
    group: String,
    budget_ms: u32,
    on_case: js_sys::Function,
) -> Result<String, JsValue> {
    let shape = MODELS
        .iter()
        .find(|m| m.name == model)
        .ok_or_else(|| js_err(format!("no benchmark shapes for {model:?} (smollm2, qwen2.5)")))?;
    let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_err)?;
    let timer = Timer { budget_secs: budget_ms as f64 / 1e3, now: &now_secs };
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    if group == "linear" || group == "all" {
        if let Err(e) = bench::linear_cases(&gpu, shape, tokens, &timer, &mut cases).await {
            errors.push(format!("linear cases: {e}"));
        }
    }
    if group == "other" || group == "all" {
        if let Err(e) = bench::other_cases(&gpu, shape, tokens, &timer, &mut cases).await {
            errors.push(format!("other cases: {e}"));
        }
    }
    let rows: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| serde_json::json!({"op": c.op, "shape": c.shape, "secs": c.secs, "gflops": c.gflops(), "gbps": c.gbps()}))
        .collect();
    for r in &rows {
        let _ = on_case.call1(&JsValue::NULL, &JsValue::from_str(&r.to_string()));
    }
    let out = serde_json::json!({"adapter": gpu.summary(), "model": model, "tokens": tokens, "cases": rows, "errors": errors});
    Ok(out.to_string())
}
