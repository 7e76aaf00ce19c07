//! The ControlNet condition image: an OpenPose skeleton of every posed person (RGB u8 on black,
//! scaled to [0, 1]) plus each person's 64x64 ID patch added around their face centre.
//!
//! The skeleton reproduces the reference drawing pixel for pixel: COCO-17 is mapped to
//! OpenPose-18 with a synthesised neck, keypoints with score <= 0.3 are dropped, limbs are filled
//! ellipses (OpenCV's `ellipse2Poly` + `fillConvexPoly`, stick width 4), joints of drawn limbs
//! are radius-4 filled circles, and the result is `0.4 * joints + 0.6 * (joints + limbs)`. The
//! rasterisation below follows OpenCV's integer arithmetic (its sine table, Bresenham outline,
//! 16.16 fixed-point edge stepping, circle spans) rather than an idealised geometry, because
//! ControlNet was trained on OpenCV's pixels.
//!
//! Patch windows use round-half-to-even (as `torch.round` does): `xmin = round(x - 32)`,
//! `xmax = round(x + 32)`. A patch is skipped only when its window says the centre is outside the
//! image; windows crossing the border are clipped, and overlapping patches add up.

use half::bf16;

use crate::image_io::Rgb8;
use crate::layout::{Layout, COCO_KEYPOINTS};
use crate::{Error, Result, Tensor};

/// Side of an ID patch.
pub const PATCH: usize = 64;
const HALF_PATCH: i64 = (PATCH / 2) as i64;
/// Keypoints with a score at or below this are not drawn.
pub const KEYPOINT_THRESHOLD: f32 = 0.3;
const STICK_WIDTH: i32 = 4;
const JOINT_RADIUS: i32 = 4;

/// OpenPose-18 slot -> index into COCO-17 extended with the neck at 17.
const OPENPOSE_FROM_COCO: [usize; 18] =
    [0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3];
