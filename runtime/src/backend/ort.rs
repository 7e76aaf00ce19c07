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
//! TensorRT provider options: FP16 on (TensorRT picks FP16 kernels per layer; the graph itself can
//! be FP32 or FP16), engine cache and timing cache on, in
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
//! # Device residency
//! With [`Residency::Device`] outputs stay where the provider computed them (GPU memory for CUDA
//! and TensorRT, host memory for the CPU provider) and come back as [`Value::Device`]; feeding them
//! to another graph of the same backend binds them without a copy, and [`Graph::to_host`] copies
//! one back. Every run uses IO binding, so the CPU provider exercises the same path as the GPU.
//!
//! # CUDA graphs
//! [`OrtOptions::cuda_graph`] (CUDA provider only) captures the whole graph into a CUDA graph and
//! replays it, removing per-kernel launch overhead. ONNX Runtime replays against the device
//! addresses it captured, so this mode keeps one set of fixed device buffers per distinct set of
//! input shapes (one captured graph each, told apart with the `gpu_graph_id` run option): inputs
//! are copied into those buffers, and outputs are copied out of them (device to device) so that a
//! later replay cannot overwrite a value the caller still holds. ONNX Runtime refuses the option
//! when any node of the graph falls back to the CPU provider. This mode has not been run on a GPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use ::ort::environment::Environment;
use ::ort::ep::{self, ArenaExtendStrategy};
use ::ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ::ort::session::{IoBinding, RunOptions, Session};
use ::ort::value::{DynTensor, DynTensorValueType, TensorElementType, ValueType};

use super::{check_run_inputs, Backend, DeviceTensor, Graph, GraphIo, Value};
use crate::manifest::{sha256_file, Dim, GraphEntry, Manifest, Role, TensorSpec, MANIFEST_FILE};
use crate::tensor::{DType, Tensor, TensorData};
use crate::{Error, Result};

/// The ONNX Runtime release the project is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// File name of the library in the onnxruntime 1.31.1 wheel.
pub const ORT_LIB_FILE: &str = "libonnxruntime.so.1.31.1";

/// What to install when no usable library is found.
const INSTALL_HINT: &str = "install ONNX Runtime 1.31.1: run scripts/fetch-onnxruntime.sh (or \
`pip download --no-deps onnxruntime==1.31.1` and take onnxruntime/capi/libonnxruntime.so.1.31.1 \
from the wheel; onnxruntime-gpu for CUDA/TensorRT), then pass --ort-lib PATH or set ORT_DYLIB_PATH";

const GPU_BUILD_HINT: &str = "(CUDA and TensorRT need the onnxruntime-gpu build with its \
provider libraries beside libonnxruntime, CUDA 13 and cuDNN 9 on the loader path, and a GPU)";

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

/// Where the library is looked for, in order, with the name of the setting each comes from.
pub fn library_candidates(explicit: Option<&Path>) -> Vec<(&'static str, PathBuf)> {
    if let Some(p) = explicit {
        return vec![("--ort-lib", p.to_path_buf())];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![("ORT_DYLIB_PATH", PathBuf::from(p))];
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("IDPATCH_HOME").filter(|p| !p.is_empty()) {
        candidates.push((
            "IDPATCH_HOME",
            PathBuf::from(home).join("lib").join(ORT_LIB_FILE),
        ));
    }
    candidates.push((
        "the default location",
        PathBuf::from("target/onnxruntime").join(ORT_LIB_FILE),
    ));
    candidates.push((
        "the default location",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/onnxruntime")
            .join(ORT_LIB_FILE),
    ));
    candidates
}

/// The library file to load: the first candidate that exists, or an error saying what to install.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidates = library_candidates(explicit);
    if let Some((_, p)) = candidates.iter().find(|(_, p)| p.is_file()) {
        return std::path::absolute(p).map_err(|e| Error::io(p, e));
    }
    let (setting, _) = candidates[0];
    let tried: Vec<String> = candidates
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    Err(Error::invalid_input(
        if setting == "the default location" {
            "ONNX Runtime library"
        } else {
            setting
        },
        format!("no file at {}; {INSTALL_HINT}", tried.join(" or ")),
    ))
}

