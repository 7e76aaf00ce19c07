//! The denoising loop: classifier-free guidance, the ID injection schedule, the ControlNet's
//! control guidance window, and the data path of the two denoiser graphs.
//!
//! Guidance follows diffusers' `do_classifier_free_guidance`: with `guidance > 1` the graphs run
//! on the batch `[uncond, cond]` and the noise prediction is `u + g (c - u)`; otherwise they run
//! on the conditional half alone (batch 1), and the negative prompt and the negative ID tokens
//! are never computed.
//!
//! The control guidance window is diffusers' `controlnet_keep`
//! (`StableDiffusionXLControlNetPipeline`): step `i` of `N` runs the ControlNet when
//! `i / N >= control_guidance_start` and `(i + 1) / N <= control_guidance_end`. Outside it
//! diffusers runs the ControlNet at scale 0, whose residuals are all zero; here the ControlNet is
//! skipped and the UNet takes zero residuals uploaded once per generation.
//!
//! Data path: every input that is the same on every step (both encoder-state variants,
//! `text_embeds`, `time_ids`, `controlnet_cond`, `conditioning_scale`, the zero residuals) is cast
//! to the graph's dtype and moved to the backend's device memory once per generation, one
//! upload per value and dtype, so that a constant both graphs take in the same dtype is uploaded
//! once and bound by both. Per step only `sample` and `timestep` are uploaded, once, and bound to
//! both graphs; the ControlNet's residuals go to the UNet as device values, and the noise
//! prediction comes back to the host. [`GenerationTraffic`] records the bytes each part moved.

use std::time::{Duration, Instant};

use crate::backend::{Graph, Traffic, Value};
use crate::manifest::{Dim, Role, TensorSpec};
use crate::noise::{NoiseGenerator, Stream};
use crate::pipeline::{check_finite, Job, Timings};
use crate::scheduler::SchedulerKind;
use crate::splice::{self, EncoderStates};
use crate::tensor::DType;
use crate::{Error, Result, Tensor};

/// Whether each of `num_steps` steps runs the ControlNet: diffusers' `controlnet_keep`, step `i`
/// kept when `i / N >= start` and `(i + 1) / N <= end`, compared in float64 as Python does.
pub fn controlnet_keep(num_steps: usize, start: f64, end: f64) -> Vec<bool> {
    let n = num_steps as f64;
    (0..num_steps)
        .map(|i| !(i as f64 / n < start || (i + 1) as f64 / n > end))
        .collect()
}

/// The denoiser graphs' inputs that stay the same on every step, on the host, batch `B` (2 with
/// classifier-free guidance, `[uncond, cond]`; 1 without, the conditional half).
#[derive(Debug, Clone)]
pub struct DenoiserInputs {
    /// Encoder hidden states before ID injection, (B, 77, D), and after, (B, 77 + 16F, D).
    pub states: [Tensor; 2],
    /// Pooled text embedding of text_encoder_2, (B, P).
    pub text_embeds: Tensor,
    /// SDXL's micro-conditioning `[H, W, 0, 0, H, W]` per row, (B, 6).
    pub time_ids: Tensor,
    /// The condition image repeated per row, (B, 3, H, W).
    pub controlnet_cond: Tensor,
    /// The ControlNet conditioning scale, (1,).
    pub conditioning_scale: Tensor,
}

impl DenoiserInputs {
    /// From the text encoders' joined hidden states `text` (B, 77, D) and pooled embeddings
    /// (B, P), both `[negative, prompt]` when B = 2; the ID tokens (F, 16, D), with the negative
    /// ones (prompt_proj of zeros) exactly when B = 2; the condition image (3, H, W).
    pub fn new(
        text: &Tensor,
        pooled: Tensor,
        id_tokens: &Tensor,
        negative_id_tokens: Option<&Tensor>,
        condition: &Tensor,
        controlnet_scale: f64,
    ) -> Result<Self> {
        let (&[batch, tokens, dim], &[3, height, width]) = (text.shape(), condition.shape()) else {
            return Err(Error::graph(
                "text_encoder",
                format!(
                    "hidden states {:?} or condition {:?} have the wrong rank",
                    text.shape(),
                    condition.shape()
                ),
            ));
        };
        let values = text
            .as_f32()
            .ok_or_else(|| Error::graph("text_encoder", "not f32"))?;
        let row = |b: usize| {
            Tensor::from_f32(
                vec![tokens, dim],
                values[b * tokens * dim..(b + 1) * tokens * dim].to_vec(),
            )
        };
        let states = match (batch, negative_id_tokens) {
            (2, Some(negative)) => {
                let states = EncoderStates::new(&row(0)?, &row(1)?, negative, id_tokens)?;
                [states.text_only().clone(), states.full().clone()]
            }
            (1, None) => [text.clone(), splice::splice(text, id_tokens)?],
            _ => {
                return Err(Error::graph(
                    "text_encoder",
                    format!("hidden states of batch {batch} do not match the guidance mode"),
                ))
            }
        };
        if pooled.shape().first() != Some(&batch) {
            return Err(Error::graph(
                "text_encoder_2",
                format!("text_embeds {:?} for batch {batch}", pooled.shape()),
            ));
        }
        let cond = condition
            .as_f32()
            .ok_or_else(|| Error::graph("condition", "not f32"))?;
        let time_row = [height, width, 0, 0, height, width].map(|v| v as f32);
        Ok(DenoiserInputs {
            states,
            text_embeds: pooled,
            time_ids: Tensor::from_f32(vec![batch, 6], time_row.repeat(batch))?,
            controlnet_cond: Tensor::from_f32(vec![batch, 3, height, width], cond.repeat(batch))?,
            conditioning_scale: Tensor::from_f32(vec![1], vec![controlnet_scale as f32])?,
        })
    }

