//! `marnet serve`: a bundle behind HTTP (axum).
//!
//! - `POST /predict[?k=5]`: one image as the raw body or as the one file part of a
//!   `multipart/form-data` body; answers `{"top": [{"class", "index", "prob"}]}`, its `k` best
//!   classes (`k` digits only, at least 1, by default [`ServeOptions::top_k`]; beyond the model's
//!   classes, all of them). A file part is a part with a filename, or the part named `image` with
//!   or without one (`curl -F image=@x.png` and `curl -F image=<x.png` both work); other parts
//!   (form fields) are ignored, and two or more file parts are refused, not all but one dropped.
//! - `GET /health`: `{"status": "ok"}`. `GET /model`: classes, encoder, sampler and limits.
//! - `GET /stats`: the inference thread's counters since start ([`pipeline::Stats`]): passes,
//!   images, seconds in the encoder, in the heads and waiting for decoded images.
//!
//! `k` is the only query parameter: any other, on any route, is refused (400) rather than
//! ignored, so that a misspelt one (`?top_k=3`) does not go unnoticed.
//!
//! Request bodies are decoded on a fixed pool of threads at low CPU priority (see [`Decoding`]),
//! apart from the encoder's, and one inference thread runs each forward pass on the images
//! already decoded (up to `max_batch`) while the next ones are decoded: see [`pipeline`]. Each
//! image's noise stream is keyed on its bytes, so an answer does not depend on its batch.
//!
//! Every error is answered `{"error": "..."}` with `content-type: application/json`:
//! - 400: an unreadable image, an empty body, a multipart body that is malformed or has no file
//!   part or more than one, a bad `k` (quoted as sent), a query parameter the route does not
//!   take, a malformed request head;
//! - 404: no such route; 405: a route that does not take the method (with an `Allow` header);
//! - 413: a body over [`ServeOptions::max_body`] (the message gives it in MiB and names
//!   `--max-body-mib`);
//! - 414: a request line over [`heads::MAX_REQUEST_LINE`] bytes; 431: a request head over
//!   [`heads::MAX_HEAD`] bytes or [`heads::MAX_HEADERS`] headers (then the connection closes);
//! - 500: inference failed; 503: the inference thread stopped; 504: past the timeout.
//!
//! Request heads go through a gate before hyper parses them ([`heads`]): hyper would answer the
//! 400, 414 and 431 above itself, with no body.
//!
//! Connections are limited so that slow or idle clients cannot hold the server: a client must
//! send each request's headers within `header_timeout`, a keep-alive connection waiting for
//! its next request is closed after `idle_timeout`, and at most `max_connections` are open at
//! once (see [`ServeOptions`] and [`connections`]). Ctrl-C stops accepting, closes the idle
//! connections and finishes the requests in flight (a second Ctrl-C exits at once).

mod answer;
mod classify;
pub mod connections;
pub mod decode;
pub mod heads;
mod options;
pub mod pipeline;
mod task;

use answer::error;
pub use options::ServeOptions;

use crate::bundle::Predictor;
use anyhow::Result;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Device;
pub use decode::{DecodePriority, Decoding, default_decode_threads};
use pipeline::{Batching, Failure, Pipeline};
use std::num::IntErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone)]
struct AppState {
    pipeline: Pipeline,
    model_info: Arc<serde_json::Value>,
    /// The model's number of classes.
    classes: usize,
    opts: ServeOptions,
}

/// The HTTP answer to a request the pipeline could not classify.
fn failure(f: Failure) -> Response {
    match f {
        Failure::BadImage(e) => error(StatusCode::BAD_REQUEST, e),
        Failure::Internal(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Failure::Stopped => error(StatusCode::SERVICE_UNAVAILABLE, "inference thread stopped"),
    }
}

/// The query parameters of `uri`, percent-decoded, refusing (with a message for a 400) any not
/// in `allowed` (a misspelt one should not pass unnoticed) and any given twice.
fn query_params(uri: &Uri, allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|e| e.body_text())?;
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&name.as_str()) {
            let takes = match allowed {
                [] => "no query parameters".to_string(),
                _ => format!("only {}", allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")),
            };
            return Err(format!("unknown query parameter `{name}`: {} takes {takes}", uri.path()));
        }
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("query parameter `{name}` given twice"));
        }
    }
    Ok(pairs)
}

