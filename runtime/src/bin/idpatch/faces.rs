//! `idpatch faces`: the faces MTCNN finds in a photo, with their five landmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use idpatch::detect::{Detector, DetectorOptions};
use idpatch::image_io;
use idpatch::manifest::{Checksums, ModelSet};

use crate::backend_args::BackendArgs;
use crate::output::{note, outln};

#[derive(clap::Args)]
pub struct Args {
    /// The photo (PNG or JPEG).
    image: PathBuf,
    /// Print one JSON object per face: {"box": [x1, y1, x2, y2], "score": s, "landmarks":
    /// [[x, y] x 5]} (left eye, right eye, nose, left and right mouth corner; image pixels).
    #[arg(long)]
    json: bool,
    /// Smallest face side searched for, in pixels (at least 12).
    #[arg(long, default_value_t = 20.0)]
    min_face_size: f64,
    /// Graph set directory (holding manifest.json) with the face_detector graphs.
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
    /// Do not verify the set's files against the manifest's sha256 (verified files are cached,
    /// so only the first run after a change reads a full set).
    #[arg(long)]
    skip_checksums: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = DetectorOptions {
        min_face_size: args.min_face_size,
        ..DetectorOptions::default()
    };
    options.check()?;
    args.backend.check()?;
    let img = image_io::load_rgb8(&args.image)?;
    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    let backend = args.backend.make()?;
    let mut detector = Detector::load(backend.as_ref(), &set, options)?;
    args.backend.check_resolved(backend.as_ref())?;
    let faces = detector.detect(&img)?;
    if args.json {
        for face in &faces {
            outln!("{}", face.to_json())?;
        }
    } else {
        outln!("face  score   box x1, y1, x2, y2            landmarks: left eye, right eye, nose, mouth left, mouth right")?;
        for (i, face) in faces.iter().enumerate() {
            let [x1, y1, x2, y2] = face.bbox;
            let points: Vec<String> = face
                .landmarks
                .iter()
                .map(|[x, y]| format!("({x:.1}, {y:.1})"))
                .collect();
            outln!(
                "{i:<5} {:.4}  {x1:>6.1} {y1:>6.1} {x2:>6.1} {y2:>6.1}   {}",
                face.score,
                points.join(" ")
            )?;
        }
    }
    let t = detector.last_timings();
    note!(
        "{} face{} in {} ({}x{}): {:.3} s ({:.3} s in the graphs)",
        faces.len(),
        if faces.len() == 1 { "" } else { "s" },
        args.image.display(),
        img.width(),
        img.height(),
        (t.graphs + t.rust).as_secs_f64(),
        t.graphs.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
