//! The end-to-end ID-Patch pipeline: faces and a layout in, a group photo out.
//!
//! Stages, in order:
//! 1. Faces: each person's photo, aligned on its five `face_keypoints` (or used as is when it is
//!    already an aligned 112x112 crop), becomes an ArcFace input. Photos without keypoints get
//!    them from face detection first ([`crate::detect::people::resolve_faces`]).
//! 2. ID: ArcFace (all faces in one batch) gives the (F, 1, 512) embeddings; `patch_proj` turns
//!    them into ID patches, `prompt_proj` into ID tokens; the unconditional ID tokens are
//!    `prompt_proj` of zeros.
//! 3. Condition: pose skeleton plus ID patches ([`crate::condition`]).
//! 4. Text: both tokenizers and encoders for the prompt and the negative prompt (the prompt
//!    alone without guidance); the sequence is the two hidden states side by side, the pooled
//!    embedding is encoder 2's ([`crate::stages`]).
//! 5. Denoising ([`crate::denoise`]): classifier-free guidance on the batch `[uncond, cond]` when
//!    `guidance > 1`, the conditional half alone otherwise (diffusers'
//!    `do_classifier_free_guidance`); the ID tokens spliced in per the injection schedule
//!    ([`crate::splice`]); the ControlNet inside its control guidance window, its residuals
//!    going straight to the UNet's inputs as backend values; constant inputs uploaded once.
//! 6. VAE decode, `(x / 2 + 0.5).clamp(0, 1)`, 8-bit RGB.
//!
//! [`prepare`] does everything that can fail on user input (and is cheap) before any graph is
//! loaded; [`Models::load`] loads the graphs; [`generate`] runs them.

use std::time::{Duration, Instant};

use crate::backend::{load_checked, Backend, Graph, Value};
use crate::condition::{self, ConditionOptions};
use crate::denoise::{self, DenoiserInputs, GenerationTraffic};
use crate::face;
use crate::image_io::{self, Rgb8};
use crate::layout::Layout;
use crate::limits;
use crate::manifest::{ModelSet, Role, SetConfig};
use crate::noise::{NoiseGenerator, Stream};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
use crate::splice;
use crate::stages::{decode, encode_ids, encode_prompts};
use crate::tensor::DType;
use crate::tokenizer::Encoding;
pub use crate::tokenizer::Tokenizers;
use crate::{Error, Result, Tensor};

/// Most denoising steps accepted (the training schedule has 1000 timesteps).
pub const MAX_STEPS: usize = 1000;

/// What the user chooses for one generation (the layout aside).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    pub controlnet_scale: f64,
    pub id_injection_ratio: f64,
    /// `None`: the scheduler the set's config names.
    pub scheduler: Option<SchedulerKind>,
    pub seed: u64,
    /// Round patch centres through bfloat16 as the reference does.
    pub bf16_positions: bool,
    /// diffusers' `control_guidance_start`: the ControlNet runs on step `i` of `N` only when
    /// `i / N >= start`, in [0, 1).
    pub control_guidance_start: f64,
    /// diffusers' `control_guidance_end`: ... and `(i + 1) / N <= end`, in (start, 1].
    pub control_guidance_end: f64,
}

impl Default for Params {
    /// ID-Patch's defaults: 50 steps, guidance 5.5, ControlNet scale 0.8, injection ratio 0.8.
    fn default() -> Self {
        Params {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 50,
            guidance: 5.5,
            controlnet_scale: 0.8,
            id_injection_ratio: 0.8,
            scheduler: None,
            seed: 0,
            bf16_positions: false,
            control_guidance_start: 0.0,
            control_guidance_end: 1.0,
        }
    }
}