/// The classes `POST /predict` answers with: `?k=`, else `default`; at least 1, and more than
/// the model's `classes` (even past `usize`) gives them all. A refusal's message for a 400.
fn requested_k(uri: &Uri, default: usize, classes: usize) -> Result<usize, String> {
    let classes = classes.max(1);
    let Some((_, v)) = query_params(uri, &["k"])?.pop() else { return Ok(default.clamp(1, classes)) };
    // Digits only: `usize::from_str` would take a sign (`%2B3`), while `+3` decodes to ` 3`.
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    match v.parse::<usize>() {
        Ok(k) if digits && k >= 1 => Ok(k.min(classes)),
        Err(e) if digits && *e.kind() == IntErrorKind::PosOverflow => Ok(classes),
        _ => Err(format!(
            "query parameter `k` must be a whole number of at least 1 (the model has {classes} classes; a larger `k` gives them all), not `{}`",
            raw_value(uri)
        )),
    }
}

/// The value of the one query parameter of `uri` as it was sent (not percent-decoded, `+` not
/// turned into a space), for error messages: [`query_params`] has accepted the query, so its
/// only non-empty `&`-separated piece is that parameter.
fn raw_value(uri: &Uri) -> &str {
    let piece = uri.query().unwrap_or("").split('&').find(|p| !p.is_empty()).unwrap_or("");
    piece.split_once('=').map_or("", |(_, v)| v)
}

/// Refuses query parameters on the routes that take none.
async fn no_query(req: Request, next: Next) -> Response {
    match query_params(req.uri(), &[]) {
        Ok(_) => next.run(req).await,
        Err(refused) => error(StatusCode::BAD_REQUEST, refused),
    }
}

/// The answer to a body axum could not read (`status` and `text` its own): a body over the limit
/// is answered with the limit and the option that sets it, rather than axum's "length limit
/// exceeded".
fn unread_body(max_body: usize, status: StatusCode, text: String) -> Response {
    if status != StatusCode::PAYLOAD_TOO_LARGE {
        return error(status, text);
    }
    let mib = format!("{:.3}", max_body as f64 / (1024.0 * 1024.0));
    let mib = mib.trim_end_matches('0').trim_end_matches('.');
    error(status, format!("request body larger than the limit of {mib} MiB ({max_body} bytes), which `marnet serve --max-body-mib` sets"))
}

/// Whether a multipart part is the image: a file part (one with a filename) or, filename or
/// not, the part named `image`. Other parts (form fields such as `note=...`) are ignored.
fn is_file_part(field: &axum::extract::multipart::Field) -> bool {
    field.file_name().is_some() || field.name() == Some("image")
}

/// The image bytes of a request: the raw body, or the one file part of a multipart body
/// (see [`is_file_part`]; more than one is refused rather than all but one ignored).
async fn image_bytes(state: &AppState, req: Request) -> Result<axum::body::Bytes, Response> {
    let unread = |status, text| unread_body(state.opts.max_body, status, text);
    let is_multipart = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_multipart {
        return axum::body::Bytes::from_request(req, state).await.map_err(|e| unread(e.status(), e.body_text()));
    }
    let mut form = Multipart::from_request(req, state).await.map_err(|e| unread(e.status(), e.body_text()))?;
    let (mut image, mut files) = (None, 0);
    // Read to the end (within the body limit) to count the file parts.
    while let Some(field) = form.next_field().await.map_err(|e| unread(e.status(), e.body_text()))? {
        let file = is_file_part(&field);
        let bytes = field.bytes().await.map_err(|e| unread(e.status(), e.body_text()))?;
        if file {
            files += 1;
            image.get_or_insert(bytes);
        }
    }
    match (image, files) {
        (Some(image), 1) => Ok(image),
        (None, _) => Err(error(StatusCode::BAD_REQUEST, "multipart body has no file part (send the image as `image`)")),
        (Some(_), n) => Err(error(StatusCode::BAD_REQUEST, format!("send one image per request (found {n} file parts)"))),
    }
}

