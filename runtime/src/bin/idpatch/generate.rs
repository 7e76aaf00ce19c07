//! `idpatch generate`: a group photo from a layout, face photos and a prompt.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use idpatch::detect::people;
use idpatch::image_io;
use idpatch::infotext::{self, RunRecord};
use idpatch::layout::{Layout, MAX_SIDE};
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::pipeline::{self, Generated, Job, Models, Params, StepProgress, Tokenizers};
use idpatch::scheduler::SchedulerKind;
use idpatch::{fsutil, npy, Error};

use crate::backend_args::BackendArgs;
use crate::output::{note, note_inline};
use crate::sampling_args::SamplingArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Layout file (JSON: width, height, people with a face photo and keypoints or position).
    #[arg(long)]
    layout: PathBuf,
    /// What the picture shows.
    #[arg(long)]
    prompt: String,
    /// What the picture should not show (the unconditional half of guidance).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Graph set directory (holding manifest.json).
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Share of the steps (the last ones) that see the ID tokens, in [0, 1].
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    id_injection_ratio: f64,
    /// Fraction of the schedule before which the ControlNet is skipped (diffusers'
    /// control_guidance_start): step i of N runs it only when i/N >= this, in [0, 1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    control_guidance_start: f64,
    /// Fraction of the schedule after which the ControlNet is skipped (diffusers'
    /// control_guidance_end): step i of N runs it only when (i+1)/N <= this, in (start, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    control_guidance_end: f64,
    /// euler, euler-a, ddim or dpmpp-2m (default: the set's scheduler config, Euler for SDXL).
    #[arg(long)]
    scheduler: Option<String>,
    /// Seed of the initial noise (and of Euler ancestral's per-step noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    backend: BackendArgs,
    /// Initial noise as float32 (1, 4, H/8, W/8) standard normal values instead of the seeded
    /// noise (scaled by the scheduler's initial sigma, like diffusers' `latents=`).
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Also write the ControlNet condition image (values clamped to [0, 1]) as PNG.
    #[arg(long)]
    save_condition: Option<PathBuf>,
    /// Debugging aid: also write the final latents (before VAE scaling) as float32 .npy.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Round patch centres through bfloat16 as the reference implementation does.
    #[arg(long)]
    bf16_positions: bool,
    /// Output PNG (layout's width x height), with the generation parameters as text chunks.
    #[arg(long)]
    out: PathBuf,
    /// Do not verify the set's files against the manifest's sha256 (the PNG then records
    /// `model_set_checksums: skipped`).
    #[arg(long)]
    skip_checksums: bool,
}

/// The output flags, checked together and against the inputs before any work (see
/// [`fsutil::check_outputs`]).
fn check_paths(args: &Args, layout: &Layout) -> Result<(), Error> {
    let mut outputs = vec![("--out", args.out.as_path())];
    outputs.extend(
        args.save_condition
            .as_deref()
            .map(|p| ("--save-condition", p)),
    );
    outputs.extend(args.save_latents.as_deref().map(|p| ("--save-latents", p)));
    let mut inputs = vec![("--layout", args.layout.as_path())];
    inputs.extend(args.init_noise.as_deref().map(|p| ("--init-noise", p)));
    let faces = layout.face_inputs();
    inputs.extend(faces.iter().map(|(name, p)| (name.as_str(), *p)));
    fsutil::check_outputs(&outputs, &inputs)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    generate(&args).map_err(|e| args.sampling.as_typed(e))
}

