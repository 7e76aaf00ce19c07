//! Face detection: MTCNN (Zhang et al. 2016) as facenet-pytorch 2.6.0's `MTCNN.detect(img,
//! landmarks=True)` computes it, with its three networks run as the set's `face_detector_pnet`,
//! `face_detector_rnet` and `face_detector_onet` graphs and everything between them here:
//!
//! 1. Pyramid ([`pyramid`]): scales from `min_face_size` by `factor`, each level area-resampled.
//! 2. P-Net on every level; windows scoring at least `thresholds[0]` become candidates
//!    ([`boxes::pnet_candidates`]); NMS at IoU 0.5 within a level, then 0.7 over all levels;
//!    P-Net's offsets applied; boxes squared.
//! 3. R-Net on 24x24 crops of those boxes (one batch); scores above `thresholds[1]` kept, NMS
//!    0.7, offsets applied, squared.
//! 4. O-Net on 48x48 crops; scores above `thresholds[2]` kept, five landmarks read off the box,
//!    offsets applied, NMS with the overlap over the smaller box at 0.7.
//! 5. Largest box first (area `(x2 - x1) * (y2 - y1)`).
//!
//! Every number is computed in f32 in the reference's operation order and the resampling is
//! bit-identical to PyTorch's (see [`pyramid`]), so what differs from the reference is only the
//! graphs' own rounding (about 1e-6 relative), which can move a box by a pixel where a
//! coordinate truncates near a whole number (see README, "What matches what").
//!
//! One departure: facenet-pytorch skips a crop that lies wholly outside the image yet keeps its
//! box, misaligning the following boxes with their scores; here such a box is dropped.

pub mod bands;
pub mod boxes;
mod graphs;
pub mod nms;
pub mod people;
pub mod pyramid;

use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::image_io::Rgb8;
use crate::manifest::{ModelSet, Role};
use crate::{Error, Result, Tensor};

use boxes::Candidate;
pub use graphs::GraphNetworks;
use pyramid::{SummedArea, Window};

/// Smallest `min_face_size` accepted: P-Net's 12-pixel window; smaller would enlarge the image
/// (12 / min_face_size times per side) before detecting.
pub const MIN_FACE_SIZE_LIMIT: f64 = 12.0;

/// Detection settings; the defaults are facenet-pytorch's `MTCNN()` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorOptions {
    /// Smallest face side searched for, in pixels (default 20, at least 12).
    pub min_face_size: f64,
    /// Lowest P-Net, R-Net and O-Net face probabilities kept (default 0.6, 0.7, 0.7).
    pub thresholds: [f32; 3],
    /// Ratio between pyramid scales (default 0.709), in (0, 0.95].
    pub factor: f64,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            min_face_size: 20.0,
            thresholds: [0.6, 0.7, 0.7],
            factor: 0.709,
        }
    }
}

impl DetectorOptions {
    /// Range checks; `name` prefixes the error (e.g. "--min-face-size").
    pub fn check(&self) -> Result<()> {
        if !(self.min_face_size.is_finite()
            && (MIN_FACE_SIZE_LIMIT..=1e6).contains(&self.min_face_size))
        {
            return Err(Error::invalid_input(
                "--min-face-size",
                format!(
                    "{} is not between {MIN_FACE_SIZE_LIMIT} and 1000000 pixels",
                    self.min_face_size
                ),
            ));
        }
        // A factor near 1 would make thousands of pyramid levels.
        if !(self.factor > 0.0 && self.factor <= 0.95) {
            return Err(Error::invalid_input(
                "face detector factor",
                format!("{} is not in (0, 0.95]", self.factor),
            ));
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(Error::invalid_input(
                "face detector thresholds",
                format!("{t} is not a probability in [0, 1]"),
            ));
        }
        Ok(())
    }
}

/// One detected face, in image pixels (x to the right, y down, origin at the top-left corner of
/// the top-left pixel, as facenet-pytorch reports them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// O-Net's face probability.
    pub score: f32,
    /// `[x, y]` of the left eye, right eye, nose, left and right mouth corners ("left" is the
    /// image's left), the order [`crate::face::KEYPOINT_NAMES`] uses.
    pub landmarks: [[f32; 2]; 5],
}

impl Detection {
    /// `(x2 - x1) * (y2 - y1)`, the size faces are ranked by.
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }

    /// `{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] x 5]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "box": self.bbox,
            "score": self.score,
            "landmarks": self.landmarks,
        })
    }

    /// The landmarks in f64, as face alignment takes them.
    pub fn keypoints(&self) -> [[f64; 2]; 5] {
        self.landmarks.map(|[x, y]| [f64::from(x), f64::from(y)])
    }
}

