//! Diffusion schedulers with the numerics of diffusers 0.42.1: Euler discrete (ID-Patch's
//! scheduler), Euler ancestral, DDIM (eta 0) and DPM-Solver++ multistep (2M by default).
//!
//! Schedules are built the way diffusers builds them (float32 betas and cumulative products,
//! float64 numpy interpolation, a float32 cast at the end), so integer timesteps match exactly
//! and sigmas within one float32 ulp: torch's CPU sqrt (MKL) is not correctly rounded, the one
//! here is. Euler's fractional Karras timesteps also depend on numpy's float32 log, which is an
//! ulp off for some inputs; they agree within 1e-4 of a training step. `step` works on flat
//! float32 slices and evaluates each element with the same float32 operations, in the same
//! order, as diffusers' torch code; the per-step scalar coefficients are float32 too.

mod config;
mod numeric;

use std::fmt;
use std::str::FromStr;

pub use config::{
    BetaSchedule, FinalSigmas, PredictionType, SchedulerConfig, SolverType, TimestepSpacing,
    SDXL_BASE_CONFIG,
};

use crate::{Error, Result};

/// The scheduler families this runtime implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `EulerDiscreteScheduler` (the default).
    Euler,
    /// `EulerAncestralDiscreteScheduler`: needs one standard normal noise tensor per step.
    EulerAncestral,
    /// `DDIMScheduler` with eta 0 (deterministic).
    Ddim,
    /// `DPMSolverMultistepScheduler` with algorithm `dpmsolver++` (2M with the default order 2).
    DpmSolverMultistep,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] = [
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Ddim,
        SchedulerKind::DpmSolverMultistep,
    ];

    /// The command-line name: euler, euler-a, ddim, dpmpp-2m.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmSolverMultistep => "dpmpp-2m",
        }
    }

    /// The diffusers class name (`_class_name` in scheduler_config.json).
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    pub fn from_class_name(class_name: &str) -> Option<Self> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.class_name() == class_name)
    }

    /// Whether the scheduler works on a sigma (noise level) schedule; DDIM does not.
    pub fn has_sigmas(self) -> bool {
        self != SchedulerKind::Ddim
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = SchedulerKind::ALL.iter().map(|k| k.name()).collect();
                Error::invalid_input(
                    "--scheduler",
                    format!(
                        "unknown scheduler {name:?} (expected one of {})",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// A configured scheduler and, once [`Scheduler::set_timesteps`] has run, its schedule and the
/// state the multistep solver carries between steps.
#[derive(Clone, Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    /// Sigma of every training timestep, float32.
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// `timesteps.len() + 1` values (the last is the final sigma); empty for DDIM.
    sigmas: Vec<f32>,
    /// The step count asked for (DDIM's stride is `num_train_timesteps / num_inference_steps`).
    num_inference_steps: usize,
    init_noise_sigma: f64,
    /// DPM-Solver: data predictions of the latest steps, oldest first, at most `solver_order`.
    history: Vec<Vec<f32>>,
    /// The step index `step` expects next (the multistep solver must go in order).
    next_step: usize,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let alphas_cumprod = numeric::alphas_cumprod(&config);
        let train_sigmas = numeric::train_sigmas(&alphas_cumprod);
        let mut scheduler = Scheduler {
            config,
            alphas_cumprod,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            num_inference_steps: 0,
            init_noise_sigma: 1.0,
            history: Vec::new(),
            next_step: 0,
        };
        scheduler.init_noise_sigma = scheduler.compute_init_noise_sigma();
        scheduler
    }

    /// The SDXL base configuration (Euler discrete unless `kind` says otherwise).
    pub fn sdxl(kind: Option<SchedulerKind>) -> Self {
        Scheduler::new(SchedulerConfig::sdxl(kind))
    }

    pub fn kind(&self) -> SchedulerKind {
        self.config.kind
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Training timesteps of the inference steps, first step first. Euler's are float32 values
    /// (fractional with Karras sigmas); the other schedulers' are integers.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Noise level of each step plus the final one (`timesteps().len() + 1` values), or `None`
    /// for DDIM, which has no sigma schedule.
    pub fn sigmas(&self) -> Option<&[f32]> {
        self.config
            .kind
            .has_sigmas()
            .then_some(self.sigmas.as_slice())
    }

    /// Standard deviation of the initial latent noise.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// Number of steps of the current schedule.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// Builds the schedule for `num_inference_steps` steps and resets the solver state.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let train_steps = self.config.num_train_timesteps;
        if num_inference_steps == 0 || num_inference_steps > train_steps {
            return Err(Error::invalid_input(
                "--steps",
                format!(
                    "{num_inference_steps} steps: must be between 1 and the scheduler's \
                     {train_steps} training timesteps"
                ),
            ));
        }
        let n = num_inference_steps;
        match self.config.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => self.set_euler_timesteps(n),
            SchedulerKind::Ddim => self.set_ddim_timesteps(n),
            SchedulerKind::DpmSolverMultistep => self.set_dpm_timesteps(n),
        }
        self.num_inference_steps = n;
        self.init_noise_sigma = self.compute_init_noise_sigma();
        self.history.clear();
        self.next_step = 0;
        Ok(())
    }

    fn set_euler_timesteps(&mut self, n: usize) {
        let config = &self.config;
        let train_steps = config.num_train_timesteps;
        // Euler's timesteps are float32.
        let timesteps: Vec<f32> = match config.timestep_spacing {
            TimestepSpacing::Linspace => numeric::numpy_linspace(0.0, (train_steps - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|t| t as f32)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = train_steps / n;
                (0..n)
                    .rev()
                    .map(|i| (i * ratio) as f32 + config.steps_offset as f32)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train_steps as f64 / n as f64;
                numeric::numpy_arange_down(train_steps as f64, ratio)
                    .into_iter()
                    .map(|t| numeric::round_even(t) as f32 - 1.0)
                    .collect()
            }
        };
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| numeric::interp_table(f64::from(t), &self.train_sigmas))
            .collect();
        let mut timesteps: Vec<f64> = timesteps.into_iter().map(f64::from).collect();
        let karras = config.kind == SchedulerKind::Euler && config.use_karras_sigmas;
        if karras {
            let (sigma_min, sigma_max) = (sigmas[sigmas.len() - 1], sigmas[0]);
            sigmas = numeric::karras_sigmas(sigma_min, sigma_max, n);
            let log_sigmas = self.log_train_sigmas();
            timesteps = sigmas
                .iter()
                .map(|&s| f64::from(numeric::sigma_to_t(s, &log_sigmas) as f32))
                .collect();
        }
        let last = if config.kind == SchedulerKind::Euler {
            self.final_sigma()
        } else {
            0.0
        };
        self.sigmas = sigmas.into_iter().map(|s| s as f32).chain([last]).collect();
        self.timesteps = timesteps;
    }

    fn set_ddim_timesteps(&mut self, n: usize) {
        let config = &self.config;
        let train_steps = config.num_train_timesteps;
        let timesteps: Vec<i64> = match config.timestep_spacing {
            TimestepSpacing::Linspace => numeric::numpy_linspace(0.0, (train_steps - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|t| numeric::round_even(t) as i64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = train_steps / n;
                (0..n)
                    .rev()
                    .map(|i| (i * ratio) as i64 + config.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing_timesteps(train_steps, n),
        };
        self.timesteps = timesteps.into_iter().map(|t| t as f64).collect();
        self.sigmas.clear();
    }

    fn set_dpm_timesteps(&mut self, n: usize) {
        let config = &self.config;
        let train_steps = config.num_train_timesteps;
        // n + 1 points from the top down, the one at 0 dropped.
        let mut timesteps: Vec<i64> = match config.timestep_spacing {
            TimestepSpacing::Linspace => {
                numeric::numpy_linspace(0.0, (train_steps - 1) as f64, n + 1)[1..]
                    .iter()
                    .rev()
                    .map(|&t| numeric::round_even(t) as i64)
                    .collect()
            }
            TimestepSpacing::Leading => {
                let ratio = train_steps / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio) as i64 + config.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing_timesteps(train_steps, n),
        };
        let sigmas: Vec<f64> = if config.use_karras_sigmas {
            let sigma_min = f64::from(self.train_sigmas[0]);
            let sigma_max = f64::from(self.train_sigmas[train_steps - 1]);
            let sigmas = numeric::karras_sigmas(sigma_min, sigma_max, n);
            let log_sigmas = self.log_train_sigmas();
            timesteps = sigmas
                .iter()
                .map(|&s| numeric::round_even(numeric::sigma_to_t(s, &log_sigmas)) as i64)
                .collect();
            sigmas
        } else {
            timesteps
                .iter()
                .map(|&t| numeric::interp_table(t as f64, &self.train_sigmas))
                .collect()
        };
        let last = self.final_sigma();
        self.sigmas = sigmas.into_iter().map(|s| s as f32).chain([last]).collect();
        self.timesteps = timesteps.into_iter().map(|t| t as f64).collect();
    }

    fn final_sigma(&self) -> f32 {
        match self.config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => self.train_sigmas[0],
        }
    }

    /// float32 natural logs of the training sigmas (numpy takes them in float32).
    fn log_train_sigmas(&self) -> Vec<f32> {
        self.train_sigmas
            .iter()
            .map(|&s| f64::from(s).ln() as f32)
            .collect()
    }

    fn compute_init_noise_sigma(&self) -> f64 {
        match self.config.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let sigmas = if self.sigmas.is_empty() {
                    &self.train_sigmas
                } else {
                    &self.sigmas
                };
                let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                match self.config.timestep_spacing {
                    TimestepSpacing::Linspace | TimestepSpacing::Trailing => f64::from(max),
                    TimestepSpacing::Leading => f64::from((max * max + 1.0).sqrt()),
                }
            }
            SchedulerKind::Ddim | SchedulerKind::DpmSolverMultistep => 1.0,
        }
    }

    fn check_step_index(&self, step_index: usize) -> Result<()> {
        if self.timesteps.is_empty() {
            return Err(Error::invalid_input(
                "step_index",
                "set_timesteps has not been called",
            ));
        }
        if step_index >= self.timesteps.len() {
            return Err(Error::invalid_input(
                "step_index",
                format!(
                    "{step_index} is past the last of {} steps",
                    self.timesteps.len()
                ),
            ));
        }
        Ok(())
    }

    /// The model input for step `step_index`: Euler schedulers divide by `sqrt(sigma^2 + 1)`,
    /// the others pass the sample through.
    pub fn scale_model_input(&self, sample: &[f32], step_index: usize) -> Result<Vec<f32>> {
        let mut scaled = sample.to_vec();
        self.scale_model_input_in_place(&mut scaled, step_index)?;
        Ok(scaled)
    }

    /// [`Scheduler::scale_model_input`] without a copy.
    pub fn scale_model_input_in_place(&self, sample: &mut [f32], step_index: usize) -> Result<()> {
        self.check_step_index(step_index)?;
        if matches!(
            self.config.kind,
            SchedulerKind::Euler | SchedulerKind::EulerAncestral
        ) {
            let sigma = self.sigmas[step_index];
            let divisor = (sigma * sigma + 1.0).sqrt();
            sample.iter_mut().for_each(|x| *x /= divisor);
        }
        Ok(())
    }

    /// One denoising step: the sample of the next step from the model output at step
    /// `step_index` (0 = first). Euler ancestral needs `noise`, standard normal values of the
    /// sample's size; the others ignore it. The multistep solver must be stepped in order from 0.
    pub fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        self.check_step_index(step_index)?;
        if model_output.len() != sample.len() {
            return Err(Error::invalid_input(
                "model_output",
                format!(
                    "{} values for a sample of {}",
                    model_output.len(),
                    sample.len()
                ),
            ));
        }
        let result = match self.config.kind {
            SchedulerKind::Euler => Ok(self.euler_step(model_output, step_index, sample)),
            SchedulerKind::EulerAncestral => {
                let noise = noise.ok_or_else(|| {
                    Error::invalid_input("noise", "Euler ancestral needs noise for every step")
                })?;
                if noise.len() != sample.len() {
                    return Err(Error::invalid_input(
                        "noise",
                        format!("{} values for a sample of {}", noise.len(), sample.len()),
                    ));
                }
                Ok(self.euler_ancestral_step(model_output, step_index, sample, noise))
            }
            SchedulerKind::Ddim => self.ddim_step(model_output, step_index, sample),
            SchedulerKind::DpmSolverMultistep => self.dpm_step(model_output, step_index, sample),
        };
        if result.is_ok() {
            self.next_step = step_index + 1;
        }
        result
    }

    /// The data (x0) prediction of the Euler schedulers, float32 as in diffusers.
    fn euler_denoised(&self, model_output: f32, sample: f32, sigma: f32) -> f32 {
        match self.config.prediction_type {
            PredictionType::Epsilon => sample - sigma * model_output,
            PredictionType::VPrediction => {
                let variance = sigma * sigma + 1.0;
                model_output * (-sigma / variance.sqrt()) + sample / variance
            }
        }
    }

    fn euler_step(&self, model_output: &[f32], i: usize, sample: &[f32]) -> Vec<f32> {
        let sigma = self.sigmas[i];
        let dt = self.sigmas[i + 1] - sigma;
        model_output
            .iter()
            .zip(sample)
            .map(|(&m, &s)| {
                let derivative = (s - self.euler_denoised(m, s, sigma)) / sigma;
                s + derivative * dt
            })
            .collect()
    }

    fn euler_ancestral_step(
        &self,
        model_output: &[f32],
        i: usize,
        sample: &[f32],
        noise: &[f32],
    ) -> Vec<f32> {
        let (sigma_from, sigma_to) = (self.sigmas[i], self.sigmas[i + 1]);
        let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma_from;
        model_output
            .iter()
            .zip(sample)
            .zip(noise)
            .map(|((&m, &s), &z)| {
                let derivative = (s - self.euler_denoised(m, s, sigma_from)) / sigma_from;
                (s + derivative * dt) + z * sigma_up
            })
            .collect()
    }

    fn ddim_step(&self, model_output: &[f32], i: usize, sample: &[f32]) -> Result<Vec<f32>> {
        let train_steps = self.config.num_train_timesteps;
        let timestep = self.timesteps[i] as i64;
        let prev_timestep = timestep - (train_steps / self.num_inference_steps) as i64;
        let alpha_at = |t: i64| {
            usize::try_from(t)
                .ok()
                .and_then(|t| self.alphas_cumprod.get(t).copied())
                .ok_or_else(|| {
                    Error::invalid_input(
                        "scheduler_config.json steps_offset",
                        format!(
                            "timestep {t} is outside the {train_steps} training timesteps \
                             with {} steps",
                            self.num_inference_steps
                        ),
                    )
                })
        };
        let alpha_t = alpha_at(timestep)?;
        let alpha_prev = if prev_timestep >= 0 {
            alpha_at(prev_timestep)?
        } else if self.config.set_alpha_to_one {
            1.0
        } else {
            self.alphas_cumprod[0]
        };
        let beta_t = 1.0 - alpha_t;
        let (sqrt_alpha_t, sqrt_beta_t) = (alpha_t.sqrt(), beta_t.sqrt());
        let sqrt_alpha_prev = alpha_prev.sqrt();
        // eta = 0: no stochastic part, the direction term keeps all of 1 - alpha_prev.
        let direction_scale = (1.0 - alpha_prev).sqrt();
        let clip = self
            .config
            .clip_sample
            .then_some(self.config.clip_sample_range as f32);
        let prediction = self.config.prediction_type;
        Ok(model_output
            .iter()
            .zip(sample)
            .map(|(&m, &s)| {
                let (mut x0, eps) = match prediction {
                    PredictionType::Epsilon => ((s - sqrt_beta_t * m) / sqrt_alpha_t, m),
                    PredictionType::VPrediction => (
                        sqrt_alpha_t * s - sqrt_beta_t * m,
                        sqrt_alpha_t * m + sqrt_beta_t * s,
                    ),
                };
                if let Some(range) = clip {
                    x0 = x0.clamp(-range, range);
                }
                sqrt_alpha_prev * x0 + direction_scale * eps
            })
            .collect())
    }

    /// `(alpha_t, sigma_t)` of the variance-preserving process at noise level `sigma`.
    fn vp_alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    fn dpm_step(&mut self, model_output: &[f32], i: usize, sample: &[f32]) -> Result<Vec<f32>> {
        if i == 0 {
            self.history.clear();
        } else if i != self.next_step {
            return Err(Error::invalid_input(
                "step_index",
                format!(
                    "the multistep solver expected step {}, got {i}",
                    self.next_step
                ),
            ));
        }
        let x0 = self.dpm_data_prediction(model_output, i, sample);
        let config = &self.config;
        if self.history.len() == config.solver_order {
            self.history.remove(0);
        }
        self.history.push(x0);
        let order = self.dpm_order(i);
        Ok(self.dpm_update(i, order, sample))
    }

    /// The data prediction x0 of step `i` from the model output (epsilon or v).
    fn dpm_data_prediction(&self, model_output: &[f32], i: usize, sample: &[f32]) -> Vec<f32> {
        let config = &self.config;
        let (alpha_s0, sigma_s0) = Self::vp_alpha_sigma(self.sigmas[i]);
        match config.prediction_type {
            PredictionType::Epsilon => model_output
                .iter()
                .zip(sample)
                .map(|(&m, &s)| (s - sigma_s0 * m) / alpha_s0)
                .collect(),
            PredictionType::VPrediction => model_output
                .iter()
                .zip(sample)
                .map(|(&m, &s)| alpha_s0 * s - sigma_s0 * m)
                .collect(),
        }
    }

    /// The solver order of step `i`, with the newest data prediction already in the history:
    /// lower at the start (too little history) and, as diffusers does, at the end.
    fn dpm_order(&self, i: usize) -> usize {
        let config = &self.config;
        let n = self.timesteps.len();
        let lower_order_final = i == n - 1
            && (config.euler_at_final
                || (config.lower_order_final && n < 15)
                || config.final_sigmas_type == FinalSigmas::Zero);
        let lower_order_second = i + 2 == n && config.lower_order_final && n < 15;

        // Steps already taken at lower order, as diffusers counts them (capped at the order).
        let previous = self.history.len() - 1;
        if config.solver_order == 1 || previous < 1 || lower_order_final {
            1
        } else if config.solver_order == 2 || previous < 2 || lower_order_second {
            2
        } else {
            3
        }
    }

    /// The multistep update of step `i` at `order` from the data predictions in the history.
    fn dpm_update(&self, i: usize, order: usize, sample: &[f32]) -> Vec<f32> {
        let config = &self.config;
        let lambda = |sigma: f32| {
            let (alpha, sigma) = Self::vp_alpha_sigma(sigma);
            alpha.ln() - sigma.ln()
        };
        let (_, sigma_s0) = Self::vp_alpha_sigma(self.sigmas[i]);
        let (alpha_t, sigma_t) = Self::vp_alpha_sigma(self.sigmas[i + 1]);
        let lambda_t = lambda(self.sigmas[i + 1]);
        let lambda_s0 = lambda(self.sigmas[i]);
        let h = lambda_t - lambda_s0;
        let sample_scale = sigma_t / sigma_s0;
        let d0_scale = alpha_t * ((-h).exp() - 1.0);
        let m0 = &self.history[self.history.len() - 1];

        match order {
            1 => sample
                .iter()
                .zip(m0)
                .map(|(&s, &d0)| sample_scale * s - d0_scale * d0)
                .collect(),
            2 => {
                let m1 = &self.history[self.history.len() - 2];
                let h_0 = lambda_s0 - lambda(self.sigmas[i - 1]);
                let inv_r0 = 1.0 / (h_0 / h);
                let d1_scale = match config.solver_type {
                    SolverType::Midpoint => -(0.5 * d0_scale),
                    SolverType::Heun => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                };
                sample
                    .iter()
                    .zip(m0)
                    .zip(m1)
                    .map(|((&s, &d0), &p1)| {
                        let d1 = inv_r0 * (d0 - p1);
                        sample_scale * s - d0_scale * d0 + d1_scale * d1
                    })
                    .collect()
            }
            _ => {
                let m1 = &self.history[self.history.len() - 2];
                let m2 = &self.history[self.history.len() - 3];
                let lambda_s1 = lambda(self.sigmas[i - 1]);
                let lambda_s2 = lambda(self.sigmas[i - 2]);
                let (h_0, h_1) = (lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
                let (r0, r1) = (h_0 / h, h_1 / h);
                let (inv_r0, inv_r1) = (1.0 / r0, 1.0 / r1);
                let d1_mix = r0 / (r0 + r1);
                let d2_scale_in = 1.0 / (r0 + r1);
                let em1 = (-h).exp() - 1.0;
                let d1_scale = alpha_t * (em1 / h + 1.0);
                let d2_scale = alpha_t * ((em1 + h) / (h * h) - 0.5);
                sample
                    .iter()
                    .zip(m0)
                    .zip(m1)
                    .zip(m2)
                    .map(|(((&s, &d0), &p1), &p2)| {
                        let d1_0 = inv_r0 * (d0 - p1);
                        let d1_1 = inv_r1 * (p1 - p2);
                        let d1 = d1_0 + d1_mix * (d1_0 - d1_1);
                        let d2 = d2_scale_in * (d1_0 - d1_1);
                        sample_scale * s - d0_scale * d0 + d1_scale * d1 - d2_scale * d2
                    })
                    .collect()
            }
        }
    }
}

