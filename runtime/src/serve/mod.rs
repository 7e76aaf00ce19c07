//! `idpatch serve`: an HTTP server for group-photo generation on the pipeline's stages.
//!
//! - [`api`]: the request and response types and the request's checks (the command line's, naming
//!   the request's fields);
//! - [`http`]: the routes (axum on tokio), authentication, limits, Server-Sent Events;
//! - [`queue`]: the bounded job queue and the registry of live generations (cancellation);
//! - [`worker`]: one engine thread per device, owning its graphs, running encode, denoise and
//!   decode; prepare (face decoding, face detection for photos without keypoints, checks,
//!   tokens) and PNG encoding run on tokio's blocking threads, overlapped with the denoising of
//!   the job in front;
//! - [`metrics`]: Prometheus metrics; [`openapi`]: the OpenAPI document, from the types.
//!
//! The server logs one JSON line per request on stderr (id, status, queue wait, stage times),
//! plus lines for start-up, warm-up and drain. SIGTERM or SIGINT starts a drain: `/readyz` answers
//! 503, new generations are refused with 503, queued and running ones finish (up to the drain
//! timeout, after which they are cancelled), then the process exits with status 0.

pub mod api;
pub mod conn;
pub mod detectors;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod queue;
pub mod stream;
pub mod worker;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::detect::Detector;
use crate::image_io::Rgb8;
use crate::infotext::RunRecord;
use crate::layout::{Layout, Person, Placement};
use crate::manifest::{Checksums, ModelSet};
use crate::pipeline::{self, Job, Models, Params, Tokenizers};
use crate::{Error, Result};
use detectors::DetectorPool;

use self::metrics::Metrics;
use self::queue::Queue;

/// Server settings; [`Config::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0: any free port; the log line `listening` says which).
    pub listen: SocketAddr,
    /// Most jobs waiting for a worker; one more is refused with 429.
    pub queue_capacity: usize,
    /// Longest a job may wait for a worker; past it the request gets 504 and the job never runs.
    pub request_timeout: Duration,
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest width or height, in pixels.
    pub max_side: u32,
    /// Most denoising steps.
    pub max_steps: usize,
    /// Most people per request.
    pub max_people: usize,
    /// Bearer token required on `/v1/*` (compared in constant time); `None`: no authentication.
    pub api_key: Option<String>,
    /// Longest a drain waits for queued and running jobs before cancelling them.
    pub drain_timeout: Duration,
    /// The warm-up generation each worker runs before the server is ready.
    pub warmup: Warmup,
    /// Most connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (also the longest a keep-alive
    /// connection may stay idle) and, separately, its body; past it the connection is closed
    /// (headers) or the request gets 408 (body).
    pub read_timeout: Duration,
    /// Most requests being prepared (decoded, faces detected) at once; more wait their turn, and
    /// are refused with 429 if the queue is full when their turn comes.
    pub max_preparing: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            queue_capacity: 32,
            request_timeout: Duration::from_secs(300),
            max_body_bytes: 32 << 20,
            max_side: 2048,
            max_steps: 150,
            max_people: crate::layout::MAX_PEOPLE,
            api_key: None,
            drain_timeout: Duration::from_secs(60),
            warmup: Warmup::Synthetic {
                width: 1024,
                height: 1024,
            },
            max_connections: 1024,
            read_timeout: Duration::from_secs(30),
            max_preparing: 2,
        }
    }
}

/// The warm-up generation: its shapes are the ones whose first-run preparation (tract's plan
/// optimisation, TensorRT's engine build) it pays for ahead of the first request.
#[derive(Debug, Clone)]
pub enum Warmup {
    /// One person at the centre with a grey aligned face crop, at this size.
    Synthetic { width: u32, height: u32 },
    /// A layout file (faces read from its paths).
    Layout(PathBuf),
    /// None: ready as soon as the graphs are loaded.
    Off,
}

/// Denoising steps of the warm-up: enough for both encoder sequence lengths (before and after
/// the ID tokens join at ID-Patch's default injection ratio).
const WARMUP_STEPS: usize = 5;

/// What the handlers and workers share.
pub struct ServerState {
    pub config: Config,
    pub set: ModelSet,
    pub tokenizers: Tokenizers,
    /// What the PNGs record about the run (set, checksums, backend).
    pub run: RunRecord,
    /// The set's face detectors (MTCNN, one per worker's backend), for people whose photo has
    /// no `face_keypoints` and is not an aligned crop.
    pub detectors: DetectorPool,
    /// Slots for requests being prepared ([`Config::max_preparing`]).
    pub preparing: tokio::sync::Semaphore,
    pub queue: Queue,
    pub metrics: Metrics,
    workers: usize,
    ready_workers: AtomicUsize,
    draining: AtomicBool,
    startup_error: Mutex<Option<String>>,
    stop: tokio::sync::Notify,
    next_id: AtomicU64,
    id_prefix: String,
}

