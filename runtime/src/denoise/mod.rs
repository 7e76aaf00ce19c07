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

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, Axis, IxDyn, Zip};

use crate::backend::{Graph, Value};
use crate::manifest::Role;
use crate::noise::{NoiseGenerator, Stream};
use crate::pipeline::{Job, Models};
use crate::scheduler::SchedulerKind;
use crate::splice;
use crate::stages::{check_finite, Encoded};
use crate::tensor::{self, DType};
use crate::timings::Timings;
use crate::{Error, Result, Tensor};

mod bindings;
mod inputs;

use bindings::{dtypes_for, Denoiser, Shared};
pub use inputs::{DenoiserInputs, GenerationTraffic};

/// Whether each of `num_steps` steps runs the ControlNet: diffusers' `controlnet_keep`, step `i`
/// kept when `i / N >= start` and `(i + 1) / N <= end`, compared in float64 as Python does.
pub fn controlnet_keep(num_steps: usize, start: f64, end: f64) -> Vec<bool> {
    let n = num_steps as f64;
    (0..num_steps)
        .map(|i| !(i as f64 / n < start || (i + 1) as f64 / n > end))
        .collect()
}

/// What the step callback of [`denoise`] sees after every denoising step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Steps done so far, 1 to `steps`.
    pub step: usize,
    /// Steps in the schedule.
    pub steps: usize,
    /// Wall time of the step just done: model-input scaling, the ControlNet (when the window
    /// keeps it), the UNet with its uploads, guidance and the scheduler step.
    pub took: Duration,
}