/// The process's ONNX Runtime environment, the library it was loaded from and its version.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment, String)>> = Mutex::new(None);

fn environment(library: &Path) -> Result<(Environment, String)> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((loaded, env, version)) = slot.as_ref() {
        if loaded != library {
            return Err(Error::invalid_input(
                "--ort-lib",
                format!(
                    "ONNX Runtime was already loaded from {} in this process; cannot also load {}",
                    loaded.display(),
                    library.display()
                ),
            ));
        }
        return Ok((env.clone(), version.clone()));
    }
    let unusable = |e: String| {
        Error::invalid_input(
            "ONNX Runtime library",
            format!("cannot use {}: {e}; {INSTALL_HINT}", library.display()),
        )
    };
    let version = library_version(library).map_err(unusable)?;
    let builder = ::ort::init_from(library).map_err(|e| unusable(e.to_string()))?;
    let env = builder
        .with_name("idpatch")
        .with_telemetry(false)
        .build()
        .map_err(|e| unusable(format!("cannot create an environment: {e}")))?;
    *slot = Some((library.to_path_buf(), env.clone(), version.clone()));
    Ok((env, version))
}

/// The version string a library reports ("1.31.1"), read before `ort` takes it over so that a
/// file that is not ONNX Runtime gives an error, not a panic.
fn library_version(library: &Path) -> std::result::Result<String, String> {
    // SAFETY: loading ONNX Runtime runs no code with preconditions; OrtGetApiBase has this
    // signature in every release and its version string is static.
    unsafe {
        let lib = libloading::Library::new(library).map_err(|e| e.to_string())?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ::ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase")
                .map_err(|_| "it does not export OrtGetApiBase (not ONNX Runtime)".to_string())?;
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let version = std::ffi::CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned();
        let minor = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok());
        if version.split('.').next() != Some("1") || minor.is_none_or(|m| m < ::ort::MINOR_VERSION)
        {
            return Err(format!(
                "it is ONNX Runtime {version}; this build needs 1.{} or newer",
                ::ort::MINOR_VERSION
            ));
        }
        Ok(version)
    }
}

pub struct OrtBackend {
    options: OrtOptions,
    library: PathBuf,
    version: String,
    env: Environment,
    /// The provider [`Ep::Auto`] settled on (or the one asked for).
    resolved: OnceLock<Ep>,
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
        let mut trt = ep::TensorRT::default()
            .with_device_id(self.options.device_id)
            .with_fp16(self.options.trt_fp16)
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

impl Backend for OrtBackend {
    fn name(&self) -> String {
        format!("ort-{}", self.ep().unwrap_or(Ep::Auto))
    }

    /// Uploads to the provider's memory (host memory for the CPU provider). The dtype is kept:
    /// cast to the graph's dtype first for FP16 graphs, since device values are bound as they are.
    fn to_device(&self, tensor: Tensor) -> Result<Value> {
        let Some(ep) = self.ep() else {
            return Ok(Value::Host(tensor));
        };
        let fail = |e: ::ort::Error| Error::graph("ort", format!("upload to {ep}: {e}"));
        let host = host_to_ort(&tensor).map_err(fail)?;
        let tensor = match ep {
            Ep::Cuda | Ep::TensorRt => host
                .to(AllocationDevice::CUDA, self.options.device_id)
                .map_err(fail)?,
            _ => host,
        };
        let shape = tensor.shape().iter().map(|&d| d as usize).collect();
        let dtype = dtype_of(*tensor.data_type())
            .ok_or_else(|| Error::graph("ort", "unsupported element type"))?;
        Ok(Value::Device(DeviceTensor {
            shape,
            dtype,
            handle: Box::new(OrtDeviceValue { tensor }),
        }))
    }

