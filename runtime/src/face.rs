//! Face alignment: five keypoints -> similarity transform onto the ArcFace template -> 112x112
//! crop -> the ArcFace input tensor (BGR, NCHW, [-1, 1]).
//!
//! The numbers reproduce the reference preprocessing: scikit-image's
//! `SimilarityTransform.estimate` (Umeyama, no reflection) and OpenCV's
//! `cv2.warpAffine(img, M, (112, 112), INTER_LINEAR, BORDER_CONSTANT, 0)`.

use crate::image_io::Rgb8;
use crate::{Error, Result, Tensor};

/// Side of the aligned crop ArcFace takes.
pub const ARCFACE_SIZE: usize = 112;

/// Where the five keypoints land in the 112x112 ArcFace crop, (x, y), in [`KEYPOINT_NAMES`] order.
pub const ARCFACE_TEMPLATE: [[f64; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The five face keypoints, in the order every keypoint array here uses. "Left" is the left of
/// the image (the subject's right).
pub const KEYPOINT_NAMES: [&str; 5] =
    ["left eye", "right eye", "nose", "mouth left", "mouth right"];

/// Least-squares similarity transform (rotation, uniform scale, translation; never a reflection)
/// mapping `src` onto `dst`, as the 2x3 matrix `[[a, -b, tx], [b, a, ty]]`. Matches
/// scikit-image's `SimilarityTransform.estimate(src, dst).params[:2]` (Umeyama 1991).
///
/// Degenerate keypoints (not finite, two coinciding, all on one line) are an error naming the
/// offending points.
pub fn similarity_transform(src: &[[f64; 2]; 5], dst: &[[f64; 2]; 5]) -> Result<[[f64; 3]; 2]> {
    check_keypoints("source keypoints", src)?;
    check_keypoints("destination keypoints", dst)?;
    umeyama(src, dst).ok_or_else(|| {
        Error::invalid_input(
            "source keypoints",
            "no similarity transform fits these points",
        )
    })
}

/// Warps `img` into an `out_w` x `out_h` image: output pixel (x, y) samples the source at
/// `inverse(m) * (x, y, 1)` with bilinear interpolation; samples outside the source are black.
///
/// Reproduces `cv2.warpAffine(img, m, (out_w, out_h), flags=INTER_LINEAR,
/// borderMode=BORDER_CONSTANT, borderValue=0)` of OpenCV 4.11+/5.x bit for bit (checked against
/// OpenCV 5.0 on x86-64 with AVX2): OpenCV inverts `m` in f64, rounds the inverse to f32, maps
/// coordinates and interpolates in f32 with fused multiply-adds, and rounds half to even.
/// OpenCV itself can differ from this by a grey level on CPUs without FMA, in the last columns
/// of rows whose width is not a multiple of its vector block (16 with AVX2; 112 is), and in
/// versions before 4.11, which used 1/32-pixel fixed-point weights.
pub fn warp_affine_bilinear(
    img: &Rgb8,
    m: [[f64; 3]; 2],
    out_w: usize,
    out_h: usize,
) -> Result<Rgb8> {
    if m.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::invalid_input(
            "affine transform",
            format!("not finite: {m:?}"),
        ));
    }
    let inv = invert_affine(&m).ok_or_else(|| {
        Error::invalid_input("affine transform", format!("not invertible: {m:?}"))
    })?;
    let mut out = Rgb8::zeros(out_w, out_h);
    if img.width() == 0 || img.height() == 0 {
        return Ok(out);
    }
    warp_rows(img, &inv, &mut out);
    Ok(out)
}

/// Aligns the face with the given keypoints (in `img` pixels, [`KEYPOINT_NAMES`] order) onto the
/// ArcFace template: a 112x112 crop. `face` names the face in errors (e.g. "face photo a.jpg").
pub fn align_face(img: &Rgb8, keypoints: &[[f64; 2]; 5], face: &str) -> Result<Rgb8> {
    check_keypoints(&format!("{face} keypoints"), keypoints)?;
    let m = umeyama(keypoints, &ARCFACE_TEMPLATE).ok_or_else(|| {
        Error::invalid_input(
            format!("{face} keypoints"),
            "no similarity transform fits these points",
        )
    })?;
    warp_affine_bilinear(img, m, ARCFACE_SIZE, ARCFACE_SIZE)
}

