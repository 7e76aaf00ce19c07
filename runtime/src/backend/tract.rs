//! The pure-Rust CPU backend. tract optimises a graph for the input shapes it is given. The
//! axes named in [`SYMBOLIC_AXES`] stay symbols in that plan, so one optimised plan serves every
//! length along them (the two sequence lengths of the ID injection schedule share one); the
//! other axes are fixed from the first run, and each new combination of them gets its own plan.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::prelude::{
    self as tp, DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, TValue,
    TypedRunnableModel,
};

use super::{check_run_inputs, Backend, Graph, GraphIo, Value};
use crate::manifest::{Dim, GraphEntry, Role, TensorSpec};
use crate::tensor::{DType, Element, Tensor};
use crate::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct TractBackend;

impl TractBackend {
    pub fn new() -> Self {
        TractBackend
    }
}

impl Backend for TractBackend {
    fn name(&self) -> String {
        "tract".into()
    }

    fn load(&self, role: Role, path: &Path, _entry: Option<&GraphEntry>) -> Result<Box<dyn Graph>> {
        Ok(Box::new(TractGraph::load(role, path)?))
    }
}

impl TractGraph {
    fn load(role: Role, path: &Path) -> Result<TractGraph> {
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_path(path).map_err(|e| {
            Error::model_set(
                path.display().to_string(),
                format!(
                    "graph {role}: cannot parse ONNX file {}: {e:#}",
                    path.display()
                ),
            )
        })?;
        let io = declared_io(&proto).map_err(|r| {
            Error::model_set(path.display().to_string(), format!("graph {role}: {r}"))
        })?;
        let dir = path.parent().and_then(|p| p.to_str());
        let model = onnx.parse(&proto, dir).map_err(|e| {
            Error::model_set(
                path.display().to_string(),
                format!("graph {role}: tract cannot load it: {e:#}"),
            )
        })?;
        if !model.unresolved_inputs.is_empty() {
            return Err(Error::model_set(
                path.display().to_string(),
                format!(
                    "graph {role}: unresolved inputs {:?}",
                    model.unresolved_inputs
                ),
            ));
        }
        let model = model.model;
        // tract's input order is the graph's input order without initializers.
        let input_order = model
            .input_outlets()
            .map_err(|e| Error::graph(role.name(), format!("{e:#}")))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        Ok(TractGraph {
            role,
            io,
            model,
            input_order,
            plans: HashMap::new(),
        })
    }
}

struct TractGraph {
    role: Role,
    io: GraphIo,
    model: tp::InferenceModel,
    input_order: Vec<String>,
    plans: HashMap<Vec<Vec<usize>>, Arc<TypedRunnableModel>>,
}

impl TractGraph {
    /// The optimised plan for inputs of these shapes (in `input_order`) and dtypes: made on
    /// first use, with the axes the graph declares under a name in [`SYMBOLIC_AXES`] left
    /// symbolic, so that inputs differing only along those axes share it.
    fn plan_for(
        &mut self,
        shapes: Vec<Vec<usize>>,
        dtypes: &[DType],
    ) -> Result<Arc<TypedRunnableModel>> {
        let symbolic: Vec<Vec<Option<&str>>> = self
            .input_order
            .iter()
            .zip(&shapes)
            .map(|(name, shape)| symbolic_axes(&self.io, name, shape.len()))
            .collect();
        // The key: the shapes with the symbolic axes blanked out.
        let key: Vec<Vec<usize>> = shapes
            .iter()
            .zip(&symbolic)
            .map(|(shape, axes)| {
                shape
                    .iter()
                    .zip(axes)
                    .map(|(&n, axis)| if axis.is_some() { usize::MAX } else { n })
                    .collect()
            })
            .collect();
        if let Some(plan) = self.plans.get(&key) {
            return Ok(plan.clone());
        }
        let plan = self.optimise(&shapes, &symbolic, dtypes)?;
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// A plan optimised for `shapes`, with the axes `symbolic` names kept as those symbols.
    fn optimise(
        &self,
        shapes: &[Vec<usize>],
        symbolic: &[Vec<Option<&str>>],
        dtypes: &[DType],
    ) -> Result<Arc<TypedRunnableModel>> {
        let role = self.role;
        let fail = |e: tp::TractError| Error::graph(role.name(), format!("tract: {e:#}"));
        let mut model = self.model.clone();
        for (i, ((shape, axes), dtype)) in shapes.iter().zip(symbolic).zip(dtypes).enumerate() {
            let dims: Vec<tp::TDim> = shape
                .iter()
                .zip(axes)
                .map(|(&n, axis)| match axis {
                    Some(symbol) => model.symbols.sym(symbol).into(),
                    None => n.into(),
                })
                .collect();
            let fact = InferenceFact::dt_shape(datum_type(*dtype), dims);
            model.set_input_fact(i, fact).map_err(fail)?;
        }
        model
            .into_optimized()
            .map_err(fail)?
            .into_runnable()
            .map_err(fail)
    }
}

/// Named axes that plans keep symbolic. The sequence axis is the one a generation varies (77
/// text tokens, then 77 + 16 per person once the ID tokens join): one plan instead of two
/// halves tract's optimisation time, which dominates a run on small graphs.
pub const SYMBOLIC_AXES: &[&str] = &["sequence"];

/// Per axis of input `name` (of rank `rank`), the symbol it keeps in plans, if any.
fn symbolic_axes<'a>(io: &'a GraphIo, name: &str, rank: usize) -> Vec<Option<&'a str>> {
    let spec = io.inputs.iter().find(|s| s.name == name);
    (0..rank)
        .map(|axis| match spec.and_then(|s| s.shape.get(axis)) {
            Some(Dim::Symbol(symbol)) if SYMBOLIC_AXES.contains(&symbol.as_str()) => {
                Some(symbol.as_str())
            }
            _ => None,
        })
        .collect()
}

