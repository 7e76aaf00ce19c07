//! The HTTP routes (axum): generation (JSON or multipart, PNG or JSON or Server-Sent Events),
//! cancellation, health, readiness, metrics and the OpenAPI document; plus the middleware that
//! authenticates `/v1/*`, counts every answer and logs one line per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{self, ApiError, ErrorBody, GenerationResponse, ResponseFormat};
use super::queue::{Cancel, Event, Refused, Ticket};
use super::{stream, ServerState};
use crate::detect::people;
use crate::image_io;
use crate::infotext;
use crate::pipeline::{self, Generated, Job};

type AppState = Arc<ServerState>;

/// Header carrying a generation's id (the client may choose it; else the server does).
pub const GENERATION_ID: &str = "x-generation-id";

/// All routes, with authentication on `/v1/*` and the request log on everything.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/generations", post(create_generation))
        .route(
            "/v1/generations/{id}",
            axum::routing::delete(cancel_generation),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// Per-request facts the log line and metrics need, set by the generation handler.
#[derive(Clone, Debug, Default)]
pub struct RequestLog {
    pub id: Option<String>,
    pub queue_wait: Option<f64>,
    pub timings: Option<std::collections::BTreeMap<String, f64>>,
    /// The response is an event stream that logs its own line when it ends.
    pub deferred: bool,
}

async fn log_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = route_label(request.uri().path());
    let mut response = next.run(request).await;
    let status = response.status();
    state
        .metrics
        .requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    let log = response
        .extensions_mut()
        .remove::<RequestLog>()
        .unwrap_or_default();
    if !log.deferred {
        state.log_event(
            "request",
            json!({
                "method": method.as_str(), "route": route, "status": status.as_u16(),
                "id": log.id, "queue_wait": log.queue_wait, "timings": log.timings,
                "seconds": started.elapsed().as_secs_f64(),
            }),
        );
    }
    response
}

/// The route a path belongs to (bounded label values: ids and unknown paths are folded).
fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/v1/generations" => "/v1/generations",
        p if p.starts_with("/v1/generations/") => "/v1/generations/{id}",
        _ => "other",
    }
}

async fn authenticate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            discard_body(&state, request).await;
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            );
            e.field = Some("authorization".into());
            return Err(e);
        }
    }
    Ok(next.run(request).await)
}

/// Process alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// Graphs loaded, warm-up done on every worker, and not draining.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "loading, warming up or draining", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match not_ready(&state) {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(e) => e.into_response(),
    }
}

/// Why new work is refused (503), if it is.
fn not_ready(state: &ServerState) -> Option<ApiError> {
    if state.is_draining() {
        return Some(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: the server is shutting down",
        ));
    }
    let (ready, workers) = state.readiness();
    (ready < workers).then(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {ready} of {workers} workers have loaded and warmed up"),
        )
    })
}

/// Prometheus text exposition format.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "metrics", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.update_gauges();
    let body = state.metrics.render();
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi::document())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Cancels a queued or running generation (a running one stops after its current step).
#[utoipa::path(delete, path = "/v1/generations/{id}",
    params(("id" = String, Path, description = "the generation's id")),
    responses(
        (status = 202, description = "cancelling"),
        (status = 401, description = "no or wrong API key", body = ErrorBody),
        (status = 404, description = "no live generation has this id", body = ErrorBody)))]
pub async fn cancel_generation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = state.queue.cancel(&id);
    if found == Cancel::Queued {
        state.metrics.cancelled.inc();
    }
    if found != Cancel::NotFound {
        let body = Json(json!({"id": id, "status": "cancelling"}));
        Ok((StatusCode::ACCEPTED, body).into_response())
    } else {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no queued or running generation has id {:?}",
                api::echo(&id)
            ),
        );
        e.field = Some("id".into());
        Err(e)
    }
}

