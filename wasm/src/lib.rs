//! convrec in the browser: the core's GPU code through WebGPU, exposed to JavaScript.
//! The page (`wasm/www/`) calls these; every function returns JSON text or throws a message.

use wasm_bindgen::prelude::*;

use convrec_core::{Gpu, GpuOptions, selfcheck};

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

/// Runs the core's kernels on WebGPU and compares them with their CPU references (the same Rust
/// code as `convrec devices --check`). Returns the report as JSON.
#[wasm_bindgen]
pub async fn self_check() -> Result<String, JsValue> {
    let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_err)?;
    let report = selfcheck::run(&gpu).await.map_err(js_err)?;
    serde_json::to_string(&report).map_err(js_err)
}
