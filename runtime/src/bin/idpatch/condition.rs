use std::path::{Path, PathBuf};
use std::process::ExitCode;

use idpatch::backend::load_checked;
use idpatch::condition::{self, ConditionOptions};
use idpatch::detect::people;
use idpatch::layout::{Layout, MAX_PEOPLE};
use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::{fsutil, npy, pipeline, Error};

use crate::backend_args::BackendArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Layout file (JSON: width, height, people with keypoints or position).
    #[arg(long)]
    layout: PathBuf,
    /// ID patches as float32 (F, 3, 64, 64), one per person in layout order, instead of
    /// computing them from the faces.
    #[arg(long)]
    patches: Option<PathBuf>,
    /// Graph set directory (holding manifest.json), for computing patches from the faces
    /// [default: models/tiny]; not with --patches.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Backend that runs arcface and patch_proj when the patches come from the faces (not with
    /// --patches, where no graph runs).
    #[command(flatten)]
    backend: BackendArgs,
    /// Do not verify the set's files against the manifest's sha256; not with --patches.
    #[arg(long)]
    skip_checksums: bool,
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
    if args.patches.is_some() {
        // No graph runs: flags about the set or the backend would be silently ignored.
        let set_flags = [
            ("--models", args.models.is_some()),
            ("--backend", args.backend.backend.is_some()),
            ("--skip-checksums", args.skip_checksums),
        ];
        let given = set_flags
            .iter()
            .filter(|(_, given)| *given)
            .map(|(f, _)| *f);
        if let Some(flag) = given.chain(args.backend.ort_flags()).next() {
            return Err(Error::invalid_input(
                flag,
                "cannot be combined with --patches (no graph runs; the patches are given)",
            )
            .into());
        }
    } else {
        args.backend.check()?;
    }
    // Face photos are only needed when the patches are computed from them.
    let layout = Layout::load(&args.layout, args.patches.is_none())?;
    let mut outputs = vec![("--out", args.out.as_path())];
    outputs.extend(args.raw.as_deref().map(|p| ("--raw", p)));
    let mut inputs = vec![("--layout", args.layout.as_path())];
    inputs.extend(args.patches.as_deref().map(|p| ("--patches", p)));
    let faces = layout.face_inputs();
    inputs.extend(faces.iter().map(|(name, p)| (name.as_str(), *p)));
    fsutil::check_outputs(&outputs, &inputs)?;
    let patches = match &args.patches {
        Some(path) => {
            // At most a full layout's patches (3 x 64 x 64 float32 each): a larger header is
            // refused unread; a smaller wrong shape gets the shape check's own message.
            let most = MAX_PEOPLE * 3 * condition::PATCH * condition::PATCH * 4;
            let patches = npy::read_at_most(path, most as u64)?;
            condition::check_patches(&patches, layout.people.len(), "--patches")?;
            patches
        }
        None => {
            let models = args.models.as_deref().unwrap_or(Path::new("models/tiny"));
            let set = ModelSet::open(models, Checksums::from_skip_flag(args.skip_checksums))?;
            let images = pipeline::load_face_images(&layout)?;
            let backend = args.backend.make()?;
            let mut layout = layout.clone();
            people::resolve_faces(&mut layout, &images, backend.as_ref(), &set)?;
            let faces = pipeline::face_batch_with(&layout, Some(&images))?;
            let mut arcface = load_checked(backend.as_ref(), &set, Role::Arcface)?;
            args.backend.check_resolved(backend.as_ref())?;
            let mut patch_proj = load_checked(backend.as_ref(), &set, Role::PatchProj)?;
            let embeddings = pipeline::id_embeddings(arcface.as_mut(), &faces)?;
            pipeline::id_patches(patch_proj.as_mut(), &embeddings)?
        }
    };

    let options = ConditionOptions {
        bf16_positions: args.bf16_positions,
    };
    let tensor = condition::condition_tensor(&layout, &patches, &options)?;
    let png = condition::preview_png(&tensor)?;

    // Both outputs appear together or not at all.
    let raw = args
        .raw
        .as_ref()
        .map(|path| (path.as_path(), npy::to_bytes(&tensor)));
    let mut files: Vec<(&Path, &[u8])> = vec![(&args.out, &png)];
    files.extend(raw.iter().map(|(path, bytes)| (*path, bytes.as_slice())));
    fsutil::write_all_atomic(&files)?;
    Ok(ExitCode::SUCCESS)
}