/// The ArcFace input for one face: (1, 3, 112, 112) f32, BGR, `x / 255 * 2 - 1`.
///
/// With `keypoints`, the face is aligned first ([`align_face`]); without, `img` must already be
/// an aligned 112x112 crop and is used as is. `face` names the face in errors.
pub fn arcface_input(img: &Rgb8, keypoints: Option<&[[f64; 2]; 5]>, face: &str) -> Result<Tensor> {
    match keypoints {
        Some(kps) => arcface_tensor(&align_face(img, kps, face)?),
        None if img.width() == ARCFACE_SIZE && img.height() == ARCFACE_SIZE => arcface_tensor(img),
        None => Err(Error::invalid_input(
            face,
            format!(
                "without keypoints the face must be an aligned {ARCFACE_SIZE}x{ARCFACE_SIZE} crop, got {}x{}",
                img.width(),
                img.height()
            ),
        )),
    }
}

/// Converts an aligned 112x112 RGB crop to the ArcFace input (see [`arcface_input`]).
fn arcface_tensor(aligned: &Rgb8) -> Result<Tensor> {
    let plane = ARCFACE_SIZE * ARCFACE_SIZE;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in aligned.data().chunks_exact(3).enumerate() {
        for (c, &v) in [px[2], px[1], px[0]].iter().enumerate() {
            // Same f32 operation order as numpy's `x / 255 * 2 - 1`, so values match exactly.
            data[c * plane + i] = f32::from(v) / 255.0 * 2.0 - 1.0;
        }
    }
    Tensor::from_f32(vec![1, 3, ARCFACE_SIZE, ARCFACE_SIZE], data)
}

/// Rejects keypoints no face can have: non-finite values, two points at the same place, all
/// points on one line. `what` names the keypoint set in the error.
fn check_keypoints(what: &str, kps: &[[f64; 2]; 5]) -> Result<()> {
    let name = |i: usize| format!("keypoint {i} ({})", KEYPOINT_NAMES[i]);
    for (i, p) in kps.iter().enumerate() {
        if !p[0].is_finite() || !p[1].is_finite() {
            return Err(Error::invalid_input(
                what,
                format!("{} is not finite: ({}, {})", name(i), p[0], p[1]),
            ));
        }
    }
    let (mean, cov) = mean_and_covariance(kps);
    let spread = (cov[0][0] + cov[1][1]).sqrt();
    if spread == 0.0 {
        return Err(Error::invalid_input(
            what,
            format!("all five keypoints coincide at ({}, {})", mean[0], mean[1]),
        ));
    }
    // Relative tolerances: a face's keypoints are separated by a good fraction of their spread,
    // these only catch points that are equal up to rounding.
    for i in 0..5 {
        for j in i + 1..5 {
            let d = (kps[i][0] - kps[j][0]).hypot(kps[i][1] - kps[j][1]);
            if d <= 1e-9 * spread {
                return Err(Error::invalid_input(
                    what,
                    format!(
                        "{} and {} coincide at ({}, {})",
                        name(i),
                        name(j),
                        kps[i][0],
                        kps[i][1]
                    ),
                ));
            }
        }
    }
    // Smaller eigenvalue of the 2x2 covariance relative to the larger one.
    let half_trace = 0.5 * (cov[0][0] + cov[1][1]);
    let det = cov[0][0] * cov[1][1] - cov[0][1] * cov[1][0];
    let disc = (half_trace * half_trace - det).max(0.0).sqrt();
    let (large, small) = (half_trace + disc, (half_trace - disc).max(0.0));
    if small <= 1e-12 * large {
        return Err(Error::invalid_input(
            what,
            "all five keypoints lie on one line; they cannot be a face's eyes, nose and mouth",
        ));
    }
    Ok(())
}