impl Graph for TractGraph {
    fn role(&self) -> Role {
        self.role
    }

    fn io(&self) -> &GraphIo {
        &self.io
    }

    fn run(&mut self, inputs: &[(&str, &Value)]) -> Result<Vec<Value>> {
        check_run_inputs(self.role, &self.io, inputs)?;
        let mut ordered = Vec::with_capacity(self.input_order.len());
        for name in &self.input_order {
            match inputs.iter().find(|(n, _)| n == name) {
                Some((_, Value::Host(t))) => ordered.push(t),
                Some((_, Value::Device(d))) => {
                    return Err(Error::graph(
                        self.role.name(),
                        format!("input {name} is a device tensor {d:?}; tract runs on the host"),
                    ))
                }
                None => {
                    return Err(Error::graph(
                        self.role.name(),
                        format!("input {name} was not given"),
                    ))
                }
            }
        }
        let shapes = ordered.iter().map(|t| t.shape().to_vec()).collect();
        let dtypes: Vec<DType> = ordered.iter().map(|t| t.dtype()).collect();
        let plan = self.plan_for(shapes, &dtypes)?;
        let role = self.role;
        let fail = |e: tp::TractError| Error::graph(role.name(), format!("tract: {e:#}"));
        let tract_inputs: tp::TVec<TValue> = ordered
            .iter()
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<tp::TractResult<_>>()
            .map_err(fail)?;
        let outputs = plan.run(tract_inputs).map_err(fail)?;
        outputs
            .into_iter()
            .map(|v| from_tract(&v).map(Value::Host).map_err(fail))
            .collect()
    }
}

fn datum_type(dtype: DType) -> DatumType {
    match dtype {
        DType::Float32 => DatumType::F32,
        DType::Float16 => DatumType::F16,
        DType::Int64 => DatumType::I64,
        DType::Int32 => DatumType::I32,
    }
}

/// A tract tensor with `t`'s values: one copy, into tract's aligned storage (tract's f16 is
/// `half`'s).
fn to_tract(t: &Tensor) -> tp::TractResult<tp::Tensor> {
    fn copy<T: tp::Datum + Element>(t: &Tensor) -> tp::TractResult<tp::Tensor> {
        let values = t
            .as_slice::<T>()
            .ok_or_else(|| anyhow::anyhow!("a {} tensor read as {:?}", t.dtype(), T::DTYPE))?;
        tp::Tensor::from_shape(t.shape(), values)
    }
    match t.dtype() {
        DType::Float32 => copy::<f32>(t),
        DType::Float16 => copy::<half::f16>(t),
        DType::Int64 => copy::<i64>(t),
        DType::Int32 => copy::<i32>(t),
    }
}

/// A host tensor with a tract output's values (one copy, out of tract's storage).
fn from_tract(v: &tp::Tensor) -> tp::TractResult<Tensor> {
    fn copy<T: tp::Datum + Element>(v: &tp::Tensor) -> tp::TractResult<Tensor> {
        Ok(Tensor::from_array(v.to_plain_array_view::<T>()?.to_owned()))
    }
    match v.datum_type() {
        DatumType::F32 => copy::<f32>(v),
        DatumType::F16 => copy::<half::f16>(v),
        DatumType::I64 => copy::<i64>(v),
        DatumType::I32 => copy::<i32>(v),
        other => anyhow::bail!("unsupported output type {other:?}"),
    }
}