impl Params {
    /// Range checks (see [`crate::limits`]); errors name the command-line flag.
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::invalid_input(
                "--steps",
                format!("{} is not between 1 and {MAX_STEPS}", self.steps),
            ));
        }
        limits::check_scale("--guidance", self.guidance, limits::MAX_GUIDANCE)?;
        let max_scale = limits::MAX_CONTROLNET_SCALE;
        limits::check_scale("--controlnet-scale", self.controlnet_scale, max_scale)?;
        limits::check_prompt("--prompt", &self.prompt)?;
        limits::check_prompt("--negative-prompt", &self.negative_prompt)?;
        splice::check_ratio(self.id_injection_ratio, "--id-injection-ratio")?;
        self.check_guidance_window()?;
        if !self.do_classifier_free_guidance() && !self.negative_prompt.is_empty() {
            return Err(Error::invalid_input(
                "--negative-prompt",
                format!(
                    "is not used without classifier-free guidance (--guidance {} is not above 1); \
                     drop it or raise --guidance",
                    self.guidance
                ),
            ));
        }
        Ok(())
    }

    /// diffusers' rules for the control guidance window: both in [0, 1], start below end.
    fn check_guidance_window(&self) -> Result<()> {
        let (start, end) = (self.control_guidance_start, self.control_guidance_end);
        for (flag, value) in [
            ("--control-guidance-start", start),
            ("--control-guidance-end", end),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::invalid_input(
                    flag,
                    format!("{value} is not in [0, 1]"),
                ));
            }
        }
        if start >= end {
            return Err(Error::invalid_input(
                "--control-guidance-start",
                format!("{start} must be below --control-guidance-end ({end})"),
            ));
        }
        Ok(())
    }

    /// diffusers' `do_classifier_free_guidance`: guidance only when `guidance > 1`; otherwise the
    /// graphs run on the conditional half alone.
    pub fn do_classifier_free_guidance(&self) -> bool {
        self.guidance > 1.0
    }
}

/// Wall time of each stage. Graph stages include the backend's plan building on first use.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Reading face photos, alignment, ArcFace input (Rust).
    pub faces: Duration,
    /// Both tokenizers on both prompts (Rust).
    pub tokenize: Duration,
    /// Loading every graph.
    pub load_graphs: Duration,
    /// Both text encoders.
    pub text_encoders: Duration,
    /// ArcFace, patch_proj and prompt_proj (both calls).
    pub id_graphs: Duration,
    /// Skeleton, patch compositing and token splicing (Rust).
    pub condition: Duration,
    /// ControlNet over the whole loop.
    pub controlnet: Duration,
    /// UNet over the whole loop, with the uploads of the denoiser inputs (constants once per
    /// generation, `sample` and `timestep` per step).
    pub unet: Duration,
    /// Part of `controlnet` + `unet`: their first run at each sequence length, which includes a
    /// backend's per-shape preparation (tract optimises a plan for each new input shape).
    pub first_runs: Duration,
    /// Initial noise, model-input scaling, CFG and scheduler steps (Rust).
    pub scheduler: Duration,
    pub vae_decode: Duration,
    /// Float image to 8-bit RGB (Rust).
    pub to_rgb: Duration,
    /// ControlNet calls, and steps the control guidance window skipped.
    pub controlnet_calls: usize,
    pub controlnet_skipped: usize,
    /// Median ControlNet call after its first run per sequence length (None without one).
    pub controlnet_call: Option<Duration>,
}

impl Timings {
    /// Time spent in code this crate owns (everything but graph loading and graph runs).
    pub fn rust_owned(&self) -> Duration {
        self.faces + self.tokenize + self.condition + self.scheduler + self.to_rgb
    }

    /// ControlNet time the control guidance window saved: skipped steps times the median call
    /// (None when no step was skipped or no call was timed after its first run).
    pub fn controlnet_saved(&self) -> Option<Duration> {
        let skipped = u32::try_from(self.controlnet_skipped)
            .ok()
            .filter(|n| *n > 0)?;
        self.controlnet_call.map(|call| call * skipped)
    }

    /// Every stage summed.
    pub fn stages(&self) -> Duration {
        self.rust_owned()
            + self.load_graphs
            + self.text_encoders
            + self.id_graphs
            + self.controlnet
            + self.unet
            + self.vae_decode
    }

