//! A layout person's face from an ordinary photo: when the layout gives no `face_keypoints` and
//! the photo is not already an aligned 112x112 ArcFace crop, the face is detected and its five
//! landmarks become the person's `face_keypoints`. One face is used: the one `face_index` names
//! (in [`super::Detector::detect`]'s order, largest first, as `idpatch faces` lists them), else
//! the largest. A `face_index` asks for detection even on a 112x112 photo.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Detection, Detector, DetectorOptions};
use crate::backend::Backend;
use crate::face::ARCFACE_SIZE;
use crate::image_io::Rgb8;
use crate::layout::{Layout, Person};
use crate::manifest::ModelSet;
use crate::{Error, Result};

/// Whether `person`'s face photo `img` must go through detection.
pub fn needs_detection(person: &Person, img: &Rgb8) -> bool {
    if person.face_keypoints.is_some() {
        return false;
    }
    person.face_index.is_some() || img.width() != ARCFACE_SIZE || img.height() != ARCFACE_SIZE
}

/// The face `face_index` names among `faces` (largest first), else the largest. `input` names
/// the person in errors (e.g. "layout people[1].face") and `photo` the file.
pub fn pick<'a>(
    faces: &'a [Detection],
    face_index: Option<usize>,
    input: &str,
    photo: &str,
) -> Result<&'a Detection> {
    if faces.is_empty() {
        return Err(Error::invalid_input(
            input,
            format!(
                "no face found in {photo}: use a photo where the face is at least 20 pixels \
                 wide and not cut off, or give its five `face_keypoints`"
            ),
        ));
    }
    let index = face_index.unwrap_or(0);
    faces.get(index).ok_or_else(|| {
        Error::invalid_input(
            input,
            format!(
                "face_index {index}, but {photo} has {} detected face{} (indices 0..{}, largest first)",
                faces.len(),
                if faces.len() == 1 { "" } else { "s" },
                faces.len() - 1
            ),
        )
    })
}

/// Sets `face_keypoints` of every person whose photo needs detection, from `detector`'s faces in
/// that photo. `images` are the people's face photos in people order; people sharing a photo
/// (several faces of one group photo, by `face_index`) share one detection. Returns how many
/// people were detected.
pub fn locate_faces(
    layout: &mut Layout,
    images: &[Rgb8],
    detector: &mut Detector,
) -> Result<usize> {
    check_count(layout, images)?;
    let mut seen: Vec<(usize, Vec<Detection>)> = Vec::new();
    let mut detected = 0;
    for (i, (person, img)) in layout.people.iter_mut().zip(images).enumerate() {
        if !needs_detection(person, img) {
            continue;
        }
        let at = match seen.iter().position(|(j, _)| images[*j] == *img) {
            Some(at) => at,
            None => {
                seen.push((i, detector.detect(img)?));
                seen.len() - 1
            }
        };
        let photo = photo_name(person.face.as_deref(), i);
        let input = format!("layout people[{i}].face");
        let face = pick(&seen[at].1, person.face_index, &input, &photo)?;
        person.face_keypoints = Some(face.landmarks);
        detected += 1;
    }
    Ok(detected)
}

/// [`locate_faces`] with the set's detector (default options) loaded on `backend` only when some
/// person needs it. Returns the time spent, loading included (zero when nobody needed it).
pub fn resolve_faces(
    layout: &mut Layout,
    images: &[Rgb8],
    backend: &dyn Backend,
    set: &ModelSet,
) -> Result<Duration> {
    check_count(layout, images)?;
    if !layout
        .people
        .iter()
        .zip(images)
        .any(|(p, img)| needs_detection(p, img))
    {
        return Ok(Duration::ZERO);
    }
    let started = Instant::now();
    let mut detector = Detector::load(backend, set, DetectorOptions::default())?;
    locate_faces(layout, images, &mut detector)?;
    Ok(started.elapsed())
}

/// One face image per layout person.
pub(crate) fn check_count(layout: &Layout, images: &[Rgb8]) -> Result<()> {
    if images.len() != layout.people.len() {
        return Err(Error::invalid_input(
            "layout people",
            format!(
                "{} people but {} face images",
                layout.people.len(),
                images.len()
            ),
        ));
    }
    Ok(())
}

fn photo_name(path: Option<&Path>, index: usize) -> String {
    path.map_or_else(
        || format!("face image {index}"),
        |p| p.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(side: f32) -> Detection {
        Detection {
            bbox: [0.0, 0.0, side, side],
            score: 0.99,
            landmarks: [[1.0, 1.0]; 5],
        }
    }

    #[test]
    fn picks_the_named_face_else_the_first() {
        let faces = [face(40.0), face(30.0)];
        assert_eq!(pick(&faces, None, "p", "a.jpg").unwrap().bbox[2], 40.0);
        assert_eq!(pick(&faces, Some(1), "p", "a.jpg").unwrap().bbox[2], 30.0);
        let err = pick(&faces, Some(2), "layout people[0].face", "a.jpg").unwrap_err();
        assert_eq!(
            err.to_string(),
            "layout people[0].face: face_index 2, but a.jpg has 2 detected faces (indices 0..1, largest first)"
        );
        let err = pick(&[], None, "layout people[0].face", "a.jpg").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .starts_with("layout people[0].face: no face found in a.jpg"));
    }
}