impl ServerState {
    /// Graphs loaded and warmed up on every worker, and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready_workers.load(Ordering::Acquire) == self.workers && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Workers warmed up so far, of all.
    pub fn readiness(&self) -> (usize, usize) {
        (self.ready_workers.load(Ordering::Acquire), self.workers)
    }

    fn worker_ready(&self) {
        self.ready_workers.fetch_add(1, Ordering::AcqRel);
    }

    /// A worker could not warm up: the server stops with an error.
    fn fail_startup(&self, message: String) {
        *self.startup_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        self.stop.notify_one();
    }

    fn update_gauges(&self) {
        worker::gauges(&self.queue, &self.metrics);
    }

    /// A new generation id: unique within this process and unlikely to repeat across restarts.
    pub fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("gen-{}-{n}", self.id_prefix)
    }

    /// One JSON line on stderr: `{"ts": ..., "event": ..., fields...}`.
    pub fn log_event(&self, event: &str, fields: Value) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut line = json!({"ts": ts, "event": event});
        if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        // stderr failing has nowhere to report; the line is dropped.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

/// One device's graphs and the name of the backend that loaded them.
pub struct Engine {
    pub models: Models,
    /// [`crate::backend::Backend::name`] of the backend that loaded the graphs.
    pub backend: String,
}