fn mean_and_covariance(pts: &[[f64; 2]; 5]) -> ([f64; 2], [[f64; 2]; 2]) {
    let n = pts.len() as f64;
    let mean = [
        pts.iter().map(|p| p[0]).sum::<f64>() / n,
        pts.iter().map(|p| p[1]).sum::<f64>() / n,
    ];
    let mut cov = [[0.0; 2]; 2];
    for p in pts {
        let d = [p[0] - mean[0], p[1] - mean[1]];
        for r in 0..2 {
            for c in 0..2 {
                cov[r][c] += d[r] * d[c] / n;
            }
        }
    }
    (mean, cov)
}

/// Umeyama's least-squares similarity in closed form for 2-D. With A the cross-covariance
/// (dst x src), the best proper rotation has cos:sin = (A00 + A11) : (A10 - A01), and the
/// scale is |(A00 + A11, A10 - A01)| / var(src), which equals (s1 + sign(det A) s2) / var(src)
/// of the SVD route: the same reflection-free choice scikit-image makes when det(A) < 0.
fn umeyama(src: &[[f64; 2]; 5], dst: &[[f64; 2]; 5]) -> Option<[[f64; 3]; 2]> {
    let n = src.len() as f64;
    let (src_mean, src_cov) = mean_and_covariance(src);
    let (dst_mean, _) = mean_and_covariance(dst);
    let mut a = [[0.0f64; 2]; 2];
    for (s, d) in src.iter().zip(dst) {
        let sd = [s[0] - src_mean[0], s[1] - src_mean[1]];
        let dd = [d[0] - dst_mean[0], d[1] - dst_mean[1]];
        for r in 0..2 {
            for c in 0..2 {
                a[r][c] += dd[r] * sd[c] / n;
            }
        }
    }
    let src_var = src_cov[0][0] + src_cov[1][1];
    let cos_part = a[0][0] + a[1][1];
    let sin_part = a[1][0] - a[0][1];
    let norm = cos_part.hypot(sin_part);
    if !(norm > 0.0 && src_var > 0.0) {
        return None;
    }
    let scale = norm / src_var;
    let sa = scale * cos_part / norm;
    let sb = scale * sin_part / norm;
    let tx = dst_mean[0] - (sa * src_mean[0] - sb * src_mean[1]);
    let ty = dst_mean[1] - (sb * src_mean[0] + sa * src_mean[1]);
    let m = [[sa, -sb, tx], [sb, sa, ty]];
    m.iter().flatten().all(|v| v.is_finite()).then_some(m)
}

/// Inverse of a 2x3 affine map, computed as OpenCV's `invertAffineTransform` does (f64).
fn invert_affine(m: &[[f64; 3]; 2]) -> Option<[[f64; 3]; 2]> {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let d = 1.0 / det;
    let (a11, a22) = (m[1][1] * d, m[0][0] * d);
    let (a12, a21) = (-m[0][1] * d, -m[1][0] * d);
    let b1 = -a11 * m[0][2] - a12 * m[1][2];
    let b2 = -a21 * m[0][2] - a22 * m[1][2];
    let inv = [[a11, a12, b1], [a21, a22, b2]];
    inv.iter().flatten().all(|v| v.is_finite()).then_some(inv)
}

