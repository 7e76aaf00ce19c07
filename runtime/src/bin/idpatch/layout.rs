//! `idpatch layout --reference PHOTO --faces A.jpg B.jpg ... --out layout.json`: a pose-free
//! layout with the people where the faces are in a reference composition photo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use idpatch::detect::{Detection, Detector, DetectorOptions};
use idpatch::layout::{Layout, MAX_PEOPLE, MAX_SIDE};
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::{fsutil, image_io, Error};

use crate::backend_args::BackendArgs;
use crate::output::note;

/// Output pixels the default size aims at: SDXL's native 1024 x 1024.
const DEFAULT_AREA: f64 = 1024.0 * 1024.0;
/// Sides the default size is rounded to (what `generate` needs).
const SIDE_MULTIPLE: u32 = 32;

#[derive(clap::Args)]
pub struct Args {
    /// Composition photo: the people's faces are detected in it.
    #[arg(long)]
    reference: PathBuf,
    /// One face photo per person, bound to the reference's faces from left to right.
    #[arg(long, num_args = 1.., required = true)]
    faces: Vec<PathBuf>,
    /// Layout file to write (face paths in it are relative to its folder).
    #[arg(long)]
    out: PathBuf,
    /// Output width in pixels (multiple of 8; `generate` needs 32). Default: the reference's
    /// aspect ratio at about 1024x1024 pixels, sides multiples of 32.
    #[arg(long)]
    width: Option<u32>,
    /// Output height in pixels (as --width).
    #[arg(long)]
    height: Option<u32>,
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
    args.backend.check()?;
    if args.faces.len() > MAX_PEOPLE {
        return Err(Error::invalid_input(
            "--faces",
            format!(
                "{} faces, at most {MAX_PEOPLE} people are supported",
                args.faces.len()
            ),
        )
        .into());
    }
    for face in &args.faces {
        if let Some(problem) = idpatch::fsutil::regular_file_problem(face) {
            return Err(
                Error::invalid_input("--faces", format!("{} {problem}", face.display())).into(),
            );
        }
    }
    for (flag, side) in [("--width", args.width), ("--height", args.height)] {
        if let Some(n) = side {
            if n == 0 || n % 8 != 0 || n > MAX_SIDE {
                return Err(Error::invalid_input(
                    flag,
                    format!("{n} is not a positive multiple of 8 up to {MAX_SIDE}"),
                )
                .into());
            }
        }
    }
    // The layout may not overwrite the photos it is made from.
    let mut inputs = vec![("--reference", args.reference.as_path())];
    inputs.extend(args.faces.iter().map(|p| ("--faces", p.as_path())));
    fsutil::check_outputs(&[("--out", args.out.as_path())], &inputs)?;
    let photo = image_io::load_rgb8(&args.reference)?;
    let (pw, ph) = (photo.width() as f64, photo.height() as f64);
    let (width, height) = output_size(pw, ph, args.width, args.height);

    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    let backend = args.backend.make()?;
    let mut detector = Detector::load(backend.as_ref(), &set, DetectorOptions::default())?;
    args.backend.check_resolved(backend.as_ref())?;
    let detected = detector.detect(&photo)?;
    let found = detected.len();
    let people = people_left_to_right(detected, args.faces.len(), &args.reference)?;

    let base =
        std::path::absolute(fsutil::folder_of(&args.out)).map_err(|e| Error::io(&args.out, e))?;
    let (sx, sy) = (f64::from(width) / pw, f64::from(height) / ph);
    let mut entries = Vec::new();
    for (face_path, face) in args.faces.iter().zip(&people) {
        let absolute = std::path::absolute(face_path).map_err(|e| Error::io(face_path, e))?;
        let relative = pathdiff::diff_paths(&absolute, &base).unwrap_or(absolute);
        let [nx, ny] = face.landmarks[2];
        entries.push(serde_json::json!({
            "face": relative.to_string_lossy(),
            "position": [round2(f64::from(nx) * sx), round2(f64::from(ny) * sy)],
        }));
    }
    let layout = serde_json::json!({"width": width, "height": height, "people": entries});
    let text = serde_json::to_string_pretty(&layout).expect("JSON values serialise") + "\n";
    // What is written must load as a layout, face files included.
    Layout::parse(&text, fsutil::folder_of(&args.out), true)?;
    fsutil::write_atomic(&args.out, text.as_bytes())?;
    note!(
        "{}: {} {} at {width}x{height}, from {found} face{} in {}",
        args.out.display(),
        people.len(),
        if people.len() == 1 {
            "person"
        } else {
            "people"
        },
        if found == 1 { "" } else { "s" },
        args.reference.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The `count` largest faces, ordered left to right by their nose. Fewer faces than people is an
/// error naming the photo.
fn people_left_to_right(
    mut detected: Vec<Detection>,
    count: usize,
    photo: &Path,
) -> Result<Vec<Detection>, Error> {
    if detected.len() < count {
        return Err(Error::invalid_input(
            format!("--reference {}", photo.display()),
            format!(
                "{} face{} found, {count} --faces given: the reference needs a face per person",
                detected.len(),
                if detected.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    if detected.len() > count {
        note!(
            "warning: {} has {} faces; using the {count} largest",
            photo.display(),
            detected.len()
        );
    }
    // Detections come largest first.
    detected.truncate(count);
    detected.sort_by(|a, b| a.landmarks[2][0].total_cmp(&b.landmarks[2][0]));
    Ok(detected)
}

/// The layout size: as given, else from the photo's aspect ratio (about [`DEFAULT_AREA`] pixels
/// when neither side is given), derived sides rounded to multiples of [`SIDE_MULTIPLE`].
fn output_size(pw: f64, ph: f64, width: Option<u32>, height: Option<u32>) -> (u32, u32) {
    let round = |v: f64| {
        let n = (v / f64::from(SIDE_MULTIPLE)).round().max(1.0) * f64::from(SIDE_MULTIPLE);
        (n as u32).min(MAX_SIDE - MAX_SIDE % SIDE_MULTIPLE)
    };
    match (width, height) {
        (Some(w), Some(h)) => (w, h),
        (Some(w), None) => (w, round(f64::from(w) * ph / pw)),
        (None, Some(h)) => (round(f64::from(h) * pw / ph), h),
        (None, None) => {
            let scale = (DEFAULT_AREA / (pw * ph)).sqrt();
            (round(pw * scale), round(ph * scale))
        }
    }
}

/// Two decimals are plenty for a patch centre.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sizes_keep_the_aspect_ratio_in_multiples_of_32() {
        assert_eq!(output_size(512.0, 512.0, None, None), (1024, 1024));
        // 4:3 at one megapixel: 1182 x 887 -> 1184 x 896.
        assert_eq!(output_size(4000.0, 3000.0, None, None), (1184, 896));
        assert_eq!(output_size(400.0, 200.0, Some(640), None), (640, 320));
        // 400 / 32 = 12.5 rounds up.
        assert_eq!(output_size(400.0, 200.0, None, Some(200)), (416, 200));
        assert_eq!(output_size(400.0, 200.0, Some(96), Some(64)), (96, 64));
    }
}
