//! PEFT-compatible adapters: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key
//! names, so `peft.PeftModel.from_pretrained` loads what convrec writes and convrec loads what
//! `peft` wrote. Options convrec does not implement (rsLoRA, DoRA, per-module ranks, biases,
//! fan-in-fan-out, extra saved modules) are refused by name.

use serde_json::{Value, json};

use super::lora::{LoraConfig, LoraLayout, Target};
use crate::model::ModelConfig;
use crate::model::safetensors_io::{read_tensors, write_f32};

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PeftError {
    pub file: &'static str,
    pub message: String,
}

fn cfg_err(message: impl Into<String>) -> PeftError {
    PeftError { file: "adapter_config.json", message: message.into() }
}
fn weights_err(message: impl Into<String>) -> PeftError {
    PeftError { file: "adapter_model.safetensors", message: message.into() }
}

/// The two files of an adapter: (adapter_config.json text, adapter_model.safetensors bytes).
pub fn to_peft(layout: &LoraLayout, params: &[f32], base_model: &str) -> Result<(String, Vec<u8>), PeftError> {
    let c = &layout.config;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": c.r,
        "lora_alpha": c.alpha,
        "target_modules": c.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = layout
        .factors
        .iter()
        .map(|f| (f.peft_key(), f.shape.to_vec(), params[f.offset..f.offset + f.len()].to_vec()))
        .collect();
    let bytes = write_f32(&tensors).map_err(|e| weights_err(e.to_string()))?;
    Ok((serde_json::to_string_pretty(&config).expect("JSON"), bytes))
}

