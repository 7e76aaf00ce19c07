//! Faces from ordinary photos on the tiny set (tract): `idpatch faces`, layouts whose faces are
//! detected, `idpatch layout --reference` and `idpatch eval`.
//!
//! Expected detections come from facenet-pytorch 2.6.0's MTCNN (tests/reference/mtcnn.py, in
//! tests/data/mtcnn/reference.json). The `eval` images are built from the references
//! themselves: a layout whose people are the faces of a photo (by `face_index`), evaluated on that
//! photo, must score similarity 1 and ID-position accuracy 100% with any ArcFace weights, and 0%
//! with the positions swapped.

#![cfg(feature = "tract")]

mod common;

use std::path::{Path, PathBuf};

use common::{json_lines, read_json, run, test_data, tiny_dir};
use idpatch::detect::people;
use idpatch::layout::Layout;
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::pipeline;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn photo(name: &str) -> PathBuf {
    test_data("mtcnn").join(format!("{name}.png"))
}

/// facenet-pytorch's faces in a test photo, largest first.
fn reference_faces(name: &str) -> Vec<Value> {
    let r: Value = read_json(&test_data("mtcnn").join("reference.json"));
    r["photos"][name]["faces"].as_array().unwrap().clone()
}

fn point(v: &Value) -> [f64; 2] {
    [v[0].as_f64().unwrap(), v[1].as_f64().unwrap()]
}

fn assert_near(a: [f64; 2], b: [f64; 2], tolerance: f64, what: &str) {
    let d = (a[0] - b[0]).abs().max((a[1] - b[1]).abs());
    assert!(d <= tolerance, "{what}: {a:?} vs {b:?} ({d} apart)");
}

fn assert_exit(code: i32, stderr: &str, want_code: i32, want: &str) {
    assert_eq!(code, want_code, "{stderr}");
    assert!(stderr.contains(want), "stderr {stderr:?} lacks {want:?}");
    if want_code == 2 {
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line: {stderr:?}"
        );
    }
}

#[test]
fn faces_prints_boxes_scores_and_landmarks() {
    let models = tiny_dir();
    let (code, stdout, stderr) =
        run(&["faces", s(&photo("lfw")), "--json", "--models", s(&models)]);
    assert_eq!(code, 0, "{stderr}");
    let ours = json_lines(&stdout);
    let theirs = reference_faces("lfw");
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours.len(), 4);
    for (o, t) in ours.iter().zip(&theirs) {
        let keys: Vec<&String> = o.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["box", "landmarks", "score"]);
        assert_eq!(o["landmarks"].as_array().unwrap().len(), 5);
        for k in 0..4 {
            let (a, b) = (o["box"][k].as_f64().unwrap(), t["box"][k].as_f64().unwrap());
            assert!((a - b).abs() <= 1.0, "box {k}: {a} vs {b}");
        }
        for (a, b) in o["landmarks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(t["landmarks"].as_array().unwrap())
        {
            assert_near(point(a), point(b), 1.0, "landmark");
        }
        assert!((o["score"].as_f64().unwrap() - t["score"].as_f64().unwrap()).abs() <= 1e-3);
    }
    assert!(stderr.contains("4 faces in"), "{stderr}");

    let (code, stdout, _) = run(&["faces", s(&photo("coffee")), "--models", s(&models)]);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1, "header only: {stdout}");
    let (code, stdout, _) = run(&["faces", s(&photo("small")), "--models", s(&models)]);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 3, "header and two faces: {stdout}");
}

#[test]
fn faces_rejects_bad_input_in_one_line() {
    let models = tiny_dir();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    for (args, want) in [
        (vec!["faces", "/no/such/photo.png"], "/no/such/photo.png"),
        (vec!["faces", s(&text)], "not an image file"),
        (
            vec!["faces", s(&photo("small")), "--min-face-size", "5"],
            "--min-face-size: 5 is not between 12",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--models", s(&models)]);
        let (code, stdout, stderr) = run(&args);
        assert_exit(code, &stderr, 2, want);
        assert!(stdout.is_empty());
    }
}

/// Writes `json` as a layout file in `dir`.
fn write(dir: &Path, name: &str, json: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(json).unwrap()).unwrap();
    path
}