    /// Rows of the batch: 2 with classifier-free guidance, 1 without.
    pub fn batch(&self) -> usize {
        self.time_ids.shape().first().copied().unwrap_or(0)
    }
}

/// Bytes the backend moved during one generation ([`Traffic`]); absent for backends without
/// device memory.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenerationTraffic {
    /// The per-generation uploads of the denoiser graphs' constant inputs, before the first step.
    pub constants: Traffic,
    /// Each denoising step: `sample` and `timestep` up, `noise_pred` down.
    pub steps: Vec<Traffic>,
    /// The whole generation: text encoders, ID graphs, constants, steps and VAE decode.
    pub total: Traffic,
}

impl GenerationTraffic {
    /// Lines for the timing table: the constants, each distinct per-step figure with the number
    /// of steps that moved it, and the whole generation.
    pub fn summary(&self) -> String {
        let fmt = |t: &Traffic| {
            format!(
                "host->device {} B, device->host {} B, device->device {} B",
                t.host_to_device, t.device_to_host, t.device_to_device
            )
        };
        let mut distinct: Vec<(Traffic, usize)> = Vec::new();
        for step in &self.steps {
            match distinct.iter_mut().find(|(t, _)| t == step) {
                Some((_, count)) => *count += 1,
                None => distinct.push((*step, 1)),
            }
        }
        let mut out = format!("traffic: constants (once) {}", fmt(&self.constants));
        for (t, count) in distinct {
            out.push_str(&format!("\ntraffic: per step ({count} steps) {}", fmt(&t)));
        }
        out.push_str(&format!("\ntraffic: whole generation {}", fmt(&self.total)));
        out
    }
}

/// What [`denoise`] returns.
#[derive(Debug, Clone)]
pub struct Denoised {
    /// Final latents (1, C, h, w), flat.
    pub latents: Vec<f32>,
    /// Constants and per-step traffic (`total` left empty for the caller).
    pub traffic: Option<GenerationTraffic>,
}

/// Device values uploaded once and bound by every graph that takes them: one per key and dtype.
#[derive(Default)]
struct Shared {
    values: Vec<(String, DType, Value)>,
}

impl Shared {
    /// Uploads `tensor` once for each distinct dtype in `dtypes` (none: nothing takes it).
    fn add(
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
            // The last dtype takes the tensor itself; a cast of f32 to f32 is free.
            let host = if i + 1 == unique.len() {
                tensor.take()
            } else {
                tensor.clone()
            };
            let host = host.ok_or_else(|| Error::graph("pipeline", "constant used up"))?;
            let value = uploader.to_device(host.cast(dtype)?)?;
            self.values.push((key.to_string(), dtype, value));
        }
        Ok(())
    }

    fn get(&self, key: &str, dtype: DType) -> Option<&Value> {
        self.values
            .iter()
            .find(|(k, d, _)| k == key && *d == dtype)
            .map(|(_, _, v)| v)
    }
}

/// The dtypes `graphs` declare for input `name` (nothing for a graph without it).
fn dtypes_for(graphs: &[&dyn Graph], name: &str) -> Vec<DType> {
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
struct Denoiser<'g> {
    controlnet: &'g mut dyn Graph,
    unet: &'g mut dyn Graph,
    binds: Bindings,
}