/// Reads an adapter for `model`: its layout and flat parameters.
pub fn from_peft(model: &ModelConfig, config_json: &str, weights: &[u8]) -> Result<(LoraLayout, Vec<f32>), PeftError> {
    let v: Value = serde_json::from_str(config_json).map_err(|e| cfg_err(format!("not valid JSON: {e}")))?;
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = get("peft_type").and_then(Value::as_str).filter(|t| *t != "LORA") {
        return Err(cfg_err(format!("peft_type {t} is not supported (only LORA is)")));
    }
    let r = get("r").and_then(Value::as_u64).ok_or_else(|| cfg_err("missing integer r"))?;
    let r = usize::try_from(r).map_err(|_| cfg_err(format!("r = {r} is too large")))?;
    let alpha = get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| cfg_err("missing lora_alpha"))? as f32;
    for (key, ok) in [
        ("use_rslora", get("use_rslora").is_none_or(|x| x == &json!(false))),
        ("use_dora", get("use_dora").is_none_or(|x| x == &json!(false))),
        ("fan_in_fan_out", get("fan_in_fan_out").is_none_or(|x| x == &json!(false))),
        ("bias", get("bias").is_none_or(|x| x == &json!("none"))),
        ("rank_pattern", get("rank_pattern").is_none_or(|x| x.as_object().is_some_and(|o| o.is_empty()))),
        ("alpha_pattern", get("alpha_pattern").is_none_or(|x| x.as_object().is_some_and(|o| o.is_empty()))),
        ("modules_to_save", get("modules_to_save").is_none_or(|x| x.as_array().is_some_and(|a| a.is_empty()))),
        ("layers_to_transform", get("layers_to_transform").is_none()),
    ] {
        if !ok {
            return Err(cfg_err(format!("{key} = {} is not supported", v[key])));
        }
    }
    let modules: Vec<String> = match get("target_modules") {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        Some(Value::String(s)) => {
            return Err(cfg_err(format!(
                "target_modules as a regular expression ({s}) is not supported; list the modules"
            )));
        }
        _ => return Err(cfg_err("missing target_modules")),
    };
    let mut targets = Vec::new();
    for m in &modules {
        targets.push(
            Target::from_module_name(m)
                .ok_or_else(|| cfg_err(format!("target module {m} is not a Llama/Qwen2 projection")))?,
        );
    }
    let config = LoraConfig { r, alpha, targets };
    // Before the layout is sized from them: a corrupt rank would allocate without bound.
    config.check(model).map_err(cfg_err)?;
    let layout = LoraLayout::new(model, config);
    let tensors = read_tensors(weights, "adapter_model.safetensors").map_err(|e| weights_err(e.message))?;
    let mut by_key: std::collections::HashMap<String, crate::model::HostTensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            (
                k.replace(".lora_A.default.weight", ".lora_A.weight")
                    .replace(".lora_B.default.weight", ".lora_B.weight"),
                t,
            )
        })
        .collect();
    let mut params = vec![0f32; layout.len];
    for f in &layout.factors {
        let key = f.peft_key();
        let t = by_key.remove(&key).ok_or_else(|| weights_err(format!("tensor {key} is missing")))?;
        if t.shape != f.shape {
            return Err(weights_err(format!("tensor {key} has shape {:?}, expected {:?}", t.shape, f.shape)));
        }
        params[f.offset..f.offset + f.len()].copy_from_slice(&t.to_f32());
    }
    if let Some(extra) = by_key.keys().next() {
        return Err(weights_err(format!("unexpected tensor {extra} (for a model of {} layers)", model.num_layers)));
    }
    Ok((layout, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;
    use crate::model::tests::tiny_config;

    #[test]
    fn round_trip_and_clear_refusals() {
        let model = tiny_config(Architecture::Qwen2, true);
        let layout =
            LoraLayout::new(&model, LoraConfig { r: 4, alpha: 8.0, targets: vec![Target::VProj, Target::QProj] });
        let params: Vec<f32> = (0..layout.len).map(|i| i as f32 * 0.001).collect();
        let (cfg, bytes) = to_peft(&layout, &params, "tiny").unwrap();
        assert!(cfg.contains("\"target_modules\"") && cfg.contains("q_proj"));
        let (layout2, params2) = from_peft(&model, &cfg, &bytes).unwrap();
        assert_eq!(layout2.factors, layout.factors);
        // Padding between factors is not stored: compare factor by factor.
        for f in &layout.factors {
            assert_eq!(params2[f.offset..f.offset + f.len()], params[f.offset..f.offset + f.len()], "{}", f.peft_key());
        }
        let dora = cfg.replace("\"use_dora\": false", "\"use_dora\": true");
        assert!(from_peft(&model, &dora, &bytes).unwrap_err().to_string().contains("use_dora"));
        let other = tiny_config(Architecture::Qwen2, true);
        let bigger = ModelConfig { num_layers: 3, ..other };
        assert!(from_peft(&bigger, &cfg, &bytes).unwrap_err().to_string().contains("layers.2"));
        assert!(
            from_peft(&model, "{", &bytes).unwrap_err().to_string().starts_with("adapter_config.json: not valid JSON")
        );
    }

    #[test]
    fn ranks_and_alphas_that_do_not_fit_the_model_are_refused_before_allocating() {
        let model = tiny_config(Architecture::Qwen2, true);
        let layout = LoraLayout::new(&model, LoraConfig { r: 4, alpha: 8.0, targets: vec![Target::QProj] });
        let (cfg, bytes) = to_peft(&layout, &vec![0.0; layout.len], "tiny").unwrap();
        let with = |key: &str, value: &str| {
            let mut v: Value = serde_json::from_str(&cfg).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            from_peft(&model, &v.to_string(), &bytes).map(|_| ()).map_err(|e| e.to_string())
        };
        // r 1e12 (once an abort allocating the layout), 0, past the projection's 32 columns.
        for r in ["1000000000000", "18446744073709551615", "0", "33"] {
            let e = with("r", r).unwrap_err();
            assert!(e.starts_with("adapter_config.json: r = "), "{r}: {e}");
        }
        // Infinite (1e39 as f32), absurd, negative and zero alphas.
        for alpha in ["1e39", "1e30", "-8", "0"] {
            let e = with("lora_alpha", alpha).unwrap_err();
            assert!(e.starts_with("adapter_config.json: lora_alpha = "), "{alpha}: {e}");
        }
        assert!(with("target_modules", "[]").unwrap_err().contains("target_modules is empty"));
        // A NaN in the weights names the tensor.
        let mut params = vec![0.0; layout.len];
        params[layout.factors[1].offset] = f32::NAN;
        let (cfg, bytes) = to_peft(&layout, &params, "tiny").unwrap();
        let e = from_peft(&model, &cfg, &bytes).unwrap_err().to_string();
        assert!(e.starts_with("adapter_model.safetensors: ") && e.contains("lora_B") && e.contains("NaN"), "{e}");
    }
}