async fn predict(State(state): State<AppState>, req: Request) -> Response {
    let k = match requested_k(req.uri(), state.opts.top_k, state.classes) {
        Ok(k) => k,
        Err(refused) => return error(StatusCode::BAD_REQUEST, refused),
    };
    // `curl -d @photo.jpg` sends a form (and drops the file's line breaks), not the file.
    let form = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
    let work = async {
        let bytes = image_bytes(&state, req).await?;
        if bytes.is_empty() {
            return Err(error(StatusCode::BAD_REQUEST, "empty body: send the image bytes"));
        }
        state.pipeline.submit(bytes, k).await.map_err(|f| match f {
            Failure::BadImage(e) if form => {
                failure(Failure::BadImage(format!("{e} (the body came as a form: with curl, send the file with --data-binary @FILE, not -d)")))
            }
            f => failure(f),
        })
    };
    match tokio::time::timeout(state.opts.timeout, work).await {
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {:?}", state.opts.timeout)),
        Ok(Err(resp)) => resp,
        Ok(Ok(top)) => Json(serde_json::json!({ "top": top })).into_response(),
    }
}

/// The routes, as the 404 answer lists them.
const ROUTES: &str = "POST /predict, GET /health, GET /model, GET /stats";

/// The HTTP routes over a running pipeline.
fn router(state: AppState) -> Router {
    let info = state.model_info.clone();
    let limit = state.opts.max_body;
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/model", get(move || async move { Json((*info).clone()) }))
        .route("/stats", get(|State(state): State<AppState>| async move { Json(state.pipeline.stats()) }))
        .route_layer(middleware::from_fn(no_query))
        .route("/predict", post(predict))
        .fallback(|method: Method, uri: Uri| async move { error(StatusCode::NOT_FOUND, format!("no route {method} {}: the routes are {ROUTES}", uri.path())) })
        // axum adds the `Allow` header to this answer.
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take {method} (the Allow header says what it takes)", uri.path()))
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Resolves `opts.addr`, loads the bundle at `bundle`, binds the first of the addresses that
/// works, prints `listening on http://ADDR` and serves until Ctrl-C (then stops gracefully, see
/// [`connections::serve_connections`]).
pub fn serve(bundle: PathBuf, dev: Device, opts: ServeOptions) -> Result<()> {
    let _stop = crate::interrupt::stop_at_safe_points("stopping: finishing the requests in flight");
    let addrs = connections::resolve(&opts.addr)?;
    anyhow::ensure!(opts.max_connections > 0, "the connection limit must be at least 1");
    anyhow::ensure!(opts.top_k > 0 && opts.max_batch > 0, "the default k and the batch must be at least 1");
    anyhow::ensure!(opts.decoding.threads > 0, "at least one decode thread is needed");
    anyhow::ensure!(!opts.header_timeout.is_zero() && !opts.idle_timeout.is_zero(), "connection timeouts must be positive");
    let batching = Batching { max_batch: opts.max_batch, wait: opts.batch_wait };
    let load = move || {
        let pred = Predictor::load(&bundle, &dev)?;
        let m = &pred.config;
        let info = serde_json::json!({
            "bundle": pred.dir, "classes": m.classes, "visual_encoder": m.visual_encoder,
            "preprocess": m.preprocess, "sampler": m.inference.sampler, "seed": m.inference.seed,
            "marnet_version": m.marnet_version,
        });
        let pre = pred.preprocess();
        Ok((pred, pre, info))
    };
    let (pipeline, mut info) = Pipeline::start(load, batching, opts.decoding)?;
    info["limits"] = serde_json::json!({
        "max_body_bytes": opts.max_body, "max_batch": opts.max_batch,
        "batch_wait_ms": opts.batch_wait.as_millis() as u64, "decode_threads": opts.decoding.threads, "decode_priority": opts.decoding.priority,
        "timeout_ms": opts.timeout.as_millis() as u64,
        "header_timeout_ms": opts.header_timeout.as_millis() as u64, "idle_timeout_ms": opts.idle_timeout.as_millis() as u64,
        "max_connections": opts.max_connections,
        "max_request_line_bytes": heads::MAX_REQUEST_LINE, "max_head_bytes": heads::MAX_HEAD, "max_headers": heads::MAX_HEADERS,
    });
    let classes = info["classes"].as_array().map_or(1, |c| c.len());
    let state = AppState { pipeline, model_info: Arc::new(info), classes, opts: opts.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = connections::bind(&addrs, &opts.addr).await?;
        // Informational: a closed stdout must not stop the server.
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on http://{}", listener.local_addr()?).and_then(|_| stdout.flush());
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            while !crate::interrupt::requested() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = stop_tx.send(true);
        });
        connections::serve_connections(listener, router(state), &opts, stop).await
    })
}
