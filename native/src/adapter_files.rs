//! PEFT adapter folders on disk, and checkpoint folders, written as a whole: files go to a fresh
//! sibling folder that then replaces the old one, so a crash leaves the previous folder (or the
//! new one) complete, never a mix.

use std::path::Path;

use anyhow::Context;
use convrec_core::model::ModelConfig;
use convrec_core::train::lora::LoraLayout;
use convrec_core::train::peft::{from_peft, to_peft};

/// Reads `adapter_config.json` + `adapter_model.safetensors` from `dir`.
pub fn load_adapter(dir: &Path, model: &ModelConfig) -> anyhow::Result<(LoraLayout, Vec<f32>)> {
    let cfg_path = dir.join("adapter_config.json");
    let weights_path = dir.join("adapter_model.safetensors");
    let cfg = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let weights = std::fs::read(&weights_path).with_context(|| format!("reading {}", weights_path.display()))?;
    from_peft(model, &cfg, &weights).with_context(|| format!("adapter in {}", dir.display()))
}

/// Writes a folder of files atomically (see the module comment).
pub fn write_dir_atomic(dir: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().context("folder without a name")?.to_string_lossy().into_owned();
    // Staging folders of saves that were interrupted: whatever they hold is older than this save.
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&format!(".{name}.new-")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let staging = tempfile::Builder::new().prefix(&format!(".{name}.new-")).tempdir_in(parent)?;
    for (file, bytes) in files {
        let path = staging.path().join(file);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::File::open(&path)?.sync_all()?;
    }
    let staged = staging.keep();
    let old = parent.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving the previous {} aside", dir.display()))?;
    }
    std::fs::rename(&staged, dir).with_context(|| format!("moving the new files into {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Writes a PEFT adapter folder.
pub fn save_adapter(dir: &Path, layout: &LoraLayout, params: &[f32], base_model: &str) -> anyhow::Result<()> {
    let (cfg, weights) = to_peft(layout, params, base_model)?;
    write_dir_atomic(dir, &[("adapter_config.json", cfg.as_bytes()), ("adapter_model.safetensors", &weights)])
}