#[test]
fn layout_photos_without_keypoints_get_detected_landmarks() {
    let dir = tempfile::tempdir().unwrap();
    let crop = tiny_dir().join("examples/face_chelsea.png");
    let path = write(
        dir.path(),
        "layout.json",
        &serde_json::json!({"width": 128, "height": 64, "people": [
            {"face": photo("astronaut"), "position": [30, 30]},
            {"face": photo("lfw"), "position": [70, 30], "face_index": 3},
            {"face": crop, "position": [100, 30]},
        ]}),
    );
    let mut layout = Layout::load(&path, true).unwrap();
    let images = pipeline::load_face_images(&layout).unwrap();
    let set = ModelSet::open(&tiny_dir(), Checksums::Skip).unwrap();
    let backend = idpatch::TractBackend::new();
    people::resolve_faces(&mut layout, &images, &backend, &set).unwrap();
    for (person, (name, index)) in [("astronaut", 0), ("lfw", 3)].iter().enumerate() {
        let theirs = &reference_faces(name)[*index]["landmarks"];
        let ours = layout.people[person].face_keypoints.expect("detected");
        for (o, t) in ours.iter().zip(theirs.as_array().unwrap()) {
            assert_near([f64::from(o[0]), f64::from(o[1])], point(t), 1.0, name);
        }
    }
    // The aligned 112x112 crop is used as it is.
    assert_eq!(layout.people[2].face_keypoints, None);
    let faces = pipeline::face_batch_with(&layout, Some(&images)).unwrap();
    assert_eq!(faces.shape(), [3, 3, 112, 112]);

    // The same layout through the command line.
    let out = dir.path().join("condition.png");
    let (code, _, stderr) = run(&[
        "condition",
        "--layout",
        s(&path),
        "--models",
        s(&tiny_dir()),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.exists());
}

#[test]
fn layout_face_errors_name_the_person_and_photo() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("condition.png");
    for (person, want) in [
        (
            serde_json::json!({"face": photo("coffee"), "position": [30, 30]}),
            format!(
                "layout people[0].face: no face found in {}",
                s(&photo("coffee"))
            ),
        ),
        (
            serde_json::json!({"face": photo("small"), "position": [30, 30], "face_index": 2}),
            format!(
                "layout people[0].face: face_index 2, but {} has 2 detected faces",
                s(&photo("small"))
            ),
        ),
    ] {
        let layout = serde_json::json!({"width": 64, "height": 64, "people": [person]});
        let path = write(dir.path(), "bad.json", &layout);
        let (code, _, stderr) = run(&[
            "condition",
            "--layout",
            s(&path),
            "--models",
            s(&tiny_dir()),
            "--out",
            s(&out),
        ]);
        assert_exit(code, &stderr, 2, &want);
        assert!(!out.exists());
    }
}

#[test]
fn bundled_photo_layout_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("group.png");
    let layout = tiny_dir().join("examples/layout_photos.json");
    let (code, _, stderr) = run(&[
        "generate",
        "--layout",
        s(&layout),
        "--models",
        s(&tiny_dir()),
        "--prompt",
        "three friends",
        "--steps",
        "2",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("face detection (MTCNN)"), "{stderr}");
    let img = idpatch::image_io::load_rgb8(&out).unwrap();
    assert_eq!((img.width(), img.height()), (192, 128));
}

