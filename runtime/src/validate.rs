//! Golden-tensor validation: run every graph of a set on the inputs the exporter saved and
//! compare with the PyTorch outputs saved beside them.

use std::time::Instant;

use crate::backend::{load_checked, Backend, Value};
use crate::manifest::{ModelSet, Role};
use crate::{npy, Error, Result};

/// Default tolerance on `max |ours - reference| / max |reference|` for a graph's precision.
///
/// INT8 graphs are compared with the FP32 set's PyTorch goldens. 0.5 is the measured worst case
/// with headroom: models/tiny-int8 (calibration/make-tiny-int8.sh) gives 0.303 (ControlNet,
/// its smallest residual output) and 0.082 (UNet) on ONNX Runtime's CPU provider and on tract
/// alike. The goldens' inputs are random tensors, partly outside the activation ranges that
/// calibration recorded on real denoising trajectories, which the quantized graphs clip; on
/// held-out trajectory records quantize.py measures 0.24 and 0.07 (calibration/README.md).
pub fn default_tolerance(precision: &str) -> f64 {
    match precision {
        "fp16" => 2e-2,
        "int8" => 0.5,
        _ => 1e-4,
    }
}

#[derive(Debug, Clone)]
pub struct OutputReport {
    pub name: String,
    pub max_abs_err: f64,
    /// Largest absolute reference value: the scale errors are measured against.
    pub scale: f64,
}

impl OutputReport {
    /// Max abs error relative to the output's scale.
    pub fn max_rel_err(&self) -> f64 {
        self.max_abs_err / self.scale.max(f64::MIN_POSITIVE)
    }
}

#[derive(Debug, Clone)]
pub struct GraphReport {
    pub role: Role,
    pub outputs: Vec<OutputReport>,
    /// Milliseconds for one warm run (after a first run that also builds the plan).
    pub ms: f64,
    pub tolerance: f64,
}

impl GraphReport {
    pub fn max_abs_err(&self) -> f64 {
        self.outputs
            .iter()
            .map(|o| o.max_abs_err)
            .fold(0.0, f64::max)
    }

    pub fn max_rel_err(&self) -> f64 {
        self.outputs
            .iter()
            .map(OutputReport::max_rel_err)
            .fold(0.0, f64::max)
    }

    pub fn passed(&self) -> bool {
        self.max_rel_err() <= self.tolerance
    }
}

/// Validates one graph against its goldens. `tolerance` overrides the precision default.
pub fn validate_graph(
    set: &ModelSet,
    backend: &dyn Backend,
    role: Role,
    tolerance: Option<f64>,
) -> Result<GraphReport> {
    let entry = set.entry(role)?;
    let golden = set
        .golden_dir(role)?
        .ok_or_else(|| set.error(format!("graph {role} has no golden tensors")))?;
    let mut graph = load_checked(backend, set, role)?;
    let inputs: Vec<(String, Value)> = entry
        .inputs
        .iter()
        .map(|spec| {
            let t = npy::read(&golden.join(format!("input.{}.npy", spec.name)))?;
            Ok((spec.name.clone(), Value::Host(t)))
        })
        .collect::<Result<_>>()?;
    let named: Vec<(&str, &Value)> = inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
    graph.run(&named)?;
    let start = Instant::now();
    let outputs = graph.run(&named)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;

    let mut reports = Vec::new();
    for (value, spec) in outputs.into_iter().zip(&graph.io().outputs.clone()) {
        let ours = graph.to_host(value)?;
        let reference = npy::read(&golden.join(format!("output.{}.npy", spec.name)))?;
        if ours.shape() != reference.shape() {
            return Err(Error::graph(
                role.name(),
                format!(
                    "output {} has shape {:?}, the reference has {:?}",
                    spec.name,
                    ours.shape(),
                    reference.shape()
                ),
            ));
        }
        if let Some(i) = ours.first_non_finite() {
            return Err(Error::graph(
                role.name(),
                format!("output {} has a non-finite value at index {i}", spec.name),
            ));
        }
        let (a, b) = (ours.to_f32_vec(), reference.to_f32_vec());
        let max_abs_err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0.0, f64::max);
        let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
        reports.push(OutputReport {
            name: spec.name.clone(),
            max_abs_err,
            scale,
        });
    }
    Ok(GraphReport {
        role,
        outputs: reports,
        ms,
        tolerance: tolerance.unwrap_or_else(|| default_tolerance(&entry.precision)),
    })
}
