//! The backend's configuration: the execution provider, where outputs are left, the TensorRT
//! profile ranges and the other options of [`OrtOptions`].

use std::path::PathBuf;
use std::str::FromStr;

use crate::backend::notice::Notices;
use crate::{Error, Result};

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
    /// The `--ep` value: `cpu`, `cuda`, `tensorrt` or `auto`.
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
    /// Copied to host tensors ([`Value::Host`](crate::backend::Value::Host)).
    Host,
    /// Left in the provider's memory ([`Value::Device`](crate::backend::Value::Device)).
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
    /// Root of the TensorRT engine and timing caches; see
    /// [`default_trt_cache_root`](super::default_trt_cache_root).
    pub trt_cache_dir: Option<PathBuf>,
    /// Let TensorRT use FP16 kernels.
    pub trt_fp16: bool,
    pub trt_ranges: ShapeRanges,
    /// Turn on ONNX Runtime's profiler for every session: each writes a Chrome-trace JSON file
    /// `<this folder>/<graph>_<timestamp>.json` (one event per node run, with its operator
    /// type, provider and duration in microseconds), finished by
    /// [`Graph::end_profiling`](crate::backend::Graph::end_profiling). The folder must exist.
    pub profile_dir: Option<PathBuf>,
    /// Where the backend's notices go (TensorRT engine builds, `--ep auto`'s choice, axes
    /// without a profile range); none are shown by default.
    pub notices: Notices,
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
            profile_dir: None,
            notices: Notices::default(),
        }
    }
}