    fn load(&self, role: Role, path: &Path) -> Result<Box<dyn Graph>> {
        if !path.is_file() {
            return Err(Error::model_set(
                path.display().to_string(),
                format!("graph {role}: file {} is missing", path.display()),
            ));
        }
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
        let (session, ep) = match self.resolved.get().copied() {
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
        };
        let io = declared_io(role, &session)?;
        let device_memory = self.device_memory(ep)?;
        let host_memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| Error::graph(role.name(), format!("memory info: {e}")))?;
        Ok(Box::new(OrtGraph {
            role,
            io,
            session,
            ep,
            residency: self.options.outputs,
            device_memory,
            host_memory,
            cuda_graphs: self.options.cuda_graph.then(HashMap::new),
        }))
    }
}

/// A tensor this backend left in its provider's memory; the handle of a [`DeviceTensor`].
pub struct OrtDeviceValue {
    tensor: DynTensor,
}

/// Fixed device buffers for one captured CUDA graph.
struct CapturedGraph {
    id: usize,
    binding: IoBinding,
    inputs: Vec<(String, DynTensor)>,
    options: RunOptions,
}

struct OrtGraph {
    role: Role,
    io: GraphIo,
    session: Session,
    ep: Ep,
    residency: Residency,
    device_memory: MemoryInfo<'static>,
    host_memory: MemoryInfo<'static>,
    /// Per distinct input shapes, when CUDA graphs are on.
    cuda_graphs: Option<HashMap<Vec<Vec<usize>>, CapturedGraph>>,
}

/// An input ready to bind: a host tensor converted to the graph's dtype, or a value of ours.
enum Prepared<'a> {
    Cast(Value),
    Given(&'a Value),
}

impl Prepared<'_> {
    fn value(&self) -> &Value {
        match self {
            Prepared::Cast(v) => v,
            Prepared::Given(v) => v,
        }
    }
}

impl OrtGraph {
    fn fail(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::graph(
            self.role.name(),
            format!("ONNX Runtime {}: {what}: {e}", self.ep),
        )
    }