/// Limbs as OpenPose slot pairs; limb `n` is drawn in `COLORS[n]`, joint `j` in `COLORS[j]`.
const LIMBS: [(usize, usize); 17] = [
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
];
/// The standard OpenPose palette (RGB).
const COLORS: [[u8; 3]; 18] = [
    [255, 0, 0],
    [255, 85, 0],
    [255, 170, 0],
    [255, 255, 0],
    [170, 255, 0],
    [85, 255, 0],
    [0, 255, 0],
    [0, 255, 85],
    [0, 255, 170],
    [0, 255, 255],
    [0, 170, 255],
    [0, 85, 255],
    [0, 0, 255],
    [85, 0, 255],
    [170, 0, 255],
    [255, 0, 255],
    [255, 0, 170],
    [255, 0, 85],
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConditionOptions {
    /// Round patch centres through bfloat16 first, as the reference (run in bf16) does: centres
    /// move in 2-pixel steps in 256..511 and 4-pixel steps in 512..1023.
    pub bf16_positions: bool,
}

/// Clipped painting on an [`Rgb8`], the drawing primitives the rasteriser needs.
trait Canvas {
    /// Paints columns `x0..=x1` of row `y`, clipped to the image.
    fn span(&mut self, y: i64, x0: i64, x1: i64, color: [u8; 3]);

    fn put(&mut self, x: i64, y: i64, color: [u8; 3]) {
        self.span(y, x, x, color);
    }
}

impl Canvas for Rgb8 {
    fn span(&mut self, y: i64, x0: i64, x1: i64, color: [u8; 3]) {
        let (width, height) = (self.width(), self.height());
        if y < 0 || y >= height as i64 {
            return;
        }
        let x0 = x0.max(0);
        let x1 = x1.min(width as i64 - 1);
        if x0 > x1 {
            return;
        }
        let row = y as usize * width * 3;
        let pixels = &mut self.data_mut()[row + x0 as usize * 3..row + (x1 as usize + 1) * 3];
        for px in pixels.chunks_exact_mut(3) {
            px.copy_from_slice(&color);
        }
    }
}

/// The skeleton image of every posed person in `layout` (black when none has a pose).
pub fn skeleton(layout: &Layout) -> Rgb8 {
    let poses: Vec<&[[f32; 3]; COCO_KEYPOINTS]> =
        layout.people.iter().filter_map(|p| p.keypoints()).collect();
    draw_skeletons(layout.width as usize, layout.height as usize, &poses)
}

/// Draws COCO-17 poses (`[x, y, score]` in pixels) as OpenPose skeletons on black.
pub fn draw_skeletons(width: usize, height: usize, poses: &[&[[f32; 3]; COCO_KEYPOINTS]]) -> Rgb8 {
    let poses: Vec<[[f32; 3]; 18]> = poses.iter().map(|p| to_openpose(p)).collect();
    let drawn = |pose: &[[f32; 3]; 18], (a, b): (usize, usize)| {
        pose[a][2] > KEYPOINT_THRESHOLD && pose[b][2] > KEYPOINT_THRESHOLD
    };

    // Joints first, only those on a drawn limb.
    let mut joints = Rgb8::zeros(width, height);
    for pose in &poses {
        let mut on_limb = [false; 18];
        for &limb in &LIMBS {
            if drawn(pose, limb) {
                on_limb[limb.0] = true;
                on_limb[limb.1] = true;
            }
        }
        for (j, kp) in pose.iter().enumerate() {
            if on_limb[j] {
                // Truncation toward zero, as Python's int() does.
                fill_circle(
                    &mut joints,
                    kp[0] as i64,
                    kp[1] as i64,
                    JOINT_RADIUS,
                    COLORS[j],
                );
            }
        }
    }

    // Limbs over a copy of the joints; later limbs and people paint over earlier ones.
    let mut limbs = joints.clone();
    for pose in &poses {
        for (n, &(a, b)) in LIMBS.iter().enumerate() {
            if !drawn(pose, (a, b)) {
                continue;
            }
            let (pa, pb) = (pose[a], pose[b]);
            // Single-precision arithmetic, as numpy does on the float32 keypoints.
            let (dx, dy) = (pa[0] - pb[0], pa[1] - pb[1]);
            let length = (dy * dy + dx * dx).sqrt();
            let angle = (dy as f64).atan2(dx as f64).to_degrees();
            let centre = (
                ((pa[0] + pb[0]) / 2.0) as i64,
                ((pa[1] + pb[1]) / 2.0) as i64,
            );
            let polygon = ellipse_polygon(
                centre,
                ((length / 2.0) as i64, STICK_WIDTH as i64),
                angle as i64,
            );
            fill_convex_polygon(&mut limbs, &polygon, COLORS[n]);
        }
    }

    // cv2.addWeighted(joints, 0.4, limbs, 0.6, 0): float arithmetic, round half to even. Equal
    // inputs (most of the image) blend to themselves.
    for (limb, &joint) in limbs.data_mut().iter_mut().zip(joints.data()) {
        if *limb != joint {
            *limb = blend(joint, *limb);
        }
    }
    limbs
}

fn blend(joint: u8, limb: u8) -> u8 {
    (joint as f32 * 0.4 + limb as f32 * 0.6)
        .round_ties_even()
        .clamp(0.0, 255.0) as u8
}

/// COCO-17 -> OpenPose-18; the neck is the shoulders' midpoint with the lower of their scores.
fn to_openpose(coco: &[[f32; 3]; COCO_KEYPOINTS]) -> [[f32; 3]; 18] {
    let (l, r) = (coco[5], coco[6]);
    let neck = [(l[0] + r[0]) / 2.0, (l[1] + r[1]) / 2.0, l[2].min(r[2])];
    OPENPOSE_FROM_COCO.map(|i| if i == 17 { neck } else { coco[i] })
}

/// sin of whole degrees 0..=450 at the 7-decimal precision of OpenCV's drawing table (stored as
/// f32), so that polygon vertices round exactly as OpenCV's do.
fn sin_table() -> &'static [f32; 451] {
    static TABLE: std::sync::OnceLock<[f32; 451]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|deg| {
            let s = (deg as f64).to_radians().sin();
            format!("{s:.7}")
                .parse::<f32>()
                .expect("formatted float parses")
        })
    })
}

