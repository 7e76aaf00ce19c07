//! The ONNX Runtime backend: CPU, CUDA and TensorRT execution providers through the `ort` crate.
//!
//! # Loading the library
//! Nothing is linked or downloaded at build time: `libonnxruntime.so` (1.31.1, the version the
//! project is tested with; 1.30 is the oldest this build accepts) is opened at run time from, in
//! order, [`OrtOptions::library`] (the CLI's `--ort-lib`), the `ORT_DYLIB_PATH` environment variable,
//! `$IDPATCH_HOME/lib/libonnxruntime.so.1.31.1`, `target/onnxruntime/libonnxruntime.so.1.31.1` under
//! the working directory, then the same path in the source tree this binary was built from (where
//! `scripts/fetch-onnxruntime.sh` puts it). A missing file, a file that is not ONNX Runtime, or a
//! too-old version is an [`Error::InvalidInput`] that says what to install. One process loads one
//! library: asking for a second, different path is an error too.
//!
//! For the GPU providers the library must be the `onnxruntime-gpu` build, with its provider
//! libraries (`libonnxruntime_providers_shared.so`, `libonnxruntime_providers_cuda.so`, and
//! `libonnxruntime_providers_tensorrt.so` for TensorRT) beside it and CUDA 13 / cuDNN 9 (and
//! TensorRT) on the loader path; see `benches/gpu/README.md`.
//!
//! # Execution providers
//! [`Ep::Cpu`], [`Ep::Cuda`], [`Ep::TensorRt`], or [`Ep::Auto`], which tries TensorRT, then CUDA,
//! then CPU for the first graph loaded and keeps what it got for the rest (it says which on stderr).
//! Asking for CUDA or TensorRT and not getting it is an error, never a quiet fall back to the CPU:
//! providers are registered with `error_on_failure`, and session creation fails when the provider
//! cannot start (no driver, no device).
//!
//! CUDA provider options, chosen for repeatable numbers first and speed second:
//! - `cudnn_conv_algo_search = EXHAUSTIVE`: benchmark every cuDNN convolution algorithm on the first
//!   run of each shape (slow first run, fastest kernels after; like `cudnn.benchmark = True`).
//! - `use_tf32 = 0` unless [`OrtOptions::tf32`]: FP32 graphs then match the CPU and PyTorch to
//!   ~1e-6 instead of ~1e-3. FP16 graphs are not affected.
//! - `arena_extend_strategy = kSameAsRequested`: the arena grows by what is asked, not to the next
//!   power of two, which matters next to a 5 GB UNet and a 2.5 GB ControlNet on one GPU.
//! - `prefer_nhwc = 1`: NHWC convolution kernels where the provider was built with them (the
//!   PyPI onnxruntime-gpu builds are); ignored otherwise.
//! - `device_id` from [`OrtOptions::device_id`].
//! - `enable_cuda_graph` only with [`OrtOptions::cuda_graph`]; see below.
//!
//! An INT8 (QDQ) graph runs on the CUDA provider as DequantizeLinear plus float operators: the
//! provider has no INT8 convolution or matmul kernels for QDQ graphs. The first such graph a
//! backend loads prints a note saying so on stderr ([`int8_provider_notice`]), so that nobody
//! takes its timings for an INT8 speed-up. The CPU provider fuses Q/DQ pairs into integer
//! kernels (QLinearConv, QLinearMatMul, ...).
//!
//! TensorRT provider options: FP16 on (TensorRT picks FP16 kernels per layer; the graph itself can
//! be FP32 or FP16), INT8 on for a graph whose manifest entry says `int8` (its Q/DQ nodes are
//! TensorRT's explicit quantization; no calibration table, which TensorRT refuses for such
//! graphs; see [`trt_precision_options`]), engine cache and timing cache on, in
//! `<cache dir>/<sha256 of the graph, 16 hex>-<GPU model>/` so that a graph with other weights or
//! another GPU never picks up a stale engine (ONNX Runtime's own cache names do not cover the
//! weights). Optimisation profiles cover every dynamic axis the graph declares, with the ranges of
//! [`ShapeRanges`] (sequence 77..77+16*8, latents 64..192 i.e. 512..1536 px, batch 1..2). The
//! CUDA provider is registered after TensorRT for any node TensorRT does not take. An engine build
//! can take minutes; a notice says so on stderr before it starts.
//!
//! Sessions run with graph optimisation level ALL; intra-op threads from
//! [`OrtOptions::intra_threads`] (ONNX Runtime's default, one per physical core, when unset).
//!
//! # Device residency and traffic
//! With [`Residency::Device`] outputs stay where the provider computed them (GPU memory for CUDA
//! and TensorRT, host memory for the CPU provider) and come back as [`Value::Device`]; feeding them
//! to another graph of the same backend binds them by reference, without a copy, and
//! [`Graph::to_host`] copies one back. Host tensors given to [`Backend::to_device`] /
//! [`Graph::to_device`] are moved into ONNX Runtime without a copy and copied once to the GPU;
//! host values given to a run are copied once (the caller keeps its tensor) and moved in the same
//! way, since `ort` cannot bind a borrowed view over host memory safely (see `graph.rs`). Every run uses IO binding, so the CPU provider
//! exercises the same path as the GPU, and the backend counts the bytes it moves
//! ([`Backend::traffic`]), treating ONNX Runtime's own memory as "device" on the CPU provider.
//!
//! # CUDA graphs
//! [`OrtOptions::cuda_graph`] (CUDA provider only) captures the whole graph into a CUDA graph and
//! replays it, removing per-kernel launch overhead. ONNX Runtime replays against the device
//! addresses it captured, so this mode keeps one set of fixed device buffers per distinct set of
//! input shapes (one captured graph each, told apart with the `gpu_graph_id` run option): inputs
//! are copied into those buffers, and outputs are copied out of them (device to device, counted
//! as such) so that a later replay cannot overwrite a value the caller still holds. ONNX Runtime refuses the option
//! when any node of the graph falls back to the CPU provider. This mode has not been run on a GPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use ::ort::environment::Environment;
use ::ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ArenaExtendStrategy};
use ::ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ::ort::session::Session;

