//! Face alignment and image I/O against the reference values in tests/data/face/, produced by
//! tests/reference/face.py (scikit-image 0.26 SimilarityTransform, OpenCV 5.0 warpAffine).

mod common;

use std::path::PathBuf;

use idpatch::face::{self, ARCFACE_TEMPLATE};
use idpatch::image_io::{self, Rgb8};

const CASES: [&str; 4] = ["upright", "rotated20", "small", "edge"];

fn data(name: &str) -> PathBuf {
    common::test_data("face").join(name)
}

fn case_keypoints(case: &str) -> [[f64; 2]; 5] {
    let meta: serde_json::Value = common::read_json(&data("cases.json"));
    let kps = &meta["cases"][case]["keypoints"];
    std::array::from_fn(|i| std::array::from_fn(|j| kps[i][j].as_f64().unwrap()))
}

/// A float64 (2, 3) transform saved by numpy.
fn npy_f64(name: &str) -> Vec<f64> {
    let array = idpatch::npy::read_array::<f64>(&data(name)).unwrap();
    assert_eq!(array.shape(), [2, 3], "{name}");
    array.iter().copied().collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("idpatch-face-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// Expected: SimilarityTransform.from_estimate(keypoints, template).params[:2] (face.py).
#[test]
fn similarity_transform_matches_scikit_image() {
    for case in CASES {
        let m = face::similarity_transform(&case_keypoints(case), &ARCFACE_TEMPLATE).unwrap();
        let want = npy_f64(&format!("{case}_transform.npy"));
        let mut max = 0f64;
        for (i, (got, want)) in m.iter().flatten().zip(&want).enumerate() {
            assert!(
                (got - want).abs() <= 1e-9,
                "{case} element {i}: {got} vs {want}"
            );
            max = max.max((got - want).abs());
        }
        println!("{case}: transform max abs difference {max:e}");
    }
}

// Expected: cv2.warpAffine(img, M, (112,112), INTER_LINEAR, BORDER_CONSTANT, 0), then BGR,
// NCHW, x/255*2-1 in f32 (face.py, arcface_input).
#[test]
fn arcface_input_matches_opencv() {
    let mut worst = 0f32;
    for case in CASES {
        let img = image_io::load_rgb8(&data(&format!("{case}.png"))).unwrap();
        let kps = case_keypoints(case);
        let got = face::arcface_input(&img, Some(&kps), case).unwrap();
        let want = idpatch::npy::read(&data(&format!("{case}_input.npy"))).unwrap();
        assert_eq!(got.shape(), &[1, 3, 112, 112]);
        assert_eq!(want.shape(), got.shape());
        let (got, want) = (got.as_f32().unwrap(), want.as_f32().unwrap());
        let diffs: Vec<f32> = got.iter().zip(want).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let off = diffs.iter().filter(|&&d| d > 0.0).count();
        println!(
            "{case}: max {max:e}, mean {mean:e}, {off} of {} values differ",
            diffs.len()
        );
        worst = worst.max(max);
    }
    assert!(worst <= 1e-3, "max per-pixel error {worst}");
}

// Expected: the "upright" aligned crop OpenCV produced, saved as PNG, and its tensor (face.py).
#[test]
fn already_aligned_crop_is_used_as_is() {
    let aligned = image_io::load_rgb8(&data("upright_aligned.png")).unwrap();
    let got = face::arcface_input(&aligned, None, "aligned face").unwrap();
    let want = idpatch::npy::read(&data("upright_input.npy")).unwrap();
    assert_eq!(got.as_f32().unwrap(), want.as_f32().unwrap());

    let err = face::arcface_input(&Rgb8::zeros(100, 112), None, "face photo b.png").unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains("face photo b.png") && err.to_string().contains("100x112"),
        "{err}"
    );
}

#[test]
fn warp_matches_the_aligned_crop_pixels() {
    // Expected: the same cv2.warpAffine output as above, compared as 8-bit pixels.
    let img = image_io::load_rgb8(&data("upright.png")).unwrap();
    let aligned = image_io::load_rgb8(&data("upright_aligned.png")).unwrap();
    let m = face::similarity_transform(&case_keypoints("upright"), &ARCFACE_TEMPLATE).unwrap();
    let got = face::warp_affine_bilinear(&img, m, 112, 112).unwrap();
    assert_eq!(got, aligned);
}

fn upright_with(i: usize, p: [f64; 2]) -> [[f64; 2]; 5] {
    let mut kps = case_keypoints("upright");
    kps[i] = p;
    kps
}

#[test]
fn coincident_keypoints_are_rejected() {
    let img = Rgb8::zeros(64, 64);
    let kps = case_keypoints("upright");
    let err =
        face::arcface_input(&img, Some(&upright_with(4, kps[3])), "face photo a.jpg").unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 2);
    assert!(msg.contains("face photo a.jpg keypoints"), "{msg}");
    assert!(
        msg.contains("mouth left") && msg.contains("mouth right") && msg.contains("coincide"),
        "{msg}"
    );

    let err = face::similarity_transform(&[[5.0, 5.0]; 5], &ARCFACE_TEMPLATE).unwrap_err();
    assert!(
        err.to_string().contains("all five keypoints coincide"),
        "{err}"
    );
}

