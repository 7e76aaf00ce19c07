//! `idpatch serve`: the HTTP server ([`idpatch::serve`]) on one worker per device.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use idpatch::detect::{Detector, DetectorOptions};
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::pipeline::Models;
use idpatch::serve::{self, Config, Engine, Warmup};
use idpatch::{fsutil, Error};

use crate::backend_args::{BackendArgs, BackendKind};

/// Largest API key file read.
const MAX_KEY_BYTES: u64 = 4096;

#[derive(clap::Args)]
pub struct Args {
    /// Graph set directory (holding manifest.json).
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    /// Address to listen on (port 0: a free port, named in the `listening` log line).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Backend that runs the graphs [default: tract; ort when an ONNX Runtime flag is given].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// ONNX Runtime execution provider: cpu, cuda, tensorrt or auto.
    #[arg(long)]
    ep: Option<String>,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then $IDPATCH_HOME/lib, then
    /// target/onnxruntime).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// CUDA devices, one worker each: `--device-id 0,1` runs two workers (--ep cuda, tensorrt
    /// or auto).
    #[arg(long, value_delimiter = ',')]
    device_id: Vec<i32>,
    /// Workers on the CPU (each loads its own copy of the graphs); with devices, one per device.
    #[arg(long)]
    workers: Option<usize>,
    /// ONNX Runtime intra-op threads per worker, 1 to 1024.
    #[arg(long)]
    threads: Option<usize>,
    /// Allow TF32 math for FP32 graphs on CUDA.
    #[arg(long)]
    tf32: bool,
    /// Capture CUDA graphs (--ep cuda only).
    #[arg(long)]
    cuda_graph: bool,
    /// TensorRT engine and timing cache root.
    #[arg(long)]
    trt_cache: Option<PathBuf>,
    /// Most jobs waiting for a worker; more are refused with 429 and Retry-After.
    #[arg(long, default_value_t = 32)]
    queue_capacity: usize,
    /// Seconds a job may wait for a worker; past that the request gets 504 and it never runs.
    #[arg(long, default_value_t = 300.0)]
    request_timeout: f64,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Largest width or height of a request, in pixels (at most 8192).
    #[arg(long, default_value_t = 2048)]
    max_side: u32,
    /// Most denoising steps of a request (at most 1000).
    #[arg(long, default_value_t = 150)]
    max_steps: usize,
    /// Most people in a request (1 to 8).
    #[arg(long, default_value_t = 8)]
    max_people: usize,
    /// File holding the bearer token that /v1/* requires (trailing whitespace ignored).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Seconds a drain (SIGTERM, SIGINT) waits for queued and running jobs before cancelling.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// Layout file for the warm-up generation each worker runs before it is ready (default: one
    /// person at `--warmup-size`); give the size and people count requests will use.
    #[arg(long, conflicts_with = "warmup_size")]
    warmup_layout: Option<PathBuf>,
    /// Size of the default warm-up generation, WIDTHxHEIGHT; `off` skips the warm-up.
    #[arg(long, default_value = "1024x1024")]
    warmup_size: String,
    /// Do not verify the set's files against the manifest's sha256.
    #[arg(long)]
    skip_checksums: bool,
}

impl Args {
    /// The backend arguments of one worker (`device` from `--device-id`).
    fn backend_args(&self, device: Option<i32>) -> BackendArgs {
        BackendArgs {
            backend: self.backend,
            ep: self.ep.clone(),
            ort_lib: self.ort_lib.clone(),
            device_id: device,
            threads: self.threads,
            tf32: self.tf32,
            cuda_graph: self.cuda_graph,
            trt_cache: self.trt_cache.clone(),
        }
    }

