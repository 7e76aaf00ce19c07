use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::outln;
use idpatch::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};

#[derive(clap::Args)]
pub struct Args {
    /// Scheduler: euler, euler-a, ddim or dpmpp-2m (default: the config's `_class_name`, else
    /// euler).
    #[arg(long, value_parser = parse_kind)]
    scheduler: Option<SchedulerKind>,

    /// Number of inference steps [default: 50].
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// diffusers' name for --steps.
    #[arg(long, value_name = "N", conflicts_with = "steps")]
    num_inference_steps: Option<usize>,

    /// A diffusers scheduler_config.json (default: the SDXL base configuration).
    #[arg(long)]
    config: Option<PathBuf>,

    /// Print one JSON object with diffusers' names: `_class_name`, `num_inference_steps`,
    /// `timesteps`, `sigmas` (null for DDIM) and `init_noise_sigma` (and `scheduler`, the
    /// --scheduler name).
    #[arg(long)]
    json: bool,
}

fn parse_kind(name: &str) -> Result<SchedulerKind, String> {
    name.parse().map_err(|e: idpatch::Error| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    schedule(&args).map_err(|e| match args.num_inference_steps {
        Some(_) => crate::sampling_args::rename_flag(e, "--steps", "--num-inference-steps"),
        None => e,
    })
}

fn schedule(args: &Args) -> anyhow::Result<ExitCode> {
    let steps = args.steps.or(args.num_inference_steps).unwrap_or(50);
    let config = match &args.config {
        Some(path) => SchedulerConfig::from_file(path, args.scheduler)?,
        None => SchedulerConfig::sdxl(args.scheduler),
    };
    let mut scheduler = Scheduler::new(config);
    scheduler.set_timesteps(steps)?;
    // Integral timesteps (all but Euler's Karras ones) print as integers.
    let timesteps: Vec<serde_json::Value> = scheduler
        .timesteps()
        .iter()
        .map(|&t| {
            if t.fract() == 0.0 {
                serde_json::Value::from(t as i64)
            } else {
                serde_json::Value::from(t as f32)
            }
        })
        .collect();
    if args.json {
        let object = serde_json::json!({
            "scheduler": scheduler.kind().name(),
            "_class_name": scheduler.kind().class_name(),
            "num_inference_steps": steps,
            "timesteps": timesteps,
            "sigmas": scheduler.sigmas(),
            "init_noise_sigma": scheduler.init_noise_sigma(),
        });
        outln!("{object}")?;
    } else {
        let join = |values: Vec<String>| values.join(" ");
        outln!(
            "scheduler: {} ({})",
            scheduler.kind(),
            scheduler.kind().class_name()
        )?;
        outln!("steps: {}", scheduler.len())?;
        outln!("init_noise_sigma: {}", scheduler.init_noise_sigma())?;
        outln!(
            "timesteps: {}",
            join(timesteps.iter().map(|t| t.to_string()).collect())
        )?;
        if let Some(sigmas) = scheduler.sigmas() {
            outln!(
                "sigmas: {}",
                join(sigmas.iter().map(|s| s.to_string()).collect())
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
