//! Sessions and their execution providers: the CUDA provider's options, the TensorRT
//! provider's profiles and caches (computed in `tensorrt.rs`), and `--ep auto`'s choice (see the
//! backend's module docs for what each option is and why).

use std::path::{Path, PathBuf};

use ::ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ArenaExtendStrategy};
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ::ort::session::Session;

use super::graph::declared_io;
use super::library::GPU_BUILD_HINT;
use super::tensorrt::{
    default_trt_cache_root, gpu_model, graph_digest, trt_cache_dir, trt_precision_options,
    trt_profile_shapes,
};
use super::{Ep, OrtBackend};
use crate::backend::notice::Notice;
use crate::backend::GraphIo;
use crate::manifest::{GraphEntry, Role};
use crate::{Error, Result};

impl OrtBackend {
    fn session(
        &self,
        role: Role,
        path: &Path,
        io: Option<(&GraphIo, Option<&GraphEntry>)>,
        ep: Ep,
    ) -> Result<Session> {
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
        if let Some(dir) = &self.options.profile_dir {
            builder = builder
                .with_profiling(dir.join(role.name()))
                .map_err(|e| fail("profiler", e.to_string()))?;
        }
        let (providers, trt_cache) = match ep {
            Ep::Cpu | Ep::Auto => (vec![], None),
            Ep::Cuda => (vec![self.cuda_provider()], None),
            Ep::TensorRt => {
                let (io, entry) = io.ok_or_else(|| fail("profiles", "graph IO unknown".into()))?;
                let (trt, dir) = self.tensorrt_provider(role, path, io, entry)?;
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
                self.options.notices.send(Notice::EngineBuild {
                    graph: role,
                    cache: dir.clone(),
                });
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
        entry: Option<&GraphEntry>,
    ) -> Result<(ep::ExecutionProviderDispatch, PathBuf)> {
        if entry.is_some_and(GraphEntry::has_uint8_activations) {
            // TensorRT's explicit quantization is signed int8 with zero point 0 only.
            return Err(Error::invalid_input(
                "--ep",
                format!(
                    "graph {role} was quantized with uint8 activations (U8S8, for ONNX Runtime's \
                     CPU provider); TensorRT takes int8 activations only: quantize with \
                     calibration/quantize.py --activation-type int8"
                ),
            ));
        }
        let root = match &self.options.trt_cache_dir {
            Some(d) => d.clone(),
            None => default_trt_cache_root(),
        };
        let gpu = gpu_model(self.options.device_id)
            .unwrap_or_else(|| format!("cuda{}", self.options.device_id));
        let dir = trt_cache_dir(&root, &graph_digest(path, entry)?, &gpu);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let dir_str = dir.to_string_lossy().into_owned();
        let precision = entry.map_or("fp32", |e| e.precision.as_str());
        let mut trt = ep::TensorRT::default().with_device_id(self.options.device_id);
        for (key, value) in trt_precision_options(precision, self.options.trt_fp16) {
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
            Err(axis) => self
                .options
                .notices
                .send(Notice::NoProfileRange { graph: role, axis }),
        }
        Ok((trt.build().error_on_failure(), dir))
    }

    /// A session for the graph on the provider asked for, or for `auto` the first that starts.
    pub(super) fn choose_session(
        &self,
        role: Role,
        path: &Path,
        entry: Option<&GraphEntry>,
    ) -> Result<(Session, Ep)> {
        // TensorRT profiles are built from the declared IO: the manifest's, else a CPU session's.
        let spec_io = || -> Result<GraphIo> {
            match entry {
                Some(entry) => Ok(GraphIo {
                    inputs: entry.inputs.clone(),
                    outputs: entry.outputs.clone(),
                }),
                None => declared_io(role, &self.session(role, path, None, Ep::Cpu)?),
            }
        };
        Ok(match self.resolved.get().copied() {
            Some(Ep::TensorRt) => (
                self.session(role, path, Some((&spec_io()?, entry)), Ep::TensorRt)?,
                Ep::TensorRt,
            ),
            Some(ep) => (self.session(role, path, None, ep)?, ep),
            None => {
                let io = spec_io()?;
                let mut refusals = Vec::new();
                let mut chosen = None;
                for ep in [Ep::TensorRt, Ep::Cuda] {
                    match self.session(role, path, Some((&io, entry)), ep) {
                        Ok(s) => {
                            chosen = Some((s, ep));
                            break;
                        }
                        Err(e) => refusals.push(format!("{ep}: {}", refusal_reason(&e))),
                    }
                }
                let (session, ep) = match chosen {
                    Some(c) => c,
                    None => (self.session(role, path, None, Ep::Cpu)?, Ep::Cpu),
                };
                let ep = *self.resolved.get_or_init(|| ep);
                self.options.notices.send(Notice::AutoChose {
                    ep: ep.to_string(),
                    refused: refusals,
                });
                (session, ep)
            }
        })
    }
}

/// Why a provider could not start, for the `auto` notice: ONNX Runtime's own words, without the
/// flag, library path and install hint every refusal repeats.
fn refusal_reason(error: &Error) -> String {
    let text = match error {
        Error::InvalidInput { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    let text = text.split(GPU_BUILD_HINT).next().unwrap_or(&text);
    let text = text.split_once(" provider: ").map_or(text, |(_, why)| why);
    text.trim_end().trim_end_matches('.').to_string()
}
