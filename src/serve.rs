//! `marnet serve`: a bundle behind HTTP (axum).
//!
//! - `POST /predict[?k=5]`: one image as the raw body or as the first file of a
//!   `multipart/form-data` body; answers `{"top": [{"class", "index", "prob"}]}`.
//! - `GET /health`: `{"status": "ok"}`. `GET /model`: classes, encoder, sampler and limits.
//!
//! Requests are decoded on tokio's blocking pool, then one inference thread batches whatever
//! requests are waiting (up to `max_batch`, waiting at most `batch_wait` for more). Each
//! image's noise stream is keyed on its bytes, so an answer does not depend on its batch.
//! Errors are JSON `{"error": ...}`: 400 for an unreadable image, 413 for a body over the
//! limit, 504 past the timeout.
//!
//! Connections are limited so that slow or idle clients cannot hold the server: a client must
//! send each request's headers within `header_timeout`, a keep-alive connection waiting for
//! its next request is closed after `idle_timeout`, and at most `max_connections` are open at
//! once (see [`ServeOptions`]).

use crate::bundle::{ClassProb, Predictor};
use crate::data::image::{Prepared, Preprocess};
use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Device;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Largest accepted request body, bytes.
    pub max_body: usize,
    /// Most images per forward pass.
    pub max_batch: usize,
    /// How long the inference thread waits for more requests to fill a batch.
    pub batch_wait: Duration,
    /// Per-request limit on decoding plus inference.
    pub timeout: Duration,
    /// Classes returned when the request does not say (`?k=`).
    pub top_k: usize,
    /// Time a client has to send a request's headers, counted from accepting the connection
    /// for its first request and from the first byte of each later one; a client still short
    /// of a complete header block then is disconnected (no response).
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request, counted from the previous
    /// response, before the server closes it. A request being handled is never cut off by
    /// this (`timeout` bounds it).
    pub idle_timeout: Duration,
    /// Most connections open at once. At the limit the server stops accepting: new clients
    /// wait in the kernel's listen backlog (connected at the TCP level, unanswered) until an
    /// open connection closes, so a burst is served late rather than refused (as nginx and Go's
    /// `LimitListener` do). Once the backlog is full too, the kernel drops new connection
    /// attempts and clients retry.
    pub max_connections: usize,
}

struct Job {
    image: Prepared,
    k: usize,
    reply: oneshot::Sender<Result<Vec<ClassProb>, String>>,
}

#[derive(Clone)]
struct AppState {
    jobs: mpsc::Sender<Job>,
    preprocess: Preprocess,
    model_info: Arc<serde_json::Value>,
    opts: ServeOptions,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// Serves requests from a queue: one batch per forward pass.
fn inference_loop(pred: Predictor, jobs: mpsc::Receiver<Job>, max_batch: usize, wait: Duration) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + wait;
        while batch.len() < max_batch.max(1) {
            match jobs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let k = batch.iter().map(|j| j.k).max().unwrap_or(1);
        let images: Vec<&Prepared> = batch.iter().map(|j| &j.image).collect();
        match pred.top_k(&images, k) {
            Ok(tops) => {
                for (job, mut top) in batch.into_iter().zip(tops) {
                    top.truncate(job.k);
                    let _ = job.reply.send(Ok(top));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(format!("inference failed: {e:#}")));
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct PredictQuery {
    k: Option<usize>,
}

/// The image bytes of a request: the raw body, or the first file part of a multipart body.
async fn image_bytes(state: &AppState, req: Request) -> Result<axum::body::Bytes, Response> {
    let is_multipart = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form = Multipart::from_request(req, state).await.map_err(|e| error(e.status(), e.body_text()))?;
        while let Some(field) = form.next_field().await.map_err(|e| error(e.status(), e.body_text()))? {
            if field.file_name().is_some() || field.name() == Some("image") {
                return field.bytes().await.map_err(|e| error(e.status(), e.body_text()));
            }
        }
        return Err(error(StatusCode::BAD_REQUEST, "multipart body has no file part (send the image as `image`)"));
    }
    axum::body::Bytes::from_request(req, state).await.map_err(|e| error(e.status(), e.body_text()))
}

async fn predict(State(state): State<AppState>, Query(q): Query<PredictQuery>, req: Request) -> Response {
    let k = q.k.unwrap_or(state.opts.top_k).clamp(1, state.model_info["classes"].as_array().map_or(1, |c| c.len()));
    let work = async {
        let bytes = image_bytes(&state, req).await?;
        if bytes.is_empty() {
            return Err(error(StatusCode::BAD_REQUEST, "empty body: send the image bytes"));
        }
        let pre = state.preprocess;
        let image = tokio::task::spawn_blocking(move || pre.prepare(&bytes, "request body"))
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
        let (reply, answer) = oneshot::channel();
        state.jobs.send(Job { image, k, reply }).map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "inference thread stopped"))?;
        let top = answer
            .await
            .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "inference thread stopped"))?
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        Ok::<_, Response>(top)
    };
    match tokio::time::timeout(state.opts.timeout, work).await {
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {:?}", state.opts.timeout)),
        Ok(Err(resp)) => resp,
        Ok(Ok(top)) => Json(serde_json::json!({ "top": top })).into_response(),
    }
}

