//! The end-to-end ID-Patch pipeline: faces and a layout in, a group photo out, in four stages
//! that a caller can run one by one (a server schedules them on different threads) or together
//! with [`generate`]. Each takes what the previous one produced:
//!
//! 1. [`prepare`] (no graph; cheap, and everything a user can get wrong is checked here): the
//!    parameters and layout checks, each person's face photo decoded and aligned on its five
//!    `face_keypoints` (or used as is when it is already an aligned 112x112 crop) into the
//!    ArcFace batch, both tokenizers on the prompt and the negative prompt, the scheduler and
//!    the initial noise. Gives a [`Job`]. Photos without keypoints get them from face detection
//!    first ([`crate::detect::people::resolve_faces`], then [`prepare_with_faces`] on the decoded
//!    photos, as `idpatch generate` does).
//! 2. [`encode`] (graphs): both text encoders (the prompt alone without guidance), the hidden
//!    states side by side and encoder 2's pooled embedding; ArcFace on all faces at once, the ID
//!    patches (`patch_proj`) and ID tokens (`prompt_proj`; the unconditional ones are
//!    `prompt_proj` of zeros); the condition image (pose skeleton plus ID patches,
//!    [`crate::condition`]) and the encoder states with the ID tokens spliced in
//!    ([`crate::splice`]). Gives an [`Encoded`].
//! 3. [`denoise`] (graphs; the loop, [`crate::denoise`]): classifier-free guidance on the batch
//!    `[uncond, cond]` when `guidance > 1`, the conditional half alone otherwise (diffusers'
//!    `do_classifier_free_guidance`); the encoder states switch to the spliced ones per the ID
//!    injection schedule; the ControlNet runs inside its control guidance window, its residuals
//!    going straight to the UNet's inputs as backend values; constant inputs are uploaded once.
//!    A callback sees every step and can stop the loop between steps. Gives a [`Denoised`].
//! 4. [`decode`] (graph): VAE decode, `(x / 2 + 0.5).clamp(0, 1)`, 8-bit RGB. Gives a
//!    [`Generated`]; its PNG is [`crate::image_io::encode_png`] with the caller's text chunks.
//!
//! [`Models::load`] loads the graphs once; any number of jobs then run on them. The same inputs
//! and seed give bit-identical results however the stages are called.

use std::ops::ControlFlow;
use std::time::Instant;

use ndarray::ArrayView3;

use crate::backend::{load_checked, Backend, Graph};
use crate::face;
use crate::image_io::{self, Rgb8};
use crate::layout::Layout;
use crate::limits;
use crate::manifest::{ModelSet, Role, SetConfig};
use crate::noise::{NoiseGenerator, Stream};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
use crate::splice;
use crate::tensor::DType;
use crate::tokenizer::Encoding;
pub use crate::tokenizer::Tokenizers;
use crate::{Error, Result, Tensor};

pub use crate::denoise::{denoise, Denoised, GenerationTraffic, StepProgress};
pub use crate::stages::{decode, encode, id_embeddings, id_patches, id_tokens, run_host, Encoded};
pub use crate::timings::Timings;

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
        crate::detect::people::check_count(layout, images)?;
    }
    let mut inputs = Vec::with_capacity(layout.people.len());
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
        inputs.push(face::arcface_input(img, keypoints.as_ref(), &what)?);
    }
    // Each input is (1, 3, 112, 112): joined on the batch axis.
    let inputs: Vec<&Tensor> = inputs.iter().collect();
    Tensor::concatenate(0, &inputs)
}

/// What [`prepare`] gives the graph stages: everything about one generation that is checked
/// and computed before any graph runs. It holds no graph or backend value, so it can be made on
/// one thread and run on another.
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
    /// The scheduler with its timesteps set for `params.steps`.
    pub scheduler: Scheduler,
    /// `faces`, `tokenize` and the noise part of `scheduler` filled in.
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

