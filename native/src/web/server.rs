//! The HTTP server of `convrec serve` and the browser test: hyper on a tokio runtime in a
//! background thread. Every connection is its own task, so a client that stalls — never sends
//! its headers, never reads a response — holds only its own connection, and loses it after
//! `idle_timeout` without progress either way. Headers are bounded (431), and the one body the
//! server reads, a report POSTed to `/report`, is accepted only when asked for and bounded (413).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;

use super::files::{content_type, inside};
use super::{ServedFiles, routes};

/// What a server accepts beyond serving files.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Accept reports POSTed to `/report` (delivered on [`Running::reports`]); otherwise
    /// `/report` answers 404.
    pub report: bool,
    /// A connection that makes no progress (reading its request or writing its response) for
    /// this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { report: false, idle_timeout: Duration::from_secs(30) }
    }
}

/// Request line and headers together; a browser sends 1–2 KiB. More is answered 431.
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// A report's body; the page's combined report is a few KiB. More is answered 413.
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// Connections served at once; more wait to be accepted until one closes.
const MAX_CONNECTIONS: usize = 64;
/// Bytes read from a file per chunk of a response.
const CHUNK: usize = 256 << 10;

/// A running server: its address and the reports pages POSTed to `/report`.
pub struct Running {
    pub addr: SocketAddr,
    pub reports: mpsc::Receiver<String>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Blocks while the server runs (it stops only with the process).
    pub fn wait(self) {
        let _ = self.thread.join();
    }
}

/// What every request sees.
struct Site {
    www: PathBuf,
    pkg: PathBuf,
    routes: std::collections::BTreeMap<String, PathBuf>,
    api: String,
    reports: Option<mpsc::Sender<String>>,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Serves `www` (the page), `/pkg/…` from `pkg` and `files` on `addr` (e.g. `127.0.0.1:0`) from
/// a background thread.
pub fn start(
    www: &Path,
    pkg: &Path,
    files: &ServedFiles,
    addr: &str,
    options: &ServeOptions,
) -> anyhow::Result<Running> {
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
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel();
    let site = Arc::new(Site {
        www: www.to_path_buf(),
        pkg: pkg.to_path_buf(),
        routes,
        api: api.to_string(),
        reports: options.report.then_some(tx),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the server")?;
    let idle = options.idle_timeout;
    let thread = std::thread::Builder::new().name("convrec serve".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => accept(listener, site, idle).await,
                Err(e) => log::error!("serve: {e}"),
            }
        })
    })?;
    Ok(Running { addr: local, reports: rx, thread })
}

async fn accept(listener: tokio::net::TcpListener, site: Arc<Site>, idle: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                log::warn!("serve: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_read_timeout(Some(idle));
        stream.set_write_timeout(Some(idle));
        let site = site.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(site.clone(), req));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(Box::pin(stream)), service);
            // A client that went away or timed out ends only its own connection.
            let _ = connection.await;
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn handle(site: Arc<Site>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/report" {
        return Ok(report(&site, req).await);
    }
    if req.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here"));
    }
    if path == "/api/files.json" {
        let mut r = text(StatusCode::OK, &site.api);
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(r);
    }
    let file = match site.routes.get(&path) {
        Some(p) => Some(p.clone()),
        None => {
            let rel = path.trim_start_matches('/');
            let rel = if rel.is_empty() { "index.html" } else { rel };
            match rel.strip_prefix("pkg/") {
                Some(rest) => inside(&site.pkg, rest),
                None => inside(&site.www, rel),
            }
        }
    };
    Ok(match file {
        Some(p) => serve_file(&p).await.unwrap_or_else(|_| text(StatusCode::NOT_FOUND, "not found")),
        None => text(StatusCode::NOT_FOUND, "not found"),
    })
}

/// The file as a streamed body (model files run to gigabytes).
async fn serve_file(path: &Path) -> std::io::Result<Response<Body>> {
    let file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        Ok::<_, std::io::Error>((n > 0).then(|| (Frame::data(buf.freeze()), file)))
    });
    let mut r = Response::new(StreamBody::new(chunks).boxed_unsync());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

/// A report from the page: JSON text of at most [`MAX_REPORT_BYTES`], when reports were asked for.
async fn report(site: &Site, req: Request<Incoming>) -> Response<Body> {
    let Some(reports) = &site.reports else { return text(StatusCode::NOT_FOUND, "not found") };
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST a report here");
    }
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, &format!("a report holds at most {MAX_REPORT_BYTES} bytes"));
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_REPORT_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "the body did not arrive"),
    };
    match String::from_utf8(body.to_vec()) {
        Ok(report) if serde_json::from_str::<serde_json::Value>(&report).is_ok() => {
            let _ = reports.send(report);
            text(StatusCode::OK, "ok")
        }
        _ => text(StatusCode::BAD_REQUEST, "a report is JSON text"),
    }
}
