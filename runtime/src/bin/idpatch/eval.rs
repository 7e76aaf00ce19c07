//! `idpatch eval`: the ID-Patch paper's identity metrics (Face Sim, ID-Pos Acc) for generated
//! images, per person and averaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use idpatch::backend::load_checked;
use idpatch::detect::{people, Detector, DetectorOptions};
use idpatch::eval::{self, ImageScore, Summary};
use idpatch::layout::Layout;
use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::{image_io, pipeline, Error, Tensor};
use serde_json::json;

use crate::backend_args::BackendArgs;
use crate::output::outln;

#[derive(clap::Args)]
pub struct Args {
    /// The layout the images were generated from, or a directory of layouts: image NAME.png
    /// then pairs with NAME.json there.
    #[arg(long)]
    layout: PathBuf,
    /// A generated image, or a directory of them (every .png, .jpg and .jpeg in it).
    #[arg(long)]
    image: PathBuf,
    /// Graph set directory (holding manifest.json): its ArcFace and face detector are used.
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    /// Print one JSON object per image, then one with the averages.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
    /// Do not verify the set's files against the manifest's sha256 (verified files are cached,
    /// so only the first run after a change reads a full set).
    #[arg(long)]
    skip_checksums: bool,
}

/// A layout with its reference embeddings (F, 1, D).
struct References {
    layout: Layout,
    embeddings: Tensor,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.backend.check()?;
    let pairs = pairs(&args.image, &args.layout)?;
    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    let backend = args.backend.make()?;
    let mut detector = Detector::load(backend.as_ref(), &set, DetectorOptions::default())?;
    args.backend.check_resolved(backend.as_ref())?;
    let mut arcface = load_checked(backend.as_ref(), &set, Role::Arcface)?;

