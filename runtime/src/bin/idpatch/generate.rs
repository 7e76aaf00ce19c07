//! `idpatch generate`: a group photo from a layout, face photos and a prompt.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use idpatch::image_io;
use idpatch::layout::Layout;
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::pipeline::{self, Models, Params, StepProgress, Tokenizers};
use idpatch::png_text::RunRecord;
use idpatch::scheduler::SchedulerKind;
use idpatch::{fsutil, npy, Error};

use crate::backend_args::BackendArgs;
use crate::output::{note, note_inline};

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
    /// Denoising steps (1 to 1000).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (>= 0). Above 1 the graphs run on [negative, prompt];
    /// at 1 or below on the prompt alone (batch 1, half the work; no --negative-prompt then).
    #[arg(long, default_value_t = 5.5, allow_negative_numbers = true)]
    guidance: f64,
    /// ControlNet conditioning scale.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    controlnet_scale: f64,
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
    let started = Instant::now();

    // Everything a user can get wrong is checked before a graph is loaded.
    let scheduler = args
        .scheduler
        .as_deref()
        .map(str::parse::<SchedulerKind>)
        .transpose()?;
    let params = Params {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance: args.guidance,
        controlnet_scale: args.controlnet_scale,
        id_injection_ratio: args.id_injection_ratio,
        scheduler,
        seed: args.seed,
        bf16_positions: args.bf16_positions,
        control_guidance_start: args.control_guidance_start,
        control_guidance_end: args.control_guidance_end,
    };
    params.check()?;
    args.backend.check()?;
    let layout = Layout::load(&args.layout, true)?;
    check_paths(&args, &layout)?;
    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    let tokenizers = Tokenizers::load(&set)?;
    let init_noise = args.init_noise.as_deref().map(npy::read).transpose()?;
    let job = pipeline::prepare(
        &set,
        &tokenizers,
        layout,
        params,
        init_noise.map(|t| (t, "--init-noise")),
    )?;
    for warning in job.warnings() {
        note!("warning: {warning}");
    }
    let scheduler_name = job.scheduler.kind().name();
    let set_name = set.name().to_string();
    let digest = set.model_set_digest()?;
    let checksums = match set.checksums {
        Checksums::Verify => "verified",
        Checksums::Skip => "skipped",
    };

    let backend = args.backend.make()?;
    let load_started = Instant::now();
    let mut models = Models::load(backend.as_ref(), set)?;
    let load_graphs = load_started.elapsed();
    args.backend.check_resolved(backend.as_ref())?;

    let show_progress = std::io::stderr().is_terminal();
    let mut progress = |p: &StepProgress| {
        if show_progress {
            note_inline!("\rdenoising: step {}/{}", p.step, p.steps);
            if p.step == p.steps {
                note!();
            }
        }
        ControlFlow::Continue(())
    };
    let mut generated = pipeline::generate(&mut models, &job, &mut progress)?;
    generated.timings.load_graphs = load_graphs;

    // What ran: `--ep auto` is recorded as the provider it settled on.
    let run = RunRecord {
        scheduler: scheduler_name.to_string(),
        set_name,
        digest,
        checksums: checksums.to_string(),
        backend: backend.name(),
    };
    let chunks = png_text(&args, &job.params, &run);
    let text: Vec<(&str, &str)> = chunks.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Every output is encoded first, then all are written together: none or all appear.
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
    note!("{}", generated.timings.summary(started.elapsed()));
    if let Some(traffic) = &generated.traffic {
        note!("{}", traffic.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// The PNG text chunks: every generation parameter, the model set and the software.
fn png_text(args: &Args, p: &Params, run: &RunRecord) -> Vec<(&'static str, String)> {
    let init_noise = args.init_noise.as_ref().map(|p| p.display().to_string());
    idpatch::png_text::generation_text(p, run, init_noise.as_deref())
}