/// What each denoiser graph takes, in its declared order, and the shared device values.
struct Bindings {
    controlnet_inputs: Vec<(String, DType)>,
    unet_inputs: Vec<(String, DType)>,
    /// The ControlNet's outputs, which are UNet inputs of the same names.
    residual_names: Vec<String>,
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

impl Denoiser<'_> {
    /// Uploads the per-generation constants the schedule needs: the encoder states of the phases
    /// it visits, the ControlNet's inputs when it runs at all, zero residuals when it skips a
    /// step.
    fn upload_constants(
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
    fn named<'a>(
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

/// Times of the ControlNet and UNet calls within one generation.
#[derive(Default)]
struct CallTimes {
    /// (graph, phase) pairs already run: a graph's first run at a sequence length is a "first
    /// run" (tract builds a plan for each new shape).
    seen: Vec<(Role, usize)>,
    /// ControlNet calls that were not first runs.
    controlnet_steady: Vec<Duration>,
}

impl CallTimes {
    /// Records one call of `role`'s graph at ID schedule phase `phase`.
    fn record(&mut self, role: Role, phase: usize, took: Duration, timings: &mut Timings) {
        if !self.seen.contains(&(role, phase)) {
            self.seen.push((role, phase));
            timings.first_runs += took;
        } else if role == Role::Controlnet {
            self.controlnet_steady.push(took);
        }
        match role {
            Role::Controlnet => timings.controlnet += took,
            _ => timings.unet += took,
        }
    }

    /// Median steady ControlNet call, if any.
    fn controlnet_median(&self) -> Option<Duration> {
        let mut sorted = self.controlnet_steady.clone();
        sorted.sort();
        match sorted.len() {
            0 => None,
            n if n % 2 == 1 => Some(sorted[n / 2]),
            n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
        }
    }
}

/// Runs the denoising loop of `job` from its initial noise. `latent` is (h, w); the loop's time
/// goes into `timings` (the uploads into the UNet's stage), and `progress(done, total)` is
/// called after every step.
pub fn denoise(
    controlnet: &mut dyn Graph,
    unet: &mut dyn Graph,
    job: &Job,
    inputs: DenoiserInputs,
    latent: (usize, usize),
    timings: &mut Timings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Denoised> {
    let params = &job.params;
    let steps = job.scheduler.len();
    let batch = inputs.batch();
    if !(1..=2).contains(&batch) || job.noise.shape().len() != 4 {
        return Err(Error::graph(
            "pipeline",
            format!(
                "denoiser inputs of batch {batch} and initial noise {:?}: expected batch 1 or 2 \
                 and (1, C, h, w) noise",
                job.noise.shape()
            ),
        ));
    }
    let keep = controlnet_keep(
        steps,
        params.control_guidance_start,
        params.control_guidance_end,
    );
    let phases: Vec<usize> = (0..steps)
        .map(|i| usize::from(splice::ids_active(i, steps, params.id_injection_ratio)))
        .collect();
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
    let mut denoiser = Denoiser {
        controlnet,
        unet,
        binds,
    };
    let before = denoiser.unet.traffic();
    let started = Instant::now();
    denoiser.upload_constants(inputs, &phases, &keep, latent)?;
    timings.unet += started.elapsed();
    let mut traffic = before
        .zip(denoiser.unet.traffic())
        .map(|(a, b)| GenerationTraffic {
            constants: b.since(a),
            ..GenerationTraffic::default()
        });

    let mut loop_state = Loop::new(job, batch)?;
    let mut calls = CallTimes::default();
    for i in 0..steps {
        let before = denoiser.unet.traffic();
        let eps = loop_state.predict(&mut denoiser, i, phases[i], keep[i], &mut calls, timings)?;
        loop_state.advance(&eps, i, params.guidance as f32, timings)?;
        if let (Some(t), Some(a), Some(b)) = (traffic.as_mut(), before, denoiser.unet.traffic()) {
            t.steps.push(b.since(a));
        }
        progress(i + 1, steps);
    }
    timings.controlnet_calls = keep.iter().filter(|k| **k).count();
    timings.controlnet_skipped = steps - timings.controlnet_calls;
    timings.controlnet_call = calls.controlnet_median();
    Ok(Denoised {
        latents: loop_state.latents,
        traffic,
    })
}

/// `sample` and `timestep` uploaded once for the graphs that run this step.
fn step_values(d: &Denoiser, sample: Tensor, timestep: Tensor, kept: bool) -> Result<Shared> {
    let takers: Vec<&dyn Graph> = if kept {
        vec![&*d.controlnet, &*d.unet]
    } else {
        vec![&*d.unet]
    };
    let mut step = Shared::default();
    step.add(&*d.unet, "sample", sample, &dtypes_for(&takers, "sample"))?;
    let dtypes = dtypes_for(&takers, "timestep");
    step.add(&*d.unet, "timestep", timestep, &dtypes)?;
    Ok(step)
}

/// The latents and scheduler state carried from step to step.
struct Loop<'j> {
    job: &'j Job,
    scheduler: crate::scheduler::Scheduler,
    latents: Vec<f32>,
    batch: usize,
    noise: NoiseGenerator,
}

impl<'j> Loop<'j> {
    fn new(job: &'j Job, batch: usize) -> Result<Self> {
        let sigma0 = job.scheduler.init_noise_sigma() as f32;
        Ok(Loop {
            job,
            scheduler: job.scheduler.clone(),
            latents: job.noise.to_f32_vec().iter().map(|x| x * sigma0).collect(),
            batch,
            noise: NoiseGenerator::new(job.params.seed),
        })
    }

    /// Runs the ControlNet (when `kept`) and the UNet on step `i`; returns the noise prediction
    /// (B * n values) on the host.
    fn predict(
        &self,
        d: &mut Denoiser,
        i: usize,
        phase: usize,
        kept: bool,
        calls: &mut CallTimes,
        timings: &mut Timings,
    ) -> Result<Vec<f32>> {
        let started = Instant::now();
        let n = self.latents.len();
        let shape = self.job.noise.shape();
        let mut input = self.latents.repeat(self.batch);
        self.scheduler.scale_model_input_in_place(&mut input, i)?;
        let mut sample_shape = vec![self.batch];
        sample_shape.extend_from_slice(&shape[1..]);
        let sample = Tensor::from_f32(sample_shape, input)?;
        let t = self.scheduler.timesteps()[i] as f32;
        let timestep = Tensor::from_f32(vec![self.batch], vec![t; self.batch])?;
        timings.scheduler += started.elapsed();
        let context = format!("at step {i} of {}", self.scheduler.len());

        let started = Instant::now();
        let step = step_values(d, sample, timestep, kept)?;
        timings.unet += started.elapsed();

        let residuals = if kept {
            let started = Instant::now();
            let named = d.binds.named(Role::Controlnet, &step, phase, None)?;
            let residuals = d.controlnet.run(&named)?;
            for (value, name) in residuals.iter().zip(&d.binds.residual_names) {
                // Only host values can be checked without a copy; a device NaN shows up in the UNet.
                if let Value::Host(t) = value {
                    check_finite(t, Role::Controlnet, name, &context)?;
                }
            }
            calls.record(Role::Controlnet, phase, started.elapsed(), timings);
            Some(residuals)
        } else {
            None
        };

        let started = Instant::now();
        let named = d
            .binds
            .named(Role::Unet, &step, phase, residuals.as_deref())?;
        let mut eps = d.unet.run(&named)?;
        if eps.is_empty() {
            return Err(Error::graph("unet", "the graph returned no output"));
        }
        let eps = d.unet.to_host(eps.swap_remove(0))?.cast(DType::Float32)?;
        check_finite(&eps, Role::Unet, "noise_pred", &context)?;
        calls.record(Role::Unet, phase, started.elapsed(), timings);
        let eps = eps.into_data();
        let crate::tensor::TensorData::F32(eps) = eps else {
            return Err(Error::graph(
                "unet",
                "noise_pred is not float32 after the cast",
            ));
        };
        if eps.len() != self.batch * n {
            return Err(Error::graph(
                "unet",
                format!(
                    "noise_pred has {} values, expected {}",
                    eps.len(),
                    self.batch * n
                ),
            ));
        }
        Ok(eps)
    }

    /// Guidance (batch 2) and the scheduler step from step `i`'s noise prediction.
    fn advance(
        &mut self,
        eps: &[f32],
        i: usize,
        guidance: f32,
        timings: &mut Timings,
    ) -> Result<()> {
        let started = Instant::now();
        let n = self.latents.len();
        let guided: Vec<f32> = if self.batch == 2 {
            let (uncond, cond) = eps.split_at(n);
            uncond
                .iter()
                .zip(cond)
                .map(|(&u, &c)| u + guidance * (c - u))
                .collect()
        } else {
            eps.to_vec()
        };
        let kind = self.scheduler.kind();
        let step_noise = (kind == SchedulerKind::EulerAncestral)
            .then(|| self.noise.normal(Stream::AncestralStep(i), n));
        self.latents = self
            .scheduler
            .step(&guided, i, &self.latents, step_noise.as_deref())?;
        if let Some(k) = self.latents.iter().position(|x| !x.is_finite()) {
            return Err(Error::graph(
                "scheduler",
                format!(
                    "NaN or infinity in the latents after the {kind} step at step {i} of {} \
                     (flat index {k})",
                    self.scheduler.len()
                ),
            ));
        }
        timings.scheduler += started.elapsed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected keep lists: diffusers 0.42.1's `controlnet_keep` expression, evaluated by
    /// tests/reference/pipeline.py into tests/data/pipeline/controlnet_keep.json.
    #[test]
    fn keep_lists_match_diffusers() {
        let data: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/data/pipeline/controlnet_keep.json"
        ))
        .unwrap();
        let cases = data["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let steps = case["steps"].as_u64().unwrap() as usize;
            let start = case["control_guidance_start"].as_f64().unwrap();
            let end = case["control_guidance_end"].as_f64().unwrap();
            let expected: Vec<bool> = case["keep"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_u64().unwrap() == 1)
                .collect();
            assert_eq!(controlnet_keep(steps, start, end), expected, "{case}");
        }
    }

    fn filled(shape: Vec<usize>, base: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|i| base + i as f32).collect()).unwrap()
    }

    #[test]
    fn inputs_for_guidance_are_uncond_then_cond() {
        let (d, f) = (4, 2);
        let text = filled(vec![2, 77, d], 0.0); // row 0 negative, row 1 prompt
        let pooled = filled(vec![2, 3], 0.0);
        let ids = filled(vec![f, 16, d], 1_000.0);
        let neg_ids = filled(vec![f, 16, d], 5_000.0);
        let cond = filled(vec![3, 8, 16], 0.0);
        let inputs = DenoiserInputs::new(&text, pooled, &ids, Some(&neg_ids), &cond, 0.8).unwrap();
        assert_eq!(inputs.batch(), 2);
        assert_eq!(inputs.states[0].shape(), [2, 77, d]);
        assert_eq!(inputs.states[0], text);
        assert_eq!(inputs.states[1].shape(), [2, 77 + 16 * f, d]);
        let full = inputs.states[1].as_f32().unwrap();
        let row = |b: usize, t: usize| full[(b * (77 + 32) + t) * d];
        assert_eq!(row(0, 77), 5_000.0); // negative ID tokens after the negative text
        assert_eq!(row(1, 0), (77 * d) as f32); // the prompt's first token
        assert_eq!(row(1, 77), 1_000.0);
        assert_eq!(
            inputs.time_ids.as_f32().unwrap(),
            [8.0, 16.0, 0.0, 0.0, 8.0, 16.0, 8.0, 16.0, 0.0, 0.0, 8.0, 16.0]
        );
        assert_eq!(inputs.controlnet_cond.shape(), [2, 3, 8, 16]);
        let c = inputs.controlnet_cond.as_f32().unwrap();
        assert_eq!(c[..384], c[384..]);
        assert_eq!(inputs.conditioning_scale.as_f32().unwrap(), [0.8]);
    }

    #[test]
    fn inputs_without_guidance_are_the_conditional_half_alone() {
        let d = 4;
        let text = filled(vec![1, 77, d], 0.0);
        let ids = filled(vec![1, 16, d], 1_000.0);
        let cond = filled(vec![3, 8, 8], 0.0);
        let pooled = filled(vec![1, 3], 0.0);
        let inputs = DenoiserInputs::new(&text, pooled, &ids, None, &cond, 1.0).unwrap();
        assert_eq!(inputs.batch(), 1);
        assert_eq!(inputs.states[0], text);
        assert_eq!(inputs.states[1].shape(), [1, 77 + 16, d]);
        assert_eq!(inputs.states[1].as_f32().unwrap()[77 * d], 1_000.0);
        assert_eq!(inputs.time_ids.shape(), [1, 6]);
        assert_eq!(inputs.controlnet_cond.shape(), [1, 3, 8, 8]);
        // Batch and guidance mode must agree.
        let pooled = filled(vec![1, 3], 0.0);
        assert!(DenoiserInputs::new(&text, pooled, &ids, Some(&ids), &cond, 1.0).is_err());
    }

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

    #[test]
    fn traffic_summary_groups_equal_steps() {
        let step = Traffic {
            host_to_device: 3080,
            device_to_host: 3072,
            device_to_device: 0,
        };
        let report = GenerationTraffic {
            constants: Traffic {
                host_to_device: 100,
                ..Traffic::default()
            },
            steps: vec![step; 7],
            total: Traffic::default(),
        };
        let text = report.summary();
        assert!(
            text.contains("constants (once) host->device 100 B"),
            "{text}"
        );
        assert!(
            text.contains(
                "per step (7 steps) host->device 3080 B, device->host 3072 B, device->device 0 B"
            ),
            "{text}"
        );
    }
}
