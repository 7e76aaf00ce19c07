//! One error type for the library. The CLI maps [`Error::exit_code`] to the process status:
//! 2 for anything the user can fix (bad input, bad model set), 1 for failures inside a backend.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-supplied value is wrong: `input` names it (a flag, a file, a layout field).
    #[error("{input}: {reason}")]
    InvalidInput { input: String, reason: String },

    /// A file could not be read or written. The cause is part of the message (not a separate
    /// `source`), so a chained report prints it once.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// A model set is unusable: missing or corrupted file, checksum or IO spec mismatch.
    #[error("model set {set}: {reason}")]
    ModelSet { set: String, reason: String },

    /// A graph failed while running (backend error, NaN/Inf in an output).
    #[error("graph {graph}: {reason}")]
    Graph { graph: String, reason: String },

    /// The caller stopped a generation between denoising steps
    /// ([`crate::pipeline::denoise`]'s step callback): `step` of `steps` were done.
    #[error("cancelled after denoising step {step} of {steps}")]
    Cancelled { step: usize, steps: usize },
}

impl Error {
    pub fn invalid_input(input: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            input: input.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    pub fn model_set(set: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::ModelSet {
            set: set.into(),
            reason: reason.into(),
        }
    }

    pub fn graph(graph: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Graph {
            graph: graph.into(),
            reason: reason.into(),
        }
    }

    /// Process exit status for this error: 2 for usage and input errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidInput { .. } | Error::Io { .. } | Error::ModelSet { .. } => 2,
            Error::Graph { .. } | Error::Cancelled { .. } => 1,
        }
    }
}

/// A number for an error message, as a user would write it: plain, or with an exponent when
/// very large or very small (`1e39` rather than forty digits).
/// f32 values print in their own precision (`3e38`, not `3.0000000054977558e38`).
pub(crate) fn shown<T>(v: T) -> String
where
    T: Copy + Into<f64> + std::fmt::Display + std::fmt::LowerExp,
{
    let x: f64 = v.into();
    if x.is_finite() && x != 0.0 && !(1e-5..1e16).contains(&x.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}