    /// One entry per worker: the device it runs on.
    fn devices(&self) -> Result<Vec<Option<i32>>, Error> {
        match (self.device_id.is_empty(), self.workers) {
            (false, Some(_)) => Err(Error::invalid_input(
                "--workers",
                "give either --device-id (one worker per device) or --workers, not both",
            )),
            (false, None) => Ok(self.device_id.iter().map(|&d| Some(d)).collect()),
            (true, Some(n)) if !(1..=64).contains(&n) => Err(Error::invalid_input(
                "--workers",
                format!("{n} is not 1 to 64"),
            )),
            (true, workers) => Ok(vec![None; workers.unwrap_or(1)]),
        }
    }

    fn config(&self) -> Result<Config, Error> {
        let seconds = |flag: &str, value: f64| {
            if value.is_finite() && (0.001..=86_400.0).contains(&value) {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(Error::invalid_input(
                    flag,
                    format!("{value} is not a number of seconds from 0.001 to 86400"),
                ))
            }
        };
        let checks: [(&str, bool, &str); 5] = [
            (
                "--queue-capacity",
                (1..=100_000).contains(&self.queue_capacity),
                "1 to 100000",
            ),
            (
                "--max-body-bytes",
                (1024..=1 << 30).contains(&self.max_body_bytes),
                "1 KiB to 1 GiB",
            ),
            (
                "--max-side",
                (32..=idpatch::layout::MAX_SIDE).contains(&self.max_side),
                "32 to 8192",
            ),
            (
                "--max-steps",
                (1..=idpatch::pipeline::MAX_STEPS).contains(&self.max_steps),
                "1 to 1000",
            ),
            (
                "--max-people",
                (1..=idpatch::layout::MAX_PEOPLE).contains(&self.max_people),
                "1 to 8",
            ),
        ];
        if let Some((flag, _, range)) = checks.iter().find(|(_, ok, _)| !ok) {
            return Err(Error::invalid_input(*flag, format!("must be {range}")));
        }
        Ok(Config {
            listen: self.listen,
            queue_capacity: self.queue_capacity,
            request_timeout: seconds("--request-timeout", self.request_timeout)?,
            max_body_bytes: self.max_body_bytes,
            max_side: self.max_side,
            max_steps: self.max_steps,
            max_people: self.max_people,
            api_key: self.api_key()?,
            drain_timeout: seconds("--drain-timeout", self.drain_timeout)?,
            warmup: self.warmup()?,
        })
    }

    fn api_key(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let text = fsutil::read_text_limited(path, MAX_KEY_BYTES, "--api-key-file")?;
        let key = text.trim_end().to_string();
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid_input(
                "--api-key-file",
                format!(
                    "{}: the key must be one word of printable characters",
                    path.display()
                ),
            ));
        }
        Ok(Some(key))
    }

    fn warmup(&self) -> Result<Warmup, Error> {
        if let Some(path) = &self.warmup_layout {
            return Ok(Warmup::Layout(path.clone()));
        }
        if self.warmup_size == "off" {
            return Ok(Warmup::Off);
        }
        let size = self
            .warmup_size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
        match size {
            Some((width, height)) => Ok(Warmup::Synthetic { width, height }),
            None => Err(Error::invalid_input(
                "--warmup-size",
                format!("{:?} is not WIDTHxHEIGHT or off", self.warmup_size),
            )),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let devices = args.devices()?;
    for device in &devices {
        args.backend_args(*device).check()?;
    }
    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    // The backends stay alive as long as the graphs they loaded.
    let mut backends = Vec::new();
    let mut engines = Vec::new();
    for device in devices {
        let backend_args = args.backend_args(device);
        let backend = backend_args.make()?;
        let models = Models::load(backend.as_ref(), set.clone())?;
        backend_args.check_resolved(backend.as_ref())?;
        engines.push(Engine {
            models,
            backend: backend.name(),
        });
        backends.push(backend);
    }
    // The face detector runs on the first device's backend, for people given without keypoints.
    let detector = Detector::load(backends[0].as_ref(), &set, DetectorOptions::default())?;
    serve::run(config, engines, detector)?;
    drop(backends);
    Ok(ExitCode::SUCCESS)
}