use super::{Backend, Graph, GraphIo, Traffic, Value};
use crate::manifest::Role;
use crate::tensor::Tensor;
use crate::{Error, Result};

mod graph;
mod library;
mod tensorrt;

pub use graph::OrtDeviceValue;
use graph::{declared_io, upload, Counters, OrtGraph};
use library::{environment, GPU_BUILD_HINT};
pub use library::{find_library, library_candidates, ORT_LIB_FILE, ORT_VERSION};
pub use tensorrt::{
    default_trt_cache_root, int8_provider_notice, trt_cache_dir, trt_precision_options,
    trt_profile_shapes, ProfileShapes,
};
use tensorrt::{gpu_model, graph_digest, manifest_entry};

/// Execution provider choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ep {
    Cpu,
    Cuda,
    TensorRt,
    /// TensorRT, else CUDA, else CPU.
    Auto,
}

impl Ep {
    pub fn name(self) -> &'static str {
        match self {
            Ep::Cpu => "cpu",
            Ep::Cuda => "cuda",
            Ep::TensorRt => "tensorrt",
            Ep::Auto => "auto",
        }
    }
}

impl FromStr for Ep {
    type Err = Error;

    fn from_str(s: &str) -> Result<Ep> {
        match s {
            "cpu" => Ok(Ep::Cpu),
            "cuda" => Ok(Ep::Cuda),
            "tensorrt" | "trt" => Ok(Ep::TensorRt),
            "auto" => Ok(Ep::Auto),
            other => Err(Error::invalid_input(
                "--ep",
                format!("unknown execution provider {other:?} (cpu, cuda, tensorrt or auto)"),
            )),
        }
    }
}

impl std::fmt::Display for Ep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where graph outputs are left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Copied to host tensors ([`Value::Host`]).
    Host,
    /// Left in the provider's memory ([`Value::Device`]).
    Device,
}

/// Size ranges the TensorRT optimisation profiles cover, per dynamic axis name the exporter uses.
/// Each is (min, opt, max).
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeRanges {
    /// `batch`: 1 without CFG, 2 with it.
    pub batch: (usize, usize, usize),
    /// `faces`: people in the photo.
    pub faces: (usize, usize, usize),
    /// `sequence`: 77 text tokens plus 16 ID tokens per face.
    pub sequence: (usize, usize, usize),
    /// `latent_height` / `latent_width`; `_2` and `_4` axes are these halved and quartered, and
    /// `image_height` / `image_width` these times 8.
    pub latent: (usize, usize, usize),
}

