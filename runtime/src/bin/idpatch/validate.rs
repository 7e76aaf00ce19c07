use std::path::PathBuf;
use std::process::ExitCode;

use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::validate::validate_graph;

use crate::backend_args::BackendArgs;
use crate::output::{graph_cell, outln};

#[derive(clap::Args)]
pub struct Args {
    /// Graph set directory (holding manifest.json).
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
    /// Only these graphs (comma-separated roles, e.g. unet,controlnet).
    #[arg(long, value_delimiter = ',')]
    graphs: Vec<String>,
    /// Override the tolerance on max abs error relative to the output's scale
    /// (default 1e-4 for FP32 graphs, 2e-2 for FP16, 0.5 for INT8 graphs against the FP32
    /// goldens; see calibration/README.md).
    #[arg(long)]
    tolerance: Option<f64>,
    /// Do not verify the set's files against the manifest's sha256 (verified files are cached,
    /// so only the first run after a change reads a full set).
    #[arg(long)]
    skip_checksums: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.backend.check()?;
    if let Some(t) = args.tolerance.filter(|t| !(*t > 0.0 && *t <= 1.0)) {
        return Err(idpatch::Error::invalid_input(
            "--tolerance",
            format!("{t} is not in (0, 1] (a relative error)"),
        )
        .into());
    }
    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    let roles = Role::parse_list(&args.graphs, "--graphs")?;
    // Device outputs, so that a GPU run also checks the copy back to the host.
    let backend = args.backend.make()?;
    outln!(
        "{} {:>12} {:>12} {:>10} {:>9}  result",
        graph_cell("graph"),
        "max abs err",
        "max rel err",
        "tolerance",
        "ms"
    )?;
    let mut all_passed = true;
    for role in roles {
        let report = validate_graph(&set, backend.as_ref(), role, args.tolerance)?;
        args.backend.check_resolved(backend.as_ref())?;
        all_passed &= report.passed();
        outln!(
            "{} {:>12.3e} {:>12.3e} {:>10.1e} {:>9.2}  {}",
            graph_cell(role.name()),
            report.max_abs_err(),
            report.max_rel_err(),
            report.tolerance,
            report.ms,
            if report.passed() { "ok" } else { "FAIL" }
        )?;
    }
    if all_passed {
        outln!(
            "all graphs of {} within tolerance on {}",
            set.name(),
            backend.name()
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        outln!(
            "some graphs of {} are outside tolerance on {}",
            set.name(),
            backend.name()
        )?;
        Ok(ExitCode::from(1))
    }
}
