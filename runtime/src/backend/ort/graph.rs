//! One graph on an ONNX Runtime session: IO binding, uploads and downloads, and the byte counters
//! behind [`Traffic`] (the CUDA-graph mode's fixed buffers are in `cuda_graph.rs`).
//!
//! Every transfer goes through ONNX Runtime's own copy (`Tensor::to` / `copy_into`, which return
//! errors), never through `Clone` on an `ort` tensor, which deep-copies and panics when the copy
//! fails. Device values are bound by reference: ONNX Runtime keeps its own handle to the same
//! memory, so binding copies nothing. Host data reaches ONNX Runtime only as buffers it owns
//! (see [`owned_value`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ::ort::memory::{AllocationDevice, MemoryInfo};
use ::ort::session::Session;
use ::ort::value::{DynTensor, DynTensorValueType, TensorElementType, ValueType};

use super::cuda_graph::CapturedGraph;
use super::{Ep, Residency};
use crate::backend::{check_run_inputs, DeviceTensor, Graph, GraphIo, MemoryUse, Traffic, Value};
use crate::manifest::{Dim, Role, TensorSpec};
use crate::tensor::{DType, Tensor, TensorData};
use crate::{Error, Result};

/// Byte counters shared by a backend and every graph it loaded.
#[derive(Debug, Default)]
pub(super) struct Counters {
    host_to_device: AtomicU64,
    device_to_host: AtomicU64,
    device_to_device: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Direction {
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
}

impl Counters {
    pub(super) fn add(&self, direction: Direction, bytes: u64) {
        let counter = match direction {
            Direction::HostToDevice => &self.host_to_device,
            Direction::DeviceToHost => &self.device_to_host,
            Direction::DeviceToDevice => &self.device_to_device,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> Traffic {
        Traffic {
            host_to_device: self.host_to_device.load(Ordering::Relaxed),
            device_to_host: self.device_to_host.load(Ordering::Relaxed),
            device_to_device: self.device_to_device.load(Ordering::Relaxed),
        }
    }
}

/// A tensor this backend left in its provider's memory; the handle of a [`DeviceTensor`].
pub struct OrtDeviceValue {
    tensor: DynTensor,
}

impl OrtDeviceValue {
    pub(super) fn value(tensor: DynTensor) -> Result<Value> {
        let shape = tensor.shape().iter().map(|&d| d as usize).collect();
        let dtype = dtype_of(*tensor.data_type()).ok_or_else(|| {
            Error::graph(
                "ort",
                format!("unsupported element type {}", tensor.data_type()),
            )
        })?;
        Ok(Value::Device(DeviceTensor {
            shape,
            dtype,
            handle: Box::new(OrtDeviceValue { tensor }),
        }))
    }
}

pub(super) struct OrtGraph {
    pub(super) role: Role,
    pub(super) io: GraphIo,
    pub(super) session: Session,
    pub(super) ep: Ep,
    pub(super) residency: Residency,
    pub(super) device_memory: MemoryInfo<'static>,
    pub(super) host_memory: MemoryInfo<'static>,
    /// Per distinct input shapes, when CUDA graphs are on.
    pub(super) cuda_graphs: Option<HashMap<Vec<Vec<usize>>, CapturedGraph>>,
    pub(super) counters: Arc<Counters>,
    /// The session's profiler is on (until [`Graph::end_profiling`]).
    pub(super) profiling: bool,
}

/// What an input is bound from: a value already in provider memory, or a host tensor that is
/// uploaded (or, in CUDA-graph mode, copied into its fixed buffer) straight from its buffer.
pub(super) enum Source<'a> {
    Device(&'a DynTensor),
    Host(&'a Tensor),
}

impl Source<'_> {
    pub(super) fn shape(&self) -> Vec<usize> {
        match self {
            Source::Device(t) => t.shape().iter().map(|&d| d as usize).collect(),
            Source::Host(t) => t.shape().to_vec(),
        }
    }

    pub(super) fn element_type(&self) -> TensorElementType {
        match self {
            Source::Device(t) => *t.data_type(),
            Source::Host(t) => element_type(t.dtype()),
        }
    }
}

/// An ORT value over a host tensor's own buffer, moved in without a copy.
///
/// Host data is never handed to ONNX Runtime as a borrowed view: `ort` 2.0.0-rc.15 deep-copies a
/// borrowed view when binding it to a session that wants it in the same memory (`Clone`, which
/// panics on failure), and its transfer helper binds the view again under the lock it already
/// holds, which deadlocks.
pub(super) fn owned_value(tensor: Tensor) -> ::ort::Result<DynTensor> {
    // An owned standard-layout array is taken over by ort as it is (no copy).
    Ok(match tensor.into_data() {
        TensorData::F32(a) => ::ort::value::Tensor::from_array(a)?.upcast(),
        TensorData::F16(a) => ::ort::value::Tensor::from_array(a)?.upcast(),
        TensorData::I64(a) => ::ort::value::Tensor::from_array(a)?.upcast(),
        TensorData::I32(a) => ::ort::value::Tensor::from_array(a)?.upcast(),
    })
}

/// Moves a host tensor into the provider memory `memory` describes: its buffer becomes an ORT
/// value without a copy, then one copy to the GPU through ONNX Runtime's transfer (which returns
/// errors, out of device memory say). On the CPU provider, whose "device" is host memory, the
/// buffer is used in place. Counted as host to device either way, so that ort-cpu reports what
/// the GPU path moves.
pub(super) fn upload(
    tensor: Tensor,
    memory: &MemoryInfo,
    counters: &Counters,
) -> ::ort::Result<DynTensor> {
    let bytes = host_bytes(&tensor);
    let host = owned_value(tensor)?;
    let uploaded = if memory.is_cpu_accessible() {
        host
    } else {
        host.to(memory.allocation_device(), memory.device_id())?
    };
    counters.add(Direction::HostToDevice, bytes);
    Ok(uploaded)
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
                        Prepared::Cast(Value::Host(t.to_dtype(spec.dtype)?))
                    }
                    _ => Prepared::Given(value),
                };
                Ok((name, prepared))
            })
            .collect()
    }

    /// Each declared input in the graph's order (which CUDA-graph buffers are keyed by), with
    /// what it is bound from.
    fn sources<'a>(&self, views: &[(&'a str, &'a Value)]) -> Result<Vec<(&'a str, Source<'a>)>> {
        self.io
            .inputs
            .iter()
            .map(|spec| {
                let Some(&(name, value)) = views.iter().find(|(n, _)| *n == spec.name) else {
                    return Err(Error::graph(
                        self.role.name(),
                        format!("input {} was not given", spec.name),
                    ));
                };
                let source = match value {
                    Value::Host(t) => Source::Host(t),
                    Value::Device(d) => match d.handle.downcast_ref::<OrtDeviceValue>() {
                        Some(v) => Source::Device(&v.tensor),
                        None => {
                            return Err(Error::graph(
                                self.role.name(),
                                format!("input {name} is a device tensor {d:?} of another backend"),
                            ))
                        }
                    },
                };
                Ok((name, source))
            })
            .collect()
    }

    fn output_value(&self, tensor: DynTensor) -> Result<Value> {
        match self.residency {
            Residency::Host => Ok(Value::Host(self.tensor_to_host(&tensor)?)),
            Residency::Device => OrtDeviceValue::value(tensor),
        }
    }

    /// One device-to-host copy, counted; a tensor in host memory (an output bound there, or the
    /// CPU provider's memory) is read in place.
    pub(super) fn tensor_to_host(&self, tensor: &DynTensor) -> Result<Tensor> {
        let host = if tensor.memory_info().is_cpu_accessible() {
            ort_to_host(tensor)
        } else {
            let copied = tensor
                .to(AllocationDevice::CPU, 0)
                .map_err(|e| self.fail("copy to host", e))?;
            ort_to_host(&copied)
        }
        .map_err(|e| self.fail("output", e))?;
        self.counters
            .add(Direction::DeviceToHost, host_bytes(&host));
        Ok(host)
    }

    fn run_bound(&mut self, inputs: &[(&str, Source)]) -> Result<Vec<Value>> {
        let mut binding = self
            .session
            .create_binding()
            .map_err(|e| self.fail("IO binding", e))?;
        for (name, source) in inputs {
            let bound = match source {
                Source::Device(t) => binding.bind_input(*name, *t),
                Source::Host(t) => {
                    // The caller keeps its tensor, so the upload starts from a copy of it.
                    let uploaded = upload((*t).clone(), &self.device_memory, &self.counters)
                        .map_err(|e| self.fail(&format!("uploading input {name}"), e))?;
                    binding.bind_input(*name, &uploaded)
                }
            };
            bound.map_err(|e| self.fail(&format!("binding input {name}"), e))?;
        }
        let memory = match self.residency {
            Residency::Host => &self.host_memory,
            Residency::Device => &self.device_memory,
        };
        for spec in &self.io.outputs {
            binding
                .bind_output_to_device(spec.name.as_str(), memory)
                .map_err(|e| self.fail(&format!("binding output {}", spec.name), e))?;
        }
        // A fresh binding per run: ONNX Runtime allocates new output buffers, so values returned
        // by an earlier run are never overwritten.
        let (role, ep) = (self.role, self.ep);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::graph(role.name(), format!("ONNX Runtime {ep}: {what}: {e}"))
        };
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
}