/// The graph's declared inputs (initializers excluded) and outputs.
fn declared_io(proto: &pb::ModelProto) -> std::result::Result<GraphIo, String> {
    let graph = proto.graph.as_ref().ok_or("the file holds no graph")?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(value_info_spec)
        .collect::<std::result::Result<_, _>>()?;
    let outputs = graph
        .output
        .iter()
        .map(value_info_spec)
        .collect::<std::result::Result<_, _>>()?;
    Ok(GraphIo { inputs, outputs })
}

fn value_info_spec(info: &pb::ValueInfoProto) -> std::result::Result<TensorSpec, String> {
    let tensor = match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t,
        _ => return Err(format!("{} is not a tensor", info.name)),
    };
    // ONNX TensorProto.DataType codes.
    let dtype = match tensor.elem_type {
        1 => DType::Float32,
        10 => DType::Float16,
        7 => DType::Int64,
        6 => DType::Int32,
        other => {
            return Err(format!(
                "{} has unsupported element type {other}",
                info.name
            ))
        }
    };
    let shape = tensor
        .shape
        .as_ref()
        .ok_or_else(|| format!("{} has no declared shape", info.name))?
        .dim
        .iter()
        .enumerate()
        .map(|(axis, d)| match &d.value {
            Some(dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
            Some(dimension::Value::DimParam(s)) => Dim::Symbol(s.clone()),
            _ => Dim::Symbol(format!("{}_dim{axis}", info.name)),
        })
        .collect();
    Ok(TensorSpec {
        name: info.name.clone(),
        dtype,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::bench::{synth_inputs, SynthSize};
    use crate::manifest::{Checksums, ModelSet};

    /// The tiny ControlNet and made-up inputs at `sequence` tokens, in tract's input order.
    fn controlnet_inputs(graph: &TractGraph, set: &ModelSet, sequence: usize) -> Vec<Tensor> {
        let size = SynthSize {
            height: 64,
            width: 96,
            people: 3,
            sequence: Some(sequence),
        };
        let named = synth_inputs(set, Role::Controlnet, &size).unwrap();
        graph
            .input_order
            .iter()
            .map(|name| named.iter().find(|(n, _)| n == name).unwrap().1.clone())
            .collect()
    }

    fn run_plan(plan: &Arc<TypedRunnableModel>, inputs: &[Tensor]) -> Vec<Tensor> {
        let inputs = inputs
            .iter()
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<tp::TractResult<tp::TVec<_>>>()
            .unwrap();
        plan.run(inputs)
            .unwrap()
            .iter()
            .map(|v| from_tract(v).unwrap())
            .collect()
    }

    #[test]
    fn one_plan_serves_both_sequence_lengths_and_computes_what_a_fixed_plan_does() {
        let set = ModelSet::open(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"),
            Checksums::Skip,
        )
        .unwrap();
        let path = set.graph_path(Role::Controlnet).unwrap();
        let mut graph = TractGraph::load(Role::Controlnet, &path).unwrap();
        for sequence in [77, 125, 77] {
            let inputs = controlnet_inputs(&graph, &set, sequence);
            let values: Vec<(String, Value)> = graph
                .input_order
                .iter()
                .cloned()
                .zip(inputs.iter().cloned().map(Value::Host))
                .collect();
            let named: Vec<(&str, &Value)> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
            let symbolic_out: Vec<Tensor> = graph
                .run(&named)
                .unwrap()
                .into_iter()
                .map(|v| match v {
                    Value::Host(t) => t,
                    Value::Device(_) => unreachable!("tract returns host tensors"),
                })
                .collect();
            assert_eq!(graph.plans.len(), 1, "sequence {sequence}");

            // A plan with every axis fixed, as tract made them before the symbols.
            let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
            let fixed_axes: Vec<Vec<Option<&str>>> =
                shapes.iter().map(|s| vec![None; s.len()]).collect();
            let dtypes: Vec<DType> = inputs.iter().map(|t| t.dtype()).collect();
            let fixed = graph.optimise(&shapes, &fixed_axes, &dtypes).unwrap();
            let fixed_out = run_plan(&fixed, &inputs);
            assert_eq!(symbolic_out.len(), fixed_out.len());
            for (a, b) in symbolic_out.iter().zip(&fixed_out) {
                let (a, b) = (a.to_f32_vec(), b.to_f32_vec());
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(&b)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    worst <= 1e-6 * scale,
                    "sequence {sequence}: {worst} vs scale {scale}"
                );
            }
        }
    }
}
