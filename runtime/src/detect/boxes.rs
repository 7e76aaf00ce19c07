//! Box arithmetic between MTCNN's stages, in the f32 operation order of facenet-pytorch 2.6.0's
//! `detect_face` (each tensor operation rounds to f32; no fused multiply-adds).
//!
//! Boxes are `[x1, y1, x2, y2]` in image pixels. Two regressions exist: after P-Net the offsets
//! scale with `x2 - x1`, after R-Net and O-Net with the pixel-inclusive `x2 - x1 + 1`.

use super::pyramid::Window;

/// A candidate face: box, score and the offsets the network that scored it predicted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub bbox: [f32; 4],
    pub score: f32,
    /// `[dx1, dy1, dx2, dy2]`, relative to the box's width and height.
    pub offsets: [f32; 4],
}

/// P-Net's candidates at one pyramid level: every map cell (row-major, as `nonzero` orders them)
/// whose face probability is at least `threshold` becomes the 12x12 window at stride 2 mapped
/// back to the image: `floor((2 * cell + 1) / scale)` to `floor((2 * cell + 12) / scale)`.
///
/// `regression` is (4, h, w) and `face_probability` (h, w), both row-major.
pub fn pnet_candidates(
    regression: &[f32],
    face_probability: &[f32],
    map_w: usize,
    map_h: usize,
    scale: f64,
    threshold: f32,
) -> Vec<Candidate> {
    let plane = map_w * map_h;
    debug_assert_eq!(regression.len(), 4 * plane);
    debug_assert_eq!(face_probability.len(), plane);
    // The reference divides f32 tensors by the Python float scale, which torch rounds to f32.
    let scale = scale as f32;
    let mut out = Vec::new();
    for (cell, &p) in face_probability.iter().enumerate() {
        if p < threshold {
            continue;
        }
        let (y, x) = ((cell / map_w) as f32, (cell % map_w) as f32);
        let start = |v: f32| ((2.0 * v + 1.0) / scale).floor();
        let end = |v: f32| ((2.0 * v + 12.0) / scale).floor();
        out.push(Candidate {
            bbox: [start(x), start(y), end(x), end(y)],
            score: p,
            offsets: std::array::from_fn(|k| regression[k * plane + cell]),
        });
    }
    out
}

/// Applies P-Net's offsets: `x1 + dx1 * (x2 - x1)` and so on (no `+ 1` on the sides).
pub fn regress_pnet(c: &Candidate) -> [f32; 4] {
    let [x1, y1, x2, y2] = c.bbox;
    let (w, h) = (x2 - x1, y2 - y1);
    let [d1, d2, d3, d4] = c.offsets;
    [x1 + d1 * w, y1 + d2 * h, x2 + d3 * w, y2 + d4 * h]
}

/// Applies R-Net's or O-Net's offsets: sides counted pixel-inclusive, `x2 - x1 + 1`.
pub fn regress(bbox: [f32; 4], offsets: [f32; 4]) -> [f32; 4] {
    let [x1, y1, x2, y2] = bbox;
    let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
    let [d1, d2, d3, d4] = offsets;
    [x1 + d1 * w, y1 + d2 * h, x2 + d3 * w, y2 + d4 * h]
}

/// Squares a box about its centre on its longer side (facenet-pytorch's `rerec`).
pub fn square(bbox: [f32; 4]) -> [f32; 4] {
    let [x1, y1, x2, y2] = bbox;
    let (w, h) = (x2 - x1, y2 - y1);
    let side = w.max(h);
    let nx1 = x1 + w * 0.5 - side * 0.5;
    let ny1 = y1 + h * 0.5 - side * 0.5;
    [nx1, ny1, nx1 + side, ny1 + side]
}

/// The pixels a box's crop reads: coordinates truncated toward zero, then clipped to the image
/// (1-based `max(x1, 1) ..= min(x2, width)`, as the reference's `pad` does). No padding: a box
/// that leaves the image is cropped at the border, and the crop is resampled to the network's
/// size as it is. `None` when nothing of the box is inside the image.
pub fn crop_window(bbox: [f32; 4], width: usize, height: usize) -> Option<Window> {
    // `as i64` truncates toward zero and saturates, like the reference's `trunc().int()` on any
    // box that fits an int32.
    let [x1, y1, x2, y2] = bbox.map(|v| v as i64);
    let (x, y) = (x1.max(1), y1.max(1));
    let (ex, ey) = (x2.min(width as i64), y2.min(height as i64));
    (ex > x - 1 && ey > y - 1).then(|| Window {
        x0: (x - 1) as usize,
        y0: (y - 1) as usize,
        w: (ex - x + 1) as usize,
        h: (ey - y + 1) as usize,
    })
}

/// O-Net's landmarks (five x then five y, relative to the crop) in image pixels:
/// `(x2 - x1 + 1) * lx + x1 - 1`, for the box the crop was taken from.
pub fn landmarks(bbox: [f32; 4], relative: &[f32]) -> [[f32; 2]; 5] {
    let [x1, y1, x2, y2] = bbox;
    let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
    std::array::from_fn(|k| [w * relative[k] + x1 - 1.0, h * relative[k + 5] + y1 - 1.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squaring_keeps_the_centre() {
        // facenet-pytorch 2.6.0: rerec(torch.tensor([[10., 20., 30., 60.]])) -> [[0., 20., 40., 60.]]
        assert_eq!(square([10.0, 20.0, 30.0, 60.0]), [0.0, 20.0, 40.0, 60.0]);
    }

    #[test]
    fn crop_windows_are_clipped_to_the_image() {
        // facenet-pytorch 2.6.0: pad(torch.tensor([[-3.7, 5.2, 40.9, 300.0]]), 50, 100)
        // -> y=5, ey=100, x=1, ex=40: rows 4..100, columns 0..40.
        let win = crop_window([-3.7, 5.2, 40.9, 300.0], 50, 100).unwrap();
        assert_eq!(
            win,
            Window {
                x0: 0,
                y0: 4,
                w: 40,
                h: 96
            }
        );
        assert_eq!(crop_window([60.0, 5.0, 80.0, 20.0], 50, 100), None);
    }
}
