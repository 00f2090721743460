//! The server as clients meet it: the files it serves and refuses, reports, and clients that
//! misbehave (stall, send huge headers or bodies).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::server::{MAX_HEADER_BYTES, MAX_REPORT_BYTES};
use super::*;

/// A page folder, a package folder and a secret next to them.
fn site(dir: &Path) -> (PathBuf, PathBuf) {
    let www = dir.join("www");
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(www.join("index.html"), "<p>page</p>").unwrap();
    std::fs::write(pkg.join("convrec_wasm.js"), "export default 1").unwrap();
    std::fs::write(dir.join("secret.txt"), "no").unwrap();
    (www, pkg)
}

/// Sends raw request bytes and reads the whole answer: (status, body).
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read everything: ignore a failed write.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(addr, format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
}

fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    exchange(
        addr,
        format!("POST {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    )
}

fn with_reports() -> ServeOptions {
    ServeOptions { report: true, ..Default::default() }
}

#[test]
fn serves_only_the_given_files_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let (www, pkg) = site(dir.path());
    let model = dir.path().join("m.gguf");
    std::fs::write(&model, b"GGUF...").unwrap();
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, "{}\n").unwrap();
    let files = ServedFiles { model: Some(model), data: Some(data), ..Default::default() };
    let running = start(&www, &pkg, &files, "127.0.0.1:0", &with_reports()).unwrap();
    let addr = running.addr;
    assert_eq!(get(addr, "/"), (200, "<p>page</p>".into()));
    assert_eq!(get(addr, "/pkg/convrec_wasm.js").0, 200);
    assert_eq!(get(addr, "/files/model/m.gguf"), (200, "GGUF...".into()));
    assert_eq!(get(addr, "/files/data/rows.jsonl").1, "{}\n");
    let (status, api) = get(addr, "/api/files.json");
    assert_eq!(status, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["model"]["files"][0]["url"], "/files/model/m.gguf");
    assert_eq!(api["data"]["name"], "rows.jsonl");
    assert!(api.get("adapter").is_none());
    for forbidden in ["/../secret.txt", "/files/model/../secret.txt", "/pkg/../../secret.txt", "/secret.txt", "/pkg/"] {
        assert_eq!(get(addr, forbidden).0, 404, "{forbidden}");
    }
    // A report POSTed by the page arrives on the channel; other methods are refused.
    assert_eq!(post(addr, "/report", "{\"a\":1}"), (200, "ok".into()));
    assert_eq!(running.reports.recv_timeout(Duration::from_secs(5)).unwrap(), "{\"a\":1}");
    assert_eq!(post(addr, "/report", "not json").0, 400);
    assert_eq!(post(addr, "/index.html", "{}").0, 405);
    assert_eq!(get(addr, "/report").0, 405);
    // A folder that is not an adapter is refused up front.
    let bad = ServedFiles { adapter: Some(dir.path().to_path_buf()), ..Default::default() };
    let err = start(&www, &pkg, &bad, "127.0.0.1:0", &ServeOptions::default()).err().unwrap().to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
}

#[test]
fn report_is_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (www, pkg) = site(dir.path());
    let running = start(&www, &pkg, &ServedFiles::default(), "127.0.0.1:0", &ServeOptions::default()).unwrap();
    assert_eq!(post(running.addr, "/report", "{\"a\":1}").0, 404);
    assert!(running.reports.recv_timeout(Duration::from_millis(200)).is_err(), "nothing was delivered");
}

#[cfg(unix)]
#[test]
fn symlinks_in_the_page_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (www, pkg) = site(dir.path());
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), pkg.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", pkg.join("etc")).unwrap();
    std::os::unix::fs::symlink(dir.path(), www.join("up")).unwrap();
    let running = start(&www, &pkg, &ServedFiles::default(), "127.0.0.1:0", &ServeOptions::default()).unwrap();
    for path in ["/pkg/leak.txt", "/pkg/etc/passwd", "/up/secret.txt"] {
        assert_eq!(get(running.addr, path), (404, "not found".into()), "{path}");
    }
    assert_eq!(get(running.addr, "/pkg/convrec_wasm.js").0, 200);
}

#[test]
fn oversized_headers_get_431_and_oversized_bodies_413() {
    let dir = tempfile::tempdir().unwrap();
    let (www, pkg) = site(dir.path());
    let running = start(&www, &pkg, &ServedFiles::default(), "127.0.0.1:0", &with_reports()).unwrap();
    let addr = running.addr;
    // One header line far past the limit (the server stops reading at the limit).
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 8 * MAX_HEADER_BYTES));
    huge.extend(b"\r\n\r\n");
    assert_eq!(exchange(addr, &huge).0, 431);
    // Many small headers adding up past it.
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        many.extend(format!("X-H{i}: 0123456789\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(exchange(addr, &many).0, 431);
    // A declared length past the limit is refused before a byte of it is read.
    let declared = b"POST /report HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n{";
    assert_eq!(exchange(addr, declared).0, 413);
    // A chunked body that grows past the limit.
    let mut chunked =
        b"POST /report HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..=MAX_REPORT_BYTES >> 20 {
        chunked.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend(&chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    assert_eq!(exchange(addr, &chunked).0, 413);
    assert!(running.reports.try_recv().is_err(), "no oversized report was delivered");
    // The server still answers.
    assert_eq!(get(addr, "/").0, 200);
}

#[test]
fn a_stalled_client_blocks_no_one_and_loses_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (www, pkg) = site(dir.path());
    // Large enough to fill both sockets' buffers while nobody reads.
    let big = dir.path().join("big.gguf");
    let size = 64usize << 20;
    std::fs::write(&big, vec![7u8; size]).unwrap();
    let files = ServedFiles { model: Some(big), ..Default::default() };
    let options = ServeOptions { idle_timeout: Duration::from_secs(2), ..Default::default() };
    let running = start(&www, &pkg, &files, "127.0.0.1:0", &options).unwrap();
    let addr = running.addr;

    // One client asks for the model file and never reads; another never finishes its headers.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(b"GET /files/model/big.gguf HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(addr, "/"), (200, "<p>page</p>".into()));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "others were served at once: {:?}", started.elapsed());

    // After the idle time without progress both connections are closed.
    std::thread::sleep(Duration::from_secs(4));
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    assert!(got.len() < size, "the stalled download was cut short ({} of {size} bytes)", got.len());
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("<p>page</p>"), "an unfinished request is not answered");
}