/// MTCNN's three networks as the detector calls them. [`GraphNetworks`] runs the set's graphs;
/// tests replay recorded outputs.
pub trait Networks {
    /// P-Net on every pyramid level (each (1, 3, h, w), largest first): per level, in the same
    /// order, `[regression (1, 4, mh, mw), probability (1, 2, mh, mw)]`.
    fn pnet(&mut self, levels: Vec<Tensor>) -> Result<Vec<[Tensor; 2]>>;
    /// R-Net on crops (n, 3, 24, 24): `[regression (n, 4), probability (n, 2)]`.
    fn rnet(&mut self, crops: Tensor) -> Result<[Tensor; 2]>;
    /// O-Net on crops (n, 3, 48, 48): `[regression (n, 4), landmarks (n, 10), probability
    /// (n, 2)]`.
    fn onet(&mut self, crops: Tensor) -> Result<[Tensor; 3]>;
}

/// Where one detection's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DetectTimings {
    /// The three networks' runs.
    pub graphs: Duration,
    /// Everything else: pyramid, crops, boxes, NMS (Rust).
    pub rust: Duration,
}

/// MTCNN with its three graphs loaded.
pub struct Detector {
    networks: GraphNetworks,
    options: DetectorOptions,
    timings: DetectTimings,
}

impl Detector {
    /// Loads the set's three face detector graphs on `backend`; `options` are checked first.
    pub fn load(backend: &dyn Backend, set: &ModelSet, options: DetectorOptions) -> Result<Self> {
        options.check()?;
        Ok(Detector {
            networks: GraphNetworks::load(backend, set)?,
            options,
            timings: DetectTimings::default(),
        })
    }

    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// Time spent in the last [`Detector::detect`].
    pub fn last_timings(&self) -> DetectTimings {
        self.timings
    }

    /// The faces in `img`, largest first (see [`detect_with`]).
    pub fn detect(&mut self, img: &Rgb8) -> Result<Vec<Detection>> {
        let started = Instant::now();
        let graphs_before = self.networks.graph_time();
        let faces = detect_with(&mut self.networks, img, &self.options)?;
        let graphs = self.networks.graph_time() - graphs_before;
        self.timings = DetectTimings {
            graphs,
            rust: started.elapsed().saturating_sub(graphs),
        };
        Ok(faces)
    }
}

/// The faces in `img`, largest first, with `networks` for the three stages. An image whose
/// shorter side is under `min_face_size` has none.
pub fn detect_with(
    networks: &mut dyn Networks,
    img: &Rgb8,
    options: &DetectorOptions,
) -> Result<Vec<Detection>> {
    options.check()?;
    let table = SummedArea::new(img);
    let proposals = propose(networks, &table, options)?;
    let refined = refine(networks, &table, &proposals, options.thresholds[1])?;
    let mut faces = output(networks, &table, &refined, options.thresholds[2])?;
    // The reference orders by numpy's ascending argsort of the areas, reversed: of equal areas
    // the later face comes first. A stable ascending sort, reversed, does the same.
    faces.sort_by(|a, b| a.area().total_cmp(&b.area()));
    faces.reverse();
    Ok(faces)
}

/// Stage 1: P-Net over the pyramid; squared boxes after P-Net's offsets.
fn propose(
    networks: &mut dyn Networks,
    table: &SummedArea,
    options: &DetectorOptions,
) -> Result<Vec<[f32; 4]>> {
    let (w, h) = (table.width(), table.height());
    let scales = pyramid::scales(w, h, options.min_face_size, options.factor);
    let mut levels = Vec::with_capacity(scales.len());
    for &scale in &scales {
        let (lw, lh) = pyramid::level_size(w, h, scale);
        let mut input = vec![0f32; 3 * lw * lh];
        table.resample_into(Window { x0: 0, y0: 0, w, h }, lw, lh, &mut input);
        levels.push(Tensor::from_f32(vec![1, 3, lh, lw], input)?);
    }
    let outputs = if levels.is_empty() {
        Vec::new()
    } else {
        networks.pnet(levels)?
    };
    if outputs.len() != scales.len() {
        return Err(Error::graph(
            Role::FaceDetectorPnet.name(),
            format!(
                "{} pyramid levels in, {} results out",
                scales.len(),
                outputs.len()
            ),
        ));
    }
    let mut all: Vec<Candidate> = Vec::new();
    for (scale, [regression, probability]) in scales.into_iter().zip(outputs) {
        let (map_h, map_w) = map_size(&probability, &regression)?;
        let plane = map_h * map_w;
        let candidates = boxes::pnet_candidates(
            f32_values(&regression, Role::FaceDetectorPnet)?,
            &f32_values(&probability, Role::FaceDetectorPnet)?[plane..],
            map_w,
            map_h,
            scale,
            options.thresholds[0],
        );
        let keep = nms_candidates(&candidates, 0.5);
        all.extend(keep.into_iter().map(|i| candidates[i]));
    }
    let keep = nms_candidates(&all, 0.7);
    Ok(keep
        .into_iter()
        .map(|i| boxes::square(boxes::regress_pnet(&all[i])))
        .collect())
}