    /// Host float inputs are converted to the dtype the graph declares (f32 -> f16 for FP16
    /// sets), so that callers always hand over f32.
    fn prepare<'a>(&self, inputs: &[(&'a str, &'a Value)]) -> Result<Vec<(&'a str, Prepared<'a>)>> {
        let is_float = |d: DType| matches!(d, DType::Float32 | DType::Float16);
        inputs
            .iter()
            .map(|&(name, value)| {
                let spec = self.io.inputs.iter().find(|s| s.name == name);
                let prepared = match (spec, value) {
                    (Some(spec), Value::Host(t))
                        if t.dtype() != spec.dtype
                            && is_float(t.dtype())
                            && is_float(spec.dtype) =>
                    {
                        Prepared::Cast(Value::Host(t.clone().cast(spec.dtype)?))
                    }
                    _ => Prepared::Given(value),
                };
                Ok((name, prepared))
            })
            .collect()
    }

    fn ort_input(&self, name: &str, value: &Value) -> Result<DynTensor> {
        match value {
            Value::Host(t) => host_to_ort(t).map_err(|e| self.fail(&format!("input {name}"), e)),
            Value::Device(d) => match d.handle.downcast_ref::<OrtDeviceValue>() {
                Some(v) => Ok(v.tensor.clone()),
                None => Err(Error::graph(
                    self.role.name(),
                    format!("input {name} is a device tensor {d:?} of another backend"),
                )),
            },
        }
    }

    fn output_value(&self, tensor: DynTensor) -> Result<Value> {
        match self.residency {
            Residency::Host => Ok(Value::Host(self.tensor_to_host(&tensor)?)),
            Residency::Device => {
                let shape = tensor.shape().iter().map(|&d| d as usize).collect();
                let dtype = dtype_of(*tensor.data_type())
                    .ok_or_else(|| self.fail("output", "unsupported element type"))?;
                Ok(Value::Device(DeviceTensor {
                    shape,
                    dtype,
                    handle: Box::new(OrtDeviceValue { tensor }),
                }))
            }
        }
    }

    fn tensor_to_host(&self, tensor: &DynTensor) -> Result<Tensor> {
        if tensor.memory_info().is_cpu_accessible() {
            return ort_to_host(tensor).map_err(|e| self.fail("output", e));
        }
        let host = tensor
            .to(AllocationDevice::CPU, 0)
            .map_err(|e| self.fail("copy to host", e))?;
        ort_to_host(&host).map_err(|e| self.fail("output", e))
    }

    fn run_bound(&mut self, inputs: &[(&str, DynTensor)]) -> Result<Vec<Value>> {
        let (role, ep) = (self.role, self.ep);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::graph(role.name(), format!("ONNX Runtime {ep}: {what}: {e}"))
        };
        let mut binding = self
            .session
            .create_binding()
            .map_err(|e| fail("IO binding", &e))?;
        for (name, value) in inputs {
            binding
                .bind_input(*name, value)
                .map_err(|e| fail(&format!("binding input {name}"), &e))?;
        }
        let memory = match self.residency {
            Residency::Host => &self.host_memory,
            Residency::Device => &self.device_memory,
        };
        for spec in &self.io.outputs {
            binding
                .bind_output_to_device(spec.name.as_str(), memory)
                .map_err(|e| fail(&format!("binding output {}", spec.name), &e))?;
        }
        // A fresh binding per run: ONNX Runtime allocates new output buffers, so values returned
        // by an earlier run are never overwritten.
        let mut outputs = self
            .session
            .run_binding(&binding)
            .map_err(|e| fail("run", &e))?;
        let mut tensors = Vec::with_capacity(self.io.outputs.len());
        for spec in &self.io.outputs {
            let value = outputs
                .remove(spec.name.as_str())
                .ok_or_else(|| fail("run", &format!("no output {}", spec.name)))?;
            tensors.push(
                value
                    .downcast::<DynTensorValueType>()
                    .map_err(|e| fail(&format!("output {}", spec.name), &e))?,
            );
        }
        drop(outputs);
        tensors.into_iter().map(|t| self.output_value(t)).collect()
    }

    /// CUDA-graph run: inputs are copied into buffers whose addresses stay fixed for the captured
    /// graph of these shapes; outputs are copied out of ONNX Runtime's fixed output buffers.
    fn run_captured(&mut self, inputs: &[(&str, DynTensor)]) -> Result<Vec<Value>> {
        let (role, ep) = (self.role, self.ep);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::graph(
                role.name(),
                format!("ONNX Runtime {ep} (CUDA graph): {what}: {e}"),
            )
        };
        let shapes: Vec<Vec<usize>> = inputs
            .iter()
            .map(|(_, t)| t.shape().iter().map(|&d| d as usize).collect())
            .collect();
        let Some(graphs) = self.cuda_graphs.as_mut() else {
            return Err(fail("run", &"CUDA graphs are off"));
        };
        if !graphs.contains_key(&shapes) {
            let id = graphs.len();
            let allocator = Allocator::new(&self.session, self.device_memory.clone())
                .map_err(|e| fail("CUDA allocator", &e))?;
            let mut binding = self
                .session
                .create_binding()
                .map_err(|e| fail("IO binding", &e))?;
            let mut buffers = Vec::new();
            for (name, value) in inputs {
                let buffer = DynTensor::new(&allocator, *value.data_type(), value.shape().clone())
                    .map_err(|e| fail(&format!("input {name}"), &e))?;
                binding
                    .bind_input(*name, &buffer)
                    .map_err(|e| fail(&format!("input {name}"), &e))?;
                buffers.push((name.to_string(), buffer));
            }
            for spec in &self.io.outputs {
                binding
                    .bind_output_to_device(spec.name.as_str(), &self.device_memory)
                    .map_err(|e| fail(&format!("output {}", spec.name), &e))?;
            }
            let mut options = RunOptions::new().map_err(|e| fail("run options", &e))?;
            options
                .set("gpu_graph_id", id.to_string())
                .map_err(|e| fail("gpu_graph_id", &e))?;
            graphs.insert(
                shapes.clone(),
                CapturedGraph {
                    id,
                    binding,
                    inputs: buffers,
                    options,
                },
            );
        }
        let Some(graph) = graphs.get_mut(&shapes) else {
            return Err(fail("run", &"no buffers for these shapes"));
        };
        for ((name, source), (_, buffer)) in inputs.iter().zip(graph.inputs.iter_mut()) {
            source
                .copy_into(&mut *buffer)
                .map_err(|e| fail(&format!("copying input {name}"), &e))?;
        }
        let mut outputs = self
            .session
            .run_binding_with_options(&graph.binding, &graph.options)
            .map_err(|e| fail(&format!("run of captured graph {}", graph.id), &e))?;
        let device_id = self.device_memory.device_id();
        let mut copies = Vec::with_capacity(self.io.outputs.len());
        for spec in &self.io.outputs {
            let fixed = outputs
                .remove(spec.name.as_str())
                .ok_or_else(|| fail("run", &format!("no output {}", spec.name)))?
                .downcast::<DynTensorValueType>()
                .map_err(|e| fail(&format!("output {}", spec.name), &e))?;
            // A copy, because the next replay writes into the same buffer.
            let copy = fixed
                .to(AllocationDevice::CUDA, device_id)
                .map_err(|e| fail(&format!("output {}", spec.name), &e))?;
            copies.push(copy);
        }
        drop(outputs);
        copies.into_iter().map(|t| self.output_value(t)).collect()
    }
}

