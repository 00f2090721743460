//! The browser demo's server side: building the page's WASM package, and a small HTTP server that
//! serves the page (`wasm/www/`), the package, and exactly the model, adapter, data and catalog
//! files it was given — nothing else on the disk is reachable. The page POSTs reports to
//! `/report`; they arrive on a channel (the browser test reads them, `convrec serve` prints them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

use anyhow::{Context, bail};
use serde_json::json;

/// The repository this binary was built from (the page's sources live there).
pub fn source_root() -> PathBuf {
    let native = Path::new(env!("CARGO_MANIFEST_DIR"));
    native.parent().unwrap_or(native).to_path_buf()
}

/// The `wasm-bindgen` version pinned in `Cargo.lock`: the CLI must match it exactly.
pub fn locked_wasm_bindgen_version(root: &Path) -> anyhow::Result<String> {
    let lock_path = root.join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path).with_context(|| format!("reading {}", lock_path.display()))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = \"")) {
                return Ok(v.trim_end_matches('"').to_string());
            }
        }
    }
    bail!("{}: no wasm-bindgen package", lock_path.display())
}

/// What building the page needs and what is missing, in words a user can act on (`None`: all
/// there).
pub fn missing_build_tools(root: &Path) -> anyhow::Result<Option<String>> {
    let wanted = locked_wasm_bindgen_version(root)?;
    let out = Command::new("wasm-bindgen").arg("--version").output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim().ends_with(&wanted) => {}
        Ok(o) => {
            return Ok(Some(format!(
                "wasm-bindgen is {} but Cargo.lock pins {wanted} (cargo install wasm-bindgen-cli --version {wanted})",
                String::from_utf8_lossy(&o.stdout).trim()
            )));
        }
        Err(_) => {
            return Ok(Some(format!(
                "wasm-bindgen {wanted} not found (cargo install wasm-bindgen-cli --version {wanted})"
            )));
        }
    }
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if !targets.is_ok_and(|t| String::from_utf8_lossy(&t.stdout).lines().any(|l| l == "wasm32-unknown-unknown")) {
        return Ok(Some(
            "the wasm32-unknown-unknown target is not installed (rustup target add wasm32-unknown-unknown)".into(),
        ));
    }
    Ok(None)
}

/// Builds `convrec-wasm` for the browser (in `target_dir`) and its JS bindings into `pkg`.
pub fn build_pkg(root: &Path, target_dir: &Path, pkg: &Path) -> anyhow::Result<()> {
    if let Some(missing) = missing_build_tools(root)? {
        bail!("cannot build the browser page: {missing}");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "convrec-wasm", "--target", "wasm32-unknown-unknown", "--target-dir"])
        .arg(target_dir)
        .status()
        .context("running cargo")?;
    anyhow::ensure!(status.success(), "building convrec-wasm for wasm32-unknown-unknown failed");
    let wasm = target_dir.join("wasm32-unknown-unknown/release/convrec_wasm.wasm");
    let _ = std::fs::remove_dir_all(pkg);
    let status = Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(pkg)
        .arg(&wasm)
        .status()
        .context("running wasm-bindgen")?;
    anyhow::ensure!(status.success(), "wasm-bindgen failed on {}", wasm.display());
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

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// A running server: its address and the reports pages POSTed to `/report`.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub reports: mpsc::Receiver<String>,
}

/// Serves `www` (the page), `/pkg/…` from `pkg` and `files` on `addr` (e.g. `127.0.0.1:0`) from
/// a background thread.
pub fn start(www: &Path, pkg: &Path, files: &ServedFiles, addr: &str) -> anyhow::Result<Running> {
    anyhow::ensure!(
        www.join("index.html").is_file(),
        "{}: no index.html (the page's folder is wasm/www)",
        www.display()
    );
    anyhow::ensure!(
        pkg.join("convrec_wasm.js").is_file(),
        "{}: no convrec_wasm.js (build the page's package first)",
        pkg.display()
    );
    let (routes, api) = routes(files)?;
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let addr = server.server_addr().to_ip().context("not an IP address")?;
    let (tx, rx) = mpsc::channel();
    let (www, pkg) = (www.to_path_buf(), pkg.to_path_buf());
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let url = request.url().split('?').next().unwrap_or("/").to_string();
            if url == "/report" && *request.method() == tiny_http::Method::Post {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let _ = tx.send(body);
                let _ = request.respond(tiny_http::Response::from_string("ok"));
                continue;
            }
            if url == "/api/files.json" {
                let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("header");
                let _ = request.respond(tiny_http::Response::from_string(api.to_string()).with_header(header));
                continue;
            }
            let rel = url.trim_start_matches('/');
            let rel = if rel.is_empty() { "index.html" } else { rel };
            let path = if let Some(p) = routes.get(&url) {
                Some(p.clone())
            } else if rel.split('/').any(|c| c == ".." || c.is_empty()) {
                None
            } else if let Some(rest) = rel.strip_prefix("pkg/") {
                Some(pkg.join(rest))
            } else {
                Some(www.join(rel))
            };
            let response = match path.and_then(|p| std::fs::File::open(&p).ok().map(|f| (p, f))) {
                Some((p, file)) => {
                    let header = tiny_http::Header::from_bytes("Content-Type", content_type(&p)).expect("header");
                    tiny_http::Response::from_file(file).with_header(header).boxed()
                }
                None => tiny_http::Response::from_string("not found").with_status_code(404).boxed(),
            };
            let _ = request.respond(response);
        }
    });
    Ok(Running { addr, reports: rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_the_given_files_and_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(www.join("index.html"), "<p>page</p>").unwrap();
        std::fs::write(pkg.join("convrec_wasm.js"), "export default 1").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "no").unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF...").unwrap();
        let data = dir.path().join("rows.jsonl");
        std::fs::write(&data, "{}\n").unwrap();
        let files = ServedFiles { model: Some(model), data: Some(data), ..Default::default() };
        let running = start(&www, &pkg, &files, "127.0.0.1:0").unwrap();
        let get = |path: &str| -> (u16, String) {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(running.addr).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            let status = out[9..12].parse().unwrap();
            (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
        };
        assert_eq!(get("/"), (200, "<p>page</p>".into()));
        assert_eq!(get("/pkg/convrec_wasm.js").0, 200);
        assert_eq!(get("/files/model/m.gguf"), (200, "GGUF...".into()));
        assert_eq!(get("/files/data/rows.jsonl").1, "{}\n");
        let (status, api) = get("/api/files.json");
        assert_eq!(status, 200);
        let api: serde_json::Value = serde_json::from_str(&api).unwrap();
        assert_eq!(api["model"]["files"][0]["url"], "/files/model/m.gguf");
        assert_eq!(api["data"]["name"], "rows.jsonl");
        assert!(api.get("adapter").is_none());
        for forbidden in ["/../secret.txt", "/files/model/../secret.txt", "/pkg/../../secret.txt", "/secret.txt"] {
            assert_eq!(get(forbidden).0, 404, "{forbidden}");
        }
        // A report POSTed by the page arrives on the channel.
        {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(running.addr).unwrap();
            write!(s, "POST /report HTTP/1.0\r\nHost: x\r\nContent-Length: 7\r\n\r\n{{\"a\":1}}").unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        }
        assert_eq!(running.reports.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), "{\"a\":1}");
        // A folder that is not an adapter is refused up front.
        let bad = ServedFiles { adapter: Some(dir.path().to_path_buf()), ..Default::default() };
        let err = start(&www, &pkg, &bad, "127.0.0.1:0").err().unwrap().to_string();
        assert!(err.contains("adapter_config.json"), "{err}");
    }
}
