//! Condition image against tests/data/condition, produced by tests/reference/condition.py
//! (OpenCV 5.0.0 cv2.ellipse2Poly / cv2.fillConvexPoly / cv2.circle / cv2.addWeighted for the
//! skeletons, numpy 2.4.6 for the patch compositing, torch 2.11 for bf16 windows).

mod common;

use std::path::{Path, PathBuf};

use idpatch::condition::{self, ConditionOptions};
use idpatch::image_io::Rgb8;
use idpatch::layout::Layout;
use idpatch::{npy, Tensor};

fn data_dir() -> PathBuf {
    common::test_data("condition")
}

fn layout(case: &str) -> Layout {
    Layout::load(&data_dir().join(format!("{case}.json")), false).unwrap()
}

fn reference_skeleton(case: &str) -> Rgb8 {
    let path = data_dir().join(format!("{case}_skeleton.png"));
    let img = image::open(&path).unwrap().into_rgb8();
    let (width, height) = (img.width() as usize, img.height() as usize);
    Rgb8::new(width, height, img.into_raw()).unwrap()
}

fn read_f32(path: &Path) -> Tensor {
    npy::read(path).unwrap()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("idpatch-condition-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SKELETON_CASES: [&str; 17] = [
    "single", "group", "edge", "tiny", "overlap", "random0", "random1", "random2", "random3",
    "random4", "random5", "random6", "random7", "random8", "random9", "random10", "random11",
];

// Expected pixels: cv2.circle + cv2.ellipse2Poly/cv2.fillConvexPoly + cv2.addWeighted(0.4, 0.6)
// in tests/reference/condition.py (draw_skeleton).
#[test]
fn skeleton_matches_opencv() {
    let (mut total_pixels, mut total_same, mut total_abs) = (0usize, 0usize, 0u64);
    for case in SKELETON_CASES {
        let expected = reference_skeleton(case);
        let got = condition::skeleton(&layout(case));
        assert_eq!(
            (got.width(), got.height()),
            (expected.width(), expected.height()),
            "{case}"
        );
        let pixels = got.width() * got.height();
        let same = got
            .data()
            .chunks_exact(3)
            .zip(expected.data().chunks_exact(3))
            .filter(|(a, b)| a == b)
            .count();
        let abs: u64 = got
            .data()
            .iter()
            .zip(expected.data())
            .map(|(&a, &b)| a.abs_diff(b) as u64)
            .sum();
        let lit = expected
            .data()
            .chunks_exact(3)
            .filter(|p| p.iter().any(|&v| v != 0))
            .count();
        println!(
            "{case:>9}: {:.4}% of {pixels} pixels identical ({lit} drawn), mean abs diff {:.6}/255",
            100.0 * same as f64 / pixels as f64,
            abs as f64 / (3 * pixels) as f64
        );
        assert!(lit > 0, "{case}: reference draws nothing");
        // The rasteriser follows OpenCV's integer arithmetic, so anything short of every pixel
        // is a regression (a 99% floor would let a wrong threshold comparison through).
        assert_eq!(
            same, pixels,
            "{case}: only {same} of {pixels} pixels identical"
        );
        assert_eq!(abs, 0, "{case}: total abs diff {abs}");
        total_pixels += pixels;
        total_same += same;
        total_abs += abs;
    }
    println!(
        "all cases: {:.4}% identical, mean abs diff {:.6}/255",
        100.0 * total_same as f64 / total_pixels as f64,
        total_abs as f64 / (3 * total_pixels) as f64
    );
}

// Expected: numpy compositing in tests/reference/condition.py (composite) over the OpenCV
// skeleton; the skeleton is taken from the reference PNG so this checks the compositing alone.
#[test]
fn compositing_is_exact() {
    for case in ["tiny", "overlap"] {
        let layout = layout(case);
        let patches = read_f32(&data_dir().join(format!("{case}_patches.npy")));
        let expected = read_f32(&data_dir().join(format!("{case}_condition.npy")));
        let centres: Vec<[f32; 2]> = layout.people.iter().map(|p| p.centre()).collect();
        let got = condition::composite(
            &reference_skeleton(case),
            &centres,
            patches.as_f32().unwrap(),
            &ConditionOptions::default(),
        );
        let expected = expected.as_f32().unwrap();
        assert_eq!(got.len(), expected.len(), "{case}");
        let max = got
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{case}: max abs diff {max:e}");
        assert!(max <= 1e-6, "{case}: max abs diff {max}");

        // End to end (own skeleton): identical as well when the skeleton is.
        let full =
            condition::condition_tensor(&layout, &patches, &ConditionOptions::default()).unwrap();
        assert_eq!(
            full.shape(),
            [3, layout.height as usize, layout.width as usize]
        );
        let max = full
            .as_f32()
            .unwrap()
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max <= 1e-6, "{case} end to end: max abs diff {max}");
    }
}

