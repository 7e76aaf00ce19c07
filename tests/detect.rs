//! Face detection against facenet-pytorch 2.6.0's MTCNN (`tests/reference/mtcnn.py`, run once in
//! the environment its wheel pins; inputs and outputs in tests/data/mtcnn/):
//!
//! - replaying facenet's own network outputs, the runtime's pyramid, crops, boxes, NMS and
//!   landmarks give facenet's detections bit for bit, and every network input it builds hashes
//!   to what facenet fed its networks;
//! - with the graphs run on tract and on ONNX Runtime, every photo gives facenet's faces: boxes
//!   and landmarks within 1 pixel, scores within 1e-3, none in the photos without faces;
//! - NMS matches torchvision's `nms` / `batched_nms` and facenet's "Min" NMS.

mod common;

use std::collections::VecDeque;
use std::path::PathBuf;

use common::{read_json, test_data, tiny_dir};
use idpatch::backend::Backend;
use idpatch::detect::{self, nms, Detection, Detector, DetectorOptions, Networks};
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::{image_io, npy, Result, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest differences allowed against facenet-pytorch when the graphs run on a backend.
const BOX_TOLERANCE_PX: f32 = 1.0;
const LANDMARK_TOLERANCE_PX: f32 = 1.0;
const SCORE_TOLERANCE: f32 = 1e-3;

fn mtcnn_data() -> PathBuf {
    test_data("mtcnn")
}

fn reference() -> Value {
    read_json(&mtcnn_data().join("reference.json"))
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The faces of a reference entry, as detections.
fn reference_faces(faces: &Value) -> Vec<Detection> {
    faces
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let b = f32s(&f["box"]);
            let landmarks: Vec<Vec<f32>> = f["landmarks"]
                .as_array()
                .unwrap()
                .iter()
                .map(f32s)
                .collect();
            Detection {
                bbox: [b[0], b[1], b[2], b[3]],
                score: f["score"].as_f64().unwrap() as f32,
                landmarks: std::array::from_fn(|k| [landmarks[k][0], landmarks[k][1]]),
            }
        })
        .collect()
}

/// Network outputs recorded from facenet-pytorch, handed out in call order after checking that
/// the runtime built the same input (sha256 of the float32 bytes).
struct Replay {
    dir: PathBuf,
    calls: [VecDeque<Value>; 3],
}

impl Replay {
    fn new(dir: PathBuf) -> Replay {
        let record: Value = read_json(&dir.join("replay.json"));
        let calls = ["pnet", "rnet", "onet"].map(|net| {
            record["calls"][net]
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .collect::<VecDeque<_>>()
        });
        Replay { dir, calls }
    }

    fn next<const N: usize>(
        &mut self,
        net: usize,
        input: &Tensor,
        names: [&str; N],
    ) -> [Tensor; N] {
        let label = ["pnet", "rnet", "onet"][net];
        let call = self.calls[net]
            .pop_front()
            .unwrap_or_else(|| panic!("{label} called more often than facenet-pytorch called it"));
        let shape: Vec<usize> = call["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(input.shape(), shape.as_slice(), "{label} input shape");
        let mut hasher = Sha256::new();
        for v in input.as_f32().unwrap() {
            hasher.update(v.to_le_bytes());
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            call["input_sha256"].as_str().unwrap(),
            "{label} input {shape:?} differs from what facenet-pytorch fed it"
        );
        names.map(|n| npy::read(&self.dir.join(call["outputs"][n].as_str().unwrap())).unwrap())
    }

    fn assert_used_up(&self) {
        for (net, calls) in ["pnet", "rnet", "onet"].iter().zip(&self.calls) {
            assert!(
                calls.is_empty(),
                "{net}: {} recorded calls not made",
                calls.len()
            );
        }
    }
}

impl Networks for Replay {
    fn pnet(&mut self, levels: Vec<Tensor>) -> Result<Vec<[Tensor; 2]>> {
        Ok(levels
            .iter()
            .map(|level| self.next(0, level, ["regression", "probability"]))
            .collect())
    }

