//! How the denoiser graphs are bound: the constants uploaded once per generation and shared by
//! both graphs ([`Shared`]), and each graph's named inputs for one step ([`Bindings`]).

use crate::backend::{Graph, Value};
use crate::manifest::{Dim, Role, TensorSpec};
use crate::tensor::DType;
use crate::{Error, Result, Tensor};

use super::DenoiserInputs;

/// Device values uploaded once and bound by every graph that takes them: one per key and dtype.
#[derive(Default)]
pub(super) struct Shared {
    values: Vec<(String, DType, Value)>,
}

impl Shared {
    /// Uploads `tensor` once for each distinct dtype in `dtypes` (none: nothing takes it).
    pub(super) fn add(
        &mut self,
        uploader: &dyn Graph,
        key: &str,
        tensor: Tensor,
        dtypes: &[DType],
    ) -> Result<()> {
        let mut unique: Vec<DType> = Vec::new();
        for d in dtypes {
            if !unique.contains(d) {
                unique.push(*d);
            }
        }
        let mut tensor = Some(tensor);
        for (i, &dtype) in unique.iter().enumerate() {
            // The last dtype takes the tensor itself (a cast to its own dtype is free); the
            // others are converted from a borrow, one new array each.
            let used_up = || Error::graph("pipeline", "constant used up");
            let host = if i + 1 == unique.len() {
                tensor.take().ok_or_else(used_up)?.cast(dtype)?
            } else {
                tensor.as_ref().ok_or_else(used_up)?.to_dtype(dtype)?
            };
            let value = uploader.to_device(host)?;
            self.values.push((key.to_string(), dtype, value));
        }
        Ok(())
    }

    pub(super) fn get(&self, key: &str, dtype: DType) -> Option<&Value> {
        self.values
            .iter()
            .find(|(k, d, _)| k == key && *d == dtype)
            .map(|(_, _, v)| v)
    }
}

/// The dtypes `graphs` declare for input `name` (nothing for a graph without it).
pub(super) fn dtypes_for(graphs: &[&dyn Graph], name: &str) -> Vec<DType> {
    graphs
        .iter()
        .filter_map(|g| g.io().inputs.iter().find(|s| s.name == name))
        .map(|s| s.dtype)
        .collect()
}

/// The key under which the encoder states of ID schedule phase `phase` (0: text only, 1: with ID
/// tokens) are shared.
fn states_key(phase: usize) -> &'static str {
    ["encoder_hidden_states/text", "encoder_hidden_states/ids"][phase]
}

/// A concrete shape for a UNet residual input: `batch` and the latent axes resolved with the
/// exporter's names (`latent_height`, `latent_height_2` = half, `latent_height_4` = quarter, and
/// the same for width).
fn residual_shape(spec: &TensorSpec, batch: usize, (lh, lw): (usize, usize)) -> Result<Vec<usize>> {
    spec.shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbol(s) => match s.as_str() {
                "batch" => Ok(batch),
                "latent_height" => Ok(lh),
                "latent_width" => Ok(lw),
                "latent_height_2" => Ok(lh / 2),
                "latent_width_2" => Ok(lw / 2),
                "latent_height_4" => Ok(lh / 4),
                "latent_width_4" => Ok(lw / 4),
                other => Err(Error::graph(
                    "unet",
                    format!(
                        "residual input {} has axis {other:?}, whose size the pipeline cannot \
                         tell without running the ControlNet",
                        spec.name
                    ),
                )),
            },
        })
        .collect()
}

/// Both denoiser graphs and what they are bound to.
pub(super) struct Denoiser<'g> {
    pub(super) controlnet: &'g mut dyn Graph,
    pub(super) unet: &'g mut dyn Graph,
    pub(super) binds: Bindings,
}

/// What each denoiser graph takes, in its declared order, and the shared device values.
pub(super) struct Bindings {
    controlnet_inputs: Vec<(String, DType)>,
    unet_inputs: Vec<(String, DType)>,
    /// The ControlNet's outputs, which are UNet inputs of the same names.
    pub(super) residual_names: Vec<String>,
    shared: Shared,
}

fn declared(graph: &dyn Graph) -> Vec<(String, DType)> {
    graph
        .io()
        .inputs
        .iter()
        .map(|s| (s.name.clone(), s.dtype))
        .collect()
}