    /// One line per stage (name, seconds, percentage of `total`), then the Rust-owned share.
    pub fn summary(&self, total: Duration) -> String {
        let rows = [
            ("faces (decode, align)", self.faces),
            ("tokenize", self.tokenize),
            ("load graphs", self.load_graphs),
            ("text encoders", self.text_encoders),
            ("arcface + projections", self.id_graphs),
            ("condition + splicing", self.condition),
            ("controlnet (all steps)", self.controlnet),
            ("unet (all steps)", self.unet),
            ("  of which first run/shape", self.first_runs),
            ("scheduler + CFG", self.scheduler),
            ("vae decode", self.vae_decode),
            ("to RGB8", self.to_rgb),
        ];
        let total_s = total.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut out = String::from("stage                          seconds      share\n");
        for (name, d) in rows {
            out.push_str(&format!(
                "{name:<28} {:>10.4} {:>9.1}%\n",
                d.as_secs_f64(),
                100.0 * d.as_secs_f64() / total_s
            ));
        }
        let other = total.saturating_sub(self.stages());
        out.push_str(&format!(
            "{:<28} {:>10.4} {:>9.1}%\n",
            "other (I/O, setup)",
            other.as_secs_f64(),
            100.0 * other.as_secs_f64() / total_s
        ));
        out.push_str(&format!("{:<28} {:>10.4}\n", "total", total.as_secs_f64()));
        if self.controlnet_skipped > 0 {
            let steps = self.controlnet_skipped + self.controlnet_calls;
            out.push_str(&format!(
                "controlnet skipped on {} of {steps} steps (control guidance window): {}\n",
                self.controlnet_skipped,
                match (self.controlnet_saved(), self.controlnet_call) {
                    (Some(saved), Some(call)) => format!(
                        "about {:.4} s saved at {:.3} ms per call",
                        saved.as_secs_f64(),
                        call.as_secs_f64() * 1e3
                    ),
                    _ => "no call after its first run to measure the saving by".into(),
                }
            ));
        }
        out.push_str(&format!(
            "Rust-owned (faces, tokenize, condition, scheduler + CFG, to RGB8): {:.4} s, {:.2}% of total",
            self.rust_owned().as_secs_f64(),
            100.0 * self.rust_owned().as_secs_f64() / total_s
        ));
        out
    }
}

/// ArcFace inputs (F, 3, 112, 112) of every person's face photo, in people order. A person
/// without `face_keypoints` must give an already aligned 112x112 crop.
pub fn face_batch(layout: &Layout) -> Result<Tensor> {
    face_batch_with(layout, None)
}

/// Every person's face photo, decoded, in people order; errors name the person.
pub fn load_face_images(layout: &Layout) -> Result<Vec<Rgb8>> {
    (0..layout.people.len())
        .map(|i| load_face_image(layout, i))
        .collect()
}

fn load_face_image(layout: &Layout, i: usize) -> Result<Rgb8> {
    let name = format!("layout people[{i}].face");
    let path = layout.people[i]
        .face
        .as_ref()
        .ok_or_else(|| Error::invalid_input(&name, "missing: every person needs a face photo"))?;
    image_io::load_rgb8(path).map_err(|e| match e {
        Error::Io { .. } => Error::invalid_input(&name, e.to_string()),
        Error::InvalidInput { reason, .. } => {
            Error::invalid_input(&name, format!("{}: {reason}", path.display()))
        }
        other => other,
    })
}