/// The prepare stage: checks the inputs of one generation and computes its cheap parts: face
/// crops (the layout's `face` photos are read here), tokens, scheduler and initial noise.
/// `init_noise` replaces the seeded noise (float32 (1, C, h, w) standard normal values, scaled by
/// the scheduler's initial sigma like diffusers' `latents=`); its `&str` names it in errors.
///
/// Errors: [`Error::InvalidInput`] (or [`Error::Io`] for an unreadable face photo) naming the
/// parameter, layout field or file that is wrong; [`Error::ModelSet`] for a scheduler config the
/// runtime cannot use.
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
    let noise = initial_noise(set, &layout, params.seed, init_noise, &mut timings)?;
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

/// The initial noise (1, C, h, w): `given` after checking its dtype, shape and values, else the
/// seed's standard normal stream [`Stream::InitialLatents`] (timed as scheduler work).
fn initial_noise(
    set: &ModelSet,
    layout: &Layout,
    seed: u64,
    given: Option<(Tensor, &str)>,
    timings: &mut Timings,
) -> Result<Tensor> {
    let config = &set.manifest.config;
    let (lh, lw) = (
        layout.height as usize / config.vae_scale_factor,
        layout.width as usize / config.vae_scale_factor,
    );
    let shape = vec![1, config.latent_channels, lh, lw];
    match given {
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
            Ok(tensor)
        }
        None => {
            let started = Instant::now();
            let n = shape.iter().product();
            let values = NoiseGenerator::new(seed).normal(Stream::InitialLatents, n);
            timings.scheduler += started.elapsed();
            Tensor::from_f32(shape, values)
        }
    }
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
    /// Loads every graph of `set` on `backend`, each checked against its manifest entry.
    /// Errors: [`Error::ModelSet`] for a missing, unreadable or mismatching graph, or what the
    /// backend reports.
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

/// The result of [`decode`] (and of [`generate`]).
#[derive(Debug, Clone)]
pub struct Generated {
    /// The group photo, 8-bit RGB, the layout's width x height.
    pub image: Rgb8,
    /// Final latents (1, C, h, w) float32, before division by the VAE scaling factor.
    pub latents: Tensor,
    /// The decoded image (1, 3, H, W) float32 after `(x / 2 + 0.5).clamp(0, 1)`, before
    /// quantisation.
    pub image_f32: Tensor,
    /// The ControlNet condition (3, H, W) float32.
    pub condition: Tensor,
    /// Every stage's wall time (`load_graphs` is the caller's to fill in).
    pub timings: Timings,
    /// Bytes the backend moved, for backends with device memory.
    pub traffic: Option<GenerationTraffic>,
}

/// Runs the graph stages on a prepared job: [`encode`], [`denoise`], [`decode`].
/// `on_step` sees every denoising step and may stop the loop between steps
/// ([`ControlFlow::Break`], giving [`Error::Cancelled`]).
pub fn generate(
    models: &mut Models,
    job: &Job,
    on_step: &mut dyn FnMut(&StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    let encoded = encode(models, job)?;
    let denoised = denoise(models, job, encoded, on_step)?;
    decode(models, job, denoised)
}

/// A (3, H, W) planar image in [0, 1] as 8-bit RGB: `x * 255` rounded half away from zero.
/// (diffusers' `numpy_to_pil` rounds half to even; the two differ only on exact halves.)
pub fn to_rgb8(planar: &[f32], width: usize, height: usize) -> Result<Rgb8> {
    let planar = ArrayView3::from_shape((3, height, width), planar).map_err(|_| {
        Error::invalid_input(
            "image",
            format!("{} values for a 3x{height}x{width} image", planar.len()),
        )
    })?;
    // (3, H, W) read as (H, W, 3): the logical order of the permuted view is interleaved RGB.
    let rgb = planar
        .permuted_axes([1, 2, 0])
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
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