/// Vertices of a full ellipse at 1-degree steps, rounded to integers with consecutive
/// duplicates removed (OpenCV's `ellipse2Poly(center, axes, angle, 0, 360, 1)`).
fn ellipse_polygon(centre: (i64, i64), axes: (i64, i64), angle: i64) -> Vec<(i64, i64)> {
    let table = sin_table();
    let angle = angle.rem_euclid(360) as usize;
    let (cos_a, sin_a) = (table[450 - angle] as f64, table[angle] as f64);
    let (cx, cy) = (centre.0 as f64, centre.1 as f64);
    let mut points: Vec<(i64, i64)> = Vec::with_capacity(361);
    for deg in 0..=360usize {
        let x = axes.0 as f64 * table[450 - deg] as f64;
        let y = axes.1 as f64 * table[deg] as f64;
        let px = (cx + x * cos_a - y * sin_a).round_ties_even() as i64;
        let py = (cy + x * sin_a + y * cos_a).round_ties_even() as i64;
        if points.last() != Some(&(px, py)) {
            points.push((px, py));
        }
    }
    if points.len() == 1 {
        points.push(centre);
        points[0] = centre;
    }
    points
}

/// Cohen-Sutherland clipping to `[0, w) x [0, h)` with OpenCV's truncating intersection
/// arithmetic; `None` when the segment misses the image.
fn clip_segment(w: i64, h: i64, p1: &mut (i64, i64), p2: &mut (i64, i64)) -> bool {
    let (right, bottom) = (w - 1, h - 1);
    if w <= 0 || h <= 0 {
        return false;
    }
    let code = |p: (i64, i64)| {
        (p.0 < 0) as i32
            + (p.0 > right) as i32 * 2
            + (p.1 < 0) as i32 * 4
            + (p.1 > bottom) as i32 * 8
    };
    let (mut c1, mut c2) = (code(*p1), code(*p2));
    if c1 & c2 == 0 && (c1 | c2) != 0 {
        if c1 & 12 != 0 {
            let a = if c1 < 8 { 0 } else { bottom };
            p1.0 += ((a - p1.1) as f64 * (p2.0 - p1.0) as f64 / (p2.1 - p1.1) as f64) as i64;
            p1.1 = a;
            c1 = (p1.0 < 0) as i32 + (p1.0 > right) as i32 * 2;
        }
        if c2 & 12 != 0 {
            let a = if c2 < 8 { 0 } else { bottom };
            p2.0 += ((a - p2.1) as f64 * (p2.0 - p1.0) as f64 / (p2.1 - p1.1) as f64) as i64;
            p2.1 = a;
            c2 = (p2.0 < 0) as i32 + (p2.0 > right) as i32 * 2;
        }
        if c1 & c2 == 0 && (c1 | c2) != 0 {
            if c1 != 0 {
                let a = if c1 == 1 { 0 } else { right };
                p1.1 += ((a - p1.0) as f64 * (p2.1 - p1.1) as f64 / (p2.0 - p1.0) as f64) as i64;
                p1.0 = a;
                c1 = 0;
            }
            if c2 != 0 {
                let a = if c2 == 1 { 0 } else { right };
                p2.1 += ((a - p2.0) as f64 * (p2.1 - p1.1) as f64 / (p2.0 - p1.0) as f64) as i64;
                p2.0 = a;
                c2 = 0;
            }
        }
    }
    (c1 | c2) == 0
}

/// 8-connected Bresenham segment, traversed left to right, as OpenCV's `LineIterator` does.
fn draw_line(img: &mut Rgb8, mut p1: (i64, i64), mut p2: (i64, i64), color: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let outside = |p: (i64, i64)| p.0 < 0 || p.0 >= w || p.1 < 0 || p.1 >= h;
    if (outside(p1) || outside(p2)) && !clip_segment(w, h, &mut p1, &mut p2) {
        return;
    }
    let (mut dx, mut dy) = (p2.0 - p1.0, p2.1 - p1.1);
    let mut start = p1;
    if dx < 0 {
        dx = -dx;
        dy = -dy;
        start = p2;
    }
    let (mut step_x, mut step_y) = (1i64, 1i64);
    if dy < 0 {
        dy = -dy;
        step_y = -1;
    }
    let steep = dy > dx;
    if steep {
        std::mem::swap(&mut dx, &mut dy);
        std::mem::swap(&mut step_x, &mut step_y);
    }
    // Along the major axis every step, along the minor one when the error goes negative.
    let (mut major, mut minor) = if steep {
        (start.1, start.0)
    } else {
        (start.0, start.1)
    };
    let mut err = dx - 2 * dy;
    for _ in 0..=dx {
        let (x, y) = if steep {
            (minor, major)
        } else {
            (major, minor)
        };
        img.put(x, y, color);
        let negative = err < 0;
        err += -2 * dy + if negative { 2 * dx } else { 0 };
        major += step_x;
        if negative {
            minor += step_y;
        }
    }
}