// Expected: torch.round(t -/+ 32) on a bfloat16 tensor and np.round on float64, from
// tests/reference/condition.py (windows).
#[test]
fn patch_windows_match_reference_rounding() {
    let text = std::fs::read_to_string(data_dir().join("windows.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let centres = v["centres"].as_array().unwrap();
    for (mode, bf16) in [("exact", false), ("bf16", true)] {
        let opts = ConditionOptions {
            bf16_positions: bf16,
        };
        for (c, w) in centres.iter().zip(v[mode].as_array().unwrap()) {
            let (x, y) = (c[0].as_f64().unwrap() as f32, c[1].as_f64().unwrap() as f32);
            let w: Vec<i64> = w
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_i64().unwrap())
                .collect();
            let (xs, ys) = (condition::window(x, &opts), condition::window(y, &opts));
            assert_eq!([xs.0, ys.0, xs.1, ys.1], w[..], "{mode} centre ({x}, {y})");
        }
    }
}

#[test]
fn patch_count_mismatch_is_an_error() {
    let layout = layout("overlap");
    let patches = Tensor::zeros(vec![3, 3, 64, 64], idpatch::DType::Float32);
    let err = condition::condition_tensor(&layout, &patches, &ConditionOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("patches: expected float32 [4, 3, 64, 64]"),
        "{err}"
    );
    assert!(
        err.contains("4 people") && err.contains("[3, 3, 64, 64]"),
        "{err}"
    );
}

#[test]
fn layout_file_errors_name_the_person_and_field() {
    let dir = scratch_dir("layouts");
    let kps = |n: usize| vec!["[10, 10, 0.9]"; n].join(", ");
    let cases = [
        (
            format!(
                r#"{{"width": 64, "height": 64, "people": [{{"position": [1, 2]}}, {{"position": [3, 4]}}, {{"keypoints": [{}]}}]}}"#,
                kps(16)
            ),
            "layout people[2].keypoints: expected 17 entries, got 16".to_string(),
        ),
        (
            format!(
                r#"{{"width": 64, "height": 64, "people": [{{"keypoints": [{}], "position": [1, 2]}}]}}"#,
                kps(17)
            ),
            "layout people[0]: has both `keypoints` and `position`".into(),
        ),
        (
            r#"{"width": 64, "height": 64, "people": [{"position": [1, 2]}, {"face": "a.jpg"}]}"#
                .into(),
            "layout people[1]: has neither `keypoints` nor `position`".into(),
        ),
        (
            r#"{"width": 64, "height": 64, "people": [{"position": [1, 2], "size": 3}]}"#.into(),
            "layout people[0]: unknown field `size`".into(),
        ),
        (
            format!(
                r#"{{"width": 64, "height": 64, "people": [{{"keypoints": [{}, [1, 2]]}}]}}"#,
                kps(16)
            ),
            "layout people[0].keypoints[16]: expected [x, y, score] (3 numbers), got 2 entries"
                .into(),
        ),
        (
            r#"{"width": 100, "height": 64, "people": [{"position": [1, 2]}]}"#.into(),
            "layout width: 100 is not a positive multiple of 8".into(),
        ),
        (
            r#"{"width": 64, "height": 64, "people": []}"#.into(),
            "layout people: no people".into(),
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("case{i}.json"));
        std::fs::write(&path, text).unwrap();
        let err = Layout::load(&path, false).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(
            msg.starts_with(expected.as_str()),
            "got {msg:?}, want {expected:?}"
        );
    }
    let path = dir.join("broken.json");
    std::fs::write(&path, "{\"width\": 64,").unwrap();
    let msg = Layout::load(&path, false).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("layout {}: not valid JSON", path.display())),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn faces_resolve_against_the_layout_folder() {
    let dir = scratch_dir("faces");
    std::fs::create_dir_all(dir.join("faces")).unwrap();
    std::fs::write(dir.join("faces/a.jpg"), b"not checked here").unwrap();
    let path = dir.join("layout.json");
    std::fs::write(
        &path,
        r#"{"width": 64, "height": 64, "people": [{"face": "faces/a.jpg", "position": [5, 6]}]}"#,
    )
    .unwrap();
    let layout = Layout::load(&path, true).unwrap();
    assert_eq!(
        layout.people[0].face.as_deref(),
        Some(dir.join("faces/a.jpg").as_path())
    );
    assert!(layout.is_pose_free());
    // Pose-free: the skeleton is black.
    assert!(condition::skeleton(&layout).data().iter().all(|&v| v == 0));
    let _ = std::fs::remove_dir_all(&dir);
}

// Expected: overlap_condition.npy from tests/reference/condition.py, and its preview.
#[test]
fn cli_raw_output_equals_reference() {
    let dir = scratch_dir("cli");
    let (png, raw) = (dir.join("cond.png"), dir.join("cond.npy"));
    let layout = data_dir().join("overlap.json");
    let patches = data_dir().join("overlap_patches.npy");
    let out = common::output(&[
        "condition",
        "--layout",
        layout.to_str().unwrap(),
        "--patches",
        patches.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--raw",
        raw.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read_f32(&raw);
    let expected = read_f32(&data_dir().join("overlap_condition.npy"));
    assert_eq!(got.shape(), expected.shape());
    let max = got
        .as_f32()
        .unwrap()
        .iter()
        .zip(expected.as_f32().unwrap())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-6, "max abs diff {max}");
    // Expected preview: the reference condition clamped, times 255 and rounded, written by Pillow
    // (tests/reference/condition_preview.py); the raw values agree to 1e-6, so every byte does.
    let preview = image::open(&png).unwrap().into_rgb8();
    let want = image::open(data_dir().join("overlap_preview.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(preview.dimensions(), (96, 80));
    assert!(preview == want, "preview differs from the reference PNG");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_bad_inputs_exit_2_without_output() {
    let dir = scratch_dir("cli-bad");
    let png = dir.join("cond.png");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"width": 64, "height": 64, "people": [{"position": [1]}]}"#,
    )
    .unwrap();
    let patches = data_dir().join("overlap_patches.npy");
    let good = data_dir().join("overlap.json");
    let cases: [(&Path, Option<&Path>, &str); 3] = [
        (&bad, Some(&patches), "layout people[0].position"),
        // Without --patches the patches come from the faces, which this layout lacks.
        (&good, None, "layout people[0].face: missing"),
        (
            &data_dir().join("tiny.json"),
            Some(&patches),
            "--patches: expected float32 [1, 3, 64, 64]",
        ),
    ];
    for (layout, patches, message) in cases {
        let mut args = vec![
            "condition",
            "--layout",
            layout.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        if let Some(p) = patches {
            args.extend(["--patches", p.to_str().unwrap()]);
        }
        let out = common::output(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(message),
            "stderr {stderr:?} lacks {message:?}"
        );
        assert!(!png.exists(), "output written despite the error");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
