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
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
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
/// serves until Ctrl-C.
pub fn serve(bundle: PathBuf, dev: Device, opts: ServeOptions) -> Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (max_batch, wait) = (opts.max_batch, opts.batch_wait);
    // The model lives on its own thread: it is loaded there and never shared.
    std::thread::spawn(move || match Predictor::load(&bundle, &dev) {
        Ok(pred) => {
            let m = &pred.config;
            let info = serde_json::json!({
                "bundle": pred.dir, "classes": m.classes, "visual_encoder": m.visual_encoder,
                "preprocess": m.preprocess, "sampler": m.sampler, "seed": m.seed,
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
    });
    let state = AppState { jobs: tx, preprocess, model_info: Arc::new(info), opts: opts.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr).await.with_context(|| format!("cannot bind {}", opts.addr))?;
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        let stop = async {
            while !crate::interrupt::requested() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        axum::serve(listener, router(state)).with_graceful_shutdown(stop).await?;
        Ok(())
    })
}