    fn rnet(&mut self, crops: Tensor) -> Result<[Tensor; 2]> {
        Ok(self.next(1, &crops, ["regression", "probability"]))
    }

    fn onet(&mut self, crops: Tensor) -> Result<[Tensor; 3]> {
        Ok(self.next(2, &crops, ["regression", "landmarks", "probability"]))
    }
}

#[test]
fn replayed_networks_give_facenets_detections_bit_for_bit() {
    for photo in ["small", "border"] {
        let dir = mtcnn_data().join(format!("replay_{photo}"));
        let record: Value = read_json(&dir.join("replay.json"));
        let img = image_io::load_rgb8(&mtcnn_data().join(format!("{photo}.png"))).unwrap();
        let mut replay = Replay::new(dir);
        let ours = detect::detect_with(&mut replay, &img, &DetectorOptions::default()).unwrap();
        replay.assert_used_up();
        let theirs = reference_faces(&record["faces"]);
        assert!(!theirs.is_empty(), "{photo}: the reference found no face");
        assert_eq!(ours, theirs, "{photo}");
    }
}

/// Pairs each reference face with the nearest of ours (box corners) and checks the tolerances;
/// returns the largest box, landmark and score differences.
fn compare(photo: &str, ours: &[Detection], theirs: &[Detection]) -> [f32; 3] {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{photo}: {} faces, facenet-pytorch found {}:\nours {ours:?}\ntheirs {theirs:?}",
        ours.len(),
        theirs.len()
    );
    let mut worst = [0f32; 3];
    let mut used = vec![false; ours.len()];
    for t in theirs {
        let distance = |o: &Detection| {
            o.bbox
                .iter()
                .zip(&t.bbox)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let (i, o) = ours
            .iter()
            .enumerate()
            .filter(|(i, _)| !used[*i])
            .min_by(|a, b| distance(a.1).total_cmp(&distance(b.1)))
            .unwrap();
        used[i] = true;
        let box_diff = distance(o);
        let landmark_diff = o
            .landmarks
            .iter()
            .flatten()
            .zip(t.landmarks.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let score_diff = (o.score - t.score).abs();
        assert!(
            box_diff <= BOX_TOLERANCE_PX
                && landmark_diff <= LANDMARK_TOLERANCE_PX
                && score_diff <= SCORE_TOLERANCE,
            "{photo}: box {box_diff} px, landmarks {landmark_diff} px, score {score_diff}\nours {o:?}\ntheirs {t:?}"
        );
        worst = [
            worst[0].max(box_diff),
            worst[1].max(landmark_diff),
            worst[2].max(score_diff),
        ];
    }
    worst
}

/// Every reference photo through `backend`; prints the largest differences.
fn assert_backend_matches_facenet(backend: &dyn Backend) {
    let set = ModelSet::open(&tiny_dir(), Checksums::Verify).unwrap();
    let mut detector = Detector::load(backend, &set, DetectorOptions::default()).unwrap();
    let reference = reference();
    let photos = reference["photos"].as_object().unwrap();
    assert!(photos.len() >= 9);
    let mut faces = 0;
    let mut worst = [0f32; 3];
    for (photo, entry) in photos {
        let img = image_io::load_rgb8(&mtcnn_data().join(format!("{photo}.png"))).unwrap();
        let size = f32s(&entry["size"]);
        assert_eq!(
            [img.width() as f32, img.height() as f32],
            [size[0], size[1]]
        );
        let theirs = reference_faces(&entry["faces"]);
        let ours = detector.detect(&img).unwrap();
        let w = compare(photo, &ours, &theirs);
        worst = std::array::from_fn(|k| worst[k].max(w[k]));
        faces += theirs.len();
    }
    assert!(faces >= 20, "the photos hold {faces} faces");
    for empty in ["coffee", "chelsea"] {
        assert_eq!(photos[empty]["faces"].as_array().unwrap().len(), 0);
    }
    eprintln!(
        "{}: {faces} faces; largest differences: box {} px, landmarks {} px, score {}",
        backend.name(),
        worst[0],
        worst[1],
        worst[2]
    );
}

#[cfg(feature = "tract")]
#[test]
fn tract_detects_what_facenet_detects() {
    assert_backend_matches_facenet(&idpatch::TractBackend::new());
}

#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_detects_what_facenet_detects() {
    use idpatch::backend::ort::{find_library, OrtOptions};
    let lib = find_library(None).unwrap_or_else(|e| {
        panic!(
            "cannot test the ONNX Runtime backend: {e}; run the suite with scripts/test.sh, \
             which fetches the library and sets ORT_DYLIB_PATH"
        )
    });
    let backend = idpatch::OrtBackend::new(OrtOptions {
        library: Some(lib),
        ..OrtOptions::default()
    })
    .unwrap();
    assert_backend_matches_facenet(&backend);
}

fn boxes_of(case: &Value) -> Vec<[f32; 4]> {
    case["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let v = f32s(b);
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn nms_matches_torchvision_and_facenet() {
    let data: Value = read_json(&mtcnn_data().join("nms.json"));
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let boxes = boxes_of(case);
        let scores = f32s(&case["scores"]);
        for threshold in ["0.5", "0.7"] {
            let t: f32 = threshold.parse().unwrap();
            let ours = nms::nms_iou(&boxes, &scores, t);
            assert_eq!(
                ours,
                indices(&case[format!("iou_{threshold}")]),
                "nms {threshold}"
            );
            assert_eq!(ours, indices(&case[format!("batched_iou_{threshold}")]));
            assert!(
                ours.len() < boxes.len(),
                "nothing suppressed at {threshold}"
            );
        }
        let ours = nms::nms_min(&boxes[..14], &scores[..14], 0.7);
        assert_eq!(ours, indices(&case["min_0.7_first14"]));
    }
}

#[test]
fn detector_options_are_range_checked() {
    for (options, want) in [
        (
            DetectorOptions {
                min_face_size: 5.0,
                ..DetectorOptions::default()
            },
            "--min-face-size: 5 is not between 12 and 1000000 pixels",
        ),
        (
            DetectorOptions {
                factor: 1.0,
                ..DetectorOptions::default()
            },
            "face detector factor: 1 is not in (0, 0.95]",
        ),
        (
            DetectorOptions {
                thresholds: [0.6, 1.5, 0.7],
                ..DetectorOptions::default()
            },
            "face detector thresholds: 1.5 is not a probability in [0, 1]",
        ),
    ] {
        let err = options.check().unwrap_err();
        assert_eq!(err.to_string(), want);
        assert_eq!(err.exit_code(), 2);
    }
}

/// P-Net over a level in 48-row bands (what the detector does on tract) gives the maps P-Net
/// gives over the whole level: the bands' windows see the same pixels.
#[cfg(feature = "tract")]
#[test]
fn pnet_in_bands_equals_pnet_over_the_whole_level() {
    let set = ModelSet::open(&tiny_dir(), Checksums::Skip).unwrap();
    let backend = idpatch::TractBackend::new();
    let mut whole = detect::GraphNetworks::load_workers(&backend, &set, 1, false).unwrap();
    let mut banded = detect::GraphNetworks::load_workers(&backend, &set, 2, true).unwrap();
    // Odd and even heights, one just over a band, one of several bands.
    let levels: Vec<Tensor> = [(131, 157), (64, 50), (40, 97)]
        .iter()
        .map(|&(w, h)| {
            let n = 3 * w * h;
            let data = (0..n)
                .map(|i| ((i * 7919 % 255) as f32 - 127.5) / 128.0)
                .collect();
            Tensor::from_f32(vec![1, 3, h, w], data).unwrap()
        })
        .collect();
    let a = whole.pnet(levels.clone()).unwrap();
    let b = banded.pnet(levels).unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!(x.shape(), y.shape());
        let diff = x
            .as_f32()
            .unwrap()
            .iter()
            .zip(y.as_f32().unwrap())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{:?}: {diff}", x.shape());
    }
}