/// [`face_batch`], with the face images given in people order instead of read from the layout's
/// `face` paths when `images` is `Some`.
pub fn face_batch_with(layout: &Layout, images: Option<&[Rgb8]>) -> Result<Tensor> {
    let size = face::ARCFACE_SIZE;
    if let Some(images) = images {
        if images.len() != layout.people.len() {
            return Err(Error::invalid_input(
                "layout people",
                format!(
                    "{} people but {} face images",
                    layout.people.len(),
                    images.len()
                ),
            ));
        }
    }
    let mut data = Vec::with_capacity(layout.people.len() * 3 * size * size);
    for (i, person) in layout.people.iter().enumerate() {
        let name = format!("layout people[{i}].face");
        let loaded;
        let (img, source) = match images {
            Some(images) => (&images[i], format!("face image {i}")),
            None => {
                loaded = load_face_image(layout, i)?;
                let path = person.face.as_ref().expect("loaded from its path");
                (&loaded, path.display().to_string())
            }
        };
        let keypoints = person
            .face_keypoints
            .map(|k| k.map(|[x, y]| [f64::from(x), f64::from(y)]));
        if keypoints.is_none() && person.face_index.is_some() {
            return Err(Error::invalid_input(
                &name,
                format!(
                    "people[{i}] names face_index {} of {source}, but its face was not detected \
                     (detect::people::resolve_faces does it)",
                    person.face_index.unwrap_or(0)
                ),
            ));
        }
        if let Some(points) = &keypoints {
            limits::check_face_points(points, img, i)?;
        }
        if keypoints.is_none() && (img.width() != size || img.height() != size) {
            return Err(Error::invalid_input(
                &name,
                format!(
                    "{source} is {}x{} and people[{i}] has no `face_keypoints`: detect the face \
                     first (detect::people::resolve_faces, as `idpatch generate` does), give the \
                     five face points as `face_keypoints`, or use an aligned {size}x{size} \
                     ArcFace crop",
                    img.width(),
                    img.height()
                ),
            ));
        }
        let what = format!("layout people[{i}].face_keypoints");
        let input = face::arcface_input(img, keypoints.as_ref(), &what)?;
        let input = input
            .as_f32()
            .ok_or_else(|| Error::invalid_input(&name, "the ArcFace input is not float32"))?;
        data.extend_from_slice(input);
    }
    Tensor::from_f32(vec![layout.people.len(), 3, size, size], data)
}

/// Everything about one generation that is checked and computed before any graph runs.
#[derive(Debug, Clone)]
pub struct Job {
    pub layout: Layout,
    pub params: Params,
    /// ArcFace inputs (F, 3, 112, 112).
    pub faces: Tensor,
    /// `[negative, prompt]` encodings of the first tokenizer.
    pub tokens_1: [Encoding; 2],
    /// `[negative, prompt]` encodings of the second tokenizer.
    pub tokens_2: [Encoding; 2],
    /// Standard normal initial noise (1, C, H/8, W/8), before scaling by the initial sigma.
    pub noise: Tensor,
    pub scheduler: Scheduler,
    pub timings: Timings,
}

impl Job {
    /// Warnings for the user (prompts cut at 77 tokens).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (which, index) in [("--prompt", 1), ("--negative-prompt", 0)] {
            if self.tokens_1[index].truncated || self.tokens_2[index].truncated {
                out.push(format!(
                    "{which} is longer than 77 CLIP tokens (start and end included) and was \
                     truncated; the rest is ignored"
                ));
            }
        }
        out
    }

    /// Latent (height, width).
    pub fn latent_size(&self, set: &ModelSet) -> (usize, usize) {
        let f = set.manifest.config.vae_scale_factor;
        (
            self.layout.height as usize / f,
            self.layout.width as usize / f,
        )
    }
}

/// The scheduler of `set` (its config, as `kind` when given), with `steps` timesteps.
pub fn scheduler_for(
    set: &ModelSet,
    kind: Option<SchedulerKind>,
    steps: usize,
) -> Result<Scheduler> {
    let map = set.manifest.scheduler.as_object().ok_or_else(|| {
        set.error("manifest.json scheduler: expected a diffusers scheduler config object")
    })?;
    let config = SchedulerConfig::from_map(map, kind, "manifest.json scheduler")?;
    let mut scheduler = Scheduler::new(config);
    scheduler.set_timesteps(steps)?;
    Ok(scheduler)
}

