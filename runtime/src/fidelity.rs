//! How far one graph set's outputs are from another's (an INT8 set against the FP32 set it was
//! made from, say): per-graph output errors on the same inputs, and for whole generations the
//! cosine similarity of the final latents, the PSNR of the decoded images and the ArcFace
//! similarity of the faces at each layout position (`idpatch bench --fidelity`).
//!
//! Every statistic is accumulated in f64 over f32 values, as numpy does with
//! `astype(np.float64)`.

use crate::backend::Graph;
use crate::face::{warp_affine_bilinear, ARCFACE_SIZE};
use crate::image_io::Rgb8;
use crate::layout::Layout;
use crate::pipeline::id_embeddings;
use crate::{Error, Result, Tensor};

/// Errors of one output against its reference.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutputError {
    pub name: String,
    /// `max |b - a|`.
    pub max_abs_err: f64,
    /// `max |b - a| / max |a|`, the measure `idpatch validate` bounds.
    pub max_rel_err: f64,
    /// Cosine similarity of the two outputs as flat vectors.
    pub cosine: f64,
}

/// Compares `b` with the reference `a` (same shape, any float dtype).
pub fn output_error(name: &str, a: &Tensor, b: &Tensor) -> Result<OutputError> {
    if a.shape() != b.shape() {
        return Err(Error::graph(
            name,
            format!("outputs of shape {:?} and {:?}", a.shape(), b.shape()),
        ));
    }
    let (a, b) = (a.to_f32_vec(), b.to_f32_vec());
    let max_abs_err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (f64::from(*y) - f64::from(*x)).abs())
        .fold(0.0, f64::max);
    let scale = a.iter().map(|x| f64::from(*x).abs()).fold(0.0, f64::max);
    Ok(OutputError {
        name: name.to_string(),
        max_abs_err,
        max_rel_err: max_abs_err / scale.max(f64::MIN_POSITIVE),
        cosine: cosine(&a, &b),
    })
}

/// `a . b / (|a| |b|)` in f64; 1 when both are all zeros, 0 when only one is.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa > 0.0, bb > 0.0) {
        (true, true) => dot / (aa.sqrt() * bb.sqrt()),
        (false, false) => 1.0,
        _ => 0.0,
    }
}

/// Peak signal-to-noise ratio of two 8-bit RGB images of one size, in dB with a peak of 255
/// (scikit-image's `peak_signal_noise_ratio(a, b, data_range=255)`); `None` when they are
/// identical (infinite PSNR).
pub fn psnr(a: &Rgb8, b: &Rgb8) -> Result<Option<f64>> {
    if (a.width(), a.height()) != (b.width(), b.height()) {
        return Err(Error::invalid_input(
            "image",
            format!(
                "{}x{} and {}x{} cannot be compared",
                a.width(),
                a.height(),
                b.width(),
                b.height()
            ),
        ));
    }
    let n = a.data().len().max(1) as f64;
    let mse = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / n;
    Ok((mse > 0.0).then(|| 10.0 * (255.0f64 * 255.0 / mse).log10()))
}

/// Where each person of a layout has its ID patch (and so its face): `position`, else the
/// nose keypoint, in output pixels.
pub fn face_centres(layout: &Layout) -> Vec<[f64; 2]> {
    layout
        .people
        .iter()
        .map(|p| p.centre().map(f64::from))
        .collect()
}

/// The `side` x `side` square of `img` centred on `centre`, resampled to the 112x112 ArcFace
/// input size with bilinear interpolation (black outside the image): OpenCV's
/// `warpAffine(img, [[s, 0, tx], [0, s, ty]], (112, 112))` with `s = 112 / side` and
/// `t = 56 - s * centre` (pixel centres at integer coordinates, as OpenCV has them).
pub fn face_crop(img: &Rgb8, centre: [f64; 2], side: f64) -> Result<Rgb8> {
    if !(side.is_finite() && side > 0.0) {
        return Err(Error::invalid_input(
            "face crop",
            format!("side {side} is not positive"),
        ));
    }
    let s = ARCFACE_SIZE as f64 / side;
    let half = ARCFACE_SIZE as f64 / 2.0;
    let m = [
        [s, 0.0, half - s * centre[0]],
        [0.0, s, half - s * centre[1]],
    ];
    warp_affine_bilinear(img, m, ARCFACE_SIZE, ARCFACE_SIZE)
}

/// The side of the square [`face_similarities`] crops: twice the ID patch (the condition
/// image's 64 px patch marks the face; the face the UNet draws there is about that size or
/// larger).
pub fn face_crop_side(patch_size: usize) -> f64 {
    2.0 * patch_size as f64
}