impl<'g> Denoiser<'g> {
    /// Both graphs, with nothing bound yet.
    pub(super) fn new(controlnet: &'g mut dyn Graph, unet: &'g mut dyn Graph) -> Self {
        let binds = Bindings {
            controlnet_inputs: declared(controlnet),
            unet_inputs: declared(unet),
            residual_names: controlnet
                .io()
                .outputs
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            shared: Shared::default(),
        };
        Denoiser {
            controlnet,
            unet,
            binds,
        }
    }

    /// Uploads the per-generation constants the schedule needs: the encoder states of the phases
    /// it visits, the ControlNet's inputs when it runs at all, zero residuals when it skips a
    /// step.
    pub(super) fn upload_constants(
        &mut self,
        inputs: DenoiserInputs,
        phases: &[usize],
        keep: &[bool],
        latent: (usize, usize),
    ) -> Result<()> {
        let batch = inputs.batch();
        let takers: Vec<&dyn Graph> = if keep.contains(&true) {
            vec![&*self.controlnet, &*self.unet]
        } else {
            vec![&*self.unet]
        };
        let uploader: &dyn Graph = &*self.unet;
        let mut shared = Shared::default();
        let [text_only, full] = inputs.states;
        for (phase, states) in [text_only, full].into_iter().enumerate() {
            if phases.contains(&phase) {
                let dtypes = dtypes_for(&takers, "encoder_hidden_states");
                shared.add(uploader, states_key(phase), states, &dtypes)?;
            }
        }
        for (name, tensor) in [
            ("text_embeds", inputs.text_embeds),
            ("time_ids", inputs.time_ids),
            ("controlnet_cond", inputs.controlnet_cond),
            ("conditioning_scale", inputs.conditioning_scale),
        ] {
            shared.add(uploader, name, tensor, &dtypes_for(&takers, name))?;
        }
        if keep.contains(&false) {
            for name in &self.binds.residual_names {
                let Some(spec) = uploader.io().inputs.iter().find(|s| &s.name == name) else {
                    return Err(Error::graph(
                        "unet",
                        format!("no input {name} for the residual"),
                    ));
                };
                let zeros = Tensor::zeros(residual_shape(spec, batch, latent)?, spec.dtype);
                shared.add(uploader, name, zeros, &[spec.dtype])?;
            }
        }
        self.binds.shared = shared;
        Ok(())
    }
}

impl Bindings {
    /// The named inputs of `role`'s graph for one step: `step` holds `sample` and `timestep`,
    /// `residuals` the ControlNet's outputs (the shared zeros when `None`).
    pub(super) fn named<'a>(
        &'a self,
        role: Role,
        step: &'a Shared,
        phase: usize,
        residuals: Option<&'a [Value]>,
    ) -> Result<Vec<(&'a str, &'a Value)>> {
        let inputs = match role {
            Role::Controlnet => &self.controlnet_inputs,
            _ => &self.unet_inputs,
        };
        inputs
            .iter()
            .map(|(name, dtype)| {
                let residual = self.residual_names.iter().position(|r| r == name);
                let value = match (name.as_str(), residual, residuals) {
                    ("sample" | "timestep", ..) => step.get(name, *dtype),
                    ("encoder_hidden_states", ..) => self.shared.get(states_key(phase), *dtype),
                    (_, Some(i), Some(outputs)) => outputs.get(i),
                    _ => self.shared.get(name, *dtype),
                };
                let value = value.ok_or_else(|| {
                    Error::graph(
                        role.name(),
                        format!("input {name} ({dtype}) is not one the pipeline provides"),
                    )
                })?;
                Ok((name.as_str(), value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_shapes_resolve_the_latent_axes() {
        let spec = TensorSpec {
            name: "down_residual_8".into(),
            dtype: DType::Float16,
            shape: ["batch", "1280", "latent_height_4", "latent_width_4"]
                .iter()
                .map(|d| match d.parse() {
                    Ok(n) => Dim::Fixed(n),
                    Err(_) => Dim::Symbol(d.to_string()),
                })
                .collect(),
        };
        assert_eq!(
            residual_shape(&spec, 2, (128, 96)).unwrap(),
            [2, 1280, 32, 24]
        );
        let odd = TensorSpec {
            shape: vec![Dim::Symbol("frames".into())],
            ..spec
        };
        let err = residual_shape(&odd, 2, (128, 96)).unwrap_err().to_string();
        assert!(err.contains("\"frames\""), "{err}");
    }
}
