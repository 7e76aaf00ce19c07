//! The CUDA-graph mode of an ONNX Runtime graph: ONNX Runtime replays a captured CUDA graph
//! against the device addresses it captured, so each distinct set of input shapes gets its own
//! fixed input buffers and binding (told apart with the `gpu_graph_id` run option); inputs are
//! copied into them, outputs copied out (see the backend's module docs).

use ::ort::memory::Allocator;
use ::ort::session::{IoBinding, RunOptions};
use ::ort::value::{DynTensor, DynTensorValueType};

use super::graph::{
    host_bytes, ort_bytes, owned_value, Direction, OrtDeviceValue, OrtGraph, Source,
};
use super::Residency;
use crate::backend::Value;
use crate::{Error, Result};

/// Fixed device buffers for one captured CUDA graph.
pub(super) struct CapturedGraph {
    id: usize,
    binding: IoBinding,
    inputs: Vec<(String, DynTensor)>,
    options: RunOptions,
}

impl OrtGraph {
    /// Makes the fixed buffers and binding for one set of input shapes on first use.
    fn ensure_captured(&mut self, inputs: &[(&str, Source)], shapes: &[Vec<usize>]) -> Result<()> {
        let (role, ep) = (self.role, self.ep);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::graph(
                role.name(),
                format!("ONNX Runtime {ep} (CUDA graph): {what}: {e}"),
            )
        };
        let Some(graphs) = self.cuda_graphs.as_mut() else {
            return Err(fail("run", &"CUDA graphs are off"));
        };
        if !graphs.contains_key(shapes) {
            let id = graphs.len();
            let allocator = Allocator::new(&self.session, self.device_memory.clone())
                .map_err(|e| fail("device allocator", &e))?;
            let mut binding = self
                .session
                .create_binding()
                .map_err(|e| fail("IO binding", &e))?;
            let mut buffers = Vec::with_capacity(inputs.len());
            for ((name, source), shape) in inputs.iter().zip(shapes) {
                let buffer = DynTensor::new(&allocator, source.element_type(), shape.clone())
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
            let captured = CapturedGraph {
                id,
                binding,
                inputs: buffers,
                options,
            };
            graphs.insert(shapes.to_vec(), captured);
        }
        Ok(())
    }

    /// CUDA-graph run: inputs are copied into buffers whose addresses stay fixed for the captured
    /// graph of these shapes; outputs are copied out of ONNX Runtime's fixed output buffers,
    /// because the next replay writes into the same memory.
    pub(super) fn run_captured(&mut self, inputs: &[(&str, Source)]) -> Result<Vec<Value>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, s)| s.shape()).collect();
        let (role, ep) = (self.role, self.ep);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::graph(
                role.name(),
                format!("ONNX Runtime {ep} (CUDA graph): {what}: {e}"),
            )
        };
        self.ensure_captured(inputs, &shapes)?;
        let fixed = {
            let Some(graph) = self.cuda_graphs.as_mut().and_then(|g| g.get_mut(&shapes)) else {
                return Err(fail("run", &"no buffers for these shapes"));
            };
            for ((name, source), (_, buffer)) in inputs.iter().zip(graph.inputs.iter_mut()) {
                let (copied, direction, bytes) = match source {
                    Source::Device(t) => (
                        t.copy_into(&mut *buffer),
                        Direction::DeviceToDevice,
                        ort_bytes(t),
                    ),
                    Source::Host(t) => (
                        owned_value((*t).clone()).and_then(|v| v.copy_into(&mut *buffer)),
                        Direction::HostToDevice,
                        host_bytes(t),
                    ),
                };
                copied.map_err(|e| fail(&format!("copying input {name}"), &e))?;
                self.counters.add(direction, bytes);
            }
            let mut outputs = self
                .session
                .run_binding_with_options(&graph.binding, &graph.options)
                .map_err(|e| fail(&format!("run of captured graph {}", graph.id), &e))?;
            let mut fixed = Vec::with_capacity(self.io.outputs.len());
            for spec in &self.io.outputs {
                let tensor = outputs
                    .remove(spec.name.as_str())
                    .ok_or_else(|| fail("run", &format!("no output {}", spec.name)))?
                    .downcast::<DynTensorValueType>()
                    .map_err(|e| fail(&format!("output {}", spec.name), &e))?;
                fixed.push(tensor);
            }
            fixed
        };
        fixed
            .iter()
            .map(|tensor| match self.residency {
                Residency::Host => Ok(Value::Host(self.tensor_to_host(tensor)?)),
                Residency::Device => {
                    let copy = tensor
                        .to(
                            self.device_memory.allocation_device(),
                            self.device_memory.device_id(),
                        )
                        .map_err(|e| fail("copying an output out of its fixed buffer", &e))?;
                    self.counters
                        .add(Direction::DeviceToDevice, ort_bytes(&copy));
                    OrtDeviceValue::value(copy)
                }
            })
            .collect()
    }
}