/// Generates a group photo. The body is JSON ([`api::GenerationRequest`]) or
/// `multipart/form-data` with a `request` part (that JSON without the people's `face`) and one
/// `face` file part per person, in order.
#[utoipa::path(post, path = "/v1/generations",
    request_body(content = api::GenerationRequest, description = "JSON; or multipart/form-data \
        with a `request` part (this JSON without `people[].face`) and one `face` file per person"),
    params(("x-generation-id" = Option<String>, Header,
        description = "the id to give the generation (1 to 64 of A-Z a-z 0-9 . _ -)")),
    responses(
        (status = 200, description = "the PNG (`response_format: png`), the JSON \
            (`b64_json`), or Server-Sent Events (`stream: true`)", body = GenerationResponse),
        (status = 400, description = "invalid request", body = ErrorBody),
        (status = 401, description = "no or wrong API key", body = ErrorBody),
        (status = 409, description = "cancelled, or the id is in use", body = ErrorBody),
        (status = 413, description = "body over the limit", body = ErrorBody),
        (status = 415, description = "neither JSON nor multipart", body = ErrorBody),
        (status = 429, description = "queue full (see Retry-After)", body = ErrorBody),
        (status = 500, description = "a graph failed", body = ErrorBody),
        (status = 503, description = "not ready or draining", body = ErrorBody),
        (status = 504, description = "waited past the deadline; never ran", body = ErrorBody)))]
pub async fn create_generation(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if let Some(e) = not_ready(&state) {
        let reason = if state.is_draining() {
            "draining"
        } else {
            "not_ready"
        };
        state.metrics.rejected.with_label_values(&[reason]).inc();
        discard_body(&state, request).await;
        return Err(e);
    }
    let id = match generation_id(&state, request.headers()) {
        Ok(id) => id,
        Err(e) => {
            discard_body(&state, request).await;
            return Err(e);
        }
    };
    let read_timeout = state.config.read_timeout;
    let (body, files) = tokio::time::timeout(read_timeout, read_body(&state, request))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    read_timeout.as_secs_f64()
                ),
            )
        })??;
    // Preparing decodes photos and runs face detection: a bounded number at once, and only for
    // requests the queue can still take. Waiting for a slot costs nothing if the client leaves.
    // From here a client that leaves (waiting for a slot or being prepared) is logged as 499.
    let mut abandoned = AbandonOnDrop {
        flag: Arc::default(),
        state: state.clone(),
        started,
        armed: true,
    };
    let Ok(slot) = state.preparing.acquire().await else {
        abandoned.armed = false;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        ));
    };
    if state.queue.depth() >= state.config.queue_capacity {
        abandoned.armed = false;
        return Err(queue_full(&state));
    }
    let prepare_state = state.clone();
    let flag = abandoned.flag.clone();
    let prepared =
        tokio::task::spawn_blocking(move || prepare(&prepare_state, &body, files, &flag))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    abandoned.armed = false;
    drop(abandoned);
    drop(slot);
    let (job, format, stream) = prepared?;
    let prepare_seconds = started.elapsed().as_secs_f64();
    state.metrics.observe("prepare", prepare_seconds);

    let deadline = Instant::now() + state.config.request_timeout;
    let (ticket, events) = Ticket::new(id, job, deadline);
    admit(&state, &ticket)?;
    let guard = CancelOnDrop {
        state: state.clone(),
        id: ticket.id.clone(),
        armed: true,
        started,
        logs_gone: !stream,
    };
    let outcome = Outcome {
        state,
        ticket,
        guard,
        started,
        prepare_seconds,
        queue_wait: None,
    };
    if stream {
        return Ok(stream::response(outcome, events));
    }
    outcome.wait(events, format).await
}

/// Set when the handler that started a preparation is dropped (its client went away), so the
/// blocking preparation can stop before its costly part.
/// Also logs the request (status 499, the client closed it) and counts it.
struct AbandonOnDrop {
    flag: Arc<AtomicBool>,
    state: AppState,
    started: Instant,
    armed: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Relaxed);
            log_client_gone(&self.state, None, self.started);
        }
    }
}

