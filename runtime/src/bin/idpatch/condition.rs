use std::path::PathBuf;
use std::process::ExitCode;

use idpatch::condition::{self, ConditionOptions};
use idpatch::layout::Layout;
use idpatch::{fsutil, npy, Error};

#[derive(clap::Args)]
pub struct Args {
    /// Layout file (JSON: width, height, people with keypoints or position).
    #[arg(long)]
    layout: PathBuf,
    /// ID patches as float32 (F, 3, 64, 64), one per person in layout order, instead of
    /// computing them from the faces.
    #[arg(long)]
    patches: Option<PathBuf>,
    /// Graph set directory (holding manifest.json), for computing patches from faces.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Condition preview PNG (values clamped to [0, 1]).
    #[arg(long)]
    out: PathBuf,
    /// Also write the exact float32 (3, H, W) condition tensor as .npy.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Round patch centres through bfloat16 as the reference does.
    #[arg(long)]
    bf16_positions: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Faces are only read when computing patches, which needs --patches to be absent.
    let layout = Layout::load(&args.layout, false)?;
    let Some(patches_path) = &args.patches else {
        let models = args
            .models
            .as_ref()
            .map_or("models".into(), |m| m.display().to_string());
        return Err(Error::invalid_input(
            "--patches",
            format!(
                "required for now: computing patches from the faces needs the arcface and \
                 patch_proj graphs of {models}, which this command does not run yet"
            ),
        )
        .into());
    };
    let patches = npy::read(patches_path)?;
    condition::check_patches(&patches, layout.people.len(), "--patches")?;

    let options = ConditionOptions {
        bf16_positions: args.bf16_positions,
    };
    let tensor = condition::condition_tensor(&layout, &patches, &options)?;
    let png = condition::preview_png(&tensor)?;

    fsutil::write_atomic(&args.out, &png)?;
    if let Some(raw) = &args.raw {
        npy::write(raw, &tensor)?;
    }
    Ok(ExitCode::SUCCESS)
}
