//! Backend selection flags shared by the subcommands that run graphs.

use std::path::PathBuf;

use idpatch::backend::Backend;
use idpatch::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Pure-Rust CPU backend.
    Tract,
    /// ONNX Runtime (see --ep).
    Ort,
}

#[derive(clap::Args, Clone, Debug)]
pub struct BackendArgs {
    /// Backend that runs the graphs.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: BackendKind,
    /// ONNX Runtime execution provider: cpu, cuda, tensorrt, or auto (TensorRT, else CUDA,
    /// else CPU). CUDA or TensorRT that cannot start is an error, never a CPU fallback.
    #[arg(long, default_value = "cpu")]
    pub ep: String,
    /// ONNX Runtime library (libonnxruntime.so.1.31.1). Default: ORT_DYLIB_PATH, then
    /// $IDPATCH_HOME/lib, then target/onnxruntime (where scripts/fetch-onnxruntime.sh puts it).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// ONNX Runtime intra-op threads (default: one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Allow TF32 math for FP32 graphs on CUDA (faster, ~1e-3 relative error).
    #[arg(long)]
    pub tf32: bool,
    /// Capture CUDA graphs (CUDA provider only; one per input shape).
    #[arg(long)]
    pub cuda_graph: bool,
    /// TensorRT engine and timing cache root (default: $IDPATCH_HOME/cache/tensorrt or
    /// ~/.cache/idpatch/tensorrt).
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
}

impl BackendArgs {
    /// A short label: "tract", "ort-cpu", "ort-cuda", ...
    pub fn label(&self) -> String {
        match self.backend {
            BackendKind::Tract => "tract".into(),
            BackendKind::Ort => format!("ort-{}", self.ep),
        }
    }

    /// Parses "tract" or "ort-<ep>" into these args with the backend replaced.
    pub fn with_label(&self, label: &str) -> Option<BackendArgs> {
        let mut args = self.clone();
        if label == "tract" {
            args.backend = BackendKind::Tract;
        } else if let Some(ep) = label.strip_prefix("ort-") {
            args.backend = BackendKind::Ort;
            args.ep = ep.to_string();
        } else if label == "ort" {
            args.backend = BackendKind::Ort;
        } else {
            return None;
        }
        Some(args)
    }

    /// The backend. ONNX Runtime outputs stay on the device until a caller copies them back.
    pub fn make(&self) -> Result<Box<dyn Backend>, Error> {
        match self.backend {
            BackendKind::Tract => {
                // GPU settings asked for on the CPU-only backend are an error, not ignored.
                for (flag, given) in [("--tf32", self.tf32), ("--cuda-graph", self.cuda_graph)] {
                    if given {
                        return Err(Error::invalid_input(
                            flag,
                            "applies to ONNX Runtime's CUDA provider, not to --backend tract",
                        ));
                    }
                }
                make_tract()
            }
            BackendKind::Ort => make_ort(self),
        }
    }
}

#[cfg(feature = "tract")]
fn make_tract() -> Result<Box<dyn Backend>, Error> {
    Ok(Box::new(idpatch::TractBackend::new()))
}

#[cfg(not(feature = "tract"))]
fn make_tract() -> Result<Box<dyn Backend>, Error> {
    Err(Error::invalid_input(
        "--backend",
        "this build has no tract backend (built without the `tract` feature)",
    ))
}

#[cfg(feature = "ort")]
fn make_ort(args: &BackendArgs) -> Result<Box<dyn Backend>, Error> {
    use idpatch::backend::ort::{OrtOptions, Residency};
    let options = OrtOptions {
        library: args.ort_lib.clone(),
        ep: args.ep.parse()?,
        device_id: args.device_id,
        intra_threads: args.threads,
        outputs: Residency::Device,
        tf32: args.tf32,
        cuda_graph: args.cuda_graph,
        trt_cache_dir: args.trt_cache.clone(),
        ..OrtOptions::default()
    };
    Ok(Box::new(idpatch::OrtBackend::new(options)?))
}

#[cfg(not(feature = "ort"))]
fn make_ort(_: &BackendArgs) -> Result<Box<dyn Backend>, Error> {
    Err(Error::invalid_input(
        "--backend",
        "this build has no ONNX Runtime backend (built without the `ort` feature)",
    ))
}