/// The request line and count of a non-streaming generation whose client left before its
/// answer (499, as proxies record a client-closed request); the HTTP layer never sees it end.
fn log_client_gone(state: &ServerState, id: Option<&str>, started: Instant) {
    state
        .metrics
        .requests
        .with_label_values(&["/v1/generations", "499"])
        .inc();
    state.log_event(
        "request",
        json!({
            "method": "POST", "route": "/v1/generations", "status": 499, "id": id,
            "seconds": started.elapsed().as_secs_f64(),
        }),
    );
}

/// Reads and drops the body of a request refused before its body was read (at most the body
/// limit), so that the client, still sending, gets the answer instead of a reset connection.
async fn discard_body(state: &ServerState, request: Request) {
    let read = axum::body::to_bytes(request.into_body(), state.config.max_body_bytes);
    let _ = tokio::time::timeout(state.config.read_timeout, read).await;
}

/// The client's `x-generation-id`, checked, or a new one.
fn generation_id(state: &ServerState, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(GENERATION_ID) else {
        return Ok(state.new_id());
    };
    let id = value.to_str().unwrap_or("");
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(ApiError::field(
            GENERATION_ID,
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    Ok(id.to_string())
}

/// The JSON body and, for multipart, the face files; 413 over the body limit, 415 for another
/// content type.
async fn read_body(
    state: &ServerState,
    request: Request,
) -> Result<(Bytes, Option<Vec<Vec<u8>>>), ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over this server's limit of {limit} bytes"),
        )
    };
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (essence, parameters) = content_type
        .split_once(';')
        .unwrap_or((content_type.as_str(), ""));
    if essence.trim() == "multipart/form-data" {
        let multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        return read_multipart(multipart, too_large).await;
    }
    let charset_ok = parameters.split(';').all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim() == "charset" => {
            matches!(v.trim().trim_matches('"'), "utf-8" | "utf8")
        }
        _ => true,
    });
    if essence.trim() != "application/json" || !charset_ok {
        discard_body(state, request).await;
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request as application/json (UTF-8) or multipart/form-data",
        ));
    }
    let body = Bytes::from_request(request, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
        }
    })?;
    Ok((body, None))
}

async fn read_multipart(
    mut multipart: Multipart,
    too_large: impl Fn() -> ApiError,
) -> Result<(Bytes, Option<Vec<Vec<u8>>>), ApiError> {
    let part_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("multipart: {}", e.body_text()),
            )
        }
    };
    let mut body = None;
    let mut faces = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(part_error)? {
        let name = field.name().unwrap_or("(no name)").to_string();
        match name.as_str() {
            "request" if body.is_none() => body = Some(field.bytes().await.map_err(part_error)?),
            "face" => faces.push(field.bytes().await.map_err(part_error)?.to_vec()),
            _ => {
                return Err(ApiError::field(
                    name.clone(),
                    "unexpected part (expected one `request` and a `face` per person)",
                ))
            }
        }
    }
    let body = body.ok_or_else(|| ApiError::field("request", "missing: the parameters as JSON"))?;
    Ok((body, Some(faces)))
}

/// Parses, checks and prepares a request (a blocking thread: base64, image decoding, face
/// detection for photos without keypoints, alignment and tokenizing), as `idpatch generate`
/// prepares its layout.
fn prepare(
    state: &ServerState,
    body: &[u8],
    files: Option<Vec<Vec<u8>>>,
    abandoned: &AtomicBool,
) -> Result<(Job, ResponseFormat, bool), ApiError> {
    let request = api::parse_json(body)?;
    let limits = api::RequestLimits {
        max_side: state.config.max_side,
        max_steps: state.config.max_steps,
        max_people: state.config.max_people,
    };
    let mut parsed = api::to_pipeline(request, files, limits)?;
    // The sides against the set before the face detector runs, as `idpatch generate` does.
    let layout = &parsed.layout;
    pipeline::check_image_sides(
        &state.set.manifest.config,
        [
            ("layout width", layout.width as usize),
            ("layout height", layout.height as usize),
        ],
    )?;
    let needs_detection = parsed
        .layout
        .people
        .iter()
        .zip(&parsed.faces)
        .any(|(person, img)| people::needs_detection(person, img));
    // The client may have gone while the photos were decoded; detection is the costly part.
    if abandoned.load(Ordering::Relaxed) {
        return Err(ApiError::new(StatusCode::CONFLICT, "the client went away"));
    }
    if needs_detection {
        state
            .detectors
            .with(|detector| people::locate_faces(&mut parsed.layout, &parsed.faces, detector))?;
    }
    let job = pipeline::prepare_with_faces(
        &state.set,
        &state.tokenizers,
        parsed.layout,
        parsed.params,
        None,
        Some(&parsed.faces),
    )?;
    Ok((job, parsed.response_format, parsed.stream))
}