impl Graph for OrtGraph {
    fn role(&self) -> Role {
        self.role
    }

    fn io(&self) -> &GraphIo {
        &self.io
    }

    fn run(&mut self, inputs: &[(&str, &Value)]) -> Result<Vec<Value>> {
        let prepared = self.prepare(inputs)?;
        let views: Vec<(&str, &Value)> = prepared.iter().map(|(n, p)| (*n, p.value())).collect();
        check_run_inputs(self.role, &self.io, &views)?;
        // In the graph's declared order, which CUDA-graph buffers are keyed by.
        let mut ordered = Vec::with_capacity(self.io.inputs.len());
        for spec in &self.io.inputs {
            let (name, value) = views
                .iter()
                .find(|(n, _)| *n == spec.name)
                .expect("checked above");
            ordered.push((*name, self.ort_input(name, value)?));
        }
        if self.cuda_graphs.is_some() {
            self.run_captured(&ordered)
        } else {
            self.run_bound(&ordered)
        }
    }

    fn to_host(&self, value: Value) -> Result<Tensor> {
        match value {
            Value::Host(t) => Ok(t),
            Value::Device(d) => match d.handle.downcast_ref::<OrtDeviceValue>() {
                Some(v) => self.tensor_to_host(&v.tensor),
                None => Err(Error::graph(
                    self.role.name(),
                    format!("{d:?} belongs to another backend"),
                )),
            },
        }
    }
}

fn dtype_of(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float16 => DType::Float16,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Int32 => DType::Int32,
        _ => return None,
    })
}

fn host_to_ort(t: &Tensor) -> ::ort::Result<DynTensor> {
    let shape = t.shape().to_vec();
    Ok(match t.data() {
        TensorData::F32(v) => ::ort::value::Tensor::from_array((shape, v.clone()))?.upcast(),
        TensorData::F16(v) => ::ort::value::Tensor::from_array((shape, v.clone()))?.upcast(),
        TensorData::I64(v) => ::ort::value::Tensor::from_array((shape, v.clone()))?.upcast(),
        TensorData::I32(v) => ::ort::value::Tensor::from_array((shape, v.clone()))?.upcast(),
    })
}

