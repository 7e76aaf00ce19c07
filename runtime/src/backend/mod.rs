//! Backends run graphs on named tensors. Callers see one trait; the tract backend (pure Rust,
//! CPU) and the ONNX Runtime backend implement it.
//!
//! Values passed between graph runs are [`Value`]s: a backend that keeps tensors in device memory
//! returns [`Value::Device`] outputs that can be fed straight back into the next run without a
//! host round trip; [`Graph::to_host`] copies one back when the caller needs the numbers.
//!
//! A backend with device memory counts the bytes it copies between host and device memory
//! ([`Traffic`], read with [`Backend::traffic`] or [`Graph::traffic`]), so that the data path of a
//! pipeline can be checked without a GPU; a backend without device memory (tract) reports `None`.

use std::any::Any;
use std::path::{Path, PathBuf};

use crate::manifest::{check_io, GraphEntry, ModelSet, Role, TensorSpec};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

pub mod notice;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

/// A tensor owned by a backend, in its device memory.
pub struct DeviceTensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// The backend's own handle; only the backend that made it can read it.
    pub handle: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTensor({} {:?})", self.dtype, self.shape)
    }
}

#[derive(Debug)]
pub enum Value {
    Host(Tensor),
    Device(DeviceTensor),
}

impl Value {
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Host(t) => t.shape(),
            Value::Device(d) => &d.shape,
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Value::Host(t) => t.dtype(),
            Value::Device(d) => d.dtype,
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Host(t)
    }
}

/// Bytes copied between host memory and a backend's device memory, by direction, counted from
/// the tensors' shapes and element sizes (an f32 element is 4 bytes, f16 2, i64 8, i32 4).
///
/// Only the copies the backend makes for idpatch are counted: uploads of host tensors, downloads
/// of outputs to host tensors, and device-to-device copies (the CUDA-graph mode's copies into and
/// out of its fixed buffers). Copies an execution provider makes inside a graph run (for an input
/// that one of its CPU nodes reads, say) are not visible here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub host_to_device: u64,
    pub device_to_host: u64,
    pub device_to_device: u64,
}

impl Traffic {
    /// What was moved between the snapshot `earlier` and this one.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            host_to_device: self.host_to_device.saturating_sub(earlier.host_to_device),
            device_to_host: self.device_to_host.saturating_sub(earlier.device_to_host),
            device_to_device: self
                .device_to_device
                .saturating_sub(earlier.device_to_device),
        }
    }
}

impl std::ops::Add for Traffic {
    type Output = Traffic;

    fn add(self, other: Traffic) -> Traffic {
        Traffic {
            host_to_device: self.host_to_device + other.host_to_device,
            device_to_host: self.device_to_host + other.device_to_host,
            device_to_device: self.device_to_device + other.device_to_device,
        }
    }
}

/// Memory one graph's session holds in its backend's allocator, as that allocator reports it
/// (ONNX Runtime's arena statistics); bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryUse {
    /// Where the memory is: `cpu` or `cuda:<device id>`.
    pub device: String,
    /// Bytes in live allocations.
    pub in_use: u64,
    /// Bytes the allocator has reserved from the device (an arena keeps what it reserved).
    pub reserved: u64,
    /// The most bytes in use at once so far.
    pub peak: u64,
}

/// Inputs and outputs a graph file declares, in its own order.
#[derive(Debug, Clone)]
pub struct GraphIo {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

pub trait Backend {
    /// Short name for tables and errors ("tract", "ort-cuda", ...).
    fn name(&self) -> String;

    /// Loads one graph file. `entry` is the graph's entry in its set's manifest (declared IO,
    /// sha256 of the file and its external data), `None` for a graph outside a set: the ORT
    /// backend then takes the IO from the session and hashes the file itself for its TensorRT
    /// cache. Errors for unreadable or corrupted files are model-set errors.
    fn load(&self, role: Role, path: &Path, entry: Option<&GraphEntry>) -> Result<Box<dyn Graph>>;

    /// Moves a host tensor into this backend's device memory, once, for inputs that are fed to
    /// many runs. Backends without device memory keep it on the host.
    fn to_device(&self, tensor: Tensor) -> Result<Value> {
        Ok(Value::Host(tensor))
    }

    /// Bytes this backend and every graph it loaded have copied so far; `None` for a backend
    /// without device memory, which copies nothing between memories (tract).
    fn traffic(&self) -> Option<Traffic> {
        None
    }
}

pub trait Graph: Send {
    fn role(&self) -> Role;

