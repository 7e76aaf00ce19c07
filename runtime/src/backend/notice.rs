//! What a backend tells its user that is neither a result nor an error: a TensorRT engine build
//! that will take minutes, the provider `--ep auto` settled on, a dynamic axis TensorRT profiles
//! have no range for. Library code never prints them; it hands them to the [`Notices`] sink the
//! caller configured (the CLI prints them on stderr, a server writes them to its log).

use std::path::PathBuf;
use std::sync::Arc;

use crate::manifest::Role;

/// One notice. [`std::fmt::Display`] gives the line the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// TensorRT builds an engine for `graph`, which may take minutes; it is cached in `cache`.
    EngineBuild { graph: Role, cache: PathBuf },
    /// `--ep auto` chose the provider named `ep`; `refused` gives, per better provider, why it did
    /// not start.
    AutoChose { ep: String, refused: Vec<String> },
    /// `graph` has the dynamic axis `axis` that the TensorRT profile ranges do not cover, so
    /// TensorRT builds an engine per input shape.
    NoProfileRange { graph: Role, axis: String },
    /// `graph` is INT8 (QDQ) and runs on ONNX Runtime's CUDA provider, which has no INT8
    /// convolution or matmul kernels for such graphs: its timings are no INT8 speed-up.
    Int8OnCuda { graph: Role },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::EngineBuild { graph, cache } => write!(
                f,
                "graph {graph}: building a TensorRT engine; this may take minutes (cached in {} \
                 for the next run)",
                cache.display()
            ),
            Notice::AutoChose { ep, refused } if refused.is_empty() => {
                write!(f, "ONNX Runtime: --ep auto chose {ep}")
            }
            Notice::AutoChose { ep, refused } => write!(
                f,
                "ONNX Runtime: --ep auto chose {ep} ({})",
                refused.join("; ")
            ),
            Notice::NoProfileRange { graph, axis } => write!(
                f,
                "note: graph {graph}: no TensorRT profile range for axis {axis:?}; TensorRT builds \
                 an engine per input shape instead"
            ),
            Notice::Int8OnCuda { graph } => write!(
                f,
                "note: graph {graph}: INT8 graphs on ONNX Runtime's CUDA provider run as \
                 DequantizeLinear plus float operators (no INT8 convolution or matmul kernels \
                 for QDQ graphs): expect no speed-up over FP16; INT8 on a GPU needs --ep tensorrt"
            ),
        }
    }
}

/// A function that shows or records a notice.
pub type NoticeSink = Arc<dyn Fn(&Notice) + Send + Sync>;

/// Where a backend's notices go: a function of the caller's, or nowhere ([`Notices::default`],
/// for callers that show none).
#[derive(Clone, Default)]
pub struct Notices(Option<NoticeSink>);

impl Notices {
    /// Notices handed to `sink`, from whichever thread loads or runs a graph.
    pub fn to(sink: impl Fn(&Notice) + Send + Sync + 'static) -> Self {
        Notices(Some(Arc::new(sink)))
    }

    /// Hands `notice` to the sink, if any.
    pub fn send(&self, notice: Notice) {
        if let Some(sink) = &self.0 {
            sink(&notice);
        }
    }
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Notices(sink)"
        } else {
            "Notices(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn notices_reach_the_sink_as_lines() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let notices = Notices::to(move |n| sink.lock().unwrap().push(n.to_string()));
        notices.send(Notice::AutoChose {
            ep: "cpu".into(),
            refused: vec!["tensorrt: no library".into(), "cuda: no device".into()],
        });
        notices.send(Notice::NoProfileRange {
            graph: Role::Unet,
            axis: "frames".into(),
        });
        Notices::default().send(Notice::AutoChose {
            ep: "cuda".into(),
            refused: vec![],
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "ONNX Runtime: --ep auto chose cpu (tensorrt: no library; cuda: no device)",
                "note: graph unet: no TensorRT profile range for axis \"frames\"; TensorRT \
                 builds an engine per input shape instead",
            ]
        );
    }

    #[test]
    fn int8_on_cuda_names_the_graph_and_the_provider_that_has_int8_kernels() {
        let line = Notice::Int8OnCuda {
            graph: Role::Controlnet,
        }
        .to_string();
        assert!(line.starts_with("note: graph controlnet: INT8"), "{line}");
        assert!(line.contains("no speed-up over FP16"), "{line}");
        assert!(
            line.ends_with("INT8 on a GPU needs --ep tensorrt"),
            "{line}"
        );
    }
}