impl Default for ShapeRanges {
    fn default() -> Self {
        ShapeRanges {
            batch: (1, 2, 2),
            faces: (1, 2, 8),
            sequence: (77, 77 + 16 * 2, 77 + 16 * 8),
            latent: (64, 128, 192),
        }
    }
}

impl ShapeRanges {
    /// (min, opt, max) for a named axis, or None for a name these ranges do not know.
    pub fn axis(&self, name: &str) -> Option<(usize, usize, usize)> {
        let scale = |r: (usize, usize, usize), num: usize, den: usize| {
            (r.0 * num / den, r.1 * num / den, r.2 * num / den)
        };
        Some(match name {
            "batch" => self.batch,
            "faces" => self.faces,
            "sequence" => self.sequence,
            "latent_height" | "latent_width" => self.latent,
            "latent_height_2" | "latent_width_2" => scale(self.latent, 1, 2),
            "latent_height_4" | "latent_width_4" => scale(self.latent, 1, 4),
            "image_height" | "image_width" => scale(self.latent, 8, 1),
            _ => return None,
        })
    }
}

/// Backend configuration. [`Default`] is the CPU provider with host outputs.
#[derive(Debug, Clone)]
pub struct OrtOptions {
    /// Path of libonnxruntime; see the module docs for the search order when unset.
    pub library: Option<PathBuf>,
    pub ep: Ep,
    /// CUDA device ordinal (CUDA and TensorRT).
    pub device_id: i32,
    /// Intra-op threads; ONNX Runtime's default when None.
    pub intra_threads: Option<usize>,
    pub outputs: Residency,
    /// Allow TF32 tensor-core math for FP32 graphs on the CUDA provider.
    pub tf32: bool,
    /// Capture and replay CUDA graphs (CUDA provider only; see the module docs).
    pub cuda_graph: bool,
    /// Root of the TensorRT engine and timing caches; see [`default_trt_cache_root`].
    pub trt_cache_dir: Option<PathBuf>,
    /// Let TensorRT use FP16 kernels.
    pub trt_fp16: bool,
    pub trt_ranges: ShapeRanges,
}

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions {
            library: None,
            ep: Ep::Cpu,
            device_id: 0,
            intra_threads: None,
            outputs: Residency::Host,
            tf32: false,
            cuda_graph: false,
            trt_cache_dir: None,
            trt_fp16: true,
            trt_ranges: ShapeRanges::default(),
        }
    }
}

pub struct OrtBackend {
    options: OrtOptions,
    library: PathBuf,
    version: String,
    env: Environment,
    /// The provider [`Ep::Auto`] settled on (or the one asked for).
    resolved: OnceLock<Ep>,
    /// Bytes copied by this backend and all its graphs.
    counters: Arc<Counters>,
    /// Whether the INT8-on-CUDA notice was printed (once per backend).
    int8_notice_given: std::sync::atomic::AtomicBool,
}

