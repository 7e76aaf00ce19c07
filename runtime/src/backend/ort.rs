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
//! then CPU for the first graph loaded and keeps what it got for the rest (a
//! [`Notice`](crate::backend::notice::Notice) says which).
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
//! provider has no INT8 convolution or matmul kernels for QDQ graphs, so each such graph loaded
//! there sends [`Notice::Int8OnCuda`](crate::backend::notice::Notice::Int8OnCuda), so that nobody
//! takes its timings for an INT8 speed-up. The CPU provider fuses Q/DQ pairs into integer kernels
//! (QLinearConv, MatMulInteger, ...).
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
//! can take minutes; a notice says so before it starts. Notices go to
//! [`OrtOptions::notices`]; the library prints nothing.
//!
//! Sessions run with graph optimisation level ALL; intra-op threads from
//! [`OrtOptions::intra_threads`] (ONNX Runtime's default, one per physical core, when unset).
//!
//! # Device residency and traffic
//! With [`Residency::Device`] outputs stay where the provider computed them (GPU memory for CUDA
//! and TensorRT, host memory for the CPU provider) and come back as [`Value::Device`]; feeding them
//! to another graph of the same backend binds them by reference, without a copy, and
//! [`Graph::to_host`] copies one back. Host tensors given to [`Backend::to_device`] /
//! [`Graph::to_device`] are moved into ONNX Runtime without a copy and copied once to the GPU; host
//! values given to a run are copied once (the caller keeps its tensor) and moved in the same way,
//! since `ort` cannot bind a borrowed view over host memory safely (see `graph.rs`). Every run uses
//! IO binding, so the CPU provider exercises the same path as the GPU, and the backend counts the
//! bytes it moves ([`Backend::traffic`]), treating ONNX Runtime's own memory as "device" on the CPU
//! provider.
//!
//! # CUDA graphs
//! [`OrtOptions::cuda_graph`] (CUDA provider only) captures the whole graph into a CUDA graph and
//! replays it, removing per-kernel launch overhead. ONNX Runtime replays against the device
//! addresses it captured, so this mode keeps one set of fixed device buffers per distinct set of
//! input shapes (one captured graph each, told apart with the `gpu_graph_id` run option): inputs
//! are copied into those buffers, and outputs are copied out of them (device to device, counted as
//! such) so that a later replay cannot overwrite a value the caller still holds. ONNX Runtime
//! refuses the option when any node of the graph falls back to the CPU provider. This mode has not
//! been run on a GPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ::ort::environment::Environment;
use ::ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};

use super::{Backend, Graph, Traffic, Value};
use crate::manifest::{GraphEntry, Role};
use crate::tensor::Tensor;
use crate::{Error, Result};

mod cuda_graph;
mod graph;
mod library;
mod memory;
mod options;
mod providers;
mod tensorrt;

pub use graph::OrtDeviceValue;
use graph::{declared_io, upload, Counters, OrtGraph};
use library::environment;
pub use library::{find_library, library_candidates, ORT_LIB_FILE, ORT_VERSION};
pub use options::{Ep, OrtOptions, Residency, ShapeRanges};
pub use tensorrt::{
    default_trt_cache_root, trt_cache_dir, trt_precision_options, trt_profile_shapes, ProfileShapes,
};

/// The ONNX Runtime backend: the library (loaded once per process), its environment, the
/// options, the provider settled on and the byte counters shared with every graph it loads.
pub struct OrtBackend {
    options: OrtOptions,
    library: PathBuf,
    version: String,
    env: Environment,
    /// The provider [`Ep::Auto`] settled on (or the one asked for).
    resolved: OnceLock<Ep>,
    /// Bytes copied by this backend and all its graphs.
    counters: Arc<Counters>,
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
        })
    }

    /// The path of the ONNX Runtime library in use.
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

    /// Loads one graph; [`Backend::load`] boxes it.
    fn load_graph(&self, role: Role, path: &Path, entry: Option<&GraphEntry>) -> Result<OrtGraph> {
        if let Some(problem) = crate::fsutil::regular_file_problem(path) {
            return Err(Error::model_set(
                path.display().to_string(),
                format!("graph {role}: file {} {problem}", path.display()),
            ));
        }
        let (session, ep) = self.choose_session(role, path, entry)?;
        if ep == Ep::Cuda && entry.is_some_and(|e| e.precision == "int8") {
            self.options
                .notices
                .send(crate::backend::notice::Notice::Int8OnCuda { graph: role });
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
            profiling: self.options.profile_dir.is_some(),
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

    fn load(&self, role: Role, path: &Path, entry: Option<&GraphEntry>) -> Result<Box<dyn Graph>> {
        Ok(Box::new(self.load_graph(role, path, entry)?))
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
