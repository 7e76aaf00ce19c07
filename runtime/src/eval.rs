//! The ID-Patch paper's identity metrics for a generated group photo.
//!
//! The faces in the generated image are detected ([`crate::detect`]), aligned on their five
//! landmarks and embedded with the set's ArcFace, as the reference faces are. Each layout person
//! is matched to the detected face at its position (the patch centre: `position`, or the nose
//! keypoint): among the faces whose box contains that point, the one whose nose landmark is
//! nearest, each face going to at most one person (closest pairs first). Per person:
//!
//! - similarity: cosine similarity of the matched face's embedding to the person's own
//!   reference face (the paper's Face Sim);
//! - correct: the own reference is more similar than every other person's (the paper's ID-Pos
//!   Acc; with one person, a matched face is correct);
//! - leakage: the similarity to each other person's reference;
//! - missing: no detected face at the person's position.
//!
//! Averages over people: Face Sim over the matched people, ID-Pos Acc over all people (a missing
//! face counts as not correct). The paper reports Face Sim 0.72 and ID-Pos Acc 94.3% for ID-Patch
//! on 2 to 5 people.

use crate::backend::Graph;
use crate::detect::{Detection, Detector};
use crate::face;
use crate::image_io::Rgb8;
use crate::layout::Layout;
use crate::{pipeline, Error, Result, Tensor};

/// One layout person's result in one image.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonScore {
    /// Where the person's face should be, in image pixels.
    pub centre: [f32; 2],
    /// The detected face matched to the person; `None`: missing.
    pub face: Option<Detection>,
    /// Cosine similarity of the matched face to every person's reference face, in layout order
    /// (empty when missing).
    pub similarities: Vec<f64>,
    /// Index of this person in the layout.
    pub index: usize,
}

impl PersonScore {
    /// Similarity to the person's own reference; `None` when missing.
    pub fn similarity(&self) -> Option<f64> {
        self.similarities.get(self.index).copied()
    }

    /// Whether the own reference is strictly the most similar of the layout's references.
    pub fn correct(&self) -> bool {
        let Some(own) = self.similarity() else {
            return false;
        };
        self.similarities
            .iter()
            .enumerate()
            .all(|(j, &s)| j == self.index || s < own)
    }

    /// Layout index of the most similar reference (the first of equals); `None` when missing.
    pub fn best_match(&self) -> Option<usize> {
        (0..self.similarities.len()).reduce(|best, j| {
            if self.similarities[j] > self.similarities[best] {
                j
            } else {
                best
            }
        })
    }

    /// Largest similarity to another person's reference; `None` when missing or alone.
    pub fn max_leakage(&self) -> Option<f64> {
        self.similarities
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != self.index)
            .map(|(_, &s)| s)
            .reduce(f64::max)
    }
}

/// Every person's result in one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScore {
    pub people: Vec<PersonScore>,
    /// Faces detected in the image, matched or not.
    pub detected: usize,
}

/// Averages over people, of one image or many.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub images: usize,
    pub people: usize,
    /// People with a matched face.
    pub matched: usize,
    /// Mean own similarity over matched people; `None` when none matched.
    pub face_sim: Option<f64>,
    /// Share of all people whose own reference is the best match.
    pub id_pos_acc: f64,
    /// Mean of each matched person's largest similarity to another reference; `None` when no
    /// matched person has another person beside them.
    pub leakage: Option<f64>,
}

impl Summary {
    /// Averages over every person of `scores`.
    pub fn of(scores: &[ImageScore]) -> Summary {
        let people: Vec<&PersonScore> = scores.iter().flat_map(|s| &s.people).collect();
        let own: Vec<f64> = people.iter().filter_map(|p| p.similarity()).collect();
        let leak: Vec<f64> = people.iter().filter_map(|p| p.max_leakage()).collect();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let correct = people.iter().filter(|p| p.correct()).count();
        Summary {
            images: scores.len(),
            people: people.len(),
            matched: own.len(),
            face_sim: mean(&own),
            id_pos_acc: if people.is_empty() {
                0.0
            } else {
                correct as f64 / people.len() as f64
            },
            leakage: mean(&leak),
        }
    }

    pub fn missing(&self) -> usize {
        self.people - self.matched
    }
}