/// Checks the inputs of one generation and computes its cheap parts: face crops, tokens,
/// scheduler and initial noise. `init_noise` replaces the seeded noise (float32 (1, C, h, w)
/// standard normal values, scaled by the scheduler's initial sigma like diffusers' `latents=`).
pub fn prepare(
    set: &ModelSet,
    tokenizers: &Tokenizers,
    layout: Layout,
    params: Params,
    init_noise: Option<(Tensor, &str)>,
) -> Result<Job> {
    prepare_with_faces(set, tokenizers, layout, params, init_noise, None)
}

/// [`prepare`] with the face images already in memory (people order; the layout's `face` paths
/// are then not read): the `faces` stage times alignment and the ArcFace input only.
pub fn prepare_with_faces(
    set: &ModelSet,
    tokenizers: &Tokenizers,
    layout: Layout,
    params: Params,
    init_noise: Option<(Tensor, &str)>,
    face_images: Option<&[Rgb8]>,
) -> Result<Job> {
    params.check()?;
    let mut timings = Timings::default();
    let config = &set.manifest.config;
    check_image_sides(
        config,
        [
            ("layout width", layout.width as usize),
            ("layout height", layout.height as usize),
        ],
    )?;
    let started = Instant::now();
    let faces = face_batch_with(&layout, face_images)?;
    timings.faces = started.elapsed();

    let started = Instant::now();
    let [tokens_1, tokens_2] = tokenizers.encode([&params.negative_prompt, &params.prompt])?;
    timings.tokenize = started.elapsed();

    let scheduler = scheduler_for(set, params.scheduler, params.steps)?;
    let (lh, lw) = (
        layout.height as usize / config.vae_scale_factor,
        layout.width as usize / config.vae_scale_factor,
    );
    let shape = vec![1, config.latent_channels, lh, lw];
    let noise = match init_noise {
        Some((tensor, name)) => {
            if tensor.shape() != shape.as_slice() || tensor.dtype() != DType::Float32 {
                return Err(Error::invalid_input(
                    name,
                    format!(
                        "expected float32 {shape:?} for a {}x{} layout, got {} {:?}",
                        layout.width,
                        layout.height,
                        tensor.dtype(),
                        tensor.shape()
                    ),
                ));
            }
            limits::check_init_noise(&tensor, name)?;
            tensor
        }
        None => {
            let started = Instant::now();
            let n = shape.iter().product();
            let values = NoiseGenerator::new(params.seed).normal(Stream::InitialLatents, n);
            timings.scheduler += started.elapsed();
            Tensor::from_f32(shape, values)?
        }
    };
    Ok(Job {
        layout,
        params,
        faces,
        tokens_1,
        tokens_2,
        noise,
        scheduler,
        timings,
    })
}

/// Runs a graph on host tensors: inputs are cast to the dtypes the graph declares, outputs come
/// back as f32 host tensors, and a NaN or infinity in any output is an error naming it.
pub fn run_host(
    graph: &mut dyn Graph,
    inputs: &[(&str, &Tensor)],
    context: &str,
) -> Result<Vec<Tensor>> {
    let values = host_values(graph, inputs)?;
    let named: Vec<(&str, &Value)> = values.iter().map(|(n, v)| (*n, v)).collect();
    let outputs = graph.run(&named)?;
    let specs = graph.io().outputs.clone();
    outputs
        .into_iter()
        .zip(&specs)
        .map(|(value, spec)| {
            let tensor = graph.to_host(value)?.cast(DType::Float32)?;
            check_finite(&tensor, graph.role(), &spec.name, context)?;
            Ok(tensor)
        })
        .collect()
}

