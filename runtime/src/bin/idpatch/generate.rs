//! `idpatch generate`: a group photo from a layout, face photos and a prompt.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use idpatch::image_io;
use idpatch::layout::Layout;
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::pipeline::{self, Models, Params, Tokenizers};
use idpatch::scheduler::SchedulerKind;
use idpatch::{npy, Error};

use crate::backend_args::BackendArgs;

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
}

/// An output path must be in an existing directory (checked before any work is done).
pub fn check_output(flag: &str, path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(Error::invalid_input(
            flag,
            format!("{} has no file name", path.display()),
        ));
    }
    if !dir.is_dir() {
        return Err(Error::invalid_input(
            flag,
            format!(
                "cannot write {}: directory {} does not exist",
                path.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
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
    check_output("--out", &args.out)?;
    if let Some(path) = &args.save_condition {
        check_output("--save-condition", path)?;
    }
    if let Some(path) = &args.save_latents {
        check_output("--save-latents", path)?;
    }
    let layout = Layout::load(&args.layout, true)?;
    let set = ModelSet::open(&args.models, Checksums::Skip)?;
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
        eprintln!("warning: {warning}");
    }
    let scheduler_name = job.scheduler.kind().name();
    let set_name = set.name().to_string();
    let digest = set.graphs_digest()?;

    let backend = args.backend.make()?;
    let load_started = Instant::now();
    let mut models = Models::load(backend.as_ref(), set)?;
    let load_graphs = load_started.elapsed();

    let show_progress = std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        if show_progress {
            eprint!("\rdenoising: step {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let mut generated = pipeline::generate(&mut models, &job, &mut progress)?;
    generated.timings.load_graphs = load_graphs;

    let chunks = png_text(&args, &job.params, scheduler_name, &set_name, &digest);
    let text: Vec<(&str, &str)> = chunks.iter().map(|(k, v)| (*k, v.as_str())).collect();
    image_io::save_png(&args.out, &generated.image, &text)?;
    if let Some(path) = &args.save_condition {
        idpatch::fsutil::write_atomic(
            path,
            &idpatch::condition::preview_png(&generated.condition)?,
        )?;
    }
    if let Some(path) = &args.save_latents {
        npy::write(path, &generated.latents)?;
    }
    eprintln!("{}", generated.timings.summary(started.elapsed()));
    if let Some(traffic) = &generated.traffic {
        eprintln!("{}", traffic.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// The PNG text chunks: every generation parameter, the model set and the software.
fn png_text(
    args: &Args,
    p: &Params,
    scheduler: &str,
    set_name: &str,
    digest: &str,
) -> Vec<(&'static str, String)> {
    let mut text = vec![
        ("prompt", p.prompt.clone()),
        ("negative_prompt", p.negative_prompt.clone()),
        ("seed", p.seed.to_string()),
        ("steps", p.steps.to_string()),
        ("guidance", p.guidance.to_string()),
        ("controlnet_scale", p.controlnet_scale.to_string()),
        ("id_injection_ratio", p.id_injection_ratio.to_string()),
        (
            "control_guidance_start",
            p.control_guidance_start.to_string(),
        ),
        ("control_guidance_end", p.control_guidance_end.to_string()),
        ("scheduler", scheduler.to_string()),
        ("model_set", set_name.to_string()),
        ("model_set_digest", digest.to_string()),
        ("backend", args.backend.label()),
        ("software", format!("idpatch {}", env!("CARGO_PKG_VERSION"))),
    ];
    if let Some(path) = &args.init_noise {
        text.push(("init_noise", path.display().to_string()));
    }
    if p.bf16_positions {
        text.push(("bf16_positions", "true".to_string()));
    }
    text
}
