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
    /// Most connections open at once; more are closed as they arrive.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers (also the longest a keep-alive
    /// connection may stay idle), and again its body (408 past it).
    #[arg(long, default_value_t = 30.0)]
    read_timeout: f64,
    /// Most requests prepared at once (photo decoding, face detection); more wait their turn.
    /// Each holds its decoded photos (at most 64 Mi pixels per photo) while it is prepared.
    #[arg(long, default_value_t = 2)]
    max_preparing: usize,
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
            profile_dir: None,
        }
    }

    /// One entry per worker: the device it runs on.
    fn devices(&self) -> Result<Vec<Option<i32>>, Error> {
        match (self.device_id.is_empty(), self.workers) {
            (false, Some(_)) => Err(Error::invalid_input(
                "--workers",
                "give either --device-id (one worker per device) or --workers, not both",
            )),
            (false, None) => {
                let mut seen = std::collections::BTreeSet::new();
                if let Some(d) = self.device_id.iter().find(|d| !seen.insert(**d)) {
                    return Err(Error::invalid_input(
                        "--device-id",
                        format!("device {d} is given twice (one worker per device)"),
                    ));
                }
                Ok(self.device_id.iter().map(|&d| Some(d)).collect())
            }
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
        let checks: [(&str, bool, &str); 7] = [
            (
                "--max-connections",
                (1..=1_000_000).contains(&self.max_connections),
                "1 to 1000000",
            ),
            (
                "--max-preparing",
                (1..=1024).contains(&self.max_preparing),
                "1 to 1024",
            ),
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
            max_connections: self.max_connections,
            read_timeout: seconds("--read-timeout", self.read_timeout)?,
            max_preparing: self.max_preparing,
        })
    }

    fn api_key(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let text = fsutil::read_text_limited(path, MAX_KEY_BYTES, "--api-key-file")
            .map_err(|e| serve::named("--api-key-file", e))?;
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
            Some((width, height))
                if [width, height]
                    .iter()
                    .all(|side| (32..=self.max_side).contains(side)) =>
            {
                Ok(Warmup::Synthetic { width, height })
            }
            Some(_) => Err(Error::invalid_input(
                "--warmup-size",
                format!(
                    "{:?}: each side must be 32 to --max-side ({})",
                    self.warmup_size, self.max_side
                ),
            )),
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
    serve::check_warmup(&config.warmup, &set, config.max_side)?;
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
    // One face detector per worker's backend, for people given without keypoints.
    let detectors = backends
        .iter()
        .map(|b| Detector::load(b.as_ref(), &set, DetectorOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    serve::run(config, engines, detectors)?;
    drop(backends);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::Args,
    }

    fn devices(flags: &[&str]) -> Result<Vec<Option<i32>>, String> {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.args.devices().map_err(|e| e.to_string())
    }

    #[test]
    fn one_worker_per_device_or_per_workers_count() {
        assert_eq!(devices(&[]), Ok(vec![None]));
        assert_eq!(devices(&["--workers", "3"]), Ok(vec![None; 3]));
        assert_eq!(devices(&["--device-id", "0,1"]), Ok(vec![Some(0), Some(1)]));
        assert_eq!(devices(&["--device-id", "2"]), Ok(vec![Some(2)]));
        assert!(devices(&["--device-id", "0", "--workers", "1"])
            .unwrap_err()
            .contains("not both"));
        assert!(devices(&["--workers", "0"])
            .unwrap_err()
            .contains("1 to 64"));
    }
}
