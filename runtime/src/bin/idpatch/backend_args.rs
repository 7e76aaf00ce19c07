//! Backend selection flags shared by the subcommands that run graphs.
//!
//! Every flag must be honoured by the backend and provider that run: a flag that only ONNX
//! Runtime reads selects it when `--backend` is not given, and is an input error with an explicit
//! `--backend tract`; a provider setting (`--device-id`, `--tf32`, `--cuda-graph`,
//! `--trt-cache`) is an input error with a provider that has no such setting. `--ep` is parsed
//! whatever the backend.

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

/// ONNX Runtime execution providers as `--ep` names them (parsed even in builds without the
/// `ort` feature, so that a typo is always an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
    TensorRt,
    Auto,
}

impl Provider {
    pub fn parse(name: &str) -> Result<Provider, Error> {
        match name {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            "tensorrt" | "trt" => Ok(Provider::TensorRt),
            "auto" => Ok(Provider::Auto),
            other => Err(Error::invalid_input(
                "--ep",
                format!("unknown execution provider {other:?} (cpu, cuda, tensorrt or auto)"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
            Provider::Auto => "auto",
        }
    }
}

/// Maximum `--threads`: far above any machine's cores, far below what would exhaust the
/// process's thread limit.
pub const MAX_THREADS: usize = 1024;

#[derive(clap::Args, Clone, Debug)]
pub struct BackendArgs {
    /// Backend that runs the graphs [default: tract; ort when any of --ep, --ort-lib,
    /// --device-id, --threads, --tf32, --cuda-graph, --trt-cache is given, since only ONNX
    /// Runtime reads them]. With an explicit `--backend tract` those flags are errors.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// ONNX Runtime execution provider: cpu (the default), cuda, tensorrt, or auto (TensorRT,
    /// else CUDA, else CPU; the provider it got is what tables and the PNG record). CUDA or
    /// TensorRT that cannot start is an error, never a CPU fallback.
    #[arg(long)]
    pub ep: Option<String>,
    /// ONNX Runtime library (libonnxruntime.so.1.31.1). Default: ORT_DYLIB_PATH, then
    /// $IDPATCH_HOME/lib, then target/onnxruntime (where scripts/fetch-onnxruntime.sh puts it).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// CUDA device ordinal (default 0), for --ep cuda, tensorrt or auto.
    #[arg(long)]
    pub device_id: Option<i32>,
    /// ONNX Runtime intra-op threads, 1 to 1024 (default: one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Allow TF32 math for FP32 graphs on CUDA (faster, ~1e-3 relative error); --ep cuda,
    /// tensorrt or auto.
    #[arg(long)]
    pub tf32: bool,
    /// Capture CUDA graphs (--ep cuda only; one per input shape).
    #[arg(long)]
    pub cuda_graph: bool,
    /// TensorRT engine and timing cache root (default: $IDPATCH_HOME/cache/tensorrt or
    /// ~/.cache/idpatch/tensorrt); --ep tensorrt or auto.
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
    /// ONNX Runtime's profiler folder (set by `bench --profile`, not a flag of every command).
    #[arg(skip)]
    pub profile_dir: Option<PathBuf>,
}

/// A provider setting: its flag, whether it was given, what it is, and the providers that have it.
struct ProviderFlag {
    flag: &'static str,
    given: bool,
    what: &'static str,
    providers: &'static [Provider],
}

const GPU: &[Provider] = &[Provider::Cuda, Provider::TensorRt, Provider::Auto];

impl BackendArgs {
    /// The provider asked for: `--ep`, parsed, else CPU.
    pub fn provider(&self) -> Result<Provider, Error> {
        self.ep
            .as_deref()
            .map_or(Ok(Provider::Cpu), Provider::parse)
    }

    /// The backend that runs: `--backend`, else ort when an ONNX Runtime flag is given.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Some(kind) => kind,
            None if self.ort_flags().is_empty() => BackendKind::Tract,
            None => BackendKind::Ort,
        }
    }

    /// The ONNX Runtime flags given (everything but `--backend`).
    pub fn ort_flags(&self) -> Vec<&'static str> {
        [
            ("--ep", self.ep.is_some()),
            ("--ort-lib", self.ort_lib.is_some()),
            ("--device-id", self.device_id.is_some()),
            ("--threads", self.threads.is_some()),
            ("--tf32", self.tf32),
            ("--cuda-graph", self.cuda_graph),
            ("--trt-cache", self.trt_cache.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    fn provider_flags(&self) -> [ProviderFlag; 4] {
        [
            ProviderFlag {
                flag: "--device-id",
                given: self.device_id.is_some(),
                what: "the GPU ordinal is a CUDA and TensorRT setting",
                providers: GPU,
            },
            ProviderFlag {
                flag: "--tf32",
                given: self.tf32,
                what: "TF32 is a CUDA setting",
                providers: GPU,
            },
            ProviderFlag {
                flag: "--cuda-graph",
                given: self.cuda_graph,
                what: "CUDA graphs need --ep cuda",
                providers: &[Provider::Cuda],
            },
            ProviderFlag {
                flag: "--trt-cache",
                given: self.trt_cache.is_some(),
                what: "the engine cache is a TensorRT setting",
                providers: &[Provider::TensorRt, Provider::Auto],
            },
        ]
    }

    /// Checks that the backend and provider that will run honour every flag given; the first
    /// that is not is an input error saying why. `--ep` is always parsed.
    pub fn check(&self) -> Result<(), Error> {
        match self.unhonoured()?.into_iter().next() {
            None => Ok(()),
            Some((_, reason)) => Err(reason),
        }
    }

    /// Every flag given that this configuration cannot honour, with the error it makes.
    pub fn unhonoured(&self) -> Result<Vec<(&'static str, Error)>, Error> {
        let provider = self.provider()?;
        if let Some(threads) = self.threads {
            if !(1..=MAX_THREADS).contains(&threads) {
                return Err(Error::invalid_input(
                    "--threads",
                    format!("{threads} is not 1 to {MAX_THREADS}"),
                ));
            }
        }
        if self.device_id.is_some_and(|id| id < 0) {
            return Err(Error::invalid_input("--device-id", "must be 0 or more"));
        }
        if self.kind() == BackendKind::Tract {
            return Ok(self
                .ort_flags()
                .into_iter()
                .map(|flag| {
                    let reason = if matches!(flag, "--tf32" | "--cuda-graph") {
                        "applies to ONNX Runtime's CUDA provider, not to --backend tract"
                    } else {
                        "is an ONNX Runtime setting; --backend tract cannot honour it (use \
                         --backend ort, or drop the flag)"
                    };
                    (flag, Error::invalid_input(flag, reason))
                })
                .collect());
        }
        Ok(self
            .provider_flags()
            .into_iter()
            .filter(|f| f.given && !f.providers.contains(&provider))
            .map(|f| {
                let names: Vec<&str> = f.providers.iter().map(|p| p.name()).collect();
                let names = match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => names.join(""),
                };
                let reason = if self.ep.is_some() {
                    format!("{} (got --ep {})", f.what, provider.name())
                } else {
                    format!(
                        "applies to ONNX Runtime's {} provider: give --ep {} (without --ep, \
                         ONNX Runtime runs on the CPU)",
                        if f.flag == "--trt-cache" {
                            "TensorRT"
                        } else {
                            "CUDA"
                        },
                        names
                    )
                };
                (f.flag, Error::invalid_input(f.flag, reason))
            })
            .collect())
    }

    /// The same arguments without `flags` (for a configuration of `bench --compare` that does not
    /// take them).
    pub fn without(&self, flags: &[&str]) -> BackendArgs {
        let mut args = self.clone();
        for flag in flags {
            match *flag {
                "--ep" => args.ep = None,
                "--ort-lib" => args.ort_lib = None,
                "--device-id" => args.device_id = None,
                "--threads" => args.threads = None,
                "--tf32" => args.tf32 = false,
                "--cuda-graph" => args.cuda_graph = false,
                "--trt-cache" => args.trt_cache = None,
                _ => {}
            }
        }
        args
    }

    /// The label of what was asked for: "tract", "ort-cpu", "ort-auto", ... (before `auto`
    /// resolves; tables print [`Backend::name`] once a graph has loaded).
    pub fn label(&self) -> String {
        match self.kind() {
            BackendKind::Tract => "tract".into(),
            BackendKind::Ort => format!("ort-{}", self.provider().map_or("?", |p| p.name())),
        }
    }

    /// Parses "tract", "ort" or "ort-<ep>" into these args with the backend (and provider)
    /// replaced; see [`BackendArgs::split_unhonoured`] for the flags that no longer apply.
    pub fn with_label(&self, label: &str) -> Option<BackendArgs> {
        let mut args = self.clone();
        if label == "tract" {
            args.backend = Some(BackendKind::Tract);
        } else if let Some(ep) = label.strip_prefix("ort-") {
            args.backend = Some(BackendKind::Ort);
            args.ep = Some(ep.to_string());
        } else if label == "ort" {
            args.backend = Some(BackendKind::Ort);
        } else {
            return None;
        }
        Some(args)
    }

    /// For one configuration of `bench --compare`: these arguments without the flags it cannot
    /// honour, and those flags (every ONNX Runtime flag for tract).
    pub fn split_unhonoured(&self) -> Result<(BackendArgs, Vec<&'static str>), Error> {
        let flags: Vec<&'static str> = self.unhonoured()?.into_iter().map(|(f, _)| f).collect();
        Ok((self.without(&flags), flags))
    }

    /// The backend, after [`BackendArgs::check`]. ONNX Runtime outputs stay on the device until
    /// a caller copies them back.
    pub fn make(&self) -> Result<Box<dyn Backend>, Error> {
        self.check()?;
        match self.kind() {
            BackendKind::Tract => make_tract(self),
            BackendKind::Ort => make_ort(self),
        }
    }

    /// Once a graph has loaded: `--ep auto` may have settled on a provider without a setting
    /// that was given (`--device-id` on the CPU, `--trt-cache` on CUDA); that is an input error.
    pub fn check_resolved(&self, backend: &dyn Backend) -> Result<(), Error> {
        if self.kind() != BackendKind::Ort || self.provider()? != Provider::Auto {
            return Ok(());
        }
        let name = backend.name();
        let got = match name.strip_prefix("ort-").map(Provider::parse) {
            Some(Ok(p)) if p != Provider::Auto => p,
            _ => return Ok(()),
        };
        match self
            .provider_flags()
            .into_iter()
            .find(|f| f.given && !f.providers.contains(&got))
        {
            Some(f) => Err(Error::invalid_input(
                f.flag,
                format!("{} and --ep auto settled on {name}", f.what),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "tract")]
fn make_tract(args: &BackendArgs) -> Result<Box<dyn Backend>, Error> {
    if args.profile_dir.is_some() {
        // `bench --profile` refuses tract configurations first; never profile silently nothing.
        return Err(Error::invalid_input(
            "--profile",
            "is ONNX Runtime's profiler; tract has none",
        ));
    }
    Ok(Box::new(idpatch::TractBackend::new()))
}

#[cfg(not(feature = "tract"))]
fn make_tract(_: &BackendArgs) -> Result<Box<dyn Backend>, Error> {
    Err(Error::invalid_input(
        "--backend",
        "this build has no tract backend (built without the `tract` feature)",
    ))
}

#[cfg(feature = "ort")]
fn make_ort(args: &BackendArgs) -> Result<Box<dyn Backend>, Error> {
    use crate::output::note;
    use idpatch::backend::ort::{Ep, OrtOptions, Residency};
    let ep = match args.provider()? {
        Provider::Cpu => Ep::Cpu,
        Provider::Cuda => Ep::Cuda,
        Provider::TensorRt => Ep::TensorRt,
        Provider::Auto => Ep::Auto,
    };
    let options = OrtOptions {
        library: args.ort_lib.clone(),
        ep,
        device_id: args.device_id.unwrap_or(0),
        intra_threads: args.threads,
        outputs: Residency::Device,
        tf32: args.tf32,
        cuda_graph: args.cuda_graph,
        trt_cache_dir: args.trt_cache.clone(),
        profile_dir: args.profile_dir.clone(),
        // The backend's notices are shown on stderr (never panicking when it is closed).
        notices: idpatch::backend::notice::Notices::to(|n| note!("{n}")),
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
