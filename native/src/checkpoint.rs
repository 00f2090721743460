//! Training checkpoints, shared by SFT and RL: the adapter in PEFT's format (so a checkpoint is
//! also a usable adapter folder), the AdamW moments, and the command's own state as JSON, written
//! as one folder atomically (`adapter_files::write_dir_atomic`). A save interrupted at any instant
//! leaves a complete checkpoint somewhere — the folder itself, the previous one moved aside
//! (`.checkpoint.old`) or the new one not yet moved in (`.checkpoint.new-…`) — and [`latest`]
//! finds the newest complete one of them.

use std::path::{Path, PathBuf};

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

/// What a checkpoint written before data parallelism existed was run with.
pub fn one_worker() -> usize {
    1
}

/// A run resumes with the number of workers that wrote its checkpoint: the split of each step
/// and the rounding of its sums follow the count, so another would continue a different run.
pub fn same_workers(checkpoint: &Path, saved: usize, now: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        saved == now,
        "{}: the run was made by {saved} worker(s) and is resumed by {now}; resume it with the same count          (`mpirun -np {saved} convrec …`{})",
        checkpoint.display(),
        if saved == 1 { ", or without mpirun" } else { "" }
    );
    Ok(())
}

/// The step a checkpoint folder holds, when all its files are there and its state reads.
fn complete_step(dir: &Path) -> Option<u64> {
    let files = ["adapter_config.json", "adapter_model.safetensors", OPTIMIZER, STATE];
    if !files.iter().all(|f| dir.join(f).is_file()) {
        return None;
    }
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(STATE)).ok()?).ok()?;
    state.get("step")?.as_u64()
}

/// `folder/name` and the leftovers of interrupted saves of it (`.name.old`, `.name.new-…`) that exist.
fn siblings(folder: &Path, name: &str) -> impl Iterator<Item = PathBuf> {
    let (old, new) = (format!(".{name}.old"), format!(".{name}.new-"));
    let plain = folder.join(name);
    std::fs::read_dir(folder).into_iter().flatten().flatten().map(|e| e.path()).filter(move |p| {
        let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        *p == plain || n == old || n.starts_with(&new)
    })
}

/// The newest complete checkpoint for `--resume PATH`: PATH itself (a checkpoint folder, or a
/// run folder holding `checkpoint/`), or what an interrupted save left beside it.
pub fn latest(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = if complete_step(path).is_none() && siblings(path, "checkpoint").next().is_some() {
        path.join("checkpoint")
    } else {
        path.to_path_buf()
    };
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    siblings(parent, &name)
        .filter_map(|c| complete_step(&c).map(|s| (s, c)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, c)| c)
        .with_context(|| format!("{}: no complete checkpoint there (nor one an interrupted save left)", dir.display()))
}

/// Reads the newest complete checkpoint for `--resume path` ([`latest`]) and restores
/// parameters, moments and the step (from `step_of`) into the trainer.
pub fn restore<S: DeserializeOwned>(
    path: &Path,
    trainer: &mut LoraTrainer,
    gpu: &Gpu,
    step_of: impl Fn(&S) -> u64,
) -> anyhow::Result<S> {
    let found = latest(path)?;
    if found != path {
        eprintln!("resuming from {}", found.display());
    }
    let dir = found.as_path();
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