fn ort_to_host(t: &DynTensor) -> std::result::Result<Tensor, String> {
    let shape: Vec<usize> = t.shape().iter().map(|&d| d as usize).collect();
    let err = |e: ::ort::Error| e.to_string();
    let data = match t.data_type() {
        TensorElementType::Float32 => {
            TensorData::F32(t.try_extract_tensor::<f32>().map_err(err)?.1.to_vec())
        }
        TensorElementType::Float16 => {
            TensorData::F16(t.try_extract_tensor::<half::f16>().map_err(err)?.1.to_vec())
        }
        TensorElementType::Int64 => {
            TensorData::I64(t.try_extract_tensor::<i64>().map_err(err)?.1.to_vec())
        }
        TensorElementType::Int32 => {
            TensorData::I32(t.try_extract_tensor::<i32>().map_err(err)?.1.to_vec())
        }
        other => return Err(format!("unsupported element type {other}")),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// The graph's declared inputs and outputs, as the session reports them.
fn declared_io(role: Role, session: &Session) -> Result<GraphIo> {
    let spec = |outlet: &::ort::value::Outlet| -> Result<TensorSpec> {
        let ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } = outlet.dtype()
        else {
            return Err(Error::graph(
                role.name(),
                format!("{} is not a tensor", outlet.name()),
            ));
        };
        let dtype = dtype_of(*ty).ok_or_else(|| {
            Error::graph(
                role.name(),
                format!("{} has unsupported element type {ty}", outlet.name()),
            )
        })?;
        let shape = shape
            .iter()
            .enumerate()
            .map(|(axis, &d)| match dimension_symbols.get(axis) {
                _ if d >= 0 => Dim::Fixed(d as usize),
                Some(s) if !s.is_empty() => Dim::Symbol(s.clone()),
                _ => Dim::Symbol(format!("{}_dim{axis}", outlet.name())),
            })
            .collect();
        Ok(TensorSpec {
            name: outlet.name().to_string(),
            dtype,
            shape,
        })
    };
    Ok(GraphIo {
        inputs: session.inputs().iter().map(spec).collect::<Result<_>>()?,
        outputs: session.outputs().iter().map(spec).collect::<Result<_>>()?,
    })
}

/// The `trt_profile_{min,opt,max}_shapes` strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileShapes {
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// TensorRT profile strings (`name:1x4x64x64,name2:...`) for every input with a dynamic axis.
/// Ok(None) when no input is dynamic; Err(axis) for an axis [`ShapeRanges`] has no range for.
pub fn trt_profile_shapes(
    io: &GraphIo,
    ranges: &ShapeRanges,
) -> std::result::Result<Option<ProfileShapes>, String> {
    let mut parts: [Vec<String>; 3] = Default::default();
    for spec in &io.inputs {
        if spec.shape.iter().all(|d| matches!(d, Dim::Fixed(_))) {
            continue;
        }
        let mut dims: [Vec<String>; 3] = Default::default();
        for dim in &spec.shape {
            let (lo, opt, hi) = match dim {
                Dim::Fixed(n) => (*n, *n, *n),
                Dim::Symbol(s) => ranges.axis(s).ok_or_else(|| s.clone())?,
            };
            for (out, n) in dims.iter_mut().zip([lo, opt, hi]) {
                out.push(n.to_string());
            }
        }
        for (part, d) in parts.iter_mut().zip(&dims) {
            part.push(format!("{}:{}", spec.name, d.join("x")));
        }
    }
    if parts[0].is_empty() {
        return Ok(None);
    }
    let [min, opt, max] = parts.map(|p| p.join(","));
    Ok(Some(ProfileShapes { min, opt, max }))
}

/// `$IDPATCH_HOME/cache/tensorrt`, else `$XDG_CACHE_HOME/idpatch/tensorrt`, else
/// `~/.cache/idpatch/tensorrt`, else `target/tensorrt-cache`.
pub fn default_trt_cache_root() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var("IDPATCH_HOME") {
        return home.join("cache/tensorrt");
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return cache.join("idpatch/tensorrt");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache/idpatch/tensorrt");
    }
    PathBuf::from("target/tensorrt-cache")
}

/// The engine cache directory for one graph on one GPU model.
pub fn trt_cache_dir(root: &Path, graph_sha256: &str, gpu: &str) -> PathBuf {
    let slug: String = gpu
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let short = &graph_sha256[..graph_sha256.len().min(16)];
    root.join(format!("{short}-{slug}"))
}