/// "trailing" spacing, shared by the DDIM-style and DPM-Solver schedules: `n` points counted down
/// from the last training step, rounded half to even as numpy does.
fn trailing_timesteps(train_steps: usize, n: usize) -> Vec<i64> {
    numeric::numpy_arange_down(train_steps as f64, train_steps as f64 / n as f64)
        .into_iter()
        .map(|t| numeric::round_even(t) as i64 - 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected: the CLASSES table of tests/reference/scheduler.py (our --scheduler names -> the
    // diffusers classes the reference values came from), with the class names as diffusers 0.42.1
    // spells them: `{k: c.__name__ for k, c in CLASSES.items()}`.
    #[test]
    fn names_match_the_diffusers_classes() {
        use SchedulerKind::*;
        let expected = [
            ("euler", "EulerDiscreteScheduler", Euler),
            ("euler-a", "EulerAncestralDiscreteScheduler", EulerAncestral),
            ("ddim", "DDIMScheduler", Ddim),
            (
                "dpmpp-2m",
                "DPMSolverMultistepScheduler",
                DpmSolverMultistep,
            ),
        ];
        assert_eq!(SchedulerKind::ALL.len(), expected.len());
        for (name, class, kind) in expected {
            assert_eq!(name.parse::<SchedulerKind>().unwrap(), kind, "{name}");
            assert_eq!(kind.name(), name);
            assert_eq!(SchedulerKind::from_class_name(class), Some(kind), "{class}");
            assert_eq!(kind.class_name(), class);
        }
        assert!("lms".parse::<SchedulerKind>().is_err());
        assert_eq!(SchedulerKind::from_class_name("LMSDiscreteScheduler"), None);
    }

    #[test]
    fn dpm_steps_must_go_in_order() {
        let mut scheduler = Scheduler::sdxl(Some(SchedulerKind::DpmSolverMultistep));
        scheduler.set_timesteps(10).unwrap();
        let x = vec![0.5f32; 4];
        scheduler.step(&x, 0, &x, None).unwrap();
        assert!(scheduler.step(&x, 2, &x, None).is_err());
    }
}