impl OrtBackend {
    /// Loads the library (once per process) and checks the options.
    pub fn new(options: OrtOptions) -> Result<OrtBackend> {
        if options.cuda_graph && options.ep != Ep::Cuda {
            return Err(Error::invalid_input(
                "--cuda-graph",
                format!(
                    "CUDA graphs need --ep cuda (got --ep {}); TensorRT has its own",
                    options.ep
                ),
            ));
        }
        if options.tf32 && options.ep == Ep::Cpu {
            return Err(Error::invalid_input(
                "--tf32",
                "TF32 is a CUDA setting (got --ep cpu)",
            ));
        }
        if options.intra_threads == Some(0) {
            return Err(Error::invalid_input("--threads", "must be at least 1"));
        }
        let library = find_library(options.library.as_deref())?;
        let (env, version) = environment(&library)?;
        let resolved = OnceLock::new();
        if options.ep != Ep::Auto {
            let _ = resolved.set(options.ep);
        }
        Ok(OrtBackend {
            options,
            library,
            version,
            env,
            resolved,
            counters: Arc::default(),
            int8_notice_given: Default::default(),
        })
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The loaded library's version ("1.31.1").
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The provider in use: the one asked for, or what `auto` chose (None before its first load).
    pub fn ep(&self) -> Option<Ep> {
        self.resolved.get().copied()
    }

    fn device_memory(&self, ep: Ep) -> Result<MemoryInfo<'static>> {
        let (device, id) = match ep {
            Ep::Cuda | Ep::TensorRt => (AllocationDevice::CUDA, self.options.device_id),
            _ => (AllocationDevice::CPU, 0),
        };
        MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| Error::graph("ort", format!("memory info: {e}")))
    }

    fn session(&self, role: Role, path: &Path, io: Option<&GraphIo>, ep: Ep) -> Result<Session> {
        let fail = |what: &str, e: String| {
            Error::graph(role.name(), format!("ONNX Runtime {ep} {what}: {e}"))
        };
        let mut builder = SessionBuilder::new(&self.env)
            .map_err(|e| fail("session options", e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| fail("optimisation level", e.to_string()))?;
        if let Some(n) = self.options.intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| fail("threads", e.to_string()))?;
        }
        let (providers, trt_cache) = match ep {
            Ep::Cpu | Ep::Auto => (vec![], None),
            Ep::Cuda => (vec![self.cuda_provider()], None),
            Ep::TensorRt => {
                let io = io.ok_or_else(|| fail("profiles", "graph IO unknown".into()))?;
                let (trt, dir) = self.tensorrt_provider(role, path, io)?;
                (vec![trt, self.cuda_provider()], Some(dir))
            }
        };
        if !providers.is_empty() {
            builder = builder.with_execution_providers(providers).map_err(|e| {
                if let Some(dir) = &trt_cache {
                    // Only removes it if nothing was cached there.
                    let _ = std::fs::remove_dir(dir);
                }
                Error::invalid_input(
                    "--ep",
                    format!(
                        "ONNX Runtime {} at {} cannot start the {ep} provider: {e} {GPU_BUILD_HINT}",
                        self.version,
                        self.library.display()
                    ),
                )
            })?;
        }
        if let Some(dir) = &trt_cache {
            if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
                eprintln!(
                    "graph {role}: building a TensorRT engine; this may take minutes \
                     (cached in {} for the next run)",
                    dir.display()
                );
            }
        }
        builder
            .commit_from_file(path)
            .map_err(|e| fail("cannot load the graph", e.to_string()))
    }

    fn cuda_provider(&self) -> ep::ExecutionProviderDispatch {
        ep::CUDA::default()
            .with_device_id(self.options.device_id)
            .with_conv_algorithm_search(ep::cuda::ConvAlgorithmSearch::Exhaustive)
            .with_tf32(self.options.tf32)
            .with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested)
            .with_prefer_nhwc(true)
            .with_cuda_graph(self.options.cuda_graph)
            .build()
            .error_on_failure()
    }

    fn tensorrt_provider(
        &self,
        role: Role,
        path: &Path,
        io: &GraphIo,
    ) -> Result<(ep::ExecutionProviderDispatch, PathBuf)> {
        let root = match &self.options.trt_cache_dir {
            Some(d) => d.clone(),
            None => default_trt_cache_root(),
        };
        let gpu = gpu_model(self.options.device_id)
            .unwrap_or_else(|| format!("cuda{}", self.options.device_id));
        let dir = trt_cache_dir(&root, &graph_digest(path)?, &gpu);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let dir_str = dir.to_string_lossy().into_owned();
        let precision = manifest_entry(path).map_or_else(|| "fp32".to_string(), |e| e.precision);
        let mut trt = ep::TensorRT::default().with_device_id(self.options.device_id);
        for (key, value) in trt_precision_options(&precision, self.options.trt_fp16) {
            trt = trt.with_arbitrary_config(key, value);
        }
        let mut trt = trt
            .with_engine_cache(true)
            .with_engine_cache_path(&dir_str)
            .with_timing_cache(true)
            .with_timing_cache_path(&dir_str);
        match trt_profile_shapes(io, &self.options.trt_ranges) {
            Ok(Some(p)) => {
                trt = trt
                    .with_profile_min_shapes(p.min)
                    .with_profile_opt_shapes(p.opt)
                    .with_profile_max_shapes(p.max);
            }
            Ok(None) => {}
            Err(axis) => eprintln!(
                "note: graph {role}: no TensorRT profile range for axis {axis:?}; \
                 TensorRT builds an engine per input shape instead"
            ),
        }
        Ok((trt.build().error_on_failure(), dir))
    }
}