/// The manifest entry for a graph file, when the file sits in a set directory that lists it.
fn manifest_entry(path: &Path) -> Option<GraphEntry> {
    let dir = path.parent()?;
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    let manifest: Manifest = serde_json::from_str(&text).ok()?;
    let file = path.file_name()?.to_str()?;
    manifest.graphs.into_values().find(|g| g.file == file)
}

/// A digest that changes with the graph's weights: from the manifest's sha256 of the graph file
/// and of its external data when a manifest lists it, else the sha256 of the file itself.
fn graph_digest(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let Some(entry) = manifest_entry(path) else {
        return sha256_file(path);
    };
    let mut hasher = Sha256::new();
    hasher.update(entry.sha256.as_bytes());
    for f in &entry.external_data {
        hasher.update(f.sha256.as_bytes());
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The GPU model for a CUDA ordinal from the NVIDIA driver's /proc entries (PCI order, which is
/// CUDA's order with CUDA_DEVICE_ORDER=PCI_BUS_ID and on single-GPU machines), if readable.
fn gpu_model(device_id: i32) -> Option<String> {
    let mut gpus: Vec<PathBuf> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    gpus.sort();
    let info = std::fs::read_to_string(
        gpus.get(usize::try_from(device_id).ok()?)?
            .join("information"),
    )
    .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dims: &[&str]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::Float32,
            shape: dims
                .iter()
                .map(|d| match d.parse() {
                    Ok(n) => Dim::Fixed(n),
                    Err(_) => Dim::Symbol(d.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn profiles_cover_sequence_latents_and_batch() {
        let io = GraphIo {
            inputs: vec![
                spec("sample", &["batch", "4", "latent_height", "latent_width"]),
                spec("encoder_hidden_states", &["batch", "sequence", "2048"]),
                spec("conditioning_scale", &["1"]),
                spec(
                    "down_residual_8",
                    &["batch", "1280", "latent_height_4", "latent_width_4"],
                ),
                spec(
                    "controlnet_cond",
                    &["batch", "3", "image_height", "image_width"],
                ),
            ],
            outputs: vec![],
        };
        let p = trt_profile_shapes(&io, &ShapeRanges::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            p.min,
            "sample:1x4x64x64,encoder_hidden_states:1x77x2048,\
             down_residual_8:1x1280x16x16,controlnet_cond:1x3x512x512"
        );
        assert_eq!(
            p.opt,
            "sample:2x4x128x128,encoder_hidden_states:2x109x2048,\
             down_residual_8:2x1280x32x32,controlnet_cond:2x3x1024x1024"
        );
        assert_eq!(
            p.max,
            "sample:2x4x192x192,encoder_hidden_states:2x205x2048,\
             down_residual_8:2x1280x48x48,controlnet_cond:2x3x1536x1536"
        );
    }

    #[test]
    fn profiles_are_absent_for_static_graphs_and_refused_for_unknown_axes() {
        let fixed = GraphIo {
            inputs: vec![spec("x", &["1", "3"])],
            outputs: vec![],
        };
        assert_eq!(
            trt_profile_shapes(&fixed, &ShapeRanges::default()),
            Ok(None)
        );
        let odd = GraphIo {
            inputs: vec![spec("x", &["frames", "3"])],
            outputs: vec![],
        };
        assert_eq!(
            trt_profile_shapes(&odd, &ShapeRanges::default()),
            Err("frames".to_string())
        );
    }

    #[test]
    fn cache_dir_names_graph_and_gpu() {
        let dir = trt_cache_dir(Path::new("/c"), &"ab".repeat(32), "NVIDIA H100 80GB HBM3");
        assert_eq!(dir, Path::new("/c/abababababababab-nvidia-h100-80gb-hbm3"));
    }

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

    #[test]
    fn missing_library_is_an_input_error_that_says_what_to_install() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(
            msg.starts_with("--ort-lib: no file at /nonexistent/libonnxruntime.so"),
            "{msg}"
        );
        assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
        assert!(msg.contains("onnxruntime==1.31.1"), "{msg}");
    }
}