const XY_SHIFT: i64 = 16;
const XY_ONE: i64 = 1 << XY_SHIFT;

/// One of the two edges the convex fill walks down from the top vertex: the vertex it ends at
/// (`idx`), the direction it walks the vertex list (`step`: 1 or n - 1), its 16.16 x and slope,
/// and the row where it ends.
struct Edge {
    idx: usize,
    step: usize,
    x: i64,
    dx: i64,
    ye: i64,
}

impl Edge {
    /// At row `y`, once the edge has ended, moves it on to the next vertex below `y`, consuming
    /// vertices from the count `remaining` both edges share (OpenCV's `edges` counter).
    fn advance(&mut self, v: &[(i64, i64)], y: i64, remaining: &mut i64) {
        if y < self.ye {
            return;
        }
        let n = v.len();
        let mut idx0 = self.idx;
        let mut idx = (idx0 + self.step) % n;
        loop {
            let more = *remaining > 0;
            *remaining -= 1;
            if !more {
                return;
            }
            let ty = v[idx].1;
            if ty > y {
                let xs = v[idx0].0 << XY_SHIFT;
                let xe = v[idx].0 << XY_SHIFT;
                self.ye = ty;
                // C integer division truncates toward zero, as Rust's does.
                self.dx = ((xe - xs) * 2 + (ty - y)) / (2 * (ty - y));
                self.x = xs;
                self.idx = idx;
                return;
            }
            idx0 = idx;
            idx = (idx + self.step) % n;
        }
    }
}

/// Draws the outline of `v` and returns the index of its top vertex with the rows to scan
/// (`ymin`, `ymax` clipped to the image), or `None` when there is no interior in the image.
fn outline(img: &mut Rgb8, v: &[(i64, i64)], color: [u8; 3]) -> Option<(usize, i64, i64)> {
    let n = v.len();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut prev = *v.last()?;
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (v[0].0, v[0].0, v[0].1, v[0].1);
    let mut imin = 0;
    for (i, &p) in v.iter().enumerate() {
        if p.1 < ymin {
            ymin = p.1;
            imin = i;
        }
        ymax = ymax.max(p.1);
        xmax = xmax.max(p.0);
        xmin = xmin.min(p.0);
        draw_line(img, prev, p, color);
        prev = p;
    }
    if n < 3 || xmax < 0 || ymax < 0 || xmin >= w || ymin >= h {
        return None;
    }
    Some((imin, ymin, ymax.min(h - 1)))
}

/// Fills a convex polygon with integer vertices like OpenCV's `fillConvexPoly(..., LINE_8, 0)`:
/// the outline is drawn with Bresenham segments, then the interior is scanned with two 16.16
/// fixed-point edges walking down from the top vertex.
fn fill_convex_polygon(img: &mut Rgb8, v: &[(i64, i64)], color: [u8; 3]) {
    let Some((imin, ymin, ymax)) = outline(img, v, color) else {
        return;
    };
    let (n, w) = (v.len(), img.width() as i64);
    let edge = |step| Edge {
        idx: imin,
        step,
        x: -XY_ONE,
        dx: 0,
        ye: ymin,
    };
    let mut edges = [edge(1), edge(n - 1)];
    // Vertices left to consume, shared by both edges (the polygon is walked once around).
    let mut remaining = n as i64;
    let half = XY_ONE >> 1;
    let mut y = ymin;
    loop {
        for e in edges.iter_mut() {
            e.advance(v, y, &mut remaining);
        }
        if remaining < 0 {
            break;
        }
        if y >= 0 {
            let (left, right) = if edges[0].x > edges[1].x {
                (1, 0)
            } else {
                (0, 1)
            };
            let x1 = (edges[left].x + half) >> XY_SHIFT;
            let x2 = (edges[right].x + half) >> XY_SHIFT;
            if x2 >= 0 && x1 < w {
                img.span(y, x1, x2, color);
            }
        }
        edges[0].x += edges[0].dx;
        edges[1].x += edges[1].dx;
        y += 1;
        if y > ymax {
            break;
        }
    }
}