impl OrtBackend {
    /// A session for the graph on the provider asked for, or for `auto` the first that starts.
    fn choose_session(&self, role: Role, path: &Path) -> Result<(Session, Ep)> {
        // TensorRT profiles are built from the declared IO: the manifest's, else a CPU session's.
        let spec_io = || -> Result<GraphIo> {
            match manifest_entry(path) {
                Some(entry) => Ok(GraphIo {
                    inputs: entry.inputs,
                    outputs: entry.outputs,
                }),
                None => declared_io(role, &self.session(role, path, None, Ep::Cpu)?),
            }
        };
        Ok(match self.resolved.get().copied() {
            Some(Ep::TensorRt) => (
                self.session(role, path, Some(&spec_io()?), Ep::TensorRt)?,
                Ep::TensorRt,
            ),
            Some(ep) => (self.session(role, path, None, ep)?, ep),
            None => {
                let io = spec_io()?;
                let mut refusals = Vec::new();
                let mut chosen = None;
                for ep in [Ep::TensorRt, Ep::Cuda] {
                    match self.session(role, path, Some(&io), ep) {
                        Ok(s) => {
                            chosen = Some((s, ep));
                            break;
                        }
                        Err(e) => {
                            let e = e.to_string();
                            let reason = e.split(GPU_BUILD_HINT).next().unwrap_or(&e);
                            refusals.push(format!("{ep}: {}", reason.trim_end()));
                        }
                    }
                }
                let (session, ep) = match chosen {
                    Some(c) => c,
                    None => (self.session(role, path, None, Ep::Cpu)?, Ep::Cpu),
                };
                let ep = *self.resolved.get_or_init(|| ep);
                eprintln!(
                    "ONNX Runtime: --ep auto chose {ep}{}",
                    if refusals.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", refusals.join("; "))
                    }
                );
                (session, ep)
            }
        })
    }

    /// Loads one graph; [`Backend::load`] boxes it.
    fn load_graph(&self, role: Role, path: &Path) -> Result<OrtGraph> {
        if !path.is_file() {
            return Err(Error::model_set(
                path.display().to_string(),
                format!("graph {role}: file {} is missing", path.display()),
            ));
        }
        let (session, ep) = self.choose_session(role, path)?;
        if let Some(notice) = manifest_entry(path).and_then(|e| int8_provider_notice(&e.precision, ep)) {
            if !self.int8_notice_given.swap(true, std::sync::atomic::Ordering::Relaxed) {
                eprintln!("note: {notice}");
            }
        }
        let io = declared_io(role, &session)?;
        let device_memory = self.device_memory(ep)?;
        let host_memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| Error::graph(role.name(), format!("memory info: {e}")))?;
        Ok(OrtGraph {
            role,
            io,
            session,
            ep,
            residency: self.options.outputs,
            device_memory,
            host_memory,
            cuda_graphs: self.options.cuda_graph.then(HashMap::new),
            counters: Arc::clone(&self.counters),
        })
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> String {
        format!("ort-{}", self.ep().unwrap_or(Ep::Auto))
    }

    /// Uploads to the provider's memory (host memory owned by ONNX Runtime for the CPU
    /// provider), counted as host to device; before `auto` has chosen a provider (no graph loaded
    /// yet) the tensor stays on the host. The dtype is kept: cast to the graph's dtype first for
    /// FP16 graphs, since device values are bound as they are.
    fn to_device(&self, tensor: Tensor) -> Result<Value> {
        let Some(ep) = self.ep() else {
            return Ok(Value::Host(tensor));
        };
        let memory = self.device_memory(ep)?;
        let uploaded = upload(tensor, &memory, &self.counters)
            .map_err(|e| Error::graph("ort", format!("upload to {ep}: {e}")))?;
        OrtDeviceValue::value(uploaded)
    }

    fn traffic(&self) -> Option<Traffic> {
        Some(self.counters.snapshot())
    }

    fn load(&self, role: Role, path: &Path) -> Result<Box<dyn Graph>> {
        Ok(Box::new(self.load_graph(role, path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ep_names_parse() {
        for ep in [Ep::Cpu, Ep::Cuda, Ep::TensorRt, Ep::Auto] {
            assert_eq!(ep.name().parse::<Ep>().unwrap(), ep);
        }
        let err = "rocm".parse::<Ep>().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .starts_with("--ep: unknown execution provider"));
    }
}