/// Host values of `inputs`, each cast to the dtype the graph declares for it.
fn host_values<'a>(
    graph: &dyn Graph,
    inputs: &[(&'a str, &Tensor)],
) -> Result<Vec<(&'a str, Value)>> {
    inputs
        .iter()
        .map(|(name, tensor)| {
            let dtype = graph
                .io()
                .inputs
                .iter()
                .find(|s| s.name == *name)
                .map_or(tensor.dtype(), |s| s.dtype);
            let t = if tensor.dtype() == dtype {
                (*tensor).clone()
            } else {
                (*tensor).clone().cast(dtype)?
            };
            Ok((*name, Value::Host(t)))
        })
        .collect()
}

pub(crate) fn check_finite(tensor: &Tensor, role: Role, output: &str, context: &str) -> Result<()> {
    match tensor.first_non_finite() {
        Some(i) => Err(Error::graph(
            role.name(),
            format!("NaN or infinity in output {output} {context} (flat index {i})"),
        )),
        None => Ok(()),
    }
}

/// ArcFace embeddings (F, 1, 512) of a face batch (F, 3, 112, 112).
pub fn id_embeddings(arcface: &mut dyn Graph, faces: &Tensor) -> Result<Tensor> {
    let out = run_host(arcface, &[("face", faces)], "")?;
    let embedding = out
        .into_iter()
        .next()
        .ok_or_else(|| Error::graph("arcface", "the graph returned no output"))?;
    let (f, d) = match embedding.shape() {
        [f, d] => (*f, *d),
        other => {
            return Err(Error::graph(
                "arcface",
                format!("expected a (faces, dim) embedding, got {other:?}"),
            ))
        }
    };
    Tensor::from_f32(vec![f, 1, d], embedding.to_f32_vec())
}

/// ID patches (F, 3, 64, 64) from embeddings (F, 1, 512).
pub fn id_patches(patch_proj: &mut dyn Graph, embeddings: &Tensor) -> Result<Tensor> {
    first_output(
        run_host(patch_proj, &[("id_embeds", embeddings)], "")?,
        "patch_proj",
    )
}

/// ID tokens (F, 16, D) from embeddings (F, 1, 512).
pub fn id_tokens(prompt_proj: &mut dyn Graph, embeddings: &Tensor) -> Result<Tensor> {
    first_output(
        run_host(prompt_proj, &[("id_embeds", embeddings)], "")?,
        "prompt_proj",
    )
}

pub(crate) fn first_output(outputs: Vec<Tensor>, graph: &str) -> Result<Tensor> {
    outputs
        .into_iter()
        .next()
        .ok_or_else(|| Error::graph(graph, "the graph returned no output"))
}

/// The graphs of a set, loaded and checked against the manifest.
pub struct Models {
    pub set: ModelSet,
    pub text_encoder: Box<dyn Graph>,
    pub text_encoder_2: Box<dyn Graph>,
    pub arcface: Box<dyn Graph>,
    pub patch_proj: Box<dyn Graph>,
    pub prompt_proj: Box<dyn Graph>,
    pub controlnet: Box<dyn Graph>,
    pub unet: Box<dyn Graph>,
    pub vae_decoder: Box<dyn Graph>,
}

impl Models {
    pub fn load(backend: &dyn Backend, set: ModelSet) -> Result<Models> {
        let load = |role| load_checked(backend, &set, role);
        Ok(Models {
            text_encoder: load(Role::TextEncoder)?,
            text_encoder_2: load(Role::TextEncoder2)?,
            arcface: load(Role::Arcface)?,
            patch_proj: load(Role::PatchProj)?,
            prompt_proj: load(Role::PromptProj)?,
            controlnet: load(Role::Controlnet)?,
            unet: load(Role::Unet)?,
            vae_decoder: load(Role::VaeDecoder)?,
            set,
        })
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generated {
    pub image: Rgb8,
    /// Final latents (1, C, h, w), before division by the VAE scaling factor.
    pub latents: Tensor,
    /// The decoded image (1, 3, H, W) after `(x / 2 + 0.5).clamp(0, 1)`, before quantisation.
    pub image_f32: Tensor,
    /// The ControlNet condition (3, H, W).
    pub condition: Tensor,
    pub timings: Timings,
    /// Bytes the backend moved, for backends with device memory.
    pub traffic: Option<GenerationTraffic>,
}

/// Runs the pipeline. `progress(done, total)` is called after every denoising step.
pub fn generate(
    models: &mut Models,
    job: &Job,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Generated> {
    let mut timings = job.timings.clone();
    let before = models.unet.traffic();
    let (height, width) = (job.layout.height as usize, job.layout.width as usize);
    let latent = job.latent_size(&models.set);
    let cfg = job.params.do_classifier_free_guidance();

    let started = Instant::now();
    let (text, pooled) = encode_prompts(models, job, cfg)?;
    timings.text_encoders = started.elapsed();

    let started = Instant::now();
    let (patches, tokens, negative_tokens) = encode_ids(models, &job.faces, cfg)?;
    timings.id_graphs = started.elapsed();

    let started = Instant::now();
    let options = ConditionOptions {
        bf16_positions: job.params.bf16_positions,
    };
    let condition = condition::condition_tensor(&job.layout, &patches, &options)?;
    let inputs = DenoiserInputs::new(
        &text,
        pooled,
        &tokens,
        negative_tokens.as_ref(),
        &condition,
        job.params.controlnet_scale,
    )?;
    timings.condition = started.elapsed();

    let denoised = denoise::denoise(
        models.controlnet.as_mut(),
        models.unet.as_mut(),
        job,
        inputs,
        latent,
        &mut timings,
        progress,
    )?;

    let started = Instant::now();
    let factor = models.set.manifest.config.vae_scaling_factor as f32;
    let channels = job.noise.shape()[1];
    let scaled = Tensor::from_f32(
        vec![1, channels, latent.0, latent.1],
        denoised.latents.iter().map(|x| x / factor).collect(),
    )?;
    let decoded = decode(models.vae_decoder.as_mut(), &scaled, (height, width))?;
    timings.vae_decode = started.elapsed();

    let started = Instant::now();
    let image = to_rgb8(&decoded, width, height)?;
    timings.to_rgb = started.elapsed();
    let traffic = match (denoised.traffic, before, models.unet.traffic()) {
        (Some(t), Some(a), Some(b)) => Some(GenerationTraffic {
            total: b.since(a),
            ..t
        }),
        _ => None,
    };
    Ok(Generated {
        image,
        latents: Tensor::from_f32(vec![1, channels, latent.0, latent.1], denoised.latents)?,
        image_f32: Tensor::from_f32(vec![1, 3, height, width], decoded)?,
        condition,
        timings,
        traffic,
    })
}

/// A (3, H, W) planar image in [0, 1] as 8-bit RGB: `x * 255` rounded half away from zero.
/// (diffusers' `numpy_to_pil` rounds half to even; the two differ only on exact halves.)
pub fn to_rgb8(planar: &[f32], width: usize, height: usize) -> Result<Rgb8> {
    let plane = width * height;
    if planar.len() != 3 * plane {
        return Err(Error::invalid_input(
            "image",
            format!("{} values for a 3x{height}x{width} image", planar.len()),
        ));
    }
    let mut rgb = vec![0u8; 3 * plane];
    for (p, px) in rgb.chunks_exact_mut(3).enumerate() {
        for (c, v) in px.iter_mut().enumerate() {
            *v = (planar[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    Rgb8::new(width, height, rgb)
}

/// Image sides a set can generate: positive multiples of the VAE factor times the latent
/// multiple the UNet needs. `sides` names each value as the user gave it (a layout field or a
/// flag).
pub fn check_image_sides(config: &SetConfig, sides: [(&str, usize); 2]) -> Result<()> {
    let multiple = config.vae_scale_factor * config.latent_multiple.max(1);
    for (name, value) in sides {
        if value == 0 || value % multiple != 0 {
            return Err(Error::invalid_input(
                name,
                format!(
                    "{value} is not a positive multiple of {multiple} (the VAE factor {} times \
                     the {} the UNet needs latent sides divisible by)",
                    config.vae_scale_factor, config.latent_multiple
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_range_checked() {
        let ok = Params::default();
        assert!(ok.check().is_ok());
        let cases = [
            (
                Params {
                    steps: 0,
                    ..ok.clone()
                },
                "--steps",
            ),
            (
                Params {
                    steps: 1001,
                    ..ok.clone()
                },
                "--steps",
            ),
            (
                Params {
                    guidance: -1.0,
                    ..ok.clone()
                },
                "--guidance",
            ),
            (
                Params {
                    guidance: f64::NAN,
                    ..ok.clone()
                },
                "--guidance",
            ),
            (
                Params {
                    controlnet_scale: f64::INFINITY,
                    ..ok.clone()
                },
                "--controlnet-scale",
            ),
            (
                Params {
                    id_injection_ratio: 1.2,
                    ..ok.clone()
                },
                "--id-injection-ratio",
            ),
        ];
        for (params, flag) in cases {
            let err = params.check().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err}");
        }
    }

    // Rules of diffusers 0.42.1: `do_classifier_free_guidance` is `guidance_scale > 1`, and
    // `StableDiffusionXLControlNetPipeline.check_inputs` refuses start >= end, start < 0, end > 1.
    #[test]
    fn guidance_mode_and_control_window_follow_diffusers() {
        let at = |guidance: f64| Params {
            guidance,
            ..Params::default()
        };
        assert!(at(5.5).do_classifier_free_guidance());
        assert!(at(1.0001).do_classifier_free_guidance());
        assert!(!at(1.0).do_classifier_free_guidance());
        assert!(!at(0.0).do_classifier_free_guidance());
        let window = |start: f64, end: f64| Params {
            control_guidance_start: start,
            control_guidance_end: end,
            ..Params::default()
        };
        assert!(window(0.0, 1.0).check().is_ok());
        assert!(window(0.3, 0.8).check().is_ok());
        for (start, end, message) in [
            (0.5, 0.5, "--control-guidance-start: 0.5 must be below"),
            (0.8, 0.3, "--control-guidance-start: 0.8 must be below"),
            (-0.1, 0.5, "--control-guidance-start: -0.1 is not in [0, 1]"),
            (0.2, 1.1, "--control-guidance-end: 1.1 is not in [0, 1]"),
            (f64::NAN, 0.5, "--control-guidance-start: NaN"),
        ] {
            let err = window(start, end).check().unwrap_err().to_string();
            assert!(err.starts_with(message), "{err}");
        }
        let negative = Params {
            guidance: 1.0,
            negative_prompt: "blurry".into(),
            ..Params::default()
        };
        let err = negative.check().unwrap_err().to_string();
        assert!(err.starts_with("--negative-prompt: is not used"), "{err}");
        assert!(at(1.0).check().is_ok());
    }

    #[test]
    fn rgb8_rounds_half_away_from_zero_and_clamps() {
        // 0.5/255 -> 0.5 -> 1; 1.5/255 -> 2; 2.5/255 -> 3 (half to even would give 2).
        // numpy 2.4.6: x = np.clip(np.float32(v), 0, 1) * np.float32(255) is exactly
        // [0.5, 1.5, 2.5, 0, 255, 255]; np.floor(x + 0.5) -> [1, 2, 3, 0, 255, 255], while
        // diffusers' np.round(x) -> [0, 2, 2, 0, 255, 255].
        let v = [0.5 / 255.0, 1.5 / 255.0, 2.5 / 255.0, -0.3, 1.7, 1.0];
        let planar: Vec<f32> = [v.map(|x| x as f32); 3].concat();
        let img = to_rgb8(&planar, 6, 1).unwrap();
        let reds: Vec<u8> = img.data().chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, [1, 2, 3, 0, 255, 255]);
    }
}
