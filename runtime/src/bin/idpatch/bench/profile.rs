//! `bench --profile DIR`: ONNX Runtime's profiler on the timed graphs, and the operator types
//! that took the most kernel time (see `idpatch::profile`).

use std::path::PathBuf;

use idpatch::profile::Profile;
use idpatch::Error;

use super::Args;
use crate::backend_args::{BackendArgs, BackendKind};
use crate::output::outln;

/// Operator types printed per graph.
const TOP: usize = 10;

/// Most runs profiled per graph, warm-up included: each adds three events per node to the
/// trace, which is read back whole. ONNX Runtime stops at a million events (about 300 runs of
/// the tiny UNet, fewer of larger graphs); a trace cut short is an error when it is read.
const MAX_PROFILED_RUNS: usize = 1_000;

/// Checks that `--profile` goes with a mode that times single graphs, and bounds the runs it
/// records.
pub(super) fn check_mode(args: &Args) -> Result<(), Error> {
    if args.profile.is_none() {
        return Ok(());
    }
    let mode = if args.pipeline {
        Some("--pipeline")
    } else if args.fidelity {
        Some("--fidelity")
    } else {
        None
    };
    if let Some(mode) = mode {
        return Err(Error::invalid_input(
            "--profile",
            format!("profiles single graphs; cannot be combined with {mode}"),
        ));
    }
    let runs = args
        .warmup
        .unwrap_or(3)
        .saturating_add(args.runs.unwrap_or(20));
    if runs > MAX_PROFILED_RUNS {
        return Err(Error::invalid_input(
            "--runs",
            format!(
                "with --profile, --warmup and --runs together may be at most \
                 {MAX_PROFILED_RUNS} (got {runs}): every run adds to the trace"
            ),
        ));
    }
    Ok(())
}

/// With `--profile`, a configuration must run on ONNX Runtime (tract has no profiler); checked
/// for every configuration before any folder is made.
pub(super) fn check_backend(args: &Args, config: &BackendArgs, label: &str) -> Result<(), Error> {
    if args.profile.is_some() && config.kind() == BackendKind::Tract {
        return Err(Error::invalid_input(
            "--profile",
            format!("is ONNX Runtime's profiler; configuration {label} runs on tract"),
        ));
    }
    Ok(())
}

/// The configuration's arguments with the profiler's folder set: DIR, or DIR/a and DIR/b for
/// the two `--compare` configurations (`slot`). The folder is made here; tract has no profiler.
pub(super) fn with_profiler(
    args: &Args,
    config: BackendArgs,
    label: &str,
    slot: Option<&str>,
) -> Result<BackendArgs, Error> {
    let Some(dir) = &args.profile else {
        return Ok(config);
    };
    check_backend(args, &config, label)?;
    let dir: PathBuf = match slot {
        Some(slot) => dir.join(slot),
        None => dir.clone(),
    };
    let unusable = |e: std::io::Error| {
        Error::invalid_input(
            "--profile",
            format!("{}: cannot write traces there: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(&dir).map_err(unusable)?;
    // ONNX Runtime writes the trace only when profiling ends: find out now that it can.
    tempfile::tempfile_in(&dir).map_err(unusable)?;
    Ok(BackendArgs {
        profile_dir: Some(dir),
        ..config
    })
}

/// The profile below a graph's timing row: runs, kernel time, the trace file and the most
/// expensive operator types.
pub(super) fn print(profile: &Profile) -> anyhow::Result<()> {
    outln!(
        "  profile: {} timed run{}, kernel time {:.3} ms per run; trace {}",
        profile.runs,
        if profile.runs == 1 { "" } else { "s" },
        profile.kernel_ms_per_run,
        profile.file.display()
    )?;
    for op in profile.ops.iter().take(TOP) {
        outln!(
            "    {:<28} {:>5} nodes {:>11.3} ms {:>6.1}%",
            format!("{} ({})", op.op, op.provider),
            op.nodes,
            op.ms_per_run,
            op.share * 100.0
        )?;
    }
    if profile.ops.len() > TOP {
        let rest: f64 = profile.ops[TOP..].iter().map(|o| o.share).sum();
        outln!(
            "    {:<28} {:>5} types {:>11} {:>6.1}%",
            "other",
            profile.ops.len() - TOP,
            "",
            rest * 100.0
        )?;
    }
    Ok(())
}