/// Per person of `layout`, the cosine similarity of the ArcFace embeddings (`arcface`, one
/// batch per image) of the faces at that person's position in `a` and in `b`
/// ([`face_crop`] with [`face_crop_side`]).
pub fn face_similarities(
    arcface: &mut dyn Graph,
    a: &Rgb8,
    b: &Rgb8,
    layout: &Layout,
    patch_size: usize,
) -> Result<Vec<f64>> {
    let side = face_crop_side(patch_size);
    let centres = face_centres(layout);
    let mut embeddings = Vec::with_capacity(2);
    for img in [a, b] {
        let mut data = Vec::with_capacity(centres.len() * 3 * ARCFACE_SIZE * ARCFACE_SIZE);
        for centre in &centres {
            let crop = face_crop(img, *centre, side)?;
            let input = crate::face::arcface_input(&crop, None, "face crop")?;
            data.extend_from_slice(input.as_f32().unwrap_or_default());
        }
        let batch = Tensor::from_f32(vec![centres.len(), 3, ARCFACE_SIZE, ARCFACE_SIZE], data)?;
        embeddings.push(id_embeddings(arcface, &batch)?);
    }
    let (ea, eb) = (embeddings[0].to_f32_vec(), embeddings[1].to_f32_vec());
    let dim = ea.len() / centres.len().max(1);
    Ok((0..centres.len())
        .map(|i| {
            let range = i * dim..(i + 1) * dim;
            cosine(&ea[range.clone()], &eb[range])
        })
        .collect())
}

/// One generation compared: final latents, decoded image, faces.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationFidelity {
    pub seed: u64,
    /// Cosine similarity of the two runs' final latents.
    pub latent_cosine: f64,
    /// PSNR of the 8-bit images in dB (`None`: identical).
    pub psnr_db: Option<f64>,
    /// ArcFace similarity per person, in layout order.
    pub face_similarity: Vec<f64>,
}

impl GenerationFidelity {
    /// Mean face similarity over the people.
    pub fn mean_face_similarity(&self) -> f64 {
        let n = self.face_similarity.len().max(1) as f64;
        self.face_similarity.iter().sum::<f64>() / n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values from tests/reference/fidelity.py (numpy 2.4.6 and scikit-image 0.26's
    /// `peak_signal_noise_ratio`), stored in tests/data/fidelity/metrics.json.
    #[test]
    fn metrics_match_numpy_and_scikit_image() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/fidelity/metrics.json")).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect()
        };
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        for case in data["vectors"].as_array().unwrap() {
            let (a, b) = (floats(&case["a"]), floats(&case["b"]));
            let ta = Tensor::from_f32(vec![a.len()], a.clone()).unwrap();
            let tb = Tensor::from_f32(vec![b.len()], b.clone()).unwrap();
            let err = output_error("x", &ta, &tb).unwrap();
            assert!(
                close(err.cosine, case["cosine"].as_f64().unwrap()),
                "{case}"
            );
            assert!(close(
                err.max_abs_err,
                case["max_abs_err"].as_f64().unwrap()
            ));
            assert!(close(
                err.max_rel_err,
                case["max_rel_err"].as_f64().unwrap()
            ));
        }
        for case in data["images"].as_array().unwrap() {
            let (w, h) = (
                case["width"].as_u64().unwrap() as usize,
                case["height"].as_u64().unwrap() as usize,
            );
            let a = Rgb8::new(w, h, bytes(&case["a"])).unwrap();
            let b = Rgb8::new(w, h, bytes(&case["b"])).unwrap();
            let expected = case["psnr"].as_f64();
            match (psnr(&a, &b).unwrap(), expected) {
                (Some(ours), Some(theirs)) => assert!(close(ours, theirs), "{ours} {theirs}"),
                (None, None) => {}
                other => panic!("{other:?} for {case}"),
            }
        }
    }

    /// Expected crop: OpenCV 5.0 `cv2.warpAffine` with the matrix [`face_crop`] documents, from
    /// tests/reference/fidelity.py.
    #[test]
    fn face_crops_match_opencv() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/fidelity/metrics.json")).unwrap();
        let crop = &data["crop"];
        let (w, h) = (
            crop["width"].as_u64().unwrap() as usize,
            crop["height"].as_u64().unwrap() as usize,
        );
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let img = Rgb8::new(w, h, pixels).unwrap();
        let centre = [crop["cx"].as_f64().unwrap(), crop["cy"].as_f64().unwrap()];
        let ours = face_crop(&img, centre, crop["side"].as_f64().unwrap()).unwrap();
        let expected: Vec<u8> = crop["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(ours.data(), expected.as_slice());
    }

    #[test]
    fn cosine_edge_cases() {
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 2.0], &[-1.0, -2.0]) + 1.0).abs() < 1e-15);
        let img = Rgb8::new(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(psnr(&img, &img).unwrap(), None);
        assert!(face_crop(&img, [0.0, 0.0], 0.0).is_err());
    }
}