/// Queues the ticket: 429 (with Retry-After) when full, 503 when draining, 409 for an id in use.
fn admit(state: &ServerState, ticket: &Arc<Ticket>) -> Result<(), ApiError> {
    match state.queue.push(ticket.clone()) {
        Ok(_) => {
            state.update_gauges();
            Ok(())
        }
        Err(Refused::Full) => Err(queue_full(state)),
        Err(Refused::Closed) => {
            state
                .metrics
                .rejected
                .with_label_values(&["draining"])
                .inc();
            Err(not_ready(state).unwrap_or_else(|| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not accepting work")
            }))
        }
        Err(Refused::DuplicateId) => Err(ApiError {
            status: StatusCode::CONFLICT,
            ..ApiError::field(GENERATION_ID, "a queued or running generation has this id")
        }),
    }
}

/// 429 with Retry-After: the queue holds `--queue-capacity` jobs already (counted as rejected).
fn queue_full(state: &ServerState) -> ApiError {
    state
        .metrics
        .rejected
        .with_label_values(&["queue_full"])
        .inc();
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "the queue is full ({} waiting); retry later",
            state.config.queue_capacity
        ),
    );
    e.retry_after = Some(retry_after(state));
    e
}

/// Seconds until a slot is likely free: the queue's jobs at the mean generation time seen so far
/// (1 s before any), shared by the workers; at least 1.
fn retry_after(state: &ServerState) -> u64 {
    let total = state.metrics.stage_seconds.with_label_values(&["total"]);
    let count = total.get_sample_count();
    let mean = if count == 0 {
        1.0
    } else {
        total.get_sample_sum() / count as f64
    };
    let (_, workers) = state.readiness();
    let seconds = state.queue.depth() as f64 * mean / workers.max(1) as f64;
    seconds.ceil().clamp(1.0, 3600.0) as u64
}

/// Cancels the generation when the request's future or stream is dropped before it finished
/// (the client went away).
pub struct CancelOnDrop {
    state: AppState,
    id: String,
    armed: bool,
    /// When the request started; a non-streaming one is logged as 499 when its client leaves
    /// (a stream logs its own end).
    started: Instant,
    logs_gone: bool,
}

impl CancelOnDrop {
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let found = self.state.queue.cancel(&self.id);
        if found == Cancel::Queued {
            self.state.metrics.cancelled.inc();
        }
        if found != Cancel::NotFound {
            self.state.log_event("client_gone", json!({"id": self.id}));
        }
        if self.logs_gone {
            log_client_gone(&self.state, Some(&self.id), self.started);
        }
    }
}

/// One admitted generation, followed to its end by its handler or stream.
pub struct Outcome {
    pub state: AppState,
    pub ticket: Arc<Ticket>,
    pub guard: CancelOnDrop,
    pub started: Instant,
    pub prepare_seconds: f64,
    pub queue_wait: Option<Duration>,
}