/// The HTTP routes over a running inference queue.
fn router(state: AppState) -> Router {
    let info = state.model_info.clone();
    let limit = state.opts.max_body;
    Router::new()
        .route("/predict", post(predict))
        .route("/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/model", get(move || async move { Json((*info).clone()) }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Loads the bundle at `bundle`, binds `opts.addr`, prints `listening on http://ADDR` and
/// serves until Ctrl-C (then stops gracefully, see `serve_connections`).
pub fn serve(bundle: PathBuf, dev: Device, opts: ServeOptions) -> Result<()> {
    anyhow::ensure!(opts.max_connections > 0, "the connection limit must be at least 1");
    anyhow::ensure!(!opts.header_timeout.is_zero() && !opts.idle_timeout.is_zero(), "connection timeouts must be positive");
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (max_batch, wait) = (opts.max_batch, opts.batch_wait);
    // The model lives on its own thread: it is loaded there and never shared.
    std::thread::spawn(move || match Predictor::load(&bundle, &dev) {
        Ok(pred) => {
            let m = &pred.config;
            let info = serde_json::json!({
                "bundle": pred.dir, "classes": m.classes, "visual_encoder": m.visual_encoder,
                "preprocess": m.preprocess, "sampler": m.inference.sampler, "seed": m.inference.seed,
                "marnet_version": m.marnet_version,
            });
            let _ = ready_tx.send(Ok((pred.preprocess(), info)));
            inference_loop(pred, rx, max_batch, wait);
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e));
        }
    });
    let (preprocess, mut info) = ready_rx.recv().context("inference thread died while loading")??;
    info["limits"] = serde_json::json!({
        "max_body_bytes": opts.max_body, "max_batch": opts.max_batch,
        "batch_wait_ms": opts.batch_wait.as_millis() as u64, "timeout_ms": opts.timeout.as_millis() as u64,
        "header_timeout_ms": opts.header_timeout.as_millis() as u64, "idle_timeout_ms": opts.idle_timeout.as_millis() as u64,
        "max_connections": opts.max_connections,
    });
    let state = AppState { jobs: tx, preprocess, model_info: Arc::new(info), opts: opts.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(opts.addr).await.with_context(|| format!("cannot bind {}", opts.addr))?;
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            while !crate::interrupt::requested() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = stop_tx.send(true);
        });
        serve_connections(listener, router(state), &opts, stop).await
    })
}

/// Where a connection stands, for its timeouts.
#[derive(Clone, Copy)]
enum Phase {
    /// Waiting for a request, none of it received, since then: `idle_timeout` applies.
    Idle(tokio::time::Instant),
    /// Receiving a request's headers since then: `header_timeout` applies.
    Head(tokio::time::Instant),
    /// A request is being handled: no connection timeout (the per-request one applies).
    Busy,
}

/// Accepts connections until `stop` turns true, then closes the idle ones, lets the others
/// finish their current request (one still arriving gets until its header timeout), and
/// returns once all are closed.
async fn serve_connections(listener: TcpListener, app: Router, opts: &ServeOptions, mut stop: watch::Receiver<bool>) -> Result<()> {
    let all = u32::try_from(opts.max_connections).context("connection limit too large")?;
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    loop {
        // Take a slot before accepting: at the limit, clients wait in the listen backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot?,
            _ = stop.wait_for(|&s| s) => break,
        };
        let tcp = tokio::select! {
            conn = listener.accept() => match conn {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Per-connection failures (reset before accept) are routine; others (out of
                    // file descriptors) get a pause so the loop does not spin.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = stop.wait_for(|&s| s) => break,
        };
        let (app, opts, stop) = (app.clone(), opts.clone(), stop.clone());
        tokio::spawn(async move {
            serve_connection(tcp, app, &opts, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let _all_closed = slots.acquire_many(all).await?;
    Ok(())
}

/// Serves one HTTP/1.1 connection (keep-alive) until the client closes it, a timeout closes
/// it, or `stop` asks for a graceful close.
async fn serve_connection(tcp: TcpStream, app: Router, opts: &ServeOptions, mut stop: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let phase = Arc::new(watch::Sender::new(Phase::Head(tokio::time::Instant::now())));
    let io = hyper_util::rt::TokioIo::new(Watched { tcp, phase: phase.clone() });
    let app = hyper_util::service::TowerToHyperService::new(app);
    let mut timeouts = std::pin::pin!(expired(phase.subscribe(), opts.header_timeout, opts.idle_timeout));
    let service = hyper::service::service_fn(move |req| {
        phase.send_replace(Phase::Busy);
        let answer = hyper::service::Service::call(&app, req);
        let phase = phase.clone();
        async move {
            let answer = answer.await;
            phase.send_replace(Phase::Idle(tokio::time::Instant::now()));
            answer
        }
    });
    let mut conn = std::pin::pin!(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            // Dropping the connection closes the socket.
            _ = &mut timeouts => break,
            _ = stop.wait_for(|&s| s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves when the connection has waited `idle` for a request or spent `header` receiving
/// one's headers.
async fn expired(mut phase: watch::Receiver<Phase>, header: Duration, idle: Duration) {
    loop {
        let deadline = match *phase.borrow_and_update() {
            Phase::Idle(since) => since.checked_add(idle),
            Phase::Head(since) => since.checked_add(header),
            Phase::Busy => None,
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            changed = phase.changed() => if changed.is_err() { return },
            _ = sleep => return,
        }
    }
}

/// A client socket that marks its connection `Head` when bytes arrive while it is `Idle`.
struct Watched {
    tcp: TcpStream,
    phase: Arc<watch::Sender<Phase>>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.phase.send_if_modified(|p| match *p {
                Phase::Idle(_) => {
                    *p = Phase::Head(tokio::time::Instant::now());
                    true
                }
                _ => false,
            });
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