/// Filled circle by OpenCV's midpoint-circle spans (`cv2.circle(..., thickness=-1)`, LINE_8).
fn fill_circle(img: &mut Rgb8, cx: i64, cy: i64, radius: i32, color: [u8; 3]) {
    let (mut err, mut dx, mut dy) = (0i64, radius as i64, 0i64);
    let (mut plus, mut minus) = (1i64, (radius as i64) * 2 - 1);
    while dx >= dy {
        img.span(cy - dy, cx - dx, cx + dx, color);
        img.span(cy + dy, cx - dx, cx + dx, color);
        img.span(cy - dx, cx - dy, cx + dy, color);
        img.span(cy + dx, cx - dy, cx + dy, color);
        dy += 1;
        err += plus;
        plus += 2;
        if err > 0 {
            err -= minus;
            dx -= 1;
            minus -= 2;
        }
    }
}

/// The top-left corner of a face's patch window, or `None` when the reference skips the patch
/// (its centre is outside the `width` x `height` image).
pub fn patch_origin(
    centre: [f32; 2],
    width: usize,
    height: usize,
    options: &ConditionOptions,
) -> Option<(i64, i64)> {
    let (xmin, xmax) = window(centre[0], options);
    let (ymin, ymax) = window(centre[1], options);
    let skip = xmin + HALF_PATCH < 0
        || xmax - HALF_PATCH >= width as i64
        || ymin + HALF_PATCH < 0
        || ymax - HALF_PATCH >= height as i64;
    (!skip).then_some((xmin, ymin))
}

/// `(round(c - 32), round(c + 32))`, half to even. With bf16 positions the centre and both sums
/// are rounded to bfloat16 first, so the window may be 62 or 66 wide; the patch is then still
/// placed at the first value (the reference cannot add it at all there).
pub fn window(c: f32, options: &ConditionOptions) -> (i64, i64) {
    if options.bf16_positions {
        let c = bf16::from_f32(c).to_f32();
        let round = |v: f32| bf16::from_f32(v).to_f32().round_ties_even() as i64;
        (round(c - HALF_PATCH as f32), round(c + HALF_PATCH as f32))
    } else {
        let lo = (c as f64 - HALF_PATCH as f64).round_ties_even() as i64;
        (lo, lo + PATCH as i64)
    }
}