/// What [`denoise`] gives the decode stage.
#[derive(Debug, Clone)]
pub struct Denoised {
    /// Final latents (1, C, h, w) float32, before division by the VAE scaling factor.
    pub latents: Tensor,
    /// The ControlNet condition (3, H, W) float32, passed on from [`Encoded`].
    pub condition: Tensor,
    /// The timings so far, with the ControlNet, UNet, first-run and scheduler times and the
    /// ControlNet call counts of the loop added.
    pub timings: Timings,
    /// Constants and per-step traffic (`total` is filled in by the decode stage); `None` for a
    /// backend without device memory.
    pub traffic: Option<GenerationTraffic>,
    /// The backend's counters before the generation's first graph ran.
    pub(crate) traffic_start: Option<crate::backend::Traffic>,
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

/// The denoise stage: the loop of `job`'s schedule from its initial noise, on the inputs
/// [`crate::stages::encode`] made for the same job. The loop's time goes into the timings (the
/// uploads into the UNet's stage).
///
/// `on_step` is called after every step; returning [`ControlFlow::Break`] stops the loop there,
/// before the next step starts, with [`Error::Cancelled`] (a server's cancellation; the latents
/// are dropped).
///
/// Errors: [`Error::Graph`] for a failing graph, a NaN or infinity in a graph output or the
/// latents (naming the step and the graph), or inputs that do not fit the job (a batch other
/// than 1 or 2); [`Error::Cancelled`].
pub fn denoise(
    models: &mut Models,
    job: &Job,
    encoded: Encoded,
    on_step: &mut dyn FnMut(&StepProgress) -> ControlFlow<()>,
) -> Result<Denoised> {
    let latent = job.latent_size(&models.set);
    let Encoded {
        inputs,
        condition,
        mut timings,
        traffic_start,
    } = encoded;
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
    let mut denoiser = Denoiser::new(models.controlnet.as_mut(), models.unet.as_mut());
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
        let started = Instant::now();
        let before = denoiser.unet.traffic();
        let t = &mut timings;
        let eps = loop_state.predict(&mut denoiser, i, phases[i], keep[i], &mut calls, t)?;
        loop_state.advance(eps, i, params.guidance as f32, t)?;
        if let (Some(t), Some(a), Some(b)) = (traffic.as_mut(), before, denoiser.unet.traffic()) {
            t.steps.push(b.since(a));
        }
        let progress = StepProgress {
            step: i + 1,
            steps,
            took: started.elapsed(),
        };
        if on_step(&progress).is_break() {
            return Err(Error::Cancelled { step: i + 1, steps });
        }
    }
    timings.controlnet_calls = keep.iter().filter(|k| **k).count();
    timings.controlnet_skipped = steps - timings.controlnet_calls;
    timings.controlnet_call = calls.controlnet_median();
    Ok(Denoised {
        latents: Tensor::from_array(loop_state.latents),
        condition,
        timings,
        traffic,
        traffic_start,
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
struct Loop {
    scheduler: crate::scheduler::Scheduler,
    /// (1, C, h, w).
    latents: ArrayD<f32>,
    batch: usize,
    noise: NoiseGenerator,
}

impl Loop {
    fn new(job: &Job, batch: usize) -> Result<Self> {
        let sigma0 = job.scheduler.init_noise_sigma() as f32;
        Ok(Loop {
            scheduler: job.scheduler.clone(),
            latents: job.noise.f32_array("initial noise")?.mapv(|x| x * sigma0),
            batch,
            noise: NoiseGenerator::new(job.params.seed),
        })
    }

    /// The (B, C, h, w) shape of `sample` and `noise_pred`.
    fn batch_shape(&self) -> Vec<usize> {
        let mut shape = self.latents.shape().to_vec();
        shape[0] = self.batch;
        shape
    }

    /// Step `i`'s `sample` (the latents repeated for the batch, scaled for the scheduler) and
    /// `timestep` (B,).
    fn model_inputs(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let shape = self.batch_shape();
        let mut sample = tensor::broadcast(&self.latents, &shape)
            .ok_or_else(|| Error::graph("pipeline", format!("latents do not fit {shape:?}")))?;
        let values = sample
            .as_slice_mut()
            .ok_or_else(|| Error::graph("pipeline", "sample is not contiguous"))?;
        self.scheduler.scale_model_input_in_place(values, i)?;
        let t = self.scheduler.timesteps()[i] as f32;
        let timestep = ArrayD::from_elem(IxDyn(&[self.batch]), t);
        Ok((Tensor::from_array(sample), Tensor::from_array(timestep)))
    }

    /// Runs the ControlNet (when `kept`) and the UNet on step `i`; returns the noise prediction
    /// (B, C, h, w) on the host.
    fn predict(
        &self,
        d: &mut Denoiser,
        i: usize,
        phase: usize,
        kept: bool,
        calls: &mut CallTimes,
        timings: &mut Timings,
    ) -> Result<ArrayD<f32>> {
        let started = Instant::now();
        let (sample, timestep) = self.model_inputs(i)?;
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
        let expected = self.batch_shape();
        if eps.shape() != expected.as_slice() {
            return Err(Error::graph(
                "unet",
                format!(
                    "noise_pred has shape {:?}, expected {expected:?}",
                    eps.shape()
                ),
            ));
        }
        eps.into_array::<f32>()
            .ok_or_else(|| Error::graph("unet", "noise_pred is not float32 after the cast"))
    }

    /// Guidance (batch 2: `u + guidance * (c - u)` of the two halves) and the scheduler step
    /// from step `i`'s noise prediction (B, C, h, w).
    fn advance(
        &mut self,
        eps: ArrayD<f32>,
        i: usize,
        guidance: f32,
        timings: &mut Timings,
    ) -> Result<()> {
        let started = Instant::now();
        let guided = if self.batch == 2 {
            let (u, c) = (eps.index_axis(Axis(0), 0), eps.index_axis(Axis(0), 1));
            Zip::from(&u)
                .and(&c)
                .map_collect(|&u, &c| u + guidance * (c - u))
        } else {
            eps.index_axis_move(Axis(0), 0)
        };
        let guided = guided.as_standard_layout();
        let (Some(guided), Some(latents)) = (guided.as_slice(), self.latents.as_slice()) else {
            return Err(Error::graph("pipeline", "latents are not contiguous"));
        };
        let kind = self.scheduler.kind();
        let step_noise = (kind == SchedulerKind::EulerAncestral)
            .then(|| self.noise.normal(Stream::AncestralStep(i), latents.len()));
        let next = self
            .scheduler
            .step(guided, i, latents, step_noise.as_deref())?;
        if let Some(k) = next.iter().position(|x| !x.is_finite()) {
            return Err(Error::graph(
                "scheduler",
                format!(
                    "NaN or infinity in the latents after the {kind} step at step {i} of {} \
                     (flat index {k})",
                    self.scheduler.len()
                ),
            ));
        }
        self.latents = ArrayD::from_shape_vec(self.latents.raw_dim(), next)
            .map_err(|e| Error::graph("scheduler", format!("step output: {e}")))?;
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
            "../../../tests/data/pipeline/controlnet_keep.json"
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
}