/// Runs the server until SIGTERM or SIGINT and a drain, on one worker per engine (all engines
/// load the same set); `detectors` (at least one; one per engine's backend serves most) locate
/// faces in photos that come without keypoints. Returns when the server stopped; errors: the
/// address cannot be bound, a worker's warm-up failed, or the warm-up layout is unusable.
pub fn run(config: Config, engines: Vec<Engine>, mut detectors: Vec<Detector>) -> Result<()> {
    if detectors.is_empty() {
        return Err(Error::invalid_input(
            "--device-id",
            "no face detector loaded",
        ));
    }
    let first = engines
        .first()
        .ok_or_else(|| Error::invalid_input("--device-id", "no device to run on"))?;
    let set = first.models.set.clone();
    let tokenizers = Tokenizers::load(&set)?;
    let warmup = warmup_job(&config.warmup, &set, &tokenizers, detectors.first_mut())?;
    let run = RunRecord {
        set_name: set.name().to_string(),
        digest: set.model_set_digest()?,
        checksums: match set.checksums {
            Checksums::Verify => "verified".into(),
            Checksums::Skip => "skipped".into(),
        },
        backend: first.backend.clone(),
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let config_max_preparing = config.max_preparing.max(1);
    let state = Arc::new(ServerState {
        queue: Queue::new(config.queue_capacity),
        metrics: Metrics::new(),
        workers: engines.len(),
        ready_workers: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        startup_error: Mutex::new(None),
        stop: tokio::sync::Notify::new(),
        next_id: AtomicU64::new(1),
        id_prefix: format!("{:x}{:x}", std::process::id(), started & 0xffff_ffff),
        config,
        set,
        tokenizers,
        run,
        detectors: DetectorPool::new(detectors),
        preparing: tokio::sync::Semaphore::new(config_max_preparing),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("idpatch-http")
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    runtime.block_on(serve(state, engines, warmup))
}

async fn serve(state: Arc<ServerState>, engines: Vec<Engine>, warmup: Option<Job>) -> Result<()> {
    let listen = state.config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::invalid_input("--listen", format!("cannot listen on {listen}: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("listening socket", e))?;
    state.log_event(
        "listening",
        json!({"address": address.to_string(), "workers": engines.len()}),
    );
    let mut handles = Vec::new();
    for (index, engine) in engines.into_iter().enumerate() {
        let handle = worker::spawn(index, engine.models, warmup.clone(), state.clone())
            .map_err(|e| Error::io("worker thread", e))?;
        handles.push(handle);
    }
    let app = http::router(state.clone());
    let drained = tokio::spawn(drain_on_signal(state.clone()));
    let shutdown = async move {
        let _ = drained.await;
    };
    conn::serve(listener, app, state.clone(), shutdown).await;
    state.queue.close();
    let joined = tokio::task::spawn_blocking(move || {
        for handle in handles {
            let _ = handle.join();
        }
    });
    let _ = joined.await;
    let failed = state
        .startup_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match failed {
        Some(message) => Err(Error::graph("warm-up", message)),
        None => {
            state.log_event("stopped", json!({}));
            Ok(())
        }
    }
}

/// Waits for SIGTERM or SIGINT (or a failed start), then drains: no new work, queued and running
/// jobs finish or, past the drain timeout, are cancelled. Returns when the HTTP server may stop.
async fn drain_on_signal(state: Arc<ServerState>) {
    let signal = tokio::select! {
        s = wait_for_signal() => s,
        () = state.stop.notified() => "startup failure",
    };
    state.draining.store(true, Ordering::Release);
    state.queue.close();
    let live = state.queue.live();
    state.log_event("draining", json!({"signal": signal, "live_jobs": live}));
    let deadline = Instant::now() + state.config.drain_timeout;
    while state.queue.live() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if state.queue.live() > 0 {
        state.log_event(
            "drain_timeout",
            json!({"cancelled_jobs": state.queue.live()}),
        );
        let queued = state.queue.cancel_all();
        state.metrics.cancelled.inc_by(queued as u64);
        // Running jobs stop after their current step.
        while state.queue.live() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// The warm-up job of `warmup` (None when off).
/// What can be checked of the warm-up before any graph is loaded: the layout file parses and its
/// sides (or the `--warmup-size`) suit the set. Errors name the flag.
pub fn check_warmup(warmup: &Warmup, set: &ModelSet, max_side: u32) -> Result<()> {
    let (flag, width, height) = match warmup {
        Warmup::Off => return Ok(()),
        Warmup::Layout(path) => {
            let layout = Layout::load(path, true).map_err(|e| named("--warmup-layout", e))?;
            ("--warmup-layout", layout.width, layout.height)
        }
        Warmup::Synthetic { width, height } => ("--warmup-size", *width, *height),
    };
    if width.max(height) > max_side {
        return Err(Error::invalid_input(
            flag,
            format!("{width}x{height} is larger than --max-side ({max_side}): no request could use its shapes"),
        ));
    }
    pipeline::check_image_sides(
        &set.manifest.config,
        [("width", width as usize), ("height", height as usize)],
    )
    .map_err(|e| named(flag, e))
}

/// An input error re-attributed to `flag` (the original input becomes part of the reason).
pub fn named(flag: &str, e: Error) -> Error {
    match e {
        Error::InvalidInput { input, reason } => {
            Error::invalid_input(flag, format!("{input}: {reason}"))
        }
        Error::Io { path, cause } => {
            Error::invalid_input(flag, format!("{}: {cause}", path.display()))
        }
        other => other,
    }
}

/// The warm-up job `warmup` describes: a layout file (its photos' faces found with `detector`
/// when they come without keypoints, as for requests) or one grey face at a given size. Errors
/// name the flag: an unreadable or invalid layout is a `--warmup-layout` error, a size the set
/// cannot generate a `--warmup-size` one.
pub fn warmup_job(
    warmup: &Warmup,
    set: &ModelSet,
    tokenizers: &Tokenizers,
    detector: Option<&mut Detector>,
) -> Result<Option<Job>> {
    let flag = match warmup {
        Warmup::Layout(_) => "--warmup-layout",
        _ => "--warmup-size",
    };
    warmup_job_unnamed(warmup, set, tokenizers, detector).map_err(|e| named(flag, e))
}

fn warmup_job_unnamed(
    warmup: &Warmup,
    set: &ModelSet,
    tokenizers: &Tokenizers,
    detector: Option<&mut Detector>,
) -> Result<Option<Job>> {
    let params = Params {
        prompt: "warm-up".into(),
        steps: WARMUP_STEPS,
        ..Params::default()
    };
    match warmup {
        Warmup::Off => Ok(None),
        Warmup::Layout(path) => {
            let mut layout = Layout::load(path, true)?;
            let faces = pipeline::load_face_images(&layout)?;
            let needs_detection = layout
                .people
                .iter()
                .zip(&faces)
                .any(|(person, img)| crate::detect::people::needs_detection(person, img));
            match detector {
                Some(detector) if needs_detection => {
                    crate::detect::people::locate_faces(&mut layout, &faces, detector)?;
                }
                _ => {}
            }
            pipeline::prepare_with_faces(set, tokenizers, layout, params, None, Some(&faces))
                .map(Some)
        }
        Warmup::Synthetic { width, height } => {
            let layout = Layout {
                width: *width,
                height: *height,
                people: vec![Person {
                    face: None,
                    placement: Placement::Position([*width as f32 / 2.0, *height as f32 / 2.0]),
                    face_keypoints: None,
                    face_index: None,
                }],
            };
            let size = crate::face::ARCFACE_SIZE;
            let grey = Rgb8::new(size, size, vec![128; size * size * 3])?;
            let faces = [grey];
            pipeline::prepare_with_faces(set, tokenizers, layout, params, None, Some(&faces))
                .map(Some)
        }
    }
}