#[test]
fn collinear_keypoints_are_rejected() {
    let line: [[f64; 2]; 5] =
        std::array::from_fn(|i| [10.0 + 3.0 * i as f64, 20.0 + 1.5 * i as f64]);
    let err = face::similarity_transform(&line, &ARCFACE_TEMPLATE).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains("source keypoints") && err.to_string().contains("one line"),
        "{err}"
    );
    let err = face::align_face(&Rgb8::zeros(8, 8), &line, "people[1].face").unwrap_err();
    assert!(
        err.to_string().starts_with("people[1].face keypoints"),
        "{err}"
    );
}

#[test]
fn non_finite_keypoints_are_rejected() {
    let img = Rgb8::zeros(64, 64);
    for bad in [f64::NAN, f64::INFINITY] {
        let err =
            face::arcface_input(&img, Some(&upright_with(2, [bad, 3.0])), "face 0").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("keypoint 2 (nose) is not finite"),
            "{err}"
        );
    }
    let mut dst = ARCFACE_TEMPLATE;
    dst[0][1] = f64::NAN;
    let err = face::similarity_transform(&case_keypoints("upright"), &dst).unwrap_err();
    assert!(err.to_string().contains("destination keypoints"), "{err}");
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let path = data("no_such_face.png");
    let err = image_io::load_rgb8(&path).unwrap_err();
    assert!(matches!(err, idpatch::Error::Io { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("no_such_face.png"), "{err}");
}

#[test]
fn non_image_file_is_rejected_naming_it() {
    let dir = temp_dir("notimage");
    let path = dir.join("face.png");
    std::fs::write(&path, "this is a text file, not a photo\n").unwrap();
    let err = image_io::load_rgb8(&path).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("face.png") && msg.contains("not an image"),
        "{msg}"
    );
    // A directory is unreadable as a file.
    let err = image_io::load_rgb8(&dir).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

// Expected: cv2.imdecode of the same JPEG bytes (face.py). The loader decodes JPEGs with
// libjpeg as OpenCV does, so every sample matches.
#[test]
fn jpeg_decodes_as_opencv() {
    let got = image_io::load_rgb8(&data("upright_jpeg.jpg")).unwrap();
    let want = idpatch::npy::read_array::<u8>(&data("upright_jpeg.npy")).unwrap();
    assert_eq!(want.shape(), [64, 64, 3]);
    assert_eq!((got.width(), got.height()), (64, 64));
    assert_eq!(got.data(), want.as_slice().unwrap());
}

#[test]
fn saved_png_round_trips_with_text() {
    let dir = temp_dir("save");
    let path = dir.join("result.png");
    let img = image_io::load_rgb8(&data("small.png")).unwrap();
    let text = [
        ("parameters", "prompt: two astronauts; steps: 50; seed: 7"),
        ("Software", "idpatch"),
    ];
    image_io::save_png(&path, &img, &text).unwrap();
    assert_eq!(image_io::load_rgb8(&path).unwrap(), img);
    let got = image_io::read_png_text(&path).unwrap();
    let want: Vec<(String, String)> = text
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want);
    // No temporary file is left beside the output.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("result.png")]);
    // A missing output directory is reported, not a panic.
    let err = image_io::save_png(&dir.join("missing/out.png"), &img, &[]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