/// `skeleton / 255 + patches`, (3, H, W) f32: the patches are summed into a zero canvas in
/// people order, clipped at the borders, then the skeleton is added. `patches` holds at least
/// one (3, 64, 64) patch per centre (see [`check_patches`]); fewer is a caller bug and panics.
pub fn composite(
    skeleton: &Rgb8,
    centres: &[[f32; 2]],
    patches: &[f32],
    options: &ConditionOptions,
) -> Vec<f32> {
    let (w, h) = (skeleton.width(), skeleton.height());
    let plane = w * h;
    let mut canvas = vec![0f32; 3 * plane];
    for (f, &centre) in centres.iter().enumerate() {
        let Some((x0, y0)) = patch_origin(centre, w, h, options) else {
            continue;
        };
        let patch = &patches[f * 3 * PATCH * PATCH..(f + 1) * 3 * PATCH * PATCH];
        // The part of the 64x64 window inside the image.
        let (xa, xb) = (x0.max(0), (x0 + PATCH as i64).min(w as i64));
        let (ya, yb) = (y0.max(0), (y0 + PATCH as i64).min(h as i64));
        if xa >= xb || ya >= yb {
            continue;
        }
        let (px, width) = ((xa - x0) as usize, (xb - xa) as usize);
        for c in 0..3 {
            for y in ya..yb {
                let py = (y - y0) as usize;
                let src = &patch[c * PATCH * PATCH + py * PATCH + px..][..width];
                let dst = &mut canvas[c * plane + y as usize * w + xa as usize..][..width];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
    }
    // u8 / 255 in f32, as numpy divides the float32 skeleton.
    let scaled: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    for (c, plane_values) in canvas.chunks_exact_mut(plane).enumerate() {
        for (v, px) in plane_values.iter_mut().zip(skeleton.data().chunks_exact(3)) {
            *v += scaled[px[c] as usize];
        }
    }
    canvas
}

/// The condition image for `layout` with one (3, 64, 64) patch per person, in people order:
/// `patches` is f32 (F, 3, 64, 64). Returns f32 (3, H, W), RGB.
pub fn condition_tensor(
    layout: &Layout,
    patches: &Tensor,
    options: &ConditionOptions,
) -> Result<Tensor> {
    check_patches(patches, layout.people.len(), "patches")?;
    let data = patches.as_f32().expect("checked f32");
    let centres: Vec<[f32; 2]> = layout.people.iter().map(|p| p.centre()).collect();
    let image = composite(&skeleton(layout), &centres, data, options);
    Tensor::from_f32(
        vec![3, layout.height as usize, layout.width as usize],
        image,
    )
}

/// Largest magnitude accepted in user-given ID patches. patch_proj ends in a LayerNorm, so real
/// patches hold values of a few units; the bound also keeps the sum of overlapping patches far
/// from f32 overflow.
pub const MAX_PATCH_VALUE: f32 = 1e4;

/// Checks that `patches` is f32 (people, 3, 64, 64) with finite values of magnitude at most
/// [`MAX_PATCH_VALUE`]; `name` is how errors call it.
pub fn check_patches(patches: &Tensor, people: usize, name: &str) -> Result<()> {
    let expected = [people, 3, PATCH, PATCH];
    if patches.shape() != expected || patches.as_f32().is_none() {
        return Err(Error::invalid_input(
            name,
            format!(
                "expected float32 {expected:?} (one 3x64x64 patch per person, {people} people), got {} {:?}",
                patches.dtype(),
                patches.shape()
            ),
        ));
    }
    let values = patches.as_f32().expect("dtype checked");
    if let Some(i) = values
        .iter()
        .position(|v| !v.is_finite() || v.abs() > MAX_PATCH_VALUE)
    {
        return Err(Error::invalid_input(
            name,
            format!(
                "value {} at flat index {i} is not finite or exceeds {MAX_PATCH_VALUE} in magnitude",
                crate::error::shown(values[i])
            ),
        ));
    }
    Ok(())
}

/// PNG bytes of a (3, H, W) condition: values clamped to [0, 1], times 255, rounded (through
/// [`crate::image_io::encode_png`], without text).
pub fn preview_png(condition: &Tensor) -> Result<Vec<u8>> {
    let (&[3, h, w], Some(data)) = (condition.shape(), condition.as_f32()) else {
        return Err(Error::invalid_input(
            "condition",
            format!(
                "expected float32 (3, H, W), got {} {:?}",
                condition.dtype(),
                condition.shape()
            ),
        ));
    };
    let plane = w * h;
    let mut rgb = vec![0u8; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            rgb[p * 3 + c] = (data[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    crate::image_io::encode_png(&Rgb8::new(w, h, rgb)?, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circle_of_radius_four_matches_opencv_shape() {
        // OpenCV 5.0.0: img = np.zeros((9, 9, 3), np.uint8);
        // cv2.circle(img, (4, 4), 4, (255, 0, 0), -1); (img[:, :, 0] == 255).sum(axis=1)
        // -> [1, 5, 7, 7, 9, 7, 7, 5, 1]. (Whole skeletons: tests/condition.rs.)
        let mut img = Rgb8::zeros(9, 9);
        fill_circle(&mut img, 4, 4, 4, [255, 0, 0]);
        let widths: Vec<usize> = (0..9)
            .map(|y| {
                (0..9)
                    .filter(|&x| img.data()[(y * 9 + x) * 3] == 255)
                    .count()
            })
            .collect();
        assert_eq!(widths, [1, 5, 7, 7, 9, 7, 7, 5, 1]);
    }

    #[test]
    fn bf16_windows_follow_bfloat16_steps() {
        let opts = ConditionOptions {
            bf16_positions: true,
        };
        // 301 is not a bfloat16 (step 2 in 256..511): it rounds to 300 (ties to even).
        // torch 2.11: c = torch.tensor([301.0]).bfloat16();
        // torch.round(c - 32), torch.round(c + 32) -> 268.0, 332.0
        assert_eq!(window(301.0, &opts), (268, 332));
        // numpy 2.4.6: np.round(301.0 - 32), np.round(301.0 + 32) -> 269.0, 333.0
        assert_eq!(window(301.0, &ConditionOptions::default()), (269, 333));
    }
}
