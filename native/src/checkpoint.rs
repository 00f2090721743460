//! Training checkpoints, shared by SFT and RL: the adapter in PEFT's format (so a checkpoint is
//! also a usable adapter folder), the AdamW moments, and the command's own state as JSON, written
//! as one folder atomically (`adapter_files::write_dir_atomic`).

use std::path::Path;

use anyhow::Context;
use convrec_core::Gpu;
use convrec_core::model::safetensors_io::{read_numbers, write_f32};
use convrec_core::train::trainer::LoraTrainer;
use serde::Serialize;
use serde::de::DeserializeOwned;

const STATE: &str = "trainer_state.json";
const OPTIMIZER: &str = "optimizer.safetensors";

/// Writes the trainer's parameters and moments with `state` into `dir`.
pub fn save(dir: &Path, trainer: &LoraTrainer, gpu: &Gpu, state: &impl Serialize, base: &str) -> anyhow::Result<()> {
    let params = pollster::block_on(trainer.read_params(gpu))?;
    let (m, v) = pollster::block_on(trainer.read_moments(gpu))?;
    let (cfg, weights) = convrec_core::train::peft::to_peft(&trainer.layout, &params, base)?;
    let n = trainer.layout.len;
    let optimizer =
        write_f32(&[("params".into(), vec![n], params), ("m".into(), vec![n], m), ("v".into(), vec![n], v)])?;
    let state_json = serde_json::to_vec_pretty(state)?;
    crate::adapter_files::write_dir_atomic(
        dir,
        &[
            ("adapter_config.json", cfg.as_bytes()),
            ("adapter_model.safetensors", &weights),
            (OPTIMIZER, &optimizer),
            (STATE, &state_json),
        ],
    )
}

/// Reads a checkpoint's state and restores parameters, moments and the step (from `step_of`)
/// into the trainer.
pub fn restore<S: DeserializeOwned>(
    dir: &Path,
    trainer: &mut LoraTrainer,
    gpu: &Gpu,
    step_of: impl Fn(&S) -> u64,
) -> anyhow::Result<S> {
    let state_path = dir.join(STATE);
    let state: S = serde_json::from_slice(
        &std::fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?,
    )
    .with_context(|| format!("{}: not a checkpoint of this command", state_path.display()))?;
    let opt_path = dir.join(OPTIMIZER);
    let bytes = std::fs::read(&opt_path).with_context(|| format!("reading {}", opt_path.display()))?;
    let get = |name: &str| -> anyhow::Result<Vec<f32>> {
        Ok(read_numbers(&bytes, &opt_path.display().to_string(), name)?.1.into_iter().map(|x| x as f32).collect())
    };
    trainer.restore(gpu, &get("params")?, &get("m")?, &get("v")?, step_of(&state))?;
    Ok(state)
}

/// The options that differ between a checkpoint's run and the resuming one (`resume` itself
/// aside): a changed schedule, batch or data silently changes what "continue" means, so the
/// commands say which.
pub fn changed_args(saved: &impl Serialize, now: &impl Serialize) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(saved), serde_json::to_value(now))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| k.as_str() != "resume").collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
            format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct A {
        lr: f32,
        epochs: usize,
        resume: Option<String>,
    }

    #[test]
    fn changed_options_are_listed_except_resume() {
        let saved = A { lr: 1e-4, epochs: 1, resume: None };
        let now = A { lr: 1e-4, epochs: 2, resume: Some("ckpt".into()) };
        assert_eq!(super::changed_args(&saved, &now), vec!["epochs: 1 → 2".to_string()]);
        assert!(super::changed_args(&saved, &saved).is_empty());
    }
}