    fn io(&self) -> &GraphIo;

    /// Runs the graph. Every declared input must be given by name; outputs come back in the
    /// graph's output order.
    fn run(&mut self, inputs: &[(&str, &Value)]) -> Result<Vec<Value>>;

    /// Moves a host tensor, as it is (cast it to the dtype the graph declares first), into the
    /// memory this graph's inputs are bound from, once, for a value that several runs (or
    /// several graphs of the same backend) take. Backends without device memory keep it on the
    /// host.
    fn to_device(&self, tensor: Tensor) -> Result<Value> {
        Ok(Value::Host(tensor))
    }

    /// [`Backend::traffic`] of the backend that loaded this graph (all its graphs together).
    fn traffic(&self) -> Option<Traffic> {
        None
    }

    /// Memory this graph's session holds, where the backend's allocator reports it (ONNX
    /// Runtime's arenas); `None` otherwise (tract, or an allocator without statistics).
    fn memory(&self) -> Option<MemoryUse> {
        None
    }

    /// Ends the profiler this graph's session was started with (ONNX Runtime's, with
    /// [`OrtOptions::profile_dir`](crate::backend::ort::OrtOptions::profile_dir)) and returns
    /// the trace file it wrote; `None` when the graph is not profiled (always, on tract). Later
    /// runs are not profiled.
    fn end_profiling(&mut self) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    /// Copies a value (possibly in device memory) to the host.
    fn to_host(&self, value: Value) -> Result<Tensor> {
        match value {
            Value::Host(t) => Ok(t),
            Value::Device(d) => Err(Error::graph(
                self.role().name(),
                format!("cannot read a device tensor {d:?} on this backend"),
            )),
        }
    }
}

/// Copies a value to the host as f32, whatever precision the graph computed it in (FP16 sets
/// return f16 outputs; integer outputs are refused).
pub fn to_host_f32(graph: &dyn Graph, value: Value) -> Result<Tensor> {
    let t = graph.to_host(value)?;
    match t.dtype() {
        DType::Float32 => Ok(t),
        DType::Float16 => t.cast(DType::Float32),
        other => Err(Error::graph(
            graph.role().name(),
            format!("an {other} output cannot be read as float32"),
        )),
    }
}

/// Loads the graph for `role` of `set` and checks its declared IO against the manifest.
pub fn load_checked(backend: &dyn Backend, set: &ModelSet, role: Role) -> Result<Box<dyn Graph>> {
    let path = set.graph_path(role)?;
    let entry = set.entry(role)?;
    let graph = backend
        .load(role, &path, Some(entry))
        .map_err(|e| match e {
            Error::ModelSet { reason, .. } | Error::Graph { reason, .. } => {
                // Backends name the graph in their set errors already; say it once.
                let prefix = format!("graph {role}: ");
                if reason.starts_with(&prefix) {
                    set.error(reason)
                } else {
                    set.error(prefix + &reason)
                }
            }
            other => other,
        })?;
    check_io(role, "input", &entry.inputs, &graph.io().inputs).map_err(|r| set.error(r))?;
    check_io(role, "output", &entry.outputs, &graph.io().outputs).map_err(|r| set.error(r))?;
    Ok(graph)
}

/// Checks that named inputs cover a graph's declared inputs with the right dtypes and ranks.
pub fn check_run_inputs(role: Role, io: &GraphIo, inputs: &[(&str, &Value)]) -> Result<()> {
    for spec in &io.inputs {
        let Some((_, value)) = inputs.iter().find(|(n, _)| *n == spec.name) else {
            return Err(Error::graph(
                role.name(),
                format!("input {} was not given", spec.name),
            ));
        };
        if value.dtype() != spec.dtype || !spec.accepts_shape(value.shape()) {
            return Err(Error::graph(
                role.name(),
                format!(
                    "input {} is {} {:?}, the graph takes {} {}",
                    spec.name,
                    value.dtype(),
                    value.shape(),
                    spec.dtype,
                    spec.shape_string()
                ),
            ));
        }
    }
    if let Some((extra, _)) = inputs
        .iter()
        .find(|(n, _)| !io.inputs.iter().any(|s| s.name == *n))
    {
        return Err(Error::graph(
            role.name(),
            format!("the graph has no input named {extra}"),
        ));
    }
    Ok(())
}