#[test]
fn layout_from_a_reference_photo_orders_people_left_to_right() {
    let dir = tempfile::tempdir().unwrap();
    let faces_dir = dir.path().join("faces");
    std::fs::create_dir(&faces_dir).unwrap();
    let mut faces = Vec::new();
    for name in ["a", "b", "c"] {
        let path = faces_dir.join(format!("{name}.png"));
        std::fs::copy(photo("astronaut"), &path).unwrap();
        faces.push(path);
    }
    let out = dir.path().join("layouts").join("from_photo.json");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let (group, models) = (photo("lfw"), tiny_dir());
    let mut args = vec![
        "layout",
        "--reference",
        s(&group),
        "--out",
        s(&out),
        "--models",
        s(&models),
        "--faces",
    ];
    args.extend(faces.iter().map(|p| s(p)));
    let (code, _, stderr) = run(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("using the 3 largest"), "{stderr}");
    let written: Value = read_json(&out);
    // lfw.png is 200x200: the default size is 1024x1024, positions scale by 5.12.
    assert_eq!(
        (written["width"].as_u64(), written["height"].as_u64()),
        (Some(1024), Some(1024))
    );
    let mut noses: Vec<[f64; 2]> = reference_faces("lfw")[..3]
        .iter()
        .map(|f| point(&f["landmarks"][2]))
        .collect();
    noses.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let people = written["people"].as_array().unwrap();
    assert_eq!(people.len(), 3);
    for ((p, nose), name) in people.iter().zip(&noses).zip(["a", "b", "c"]) {
        assert_eq!(p["face"], format!("../faces/{name}.png"));
        let want = [5.12 * nose[0], 5.12 * nose[1]];
        assert_near(point(&p["position"]), want, 5.12, "position");
        assert!(p.get("keypoints").is_none(), "pose-free");
    }
    let layout = Layout::load(&out, true).unwrap();
    assert!(layout.is_pose_free());

    // Ready for generate: a small version runs end to end.
    let small = dir.path().join("layouts").join("small.json");
    let mut small_args = args.clone();
    let (out_at, _) = small_args
        .iter()
        .enumerate()
        .find(|(_, a)| **a == "--out")
        .unwrap();
    small_args[out_at + 1] = s(&small);
    small_args.extend(["--width", "128", "--height", "128"]);
    let (code, _, stderr) = run(&small_args);
    assert_eq!(code, 0, "{stderr}");
    let png = dir.path().join("out.png");
    let (code, _, stderr) = run(&[
        "generate",
        "--layout",
        s(&small),
        "--models",
        s(&tiny_dir()),
        "--prompt",
        "friends",
        "--steps",
        "1",
        "--out",
        s(&png),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(png.exists());
}

#[test]
fn layout_reference_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layout.json");
    let face = photo("astronaut");
    let models = tiny_dir();
    let base = |reference: &Path, extra: &[&str]| -> (i32, String, String) {
        let mut args = vec![
            "layout",
            "--reference",
            s(reference),
            "--out",
            s(&out),
            "--models",
            s(&models),
        ];
        args.extend(extra);
        run(&args)
    };
    let (code, _, stderr) = base(&photo("coffee"), &["--faces", s(&face), s(&face)]);
    assert_exit(code, &stderr, 2, "0 faces found, 2 --faces given");
    let (code, _, stderr) = base(&photo("small"), &["--faces", "/no/face.png"]);
    assert_exit(code, &stderr, 2, "--faces: /no/face.png does not exist");
    let (code, _, stderr) = base(&photo("small"), &["--faces", s(&face), "--width", "100"]);
    assert_exit(
        code,
        &stderr,
        2,
        "--width: 100 is not a positive multiple of 8",
    );
    let (code, _, stderr) = base(&photo("small"), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(!out.exists());
}

/// A layout whose people are faces `indices` of lfw.png (four people), placed at the noses of
/// faces `placed_at` (`None`: where the photo has no face).
fn lfw_layout(dir: &Path, name: &str, indices: &[usize], placed_at: &[Option<usize>]) -> PathBuf {
    let theirs = reference_faces("lfw");
    let people: Vec<Value> = indices
        .iter()
        .zip(placed_at)
        .map(|(&i, at)| {
            let position = match at {
                Some(k) => point(&theirs[*k]["landmarks"][2]),
                None => [92.0, 196.0],
            };
            serde_json::json!({"face": photo("lfw"), "face_index": i, "position": position})
        })
        .collect();
    write(
        dir,
        name,
        &serde_json::json!({"width": 200, "height": 200, "people": people}),
    )
}

fn eval(layout: &Path, image: &Path) -> Vec<Value> {
    let (code, stdout, stderr) = run(&[
        "eval",
        "--layout",
        s(layout),
        "--image",
        s(image),
        "--models",
        s(&tiny_dir()),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    json_lines(&stdout)
}

#[test]
fn eval_scores_references_placed_right_wrong_and_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = photo("lfw");

    // Each person's reference is the face at its position: similarity 1, accuracy 100%.
    let right = lfw_layout(
        d,
        "right.json",
        &[0, 1, 2, 3],
        &[Some(0), Some(1), Some(2), Some(3)],
    );
    let lines = eval(&right, &image);
    assert_eq!(lines.len(), 2);
    let (per_image, summary) = (&lines[0], &lines[1]);
    assert_eq!(per_image["detected"], 4);
    for p in per_image["people"].as_array().unwrap() {
        assert_eq!(p["found"], true);
        assert!(
            (p["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-5,
            "{p}"
        );
        assert_eq!(p["correct"], true);
        assert_eq!(p["best_match"], p["person"]);
    }
    assert_eq!(summary["id_pos_acc"], 1.0);
    assert!((summary["face_sim"].as_f64().unwrap() - 1.0).abs() < 1e-5);
    assert_eq!(summary["missing"], 0);
    assert!(summary["leakage"].as_f64().unwrap() < 0.9999);

    // Positions rotated: every person finds another's face.
    let swapped = lfw_layout(
        d,
        "swapped.json",
        &[0, 1, 2, 3],
        &[Some(1), Some(2), Some(3), Some(0)],
    );
    let lines = eval(&swapped, &image);
    let summary = &lines[1];
    assert_eq!(summary["id_pos_acc"], 0.0);
    for p in lines[0]["people"].as_array().unwrap() {
        assert_eq!(p["correct"], false);
        assert!(p["similarity"].as_f64().unwrap() < 0.9999);
    }

    // A person where the image has no face is missing (and not correct).
    let missing = lfw_layout(d, "missing.json", &[0, 1], &[Some(0), None]);
    let lines = eval(&missing, &image);
    let people = lines[0]["people"].as_array().unwrap();
    assert_eq!(
        (people[0]["found"].as_bool(), people[1]["found"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(people[1]["similarity"], Value::Null);
    assert_eq!(lines[1]["missing"], 1);
    assert_eq!(lines[1]["id_pos_acc"], 0.5);
}

#[test]
fn eval_averages_a_directory_and_prints_the_papers_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = photo("lfw");
    let right = lfw_layout(
        d,
        "right.json",
        &[0, 1, 2, 3],
        &[Some(0), Some(1), Some(2), Some(3)],
    );
    let swapped = lfw_layout(
        d,
        "swapped.json",
        &[0, 1, 2, 3],
        &[Some(1), Some(2), Some(3), Some(0)],
    );
    // A directory of generations: per image, then the averages over all of them.
    let images = d.join("images");
    let layouts = d.join("layouts");
    std::fs::create_dir(&images).unwrap();
    std::fs::create_dir(&layouts).unwrap();
    for (name, layout) in [("a", &right), ("b", &swapped)] {
        std::fs::copy(&image, images.join(format!("{name}.png"))).unwrap();
        std::fs::copy(layout, layouts.join(format!("{name}.json"))).unwrap();
    }
    let lines = eval(&layouts, &images);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["images"], 2);
    assert_eq!(lines[2]["people"], 8);
    assert_eq!(lines[2]["id_pos_acc"], 0.5);

    // Text output has the paper's two numbers.
    let (code, stdout, stderr) = run(&[
        "eval",
        "--layout",
        s(&right),
        "--image",
        s(&image),
        "--models",
        s(&tiny_dir()),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Face Sim 1.0000  ID-Pos Acc 100.0% (4/4)  missing 0"),
        "{stdout}"
    );
}

#[test]
fn eval_rejects_mismatched_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = lfw_layout(d, "l.json", &[0], &[Some(0)]);
    for (layout_arg, image, want) in [
        (
            layout.clone(),
            photo("small"),
            "is 256x192, the layout is 200x200",
        ),
        (layout.clone(), d.join("none.png"), "--image"),
        (d.join("nope.json"), photo("lfw"), "--layout"),
        (d.to_path_buf(), photo("lfw"), "no layout"),
    ] {
        let (code, _, stderr) = run(&[
            "eval",
            "--layout",
            s(&layout_arg),
            "--image",
            s(&image),
            "--models",
            s(&tiny_dir()),
        ]);
        assert_exit(code, &stderr, 2, want);
    }
}

#[test]
fn eval_over_a_directory_prints_nothing_when_an_image_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = lfw_layout(d, "l.json", &[0], &[Some(0)]);
    let images = d.join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(photo("lfw"), images.join("a.png")).unwrap();
    // Sorted after a.png: a text file named like an image.
    std::fs::write(images.join("b.png"), "not an image").unwrap();
    let models = tiny_dir();
    let args = [
        "eval",
        "--layout",
        s(&layout),
        "--image",
        s(&images),
        "--models",
        s(&models),
    ];
    let (code, stdout, stderr) = run(&args);
    assert_exit(code, &stderr, 2, "b.png");
    assert_eq!(stdout, "", "a report cut short");
    // A folder named like an image is reported, not skipped.
    std::fs::remove_file(images.join("b.png")).unwrap();
    std::fs::create_dir(images.join("c.png")).unwrap();
    let (code, stdout, stderr) = run(&args);
    assert_exit(code, &stderr, 2, "c.png is a directory, not a regular file");
    assert_eq!(stdout, "");
}

#[test]
fn layout_out_may_be_a_bare_file_name() {
    // `--out layout.json` in the working folder: its folder is `.`.
    let dir = tempfile::tempdir().unwrap();
    let face = dir.path().join("face.png");
    std::fs::copy(photo("astronaut"), &face).unwrap();
    let out = common::command()
        .current_dir(dir.path())
        .args([
            "layout",
            "--reference",
            s(&photo("lfw")),
            "--faces",
            "face.png",
        ])
        .args(["--out", "layout.json", "--models", s(&tiny_dir())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("1 person at"), "{stderr}");
    let written: Value = read_json(&dir.path().join("layout.json"));
    assert_eq!(written["people"][0]["face"], "face.png");
}