/// An input ready to bind: a host tensor converted to the graph's dtype, or a value as given.
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
        let sources = self.sources(&views)?;
        if self.cuda_graphs.is_some() {
            self.run_captured(&sources)
        } else {
            self.run_bound(&sources)
        }
    }

    /// Uploads to this graph's provider memory (host memory owned by ONNX Runtime for the CPU
    /// provider), counted as host to device. The dtype is kept: device values are bound as they
    /// are, so cast to the graph's dtype first.
    fn to_device(&self, tensor: Tensor) -> Result<Value> {
        let uploaded = upload(tensor, &self.device_memory, &self.counters)
            .map_err(|e| self.fail("upload", e))?;
        OrtDeviceValue::value(uploaded)
    }

    fn traffic(&self) -> Option<Traffic> {
        Some(self.counters.snapshot())
    }

    fn memory(&self) -> Option<MemoryUse> {
        let device = match self.ep {
            Ep::Cuda | Ep::TensorRt => format!("cuda:{}", self.device_memory.device_id()),
            _ => "cpu".to_string(),
        };
        super::memory::arena_use(&self.session, &self.device_memory, device)
    }

    fn end_profiling(&mut self) -> Result<Option<PathBuf>> {
        if !std::mem::take(&mut self.profiling) {
            return Ok(None);
        }
        let file = self
            .session
            .end_profiling()
            .map_err(|e| self.fail("profiler", e))?;
        Ok(Some(PathBuf::from(file)))
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

fn element_type(d: DType) -> TensorElementType {
    match d {
        DType::Float32 => TensorElementType::Float32,
        DType::Float16 => TensorElementType::Float16,
        DType::Int64 => TensorElementType::Int64,
        DType::Int32 => TensorElementType::Int32,
    }
}

/// Bytes of a host tensor's elements.
pub(super) fn host_bytes(t: &Tensor) -> u64 {
    t.bytes() as u64
}

/// Bytes of an ORT tensor's elements.
pub(super) fn ort_bytes(t: &DynTensor) -> u64 {
    t.data_type()
        .byte_size(t.shape().num_elements())
        .unwrap_or(0) as u64
}

fn ort_to_host(t: &DynTensor) -> std::result::Result<Tensor, String> {
    let err = |e: ::ort::Error| e.to_string();
    // One copy, out of ORT's buffer into a new standard-layout array.
    Ok(match t.data_type() {
        TensorElementType::Float32 => {
            Tensor::from_array(t.try_extract_array::<f32>().map_err(err)?.to_owned())
        }
        TensorElementType::Float16 => {
            Tensor::from_array(t.try_extract_array::<half::f16>().map_err(err)?.to_owned())
        }
        TensorElementType::Int64 => {
            Tensor::from_array(t.try_extract_array::<i64>().map_err(err)?.to_owned())
        }
        TensorElementType::Int32 => {
            Tensor::from_array(t.try_extract_array::<i32>().map_err(err)?.to_owned())
        }
        other => return Err(format!("unsupported element type {other}")),
    })
}

/// The graph's declared inputs and outputs, as the session reports them.
pub(super) fn declared_io(role: Role, session: &Session) -> Result<GraphIo> {
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

/// These run the tiny set's ControlNet on the CPU provider and need libonnxruntime 1.31.1
/// (scripts/fetch-onnxruntime.sh; scripts/test.sh sets ORT_DYLIB_PATH). Expected byte counts come
/// from the tensors' shapes; expected values from the same graph run the default way.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::backend::ort::{find_library, OrtBackend, OrtOptions};
    use crate::bench::{synth_inputs, SynthSize};
    use crate::manifest::{Checksums, ModelSet};

    fn backend() -> OrtBackend {
        let library = find_library(None)
            .unwrap_or_else(|e| panic!("these tests need ONNX Runtime 1.31.1: {e}"));
        OrtBackend::new(OrtOptions {
            library: Some(library),
            outputs: Residency::Device,
            ..OrtOptions::default()
        })
        .unwrap()
    }

    fn controlnet(backend: &OrtBackend) -> (ModelSet, OrtGraph) {
        let set = ModelSet::open(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"),
            Checksums::Skip,
        )
        .unwrap();
        let path = set.graph_path(Role::Controlnet).unwrap();
        let graph = backend
            .load_graph(
                Role::Controlnet,
                &path,
                Some(set.entry(Role::Controlnet).unwrap()),
            )
            .unwrap();
        (set, graph)
    }

    /// Made-up ControlNet inputs at `sequence` tokens: (name, tensor) in the manifest's order.
    fn inputs(set: &ModelSet, sequence: usize) -> Vec<(String, Tensor)> {
        let size = SynthSize {
            height: 64,
            width: 96,
            people: 3,
            sequence: Some(sequence),
        };
        synth_inputs(set, Role::Controlnet, &size).unwrap()
    }

    fn named(values: &[(String, Value)]) -> Vec<(&str, &Value)> {
        values.iter().map(|(n, v)| (n.as_str(), v)).collect()
    }

    fn bytes(tensors: &[(String, Tensor)]) -> u64 {
        tensors.iter().map(|(_, t)| host_bytes(t)).sum()
    }

    fn to_host(graph: &OrtGraph, outputs: Vec<Value>) -> Vec<Tensor> {
        outputs
            .into_iter()
            .map(|v| graph.to_host(v).unwrap())
            .collect()
    }

    fn delta(graph: &OrtGraph, before: Traffic) -> Traffic {
        graph.counters.snapshot().since(before)
    }

    #[test]
    fn device_values_are_bound_without_copies_and_host_values_uploaded_once() {
        let backend = backend();
        let (set, mut graph) = controlnet(&backend);
        let host = inputs(&set, 125);
        let input_bytes = bytes(&host);

        let before = graph.counters.snapshot();
        let device: Vec<(String, Value)> = host
            .iter()
            .map(|(n, t)| (n.clone(), graph.to_device(t.clone()).unwrap()))
            .collect();
        assert_eq!(
            delta(&graph, before),
            Traffic {
                host_to_device: input_bytes,
                ..Traffic::default()
            }
        );

        let before = graph.counters.snapshot();
        let from_device = graph.run(&named(&device)).unwrap();
        assert_eq!(
            delta(&graph, before),
            Traffic::default(),
            "a bound value was copied"
        );
        assert!(from_device.iter().all(|v| matches!(v, Value::Device(_))));
        let output_bytes: u64 = from_device
            .iter()
            .map(|v| v.shape().iter().product::<usize>() as u64 * 4)
            .sum();

        let host_values: Vec<(String, Value)> = host
            .iter()
            .map(|(n, t)| (n.clone(), Value::Host(t.clone())))
            .collect();
        let before = graph.counters.snapshot();
        let from_host = graph.run(&named(&host_values)).unwrap();
        assert_eq!(
            delta(&graph, before),
            Traffic {
                host_to_device: input_bytes,
                ..Traffic::default()
            }
        );

        let before = graph.counters.snapshot();
        let a = to_host(&graph, from_device);
        assert_eq!(
            delta(&graph, before),
            Traffic {
                device_to_host: output_bytes,
                ..Traffic::default()
            }
        );
        assert_eq!(a, to_host(&graph, from_host));
    }

    #[test]
    fn fixed_buffers_copy_inputs_in_and_outputs_out_per_set_of_shapes() {
        let backend = backend();
        let (set, mut plain) = controlnet(&backend);
        let (_, mut fixed) = controlnet(&backend);
        fixed.cuda_graphs = Some(HashMap::new());
        let host = inputs(&set, 125);
        let device: Vec<(String, Value)> = host
            .iter()
            .map(|(n, t)| (n.clone(), fixed.to_device(t.clone()).unwrap()))
            .collect();
        let expected = plain.run(&named(&device)).unwrap();
        let expected = to_host(&plain, expected);
        let output_bytes: u64 = expected.iter().map(host_bytes).sum();

        // Device inputs are copied into the fixed buffers and the outputs out of them.
        let before = fixed.counters.snapshot();
        let first = fixed.run(&named(&device)).unwrap();
        assert_eq!(
            delta(&fixed, before),
            Traffic {
                device_to_device: bytes(&host) + output_bytes,
                ..Traffic::default()
            }
        );
        // A second run with other values must not overwrite the first run's outputs.
        let mut other = host.clone();
        for (name, tensor) in &mut other {
            if name == "conditioning_scale" {
                *tensor = Tensor::from_f32(vec![1], vec![0.25]).unwrap();
            }
        }
        let other_values: Vec<(String, Value)> = other
            .iter()
            .map(|(n, t)| (n.clone(), Value::Host(t.clone())))
            .collect();
        let before = fixed.counters.snapshot();
        let second = fixed.run(&named(&other_values)).unwrap();
        assert_eq!(
            delta(&fixed, before),
            Traffic {
                host_to_device: bytes(&other),
                device_to_device: output_bytes,
                ..Traffic::default()
            }
        );
        assert_eq!(to_host(&fixed, first), expected);
        assert_ne!(to_host(&fixed, second), expected);

        // Another sequence length gets its own buffers; the same shapes reuse theirs.
        let text_only = inputs(&set, 77);
        let values: Vec<(String, Value)> = text_only
            .iter()
            .map(|(n, t)| (n.clone(), Value::Host(t.clone())))
            .collect();
        fixed.run(&named(&values)).unwrap();
        fixed.run(&named(&device)).unwrap();
        assert_eq!(fixed.cuda_graphs.as_ref().map(HashMap::len), Some(2));
    }
}