impl Outcome {
    /// The next event; [`Event::Finished`] with a 504 error stands for the deadline passing
    /// before a worker took the job (which then never runs).
    pub async fn next(&mut self, events: &mut UnboundedReceiver<Event>) -> Result<Event, ApiError> {
        loop {
            let event = if self.queue_wait.is_some() {
                events.recv().await
            } else {
                let deadline = tokio::time::Instant::from_std(self.ticket.deadline);
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(event) => event,
                    Err(_) if self.state.queue.expire(&self.ticket) => {
                        self.guard.disarm();
                        self.state.update_gauges();
                        let metrics = &self.state.metrics;
                        metrics.rejected.with_label_values(&["deadline"]).inc();
                        return Err(ApiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!(
                                "waited {:.1} s for a worker, past this server's request timeout; \
                                 the generation did not run",
                                self.ticket.enqueued.elapsed().as_secs_f64()
                            ),
                        ));
                    }
                    // A worker took the job just now: its Started event is on the way.
                    Err(_) => continue,
                }
            };
            let Some(event) = event else {
                self.guard.disarm();
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the worker went away",
                ));
            };
            match &event {
                Event::Started { queue_wait, .. } => {
                    self.queue_wait = Some(*queue_wait);
                    self.state
                        .metrics
                        .observe("queue", queue_wait.as_secs_f64());
                }
                Event::Finished(_) => self.guard.disarm(),
                _ => {}
            }
            return Ok(event);
        }
    }

    /// Non-streaming: waits for the image and answers with it.
    async fn wait(
        mut self,
        mut events: UnboundedReceiver<Event>,
        format: ResponseFormat,
    ) -> Result<Response, ApiError> {
        let generated = loop {
            if let Event::Finished(result) = self.next(&mut events).await? {
                break (*result)?;
            }
        };
        let (png, body) = self.finish(generated).await?;
        let log = RequestLog {
            id: Some(body.id.clone()),
            queue_wait: self.queue_wait.map(|d| d.as_secs_f64()),
            timings: Some(body.timings.clone()),
            deferred: false,
        };
        let id = body.id.clone();
        let mut response = match format {
            ResponseFormat::B64Json => Json(with_image(body, &png)).into_response(),
            ResponseFormat::Png => {
                let content_type = HeaderValue::from_static("image/png");
                ([(header::CONTENT_TYPE, content_type)], Body::from(png)).into_response()
            }
        };
        if let Ok(id) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(GENERATION_ID, id);
        }
        response.extensions_mut().insert(log);
        Ok(response)
    }

    /// Encodes the PNG (a blocking thread) with the command line's text chunks: the PNG and the
    /// response body without its image (see [`with_image`]).
    pub async fn finish(
        &self,
        generated: Generated,
    ) -> Result<(Vec<u8>, GenerationResponse), ApiError> {
        let started = Instant::now();
        let text = infotext::png_text(&self.ticket.job, &self.state.run, None);
        let image = generated.image;
        let encoded = tokio::task::spawn_blocking(move || {
            let pairs: Vec<(&str, &str)> = text.iter().map(|(k, v)| (*k, v.as_str())).collect();
            image_io::encode_png(&image, &pairs).map(|png| (png, text))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let (png, text) = encoded?;
        let png_seconds = started.elapsed().as_secs_f64();
        let metrics = &self.state.metrics;
        metrics.observe("png", png_seconds);
        let total = self.started.elapsed().as_secs_f64();
        metrics.observe("total", total);
        let mut timings = api::timings_map(&generated.timings);
        timings.insert("prepare".into(), self.prepare_seconds);
        timings.insert(
            "queue".into(),
            self.queue_wait.map_or(0.0, |d| d.as_secs_f64()),
        );
        timings.insert("png".into(), png_seconds);
        timings.insert("total".into(), total);
        let body = GenerationResponse {
            id: self.ticket.id.clone(),
            image: String::new(),
            parameters: text.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            timings,
            warnings: self.ticket.job.warnings(),
        };
        Ok((png, body))
    }
}

/// The response body with the PNG in base64.
pub fn with_image(mut body: GenerationResponse, png: &[u8]) -> GenerationResponse {
    body.image = base64::engine::general_purpose::STANDARD.encode(png);
    body
}