fn generate(args: &Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();

    // Everything a user can get wrong is checked before a graph is loaded.
    let params = params(args)?;
    params.check()?;
    args.backend.check()?;
    let mut layout = Layout::load(&args.layout, true)?;
    check_paths(args, &layout)?;
    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    let init_noise = check_layout_and_read_noise(args, &set, &layout)?;
    let tokenizers = Tokenizers::load(&set)?;
    let decode_started = Instant::now();
    let face_images = pipeline::load_face_images(&layout)?;
    let decode = decode_started.elapsed();

    let backend = args.backend.make()?;
    // Photos without face keypoints get them from the face detector (its three small graphs).
    let detection = people::resolve_faces(&mut layout, &face_images, backend.as_ref(), &set)?;
    if !detection.is_zero() {
        note!(
            "face detection (MTCNN): {:.3} s, graphs loaded and run (counted under \"other\")",
            detection.as_secs_f64()
        );
    }
    let mut job = pipeline::prepare_with_faces(
        &set,
        &tokenizers,
        layout,
        params,
        init_noise.map(|t| (t, "--init-noise")),
        Some(&face_images),
    )?;
    job.timings.faces += decode;
    for warning in job.warnings() {
        note!("warning: {warning}");
    }
    let set_name = set.name().to_string();
    let digest = set.model_set_digest()?;
    let checksums = match set.checksums {
        Checksums::Verify => "verified",
        Checksums::Skip => "skipped",
    };

    let load_started = Instant::now();
    let mut models = Models::load(backend.as_ref(), set)?;
    let load_graphs = load_started.elapsed();
    args.backend.check_resolved(backend.as_ref())?;

    let mut generated = pipeline::generate(&mut models, &job, &mut progress())?;
    generated.timings.load_graphs = load_graphs;

    // What ran: `--ep auto` is recorded as the provider it settled on.
    let run = RunRecord {
        set_name,
        digest,
        checksums: checksums.to_string(),
        backend: backend.name(),
    };
    write_outputs(args, &job, &generated, &run)?;
    note!("{}", generated.timings.summary(started.elapsed()));
    if let Some(traffic) = &generated.traffic {
        note!("{}", traffic.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything about the layout that needs no graph, checked before the face detector runs: its
/// sides against the set; then `--init-noise`, read when given. A noise header larger than the
/// largest layout's noise is refused unread; a smaller wrong shape gets the shape check's own
/// message in `prepare`.
fn check_layout_and_read_noise(
    args: &Args,
    set: &ModelSet,
    layout: &Layout,
) -> anyhow::Result<Option<idpatch::Tensor>> {
    let config = &set.manifest.config;
    pipeline::check_image_sides(
        config,
        [
            ("layout width", layout.width as usize),
            ("layout height", layout.height as usize),
        ],
    )?;
    let largest_latent = (MAX_SIDE as usize / config.vae_scale_factor) as u64;
    let noise_bytes = (config.latent_channels * 4) as u64 * largest_latent * largest_latent;
    Ok(args
        .init_noise
        .as_deref()
        .map(|path| npy::read_at_most(path, noise_bytes))
        .transpose()?)
}

/// The generation parameters the flags give (range checks are [`Params::check`]'s).
fn params(args: &Args) -> anyhow::Result<Params> {
    let scheduler = args
        .scheduler
        .as_deref()
        .map(str::parse::<SchedulerKind>)
        .transpose()?;
    let defaults = Params::default();
    Ok(Params {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.sampling.steps().unwrap_or(defaults.steps),
        guidance: args.sampling.guidance().unwrap_or(defaults.guidance),
        controlnet_scale: args
            .sampling
            .controlnet_scale()
            .unwrap_or(defaults.controlnet_scale),
        id_injection_ratio: args.id_injection_ratio,
        scheduler,
        seed: args.seed,
        bf16_positions: args.bf16_positions,
        control_guidance_start: args.control_guidance_start,
        control_guidance_end: args.control_guidance_end,
    })
}

/// The per-step callback: "denoising: step i/N" on one line of stderr when it is a terminal;
/// it never stops the loop.
fn progress() -> impl FnMut(&StepProgress) -> ControlFlow<()> {
    let show_progress = std::io::stderr().is_terminal();
    move |p: &StepProgress| {
        if show_progress {
            note_inline!("\rdenoising: step {}/{}", p.step, p.steps);
            if p.step == p.steps {
                note!();
            }
        }
        ControlFlow::Continue(())
    }
}

/// Encodes every output first, then writes them all together: none or all appear.
fn write_outputs(
    args: &Args,
    job: &Job,
    generated: &Generated,
    run: &RunRecord,
) -> anyhow::Result<()> {
    let init_noise = args.init_noise.as_ref().map(|p| p.display().to_string());
    let chunks = infotext::png_text(job, run, init_noise.as_deref());
    let text: Vec<(&str, &str)> = chunks.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let image_png = image_io::encode_png(&generated.image, &text)?;
    let mut files: Vec<(&Path, Vec<u8>)> = vec![(&args.out, image_png)];
    if let Some(path) = &args.save_condition {
        let preview = idpatch::condition::preview_png(&generated.condition)?;
        files.push((path, preview));
    }
    if let Some(path) = &args.save_latents {
        files.push((path, npy::to_bytes(&generated.latents)));
    }
    let files: Vec<(&Path, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    fsutil::write_all_atomic(&files)?;
    Ok(())
}