fn warp_rows(src: &Rgb8, inv: &[[f64; 3]; 2], out: &mut Rgb8) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        unsafe { warp_rows_fma(src, inv, out) };
        return;
    }
    warp_rows_generic(src, inv, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn warp_rows_fma(src: &Rgb8, inv: &[[f64; 3]; 2], out: &mut Rgb8) {
    warp_rows_generic(src, inv, out)
}

/// The sampling loop. `mul_add` is a correctly rounded fused multiply-add everywhere; it is only
/// fast where the FMA instruction is enabled, hence the wrapper above.
#[inline(always)]
fn warp_rows_generic(src: &Rgb8, inv: &[[f64; 3]; 2], out: &mut Rgb8) {
    let (sw, sh) = (src.width() as i64, src.height() as i64);
    let sdata = src.data();
    let row_stride = src.width() * 3;
    let m = inv.map(|row| row.map(|v| v as f32));
    let out_w = out.width();
    for (y, out_row) in out.data_mut().chunks_exact_mut(out_w * 3).enumerate() {
        // OpenCV computes the row offsets with a separate multiply and add in f32.
        let row_x = m[0][1] * y as f32 + m[0][2];
        let row_y = m[1][1] * y as f32 + m[1][2];
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let sx = m[0][0].mul_add(x as f32, row_x);
            let sy = m[1][0].mul_add(x as f32, row_y);
            if !sx.is_finite() || !sy.is_finite() {
                continue;
            }
            let (fx, fy) = (sx.floor(), sy.floor());
            let (ix, iy) = (fx as i64, fy as i64);
            let (alpha, beta) = (sx - fx, sy - fy);
            // Outside the source, sample the black border; a pixel whose 2x2 neighbourhood is
            // entirely outside comes out black either way.
            if ix < -1 || iy < -1 || ix >= sw || iy >= sh {
                continue;
            }
            let mut corners = [[0f32; 3]; 4]; // top-left, top-right, bottom-left, bottom-right
            if ix >= 0 && iy >= 0 && ix + 1 < sw && iy + 1 < sh {
                let top = iy as usize * row_stride + ix as usize * 3;
                let bottom = top + row_stride;
                for c in 0..3 {
                    corners[0][c] = f32::from(sdata[top + c]);
                    corners[1][c] = f32::from(sdata[top + 3 + c]);
                    corners[2][c] = f32::from(sdata[bottom + c]);
                    corners[3][c] = f32::from(sdata[bottom + 3 + c]);
                }
            } else {
                for (k, corner) in corners.iter_mut().enumerate() {
                    let (xx, yy) = (ix + (k & 1) as i64, iy + (k >> 1) as i64);
                    if xx >= 0 && yy >= 0 && xx < sw && yy < sh {
                        let at = yy as usize * row_stride + xx as usize * 3;
                        for c in 0..3 {
                            corner[c] = f32::from(sdata[at + c]);
                        }
                    }
                }
            }
            for (c, v) in px.iter_mut().enumerate() {
                let [p00, p01, p10, p11] = corners.map(|corner| corner[c]);
                let top = alpha.mul_add(p01 - p00, p00);
                let bottom = alpha.mul_add(p11 - p10, p10);
                let value = beta.mul_add(bottom - top, top);
                *v = value.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(deg: f64, scale: f64, t: [f64; 2]) -> [[f64; 3]; 2] {
        let (s, c) = deg.to_radians().sin_cos();
        [[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]]]
    }

    fn apply(m: &[[f64; 3]; 2], p: [f64; 2]) -> [f64; 2] {
        [
            m[0][0] * p[0] + m[0][1] * p[1] + m[0][2],
            m[1][0] * p[0] + m[1][1] * p[1] + m[1][2],
        ]
    }

    #[test]
    fn exact_similarity_is_recovered() {
        let truth = rotation(-33.0, 0.37, [12.5, -7.25]);
        let src = [
            [100.0, 80.0],
            [160.0, 84.0],
            [131.0, 120.0],
            [105.0, 150.0],
            [158.0, 149.0],
        ];
        let dst = src.map(|p| apply(&truth, p));
        let m = similarity_transform(&src, &dst).unwrap();
        for r in 0..2 {
            for c in 0..3 {
                assert!((m[r][c] - truth[r][c]).abs() < 1e-12, "{m:?} vs {truth:?}");
            }
        }
    }

    #[test]
    fn mirrored_points_give_a_rotation_not_a_reflection() {
        // dst is src mirrored: the least-squares fit must still have a positive determinant.
        let src = [
            [10.0, 10.0],
            [30.0, 10.0],
            [20.0, 20.0],
            [12.0, 30.0],
            [28.0, 30.0],
        ];
        let dst = src.map(|p| [-p[0] + 3.0, p[1] * 1.1]);
        let m = similarity_transform(&src, &dst).unwrap();
        assert!(m[0][0] * m[1][1] - m[0][1] * m[1][0] > 0.0);
    }

    #[test]
    fn warp_with_identity_copies_and_borders_are_black() {
        let img = Rgb8::new(4, 3, (0..36).map(|v| v as u8 * 7).collect()).unwrap();
        let same = warp_affine_bilinear(&img, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 4, 3).unwrap();
        assert_eq!(same, img);
        // Shifted right by 2: the first two columns come from outside the source.
        let shifted = warp_affine_bilinear(&img, [[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], 4, 3).unwrap();
        assert_eq!(shifted.pixel(0, 1), Some([0, 0, 0]));
        assert_eq!(shifted.pixel(1, 1), Some([0, 0, 0]));
        assert_eq!(shifted.pixel(2, 1), img.pixel(0, 1));
    }

    fn data_dir(suite: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(suite)
    }

    fn read_json(path: &std::path::Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Warps `img` by `m` into a 112x112 crop with the loop chosen for this CPU and with the
    /// portable one (software fused multiply-add when the CPU has none), in that order.
    fn both_loops(img: &Rgb8, m: [[f64; 3]; 2]) -> [Rgb8; 2] {
        let inv = invert_affine(&m).unwrap();
        let mut dispatched = Rgb8::zeros(ARCFACE_SIZE, ARCFACE_SIZE);
        let mut portable = Rgb8::zeros(ARCFACE_SIZE, ARCFACE_SIZE);
        warp_rows(img, &inv, &mut dispatched);
        warp_rows_generic(img, &inv, &mut portable);
        [dispatched, portable]
    }

    fn count_differing(a: &Rgb8, b: &Rgb8) -> usize {
        a.data()
            .iter()
            .zip(b.data())
            .filter(|(x, y)| x != y)
            .count()
    }

    // Expected: cv2.warpAffine(img, M, (112, 112), INTER_LINEAR, BORDER_CONSTANT, 0) of OpenCV
    // 5.0 on a noise image, where any change in the rounding shows (tests/reference/warp.py,
    // tests/data/warp/), and the aligned face crops of tests/reference/face.py. Both the loop
    // built for FMA CPUs and the portable one must reproduce every byte.
    #[test]
    fn fma_and_portable_sampling_match_opencv() {
        let warp = data_dir("warp");
        let meta = read_json(&warp.join("cases.json"));
        let noise = crate::image_io::load_rgb8(&warp.join("noise.png")).unwrap();
        let cases = meta["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        for case in cases {
            let m = &case["m"];
            let m = std::array::from_fn(|r| std::array::from_fn(|c| m[r][c].as_f64().unwrap()));
            let file = case["file"].as_str().unwrap();
            let want = crate::image_io::load_rgb8(&warp.join(file)).unwrap();
            let lit = want.data().chunks(3).filter(|p| p != &[0, 0, 0]).count();
            assert_eq!(lit as u64, case["nonzero"].as_u64().unwrap(), "{file}");
            for (path, got) in ["dispatched", "portable"].iter().zip(both_loops(&noise, m)) {
                let n = count_differing(&got, &want);
                assert_eq!(
                    n, 0,
                    "noise crop {file}, {path} loop: {n} bytes differ from OpenCV"
                );
            }
        }

        let face = data_dir("face");
        let meta = read_json(&face.join("cases.json"));
        for case in ["upright", "rotated20", "small", "edge"] {
            let kps = &meta["cases"][case]["keypoints"];
            let kps = std::array::from_fn(|i| std::array::from_fn(|j| kps[i][j].as_f64().unwrap()));
            let img = crate::image_io::load_rgb8(&face.join(format!("{case}.png"))).unwrap();
            let want = crate::npy::read(&face.join(format!("{case}_input.npy"))).unwrap();
            let m = similarity_transform(&kps, &ARCFACE_TEMPLATE).unwrap();
            for (path, crop) in ["dispatched", "portable"].iter().zip(both_loops(&img, m)) {
                let got = arcface_tensor(&crop).unwrap();
                assert!(got == want, "face {case}, {path} loop: differs from OpenCV");
            }
        }
    }

    #[test]
    fn singular_or_non_finite_warp_is_an_error() {
        let img = Rgb8::zeros(4, 4);
        assert!(warp_affine_bilinear(&img, [[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]], 4, 4).is_err());
        assert!(warp_affine_bilinear(&img, [[f64::NAN, 0.0, 0.0], [0.0, 1.0, 0.0]], 4, 4).is_err());
    }
}