/// For each centre, the index of the face matched to it: faces whose box contains the centre,
/// closest nose landmark first; each face to at most one centre, the closest pairs assigned
/// first.
pub fn match_faces(centres: &[[f32; 2]], faces: &[Detection]) -> Vec<Option<usize>> {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (p, c) in centres.iter().enumerate() {
        for (f, face) in faces.iter().enumerate() {
            let [x1, y1, x2, y2] = face.bbox;
            if (x1..=x2).contains(&c[0]) && (y1..=y2).contains(&c[1]) {
                let [nx, ny] = face.landmarks[2];
                pairs.push(((nx - c[0]).hypot(ny - c[1]), p, f));
            }
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut person_face = vec![None; centres.len()];
    let mut taken = vec![false; faces.len()];
    for (_, p, f) in pairs {
        if person_face[p].is_none() && !taken[f] {
            person_face[p] = Some(f);
            taken[f] = true;
        }
    }
    person_face
}

/// Unit-length embeddings (rows of the (n, 1, D) or (n, D) ArcFace output) as f64 rows.
fn rows(embeddings: &Tensor) -> Vec<Vec<f64>> {
    let n = embeddings.shape().first().copied().unwrap_or(0);
    if n == 0 {
        return Vec::new();
    }
    let values = embeddings.to_f32_vec();
    values
        .chunks(values.len() / n)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect()
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// ArcFace embeddings (F, 1, D) of the layout's reference faces: each person's photo, aligned on
/// its `face_keypoints` (detect them first: [`crate::detect::people::locate_faces`]) or used as
/// an aligned crop. `images` are the photos in people order.
pub fn reference_embeddings(
    arcface: &mut dyn Graph,
    layout: &Layout,
    images: &[Rgb8],
) -> Result<Tensor> {
    let faces = pipeline::face_batch_with(layout, Some(images))?;
    pipeline::id_embeddings(arcface, &faces)
}

/// Scores one generated `image` of `layout` against the reference embeddings (F, 1, D) of
/// [`reference_embeddings`]. `name` names the image in errors.
pub fn evaluate(
    detector: &mut Detector,
    arcface: &mut dyn Graph,
    layout: &Layout,
    references: &Tensor,
    image: &Rgb8,
    name: &str,
) -> Result<ImageScore> {
    if (image.width(), image.height()) != (layout.width as usize, layout.height as usize) {
        return Err(Error::invalid_input(
            name,
            format!(
                "is {}x{}, the layout is {}x{}: positions would not line up",
                image.width(),
                image.height(),
                layout.width,
                layout.height
            ),
        ));
    }
    let references = rows(references);
    if references.len() != layout.people.len() {
        return Err(Error::invalid_input(
            "reference embeddings",
            format!("{} for {} people", references.len(), layout.people.len()),
        ));
    }
    let faces = detector.detect(image)?;
    let centres: Vec<[f32; 2]> = layout.people.iter().map(|p| p.centre()).collect();
    let matched = match_faces(&centres, &faces);
    let picked: Vec<&Detection> = matched.iter().flatten().map(|&f| &faces[f]).collect();
    let embeddings = if picked.is_empty() {
        Vec::new()
    } else {
        let mut data = Vec::new();
        for face in &picked {
            let input = face::arcface_input(image, Some(&face.keypoints()), name)?;
            data.extend_from_slice(input.as_f32().expect("arcface_input is f32"));
        }
        let size = face::ARCFACE_SIZE;
        let batch = Tensor::from_f32(vec![picked.len(), 3, size, size], data)?;
        rows(&pipeline::id_embeddings(arcface, &batch)?)
    };
    let mut next = embeddings.iter();
    let people = matched
        .iter()
        .enumerate()
        .map(|(index, m)| {
            let (face, similarities) = match m {
                Some(f) => {
                    let e = next.next().expect("one embedding per matched face");
                    (
                        Some(faces[*f]),
                        references.iter().map(|r| cosine(e, r)).collect(),
                    )
                }
                None => (None, Vec::new()),
            };
            PersonScore {
                centre: centres[index],
                face,
                similarities,
                index,
            }
        })
        .collect();
    Ok(ImageScore {
        people,
        detected: faces.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32) -> Detection {
        Detection {
            bbox: [x - 20.0, y - 20.0, x + 20.0, y + 20.0],
            score: 0.99,
            landmarks: [
                [x - 8.0, y - 5.0],
                [x + 8.0, y - 5.0],
                [x, y],
                [x - 6.0, y + 8.0],
                [x + 6.0, y + 8.0],
            ],
        }
    }

    #[test]
    fn people_take_the_face_at_their_position_once() {
        let faces = [face(100.0, 50.0), face(40.0, 50.0), face(300.0, 300.0)];
        // Person 2 stands inside face 0's box too, but person 0 is closer to its nose.
        let centres = [[101.0, 52.0], [45.0, 45.0], [110.0, 60.0], [500.0, 10.0]];
        assert_eq!(
            match_faces(&centres, &faces),
            vec![Some(0), Some(1), None, None]
        );
    }

    #[test]
    fn accuracy_counts_missing_people_as_wrong() {
        let person = |index, similarities: Vec<f64>| PersonScore {
            centre: [0.0, 0.0],
            face: None,
            similarities,
            index,
        };
        let image = ImageScore {
            people: vec![
                person(0, vec![0.9, 0.2, 0.1]),
                person(1, vec![0.5, 0.4, 0.0]),
                person(2, vec![]),
            ],
            detected: 2,
        };
        let s = Summary::of(&[image]);
        assert_eq!((s.people, s.matched, s.missing()), (3, 2, 1));
        assert!((s.face_sim.unwrap() - 0.65).abs() < 1e-12);
        assert!((s.id_pos_acc - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.leakage.unwrap() - 0.35).abs() < 1e-12);
    }
}
