//! The end-to-end ID-Patch pipeline: faces and a layout in, a group photo out.
//!
//! Stages, in order:
//! 1. Faces: each person's photo, aligned on its five `face_keypoints` (or used as is when it is
//!    already an aligned 112x112 crop), becomes an ArcFace input.
//! 2. ID: ArcFace (all faces in one batch) gives the (F, 1, 512) embeddings; `patch_proj` turns
//!    them into ID patches, `prompt_proj` into ID tokens; the unconditional ID tokens are
//!    `prompt_proj` of zeros.
//! 3. Condition: pose skeleton plus ID patches ([`crate::condition`]).
//! 4. Text: both tokenizers and encoders for the prompt and the negative prompt; the sequence is
//!    the two hidden states side by side, the pooled embedding is encoder 2's.
//! 5. Denoising with classifier-free guidance (batch `[uncond, cond]`), the ID tokens spliced in
//!    per the injection schedule ([`crate::splice`]); ControlNet residuals go straight from the
//!    ControlNet's outputs to the UNet's inputs as backend values.
//! 6. VAE decode, `(x / 2 + 0.5).clamp(0, 1)`, 8-bit RGB.
//!
//! [`prepare`] does everything that can fail on user input (and is cheap) before any graph is
//! loaded; [`Models::load`] loads the graphs; [`generate`] runs them.

use std::time::{Duration, Instant};

use crate::backend::{load_checked, Backend, Graph, Value};
use crate::condition::{self, ConditionOptions};
use crate::face;
use crate::image_io::{self, Rgb8};
use crate::layout::Layout;
use crate::limits;
use crate::manifest::{ModelSet, Role, SetConfig};
use crate::noise::{NoiseGenerator, Stream};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
use crate::splice::{self, EncoderStates};
use crate::tensor::DType;
use crate::tokenizer::{ClipTokenizer, Encoding};
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
        splice::check_ratio(self.id_injection_ratio, "--id-injection-ratio")
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
    /// UNet over the whole loop.
    pub unet: Duration,
    /// Part of `controlnet` + `unet`: their first run at each sequence length, which includes a
    /// backend's per-shape preparation (tract optimises a plan for each new input shape).
    pub first_runs: Duration,
    /// Initial noise, model-input scaling, CFG and scheduler steps (Rust).
    pub scheduler: Duration,
    pub vae_decode: Duration,
    /// Float image to 8-bit RGB (Rust).
    pub to_rgb: Duration,
}

impl Timings {
    /// Time spent in code this crate owns (everything but graph loading and graph runs).
    pub fn rust_owned(&self) -> Duration {
        self.faces + self.tokenize + self.condition + self.scheduler + self.to_rgb
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

/// [`face_batch`], with the face images given in people order instead of read from the layout's
/// `face` paths when `images` is `Some`.
fn face_batch_with(layout: &Layout, images: Option<&[Rgb8]>) -> Result<Tensor> {
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
                let path = person.face.as_ref().ok_or_else(|| {
                    Error::invalid_input(&name, "missing: every person needs a face photo")
                })?;
                loaded = image_io::load_rgb8(path).map_err(|e| match e {
                    Error::Io { .. } => Error::invalid_input(&name, e.to_string()),
                    Error::InvalidInput { reason, .. } => {
                        Error::invalid_input(&name, format!("{}: {reason}", path.display()))
                    }
                    other => other,
                })?;
                (&loaded, path.display().to_string())
            }
        };
        let keypoints = person
            .face_keypoints
            .map(|k| k.map(|[x, y]| [f64::from(x), f64::from(y)]));
        if let Some(points) = &keypoints {
            limits::check_face_points(points, img, i)?;
        }
        if keypoints.is_none() && (img.width() != size || img.height() != size) {
            return Err(Error::invalid_input(
                &name,
                format!(
                    "{source} is {}x{} and people[{i}] has no `face_keypoints`: give the five face \
                     points (left eye, right eye, nose, mouth left, mouth right; [x, y] in the \
                     photo's pixels) as `face_keypoints` in the layout, or use an aligned \
                     {size}x{size} ArcFace crop",
                    img.width(),
                    img.height()
                ),
            ));
        }
        let what = format!("layout people[{i}].face_keypoints");
        let input = face::arcface_input(img, keypoints.as_ref(), &what)?;
        data.extend_from_slice(input.as_f32().expect("arcface_input is f32"));
    }
    Tensor::from_f32(vec![layout.people.len(), 3, size, size], data)
}