    let mut references: BTreeMap<PathBuf, References> = BTreeMap::new();
    let mut scores = Vec::with_capacity(pairs.len());
    for (image_path, layout_path) in &pairs {
        if !references.contains_key(layout_path) {
            let mut layout = Layout::load(layout_path, true)?;
            let images = pipeline::load_face_images(&layout)?;
            people::locate_faces(&mut layout, &images, &mut detector)?;
            let embeddings = eval::reference_embeddings(arcface.as_mut(), &layout, &images)?;
            references.insert(layout_path.clone(), References { layout, embeddings });
        }
        let refs = &references[layout_path];
        let image = image_io::load_rgb8(image_path)?;
        let name = image_path.display().to_string();
        let score = eval::evaluate(
            &mut detector,
            arcface.as_mut(),
            &refs.layout,
            &refs.embeddings,
            &image,
            &name,
        )?;
        scores.push(score);
    }
    // Printed once every image is scored: a bad image later in a directory is an error
    // before anything is printed, never a report cut short.
    for ((image_path, layout_path), score) in pairs.iter().zip(&scores) {
        let layout = &references[layout_path].layout;
        if args.json {
            outln!("{}", image_json(image_path, layout_path, layout, score))?;
        } else {
            print_image(image_path, layout_path, layout, score)?;
        }
    }
    let summary = Summary::of(&scores);
    if args.json {
        outln!("{}", summary_json(&summary))?;
    } else {
        print_summary(&summary)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// (image, layout) pairs to score.
fn pairs(image: &Path, layout: &Path) -> Result<Vec<(PathBuf, PathBuf)>, Error> {
    let images = if image.is_dir() {
        let listed = image_files(image)?;
        if listed.is_empty() {
            return Err(Error::invalid_input(
                "--image",
                format!("{} holds no .png, .jpg or .jpeg file", image.display()),
            ));
        }
        listed
    } else if let Some(problem) = idpatch::fsutil::regular_file_problem(image) {
        return Err(Error::invalid_input(
            "--image",
            format!("{} {problem}", image.display()),
        ));
    } else {
        vec![image.to_path_buf()]
    };
    if layout.is_file() {
        return Ok(images
            .into_iter()
            .map(|i| (i, layout.to_path_buf()))
            .collect());
    }
    if !layout.is_dir() {
        return Err(Error::invalid_input(
            "--layout",
            format!("{} does not exist", layout.display()),
        ));
    }
    images
        .into_iter()
        .map(|i| {
            let stem = i
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let l = layout.join(format!("{stem}.json"));
            if l.is_file() {
                Ok((i, l))
            } else {
                Err(Error::invalid_input(
                    "--layout",
                    format!("no layout {} for image {}", l.display(), i.display()),
                ))
            }
        })
        .collect()
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            continue;
        }
        // An entry named like an image that is not a file (a folder, a FIFO) is a mistake to
        // report, not to skip.
        if let Some(problem) = idpatch::fsutil::regular_file_problem(&path) {
            return Err(Error::invalid_input(
                "--image",
                format!("{} {problem}", path.display()),
            ));
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

fn face_name(layout: &Layout, i: usize) -> String {
    layout.people[i]
        .face
        .as_ref()
        .and_then(|p| p.file_name())
        .map_or_else(|| "-".into(), |n| n.to_string_lossy().into_owned())
}

fn image_json(image: &Path, layout_path: &Path, layout: &Layout, score: &ImageScore) -> String {
    let people: Vec<serde_json::Value> = score
        .people
        .iter()
        .map(|p| {
            json!({
                "person": p.index,
                "face": face_name(layout, p.index),
                "position": p.centre,
                "found": p.face.is_some(),
                "box": p.face.map(|f| f.bbox),
                "similarity": p.similarity(),
                "correct": p.correct(),
                "best_match": p.best_match(),
                "similarities": p.similarities,
            })
        })
        .collect();
    let s = Summary::of(std::slice::from_ref(score));
    json!({
        "image": image.display().to_string(),
        "layout": layout_path.display().to_string(),
        "detected": score.detected,
        "people": people,
        "face_sim": s.face_sim,
        "id_pos_acc": s.id_pos_acc,
        "missing": s.missing(),
    })
    .to_string()
}

fn summary_json(s: &Summary) -> String {
    json!({
        "images": s.images,
        "people": s.people,
        "matched": s.matched,
        "missing": s.missing(),
        "face_sim": s.face_sim,
        "id_pos_acc": s.id_pos_acc,
        "leakage": s.leakage,
    })
    .to_string()
}

fn print_image(
    image: &Path,
    layout_path: &Path,
    layout: &Layout,
    score: &ImageScore,
) -> anyhow::Result<()> {
    outln!(
        "{} (layout {}): {} people, {} face{} detected",
        image.display(),
        layout_path.display(),
        score.people.len(),
        score.detected,
        if score.detected == 1 { "" } else { "s" }
    )?;
    outln!("person  reference             similarity  best match  max other")?;
    for p in &score.people {
        let reference = face_name(layout, p.index);
        match (p.similarity(), p.best_match()) {
            (Some(own), Some(best)) => {
                let best = if best == p.index {
                    format!("{best} (own)")
                } else {
                    best.to_string()
                };
                let other = p
                    .max_leakage()
                    .map_or_else(|| "-".into(), |v| format!("{v:.4}"));
                outln!(
                    "{:<7} {reference:<21} {own:<11.4} {best:<11} {other}",
                    p.index
                )?;
            }
            _ => outln!("{:<7} {reference:<21} missing", p.index)?,
        }
    }
    let s = Summary::of(std::slice::from_ref(score));
    outln!("{}\n", summary_line(&s))
}

fn summary_line(s: &Summary) -> String {
    let sim = s.face_sim.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
    let correct = (s.id_pos_acc * s.people as f64).round() as usize;
    format!(
        "Face Sim {sim}  ID-Pos Acc {:.1}% ({correct}/{})  missing {}",
        100.0 * s.id_pos_acc,
        s.people,
        s.missing()
    )
}

fn print_summary(s: &Summary) -> anyhow::Result<()> {
    let leakage = s.leakage.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
    outln!(
        "average over {} image{}, {} people: {}  leakage {leakage}",
        s.images,
        if s.images == 1 { "" } else { "s" },
        s.people,
        summary_line(s)
    )?;
    outln!("(the ID-Patch paper, 2 to 5 people: Face Sim 0.72, ID-Pos Acc 94.3%)")
}
