//! The browser harness: build `convrec-wasm`, serve `wasm/www/` on 127.0.0.1, open it in headless
//! Chromium with WebGPU, let the page run the core's kernels through the same Rust code as
//! native, and read its verdict back (the page POSTs it to the server that served it).
//!
//! Needs the `wasm32-unknown-unknown` target, `wasm-bindgen` (same version as the crate) and
//! Chromium (`CHROMIUM` or `/usr/bin/chromium`); `.ci/run` installs them. Missing tools skip the
//! test outside CI and fail it under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use convrec_tests::{skip_or_fail, workspace_root};

const TEST: &str = "browser self-check";

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The `wasm-bindgen` version pinned in Cargo.lock: the CLI must match it exactly.
fn locked_wasm_bindgen_version(root: &Path) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\"" {
            let v = lines.next().expect("version line");
            return v.trim_start_matches("version = \"").trim_end_matches('"').to_string();
        }
    }
    panic!("wasm-bindgen is not in Cargo.lock");
}

fn tool_ok(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the WASM crate and its JS bindings into a fresh folder; returns it.
fn build_pkg(root: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A separate target dir: the outer `cargo test` may still hold the workspace's.
    let target_dir = root.join("target").join("browser-test");
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "convrec-wasm", "--target", "wasm32-unknown-unknown", "--target-dir"])
        .arg(&target_dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building convrec-wasm for wasm32-unknown-unknown failed");
    let wasm = target_dir.join("wasm32-unknown-unknown/release/convrec_wasm.wasm");
    let pkg = target_dir.join("pkg");
    let _ = std::fs::remove_dir_all(&pkg);
    let status = Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(&pkg)
        .arg(&wasm)
        .status()
        .expect("run wasm-bindgen");
    assert!(status.success(), "wasm-bindgen failed on {}", wasm.display());
    pkg
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Serves `www` with `/pkg/…` from `pkg`; a POST to `/verdict` is sent on the channel.
fn serve(www: PathBuf, pkg: PathBuf) -> (u16, mpsc::Receiver<String>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = server.server_addr().to_ip().expect("ip address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let url = request.url().split('?').next().unwrap_or("/").to_string();
            if url == "/verdict" {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let _ = tx.send(body);
                let _ = request.respond(tiny_http::Response::from_string("ok"));
                continue;
            }
            let rel = url.trim_start_matches('/');
            let rel = if rel.is_empty() { "index.html" } else { rel };
            let path = match rel.strip_prefix("pkg/") {
                Some(rest) => pkg.join(rest),
                None => www.join(rel),
            };
            let safe = !rel.split('/').any(|c| c == "..");
            let response = match (safe, std::fs::read(&path)) {
                (true, Ok(bytes)) => {
                    let header = tiny_http::Header::from_bytes("Content-Type", content_type(&path)).expect("header");
                    tiny_http::Response::from_data(bytes).with_header(header).boxed()
                }
                _ => tiny_http::Response::from_string("not found").with_status_code(404).boxed(),
            };
            let _ = request.respond(response);
        }
    });
    (port, rx)
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `url` in headless Chromium with WebGPU on (SwiftShader/Vulkan on a machine without a GPU).
fn launch_chromium(chromium: &Path, url: &str, profile: &Path) -> KillOnDrop {
    let child = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--enable-unsafe-webgpu",
            "--enable-features=Vulkan",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    KillOnDrop(child)
}

#[test]
fn the_page_runs_a_core_kernel_on_webgpu_and_matches_the_cpu_reference() {
    let root = workspace_root();
    let Some(chromium) = find_chromium() else {
        return skip_or_fail(TEST, "Chromium not found (set CHROMIUM or install Debian's chromium)");
    };
    let wanted = locked_wasm_bindgen_version(&root);
    match tool_ok("wasm-bindgen", &["--version"]) {
        Some(v) if v.trim().ends_with(&wanted) => {}
        Some(v) => {
            return skip_or_fail(TEST, &format!("wasm-bindgen is {} but Cargo.lock pins {wanted}", v.trim()));
        }
        None => {
            return skip_or_fail(
                TEST,
                &format!("wasm-bindgen {wanted} not found (cargo install wasm-bindgen-cli --version {wanted})"),
            );
        }
    }
    if !tool_ok("rustup", &["target", "list", "--installed"]).is_some_and(|t| t.contains("wasm32-unknown-unknown")) {
        return skip_or_fail(
            TEST,
            "the wasm32-unknown-unknown target is not installed (rustup target add wasm32-unknown-unknown)",
        );
    }

    let pkg = build_pkg(&root);
    let (port, verdicts) = serve(root.join("wasm/www"), pkg);
    let profile = std::env::temp_dir().join(format!("convrec-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let url = format!("http://127.0.0.1:{port}/index.html?report=/verdict");
    let mut browser = launch_chromium(&chromium, &url, &profile);

    let deadline = Instant::now() + Duration::from_secs(240);
    let verdict = loop {
        if let Ok(v) = verdicts.recv_timeout(Duration::from_millis(250)) {
            break v;
        }
        if let Ok(Some(status)) = browser.0.try_wait() {
            let mut log = String::new();
            if let Some(mut e) = browser.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut log);
            }
            panic!("Chromium exited ({status}) before the page reported:\n{log}");
        }
        assert!(Instant::now() < deadline, "the page reported nothing within 240 s ({url})");
    };
    drop(browser);
    let _ = std::fs::remove_dir_all(&profile);

    eprintln!("page verdict: {verdict}");
    let report: serde_json::Value = serde_json::from_str(&verdict).expect("verdict is JSON");
    assert!(report.get("error").is_none(), "the page failed: {}", report["error"]);
    let cases = report["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "the page ran no kernel");
    for case in cases {
        let err = case["rel_err"].as_f64().expect("rel_err");
        assert!(err <= convrec_core::selfcheck::F32_TOLERANCE, "{} {}: rel.err {err:e}", case["op"], case["shape"]);
    }
    assert_eq!(report["pass"], true);
    let adapter = &report["adapter"];
    assert_eq!(adapter["backend"], "BrowserWebGpu", "the page must run on the browser's WebGPU");
    eprintln!(
        "browser adapter: {} ({}), shader-f16 {}",
        adapter["name"], adapter["device_type"], adapter["shader_f16"]
    );
}