/// Stage 2: R-Net on 24x24 crops; squared boxes after R-Net's offsets.
fn refine(
    networks: &mut dyn Networks,
    table: &SummedArea,
    proposals: &[[f32; 4]],
    threshold: f32,
) -> Result<Vec<[f32; 4]>> {
    let (kept, crops) = crops(table, proposals, 24);
    if kept.is_empty() {
        return Ok(Vec::new());
    }
    let outputs = networks.rnet(Tensor::from_f32(vec![kept.len(), 3, 24, 24], crops)?)?;
    let [regression, probability] = rows(outputs, kept.len(), [4, 2], Role::FaceDetectorRnet)?;
    let passed: Vec<Candidate> = kept
        .iter()
        .enumerate()
        .filter(|&(n, _)| probability[2 * n + 1] > threshold)
        .map(|(n, &b)| Candidate {
            bbox: proposals[b],
            score: probability[2 * n + 1],
            offsets: std::array::from_fn(|k| regression[4 * n + k]),
        })
        .collect();
    let keep = nms_candidates(&passed, 0.7);
    Ok(keep
        .into_iter()
        .map(|i| boxes::square(boxes::regress(passed[i].bbox, passed[i].offsets)))
        .collect())
}

/// Stage 3: O-Net on 48x48 crops; final boxes, scores and landmarks.
fn output(
    networks: &mut dyn Networks,
    table: &SummedArea,
    refined: &[[f32; 4]],
    threshold: f32,
) -> Result<Vec<Detection>> {
    let (kept, crops) = crops(table, refined, 48);
    if kept.is_empty() {
        return Ok(Vec::new());
    }
    let outputs = networks.onet(Tensor::from_f32(vec![kept.len(), 3, 48, 48], crops)?)?;
    let [regression, landmarks, probability] =
        rows(outputs, kept.len(), [4, 10, 2], Role::FaceDetectorOnet)?;
    let faces: Vec<Detection> = kept
        .iter()
        .enumerate()
        .filter(|&(n, _)| probability[2 * n + 1] > threshold)
        .map(|(n, &b)| {
            let bbox = refined[b];
            let offsets = std::array::from_fn(|k| regression[4 * n + k]);
            Detection {
                landmarks: boxes::landmarks(bbox, &landmarks[10 * n..10 * n + 10]),
                bbox: boxes::regress(bbox, offsets),
                score: probability[2 * n + 1],
            }
        })
        .collect();
    let bboxes: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
    let scores: Vec<f32> = faces.iter().map(|f| f.score).collect();
    Ok(nms::nms_min(&bboxes, &scores, 0.7)
        .into_iter()
        .map(|i| faces[i])
        .collect())
}

/// (height, width) of P-Net's output maps, checking both outputs agree.
fn map_size(probability: &Tensor, regression: &Tensor) -> Result<(usize, usize)> {
    match (probability.shape(), regression.shape()) {
        ([1, 2, h, w], [1, 4, h2, w2]) if h == h2 && w == w2 => Ok((*h, *w)),
        (p, r) => Err(Error::graph(
            Role::FaceDetectorPnet.name(),
            format!(
                "expected probability (1, 2, h, w) and regression (1, 4, h, w), got {p:?} and {r:?}"
            ),
        )),
    }
}

fn f32_values(t: &Tensor, role: Role) -> Result<&[f32]> {
    t.as_f32().ok_or_else(|| {
        Error::graph(
            role.name(),
            format!("expected a float32 output, got {}", t.dtype()),
        )
    })
}

/// Each output's values for `n` crops, checking the shapes are (n, width).
fn rows<const N: usize>(
    outputs: [Tensor; N],
    n: usize,
    widths: [usize; N],
    role: Role,
) -> Result<[Vec<f32>; N]> {
    let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    for ((slot, t), width) in out.iter_mut().zip(outputs).zip(widths) {
        if t.shape() != [n, width] {
            return Err(Error::graph(
                role.name(),
                format!(
                    "expected an output of shape [{n}, {width}], got {:?}",
                    t.shape()
                ),
            ));
        }
        *slot = f32_values(&t, role)?.to_vec();
    }
    Ok(out)
}

/// Kept indices of torchvision-style NMS over candidates.
fn nms_candidates(candidates: &[Candidate], threshold: f32) -> Vec<usize> {
    let bboxes: Vec<[f32; 4]> = candidates.iter().map(|c| c.bbox).collect();
    let scores: Vec<f32> = candidates.iter().map(|c| c.score).collect();
    nms::nms_iou(&bboxes, &scores, threshold)
}

/// The `side` x `side` network inputs of every box that has pixels in the image, in order, and
/// the indices of those boxes.
fn crops(table: &SummedArea, bboxes: &[[f32; 4]], side: usize) -> (Vec<usize>, Vec<f32>) {
    let per_crop = 3 * side * side;
    let mut kept = Vec::with_capacity(bboxes.len());
    let mut data = Vec::with_capacity(bboxes.len() * per_crop);
    for (i, &b) in bboxes.iter().enumerate() {
        if let Some(window) = boxes::crop_window(b, table.width(), table.height()) {
            let start = data.len();
            data.resize(start + per_crop, 0.0);
            table.resample_into(window, side, side, &mut data[start..]);
            kept.push(i);
        }
    }
    (kept, data)
}