/// The two SDXL tokenizers of a set.
pub struct Tokenizers {
    pub first: ClipTokenizer,
    pub second: ClipTokenizer,
}

impl Tokenizers {
    pub fn load(set: &ModelSet) -> Result<Self> {
        let load = |name: &str| {
            let files = set.manifest.tokenizers.get(name).ok_or_else(|| {
                set.error(format!("manifest.json has no tokenizers.{name} section"))
            })?;
            ClipTokenizer::from_files(
                &set.dir.join(&files.vocab),
                &set.dir.join(&files.merges),
                files.pad_token_id,
            )
            .map_err(|e| set.error(format!("tokenizers.{name}: {e}")))
        };
        Ok(Tokenizers {
            first: load("tokenizer")?,
            second: load("tokenizer_2")?,
        })
    }
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
    let encode = |t: &ClipTokenizer| [t.encode(&params.negative_prompt), t.encode(&params.prompt)];
    let tokens_1 = encode(&tokenizers.first);
    let tokens_2 = encode(&tokenizers.second);
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

fn check_finite(tensor: &Tensor, role: Role, output: &str, context: &str) -> Result<()> {
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

fn first_output(outputs: Vec<Tensor>, graph: &str) -> Result<Tensor> {
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
}

/// Runs the pipeline. `progress(done, total)` is called after every denoising step.
pub fn generate(
    models: &mut Models,
    job: &Job,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Generated> {
    let mut timings = job.timings.clone();
    let config = models.set.manifest.config.clone();
    let params = &job.params;
    let (height, width) = (job.layout.height as usize, job.layout.width as usize);
    let (lh, lw) = job.latent_size(&models.set);
    let channels = config.latent_channels;

    // Text: prompt and negative prompt in one batch per encoder.
    let started = Instant::now();
    let ids = |tokens: &[Encoding; 2]| {
        let v: Vec<i64> = tokens.iter().flat_map(|e| e.ids.iter().copied()).collect();
        Tensor::from_i64(vec![2, tokens[0].ids.len()], v)
    };
    let ids_1 = ids(&job.tokens_1)?;
    let ids_2 = ids(&job.tokens_2)?;
    let hidden_1 = first_output(
        run_host(models.text_encoder.as_mut(), &[("input_ids", &ids_1)], "")?,
        "text_encoder",
    )?;
    let mut out_2 = run_host(models.text_encoder_2.as_mut(), &[("input_ids", &ids_2)], "")?;
    if out_2.len() != 2 {
        return Err(Error::graph(
            "text_encoder_2",
            format!(
                "expected 2 outputs (hidden_states, text_embeds), got {}",
                out_2.len()
            ),
        ));
    }
    let pooled = out_2.pop().expect("two outputs");
    let hidden_2 = out_2.pop().expect("two outputs");
    timings.text_encoders = started.elapsed();

    // ID embeddings, patches and tokens.
    let started = Instant::now();
    let embeddings = id_embeddings(models.arcface.as_mut(), &job.faces)?;
    let patches = id_patches(models.patch_proj.as_mut(), &embeddings)?;
    let tokens = id_tokens(models.prompt_proj.as_mut(), &embeddings)?;
    let zeros = Tensor::zeros(embeddings.shape().to_vec(), DType::Float32);
    let negative_tokens = id_tokens(models.prompt_proj.as_mut(), &zeros)?;
    timings.id_graphs = started.elapsed();

    // Condition image and spliced sequences.
    let started = Instant::now();
    let options = ConditionOptions {
        bf16_positions: params.bf16_positions,
    };
    let condition = condition::condition_tensor(&job.layout, &patches, &options)?;
    let text = side_by_side(&hidden_1, &hidden_2)?;
    let (text_len, dim) = (text.shape()[1], text.shape()[2]);
    if dim != config.cross_attention_dim {
        return Err(models.set.error(format!(
            "text encoders give {dim} features together, config.cross_attention_dim is {}",
            config.cross_attention_dim
        )));
    }
    let half = |t: &Tensor, b: usize| {
        let v = t.as_f32().expect("f32");
        let n = v.len() / 2;
        Tensor::from_f32(vec![text_len, dim], v[b * n..(b + 1) * n].to_vec())
    };
    let states = EncoderStates::new(
        &half(&text, 0)?,
        &half(&text, 1)?,
        &negative_tokens,
        &tokens,
    )?;
    let repeat2 = |t: &Tensor| {
        let mut shape = vec![2];
        shape.extend_from_slice(t.shape());
        let v = t.as_f32().expect("f32");
        Tensor::from_f32(shape, [v, v].concat())
    };
    let controlnet_cond = repeat2(&condition)?;
    let time_row = [height, width, 0, 0, height, width].map(|v| v as f32);
    let time_ids = Tensor::from_f32(vec![2, 6], [time_row, time_row].concat())?;
    let text_embeds = pooled; // (2, pooled): [negative, prompt]
    let conditioning_scale = Tensor::from_f32(vec![1], vec![params.controlnet_scale as f32])?;
    timings.condition = started.elapsed();

    // Constant graph inputs, as values in each graph's dtypes.
    let const_inputs = |graph: &dyn Graph| {
        host_values(
            graph,
            &[
                ("text_embeds", &text_embeds),
                ("time_ids", &time_ids),
                ("controlnet_cond", &controlnet_cond),
                ("conditioning_scale", &conditioning_scale),
            ],
        )
        .map(|v| {
            v.into_iter()
                .filter(|(n, _)| graph.io().inputs.iter().any(|s| s.name == *n))
                .collect::<Vec<_>>()
        })
    };
    let control_consts = const_inputs(models.controlnet.as_ref())?;
    let unet_consts = const_inputs(models.unet.as_ref())?;
    let sequences = |graph: &dyn Graph| -> Result<[Value; 2]> {
        let mut v = host_values(
            graph,
            &[
                ("encoder_hidden_states", states.text_only()),
                ("encoder_hidden_states", states.full()),
            ],
        )?;
        let full = v.pop().expect("two").1;
        let text_only = v.pop().expect("two").1;
        Ok([text_only, full])
    };
    let control_states = sequences(models.controlnet.as_ref())?;
    let unet_states = sequences(models.unet.as_ref())?;

    // Denoising.
    let started = Instant::now();
    let mut scheduler = job.scheduler.clone();
    let steps = scheduler.len();
    let sigma0 = scheduler.init_noise_sigma() as f32;
    let mut latents: Vec<f32> = job.noise.to_f32_vec().iter().map(|x| x * sigma0).collect();
    let n = latents.len();
    let guidance = params.guidance as f32;
    let noise = NoiseGenerator::new(params.seed);
    timings.scheduler += started.elapsed();
    for i in 0..steps {
        let started = Instant::now();
        let mut input = Vec::with_capacity(2 * n);
        input.extend_from_slice(&latents);
        input.extend_from_slice(&latents);
        scheduler.scale_model_input_in_place(&mut input, i)?;
        let t = scheduler.timesteps()[i] as f32;
        let sample = Tensor::from_f32(vec![2, channels, lh, lw], input)?;
        let timestep = Tensor::from_f32(vec![2], vec![t, t])?;
        timings.scheduler += started.elapsed();
        let phase = usize::from(splice::ids_active(i, steps, params.id_injection_ratio));
        let context = format!("at step {i} of {steps}");

        let first_run = i == 0
            || phase != usize::from(splice::ids_active(i - 1, steps, params.id_injection_ratio));
        let graphs_started = Instant::now();
        let started = Instant::now();
        let step_inputs = host_values(
            models.controlnet.as_ref(),
            &[("sample", &sample), ("timestep", &timestep)],
        )?;
        let mut named: Vec<(&str, &Value)> = step_inputs.iter().map(|(k, v)| (*k, v)).collect();
        named.push(("encoder_hidden_states", &control_states[phase]));
        named.extend(control_consts.iter().map(|(k, v)| (*k, v)));
        let residuals = models.controlnet.run(&named)?;
        let residual_names: Vec<String> = models
            .controlnet
            .io()
            .outputs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        for (value, name) in residuals.iter().zip(&residual_names) {
            // Only host values can be checked without a copy; a device NaN shows up in the UNet.
            if let Value::Host(t) = value {
                check_finite(t, Role::Controlnet, name, &context)?;
            }
        }
        timings.controlnet += started.elapsed();

        let started = Instant::now();
        let step_inputs = host_values(
            models.unet.as_ref(),
            &[("sample", &sample), ("timestep", &timestep)],
        )?;
        let mut named: Vec<(&str, &Value)> = step_inputs.iter().map(|(k, v)| (*k, v)).collect();
        named.push(("encoder_hidden_states", &unet_states[phase]));
        named.extend(unet_consts.iter().map(|(k, v)| (*k, v)));
        named.extend(
            residual_names
                .iter()
                .map(|k| k.as_str())
                .zip(residuals.iter()),
        );
        let mut eps = models.unet.run(&named)?;
        if eps.is_empty() {
            return Err(Error::graph("unet", "the graph returned no output"));
        }
        let eps = models
            .unet
            .to_host(eps.swap_remove(0))?
            .cast(DType::Float32)?;
        check_finite(&eps, Role::Unet, "noise_pred", &context)?;
        timings.unet += started.elapsed();
        if first_run {
            timings.first_runs += graphs_started.elapsed();
        }

        let started = Instant::now();
        let eps = eps.as_f32().expect("cast to f32");
        if eps.len() != 2 * n {
            return Err(Error::graph(
                "unet",
                format!("noise_pred has {} values, expected {}", eps.len(), 2 * n),
            ));
        }
        let (uncond, cond) = eps.split_at(n);
        let guided: Vec<f32> = uncond
            .iter()
            .zip(cond)
            .map(|(&u, &c)| u + guidance * (c - u))
            .collect();
        let step_noise = (scheduler.kind() == SchedulerKind::EulerAncestral)
            .then(|| noise.normal(Stream::AncestralStep(i), n));
        latents = scheduler.step(&guided, i, &latents, step_noise.as_deref())?;
        if let Some(k) = latents.iter().position(|x| !x.is_finite()) {
            return Err(Error::graph(
                "scheduler",
                format!(
                    "NaN or infinity in the latents after the {} step {context} (flat index {k})",
                    scheduler.kind()
                ),
            ));
        }
        timings.scheduler += started.elapsed();
        progress(i + 1, steps);
    }

    // Decode.
    let started = Instant::now();
    let latent_shape = vec![1, channels, lh, lw];
    let factor = config.vae_scaling_factor as f32;
    let scaled = Tensor::from_f32(
        latent_shape.clone(),
        latents.iter().map(|x| x / factor).collect(),
    )?;
    let decoded = first_output(
        run_host(
            models.vae_decoder.as_mut(),
            &[("latent", &scaled)],
            "after the last step",
        )?,
        "vae_decoder",
    )?;
    if decoded.shape() != [1, 3, height, width] {
        return Err(Error::graph(
            "vae_decoder",
            format!(
                "image has shape {:?}, expected [1, 3, {height}, {width}]",
                decoded.shape()
            ),
        ));
    }
    timings.vae_decode = started.elapsed();

    let started = Instant::now();
    let unit: Vec<f32> = decoded
        .as_f32()
        .expect("f32")
        .iter()
        .map(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0))
        .collect();
    let image = to_rgb8(&unit, width, height)?;
    timings.to_rgb = started.elapsed();
    Ok(Generated {
        image,
        latents: Tensor::from_f32(latent_shape, latents)?,
        image_f32: Tensor::from_f32(vec![1, 3, height, width], unit)?,
        condition,
        timings,
    })
}

/// (B, T, D1) and (B, T, D2) -> (B, T, D1 + D2).
fn side_by_side(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (&[batch, tokens, d1], &[batch_b, tokens_b, d2]) = (a.shape(), b.shape()) else {
        return Err(Error::graph(
            "text_encoder",
            format!(
                "hidden states {:?} and {:?} are not (batch, tokens, dim)",
                a.shape(),
                b.shape()
            ),
        ));
    };
    if (batch, tokens) != (batch_b, tokens_b) {
        return Err(Error::graph(
            "text_encoder_2",
            format!(
                "hidden states {:?} do not match text_encoder's {:?}",
                b.shape(),
                a.shape()
            ),
        ));
    }
    let (va, vb) = (a.as_f32().expect("f32"), b.as_f32().expect("f32"));
    let mut out = Vec::with_capacity(batch * tokens * (d1 + d2));
    for row in 0..batch * tokens {
        out.extend_from_slice(&va[row * d1..(row + 1) * d1]);
        out.extend_from_slice(&vb[row * d2..(row + 1) * d2]);
    }
    Tensor::from_f32(vec![batch, tokens, d1 + d2], out)
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

    // Expected: torch.cat([a, b], dim=-1), as diffusers joins the two encoders' hidden states:
    // [1, 2, 10, 3, 4, 20] (torch 2.11).
    #[test]
    fn hidden_states_are_joined_on_the_feature_axis() {
        let a = Tensor::from_f32(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Tensor::from_f32(vec![1, 2, 1], vec![10.0, 20.0]).unwrap();
        let joined = side_by_side(&a, &b).unwrap();
        assert_eq!(joined.shape(), [1, 2, 3]);
        assert_eq!(joined.as_f32().unwrap(), [1.0, 2.0, 10.0, 3.0, 4.0, 20.0]);
    }
}
