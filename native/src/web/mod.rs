//! The browser demo's server side: building the page's WASM package, and the HTTP server
//! (`server`) that serves the page (`wasm/www/`), the package, and exactly the model, adapter,
//! data and catalog files it was given — nothing else on the disk is reachable. When asked for,
//! the page's reports (POSTed to `/report`) arrive on a channel (the browser test reads them,
//! `convrec serve --report FILE` writes them).

mod files;
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use server::{Running, ServeOptions, start};

use anyhow::{Context, bail};
use serde_json::json;

/// The repository this binary was built from (the page's sources live there).
pub fn source_root() -> PathBuf {
    let native = Path::new(env!("CARGO_MANIFEST_DIR"));
    native.parent().unwrap_or(native).to_path_buf()
}

/// What building the page needs and is missing, in words a user can act on (`None`: all there).
/// The bindings are generated in-process (`wasm-bindgen-cli-support`), so only the compiler's
/// wasm32 target has to be installed.
pub fn missing_build_tools() -> Option<String> {
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match targets {
        Ok(t) if String::from_utf8_lossy(&t.stdout).lines().any(|l| l == "wasm32-unknown-unknown") => None,
        // Without rustup the toolchain may still have the target; let cargo say if it has not.
        Err(_) => None,
        Ok(_) => {
            Some("the wasm32-unknown-unknown target is not installed (rustup target add wasm32-unknown-unknown)".into())
        }
    }
}

/// Builds `convrec-wasm` for the browser (in `target_dir`) and its JS bindings into `pkg`.
pub fn build_pkg(root: &Path, target_dir: &Path, pkg: &Path) -> anyhow::Result<()> {
    if let Some(missing) = missing_build_tools() {
        bail!("cannot build the browser page: {missing}");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--profile", "web", "-p", "convrec-wasm", "--target", "wasm32-unknown-unknown", "--target-dir"])
        .arg(target_dir)
        .status()
        .context("running cargo")?;
    anyhow::ensure!(status.success(), "building convrec-wasm for wasm32-unknown-unknown failed");
    let wasm = target_dir.join("wasm32-unknown-unknown/web/convrec_wasm.wasm");
    let _ = std::fs::remove_dir_all(pkg);
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)
        .and_then(|b| {
            // The page calls `init()` without a path: keep the default `new URL(…_bg.wasm,
            // import.meta.url)`, which the library (unlike the CLI) omits unless told.
            b.omit_default_module_path(false).typescript(false).generate(pkg)
        })
        .map_err(|e| anyhow::anyhow!("generating the JS bindings of {}: {e}", wasm.display()))?;
    Ok(())
}

/// The files a page may fetch besides itself.
#[derive(Default, Clone, Debug)]
pub struct ServedFiles {
    /// A GGUF file or an HF model folder.
    pub model: Option<PathBuf>,
    /// A PEFT adapter folder.
    pub adapter: Option<PathBuf>,
    /// Rows in the Reddit-v2 schema (JSONL).
    pub data: Option<PathBuf>,
    /// A catalog (TSV or JSON).
    pub catalog: Option<PathBuf>,
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// URL path → file on disk for everything in `files`, and the `/api/files.json` the page reads.
/// These paths are the user's own choice, so they may be symlinks (Hugging Face's cache links
/// its snapshots' files to blobs); the page's folders are held to stricter rules (`files`).
fn routes(files: &ServedFiles) -> anyhow::Result<(BTreeMap<String, PathBuf>, serde_json::Value)> {
    let mut map = BTreeMap::new();
    let mut add = |group: &str, path: PathBuf| -> serde_json::Value {
        let name = file_name(&path);
        let url = format!("/files/{group}/{name}");
        map.insert(url.clone(), path);
        json!({"name": name, "url": url})
    };
    let mut api = serde_json::Map::new();
    if let Some(model) = &files.model {
        let listed: Vec<serde_json::Value> = if model.is_dir() {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(model).with_context(|| format!("reading {}", model.display()))? {
                let path = entry?.path();
                let n = file_name(&path);
                let wanted = n.ends_with(".safetensors")
                    || ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
                        .contains(&n.as_str());
                if wanted {
                    found.push(path);
                }
            }
            found.sort();
            if !found.iter().any(|p| file_name(p) == "config.json") {
                bail!("{}: not an HF model folder (no config.json)", model.display());
            }
            found.into_iter().map(|p| add("model", p)).collect()
        } else if model.is_file() {
            vec![add("model", model.clone())]
        } else {
            bail!("{}: no such file or folder", model.display());
        };
        api.insert("model".into(), json!({"name": file_name(model), "files": listed}));
    }
    if let Some(dir) = &files.adapter {
        let mut listed = Vec::new();
        for name in ["adapter_config.json", "adapter_model.safetensors"] {
            let path = dir.join(name);
            anyhow::ensure!(path.is_file(), "{}: no {name} (not a PEFT adapter folder)", dir.display());
            listed.push(add("adapter", path));
        }
        api.insert("adapter".into(), json!(listed));
    }
    for (key, path) in [("data", &files.data), ("catalog", &files.catalog)] {
        if let Some(p) = path {
            anyhow::ensure!(p.is_file(), "{}: no such file", p.display());
            api.insert(key.into(), add(key, p.clone()));
        }
    }
    Ok((map, serde_json::Value::Object(api)))
}

#[cfg(test)]
mod tests;
