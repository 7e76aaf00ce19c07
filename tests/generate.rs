//! `idpatch generate` end to end on the tiny graph set (tract backend), against
//! tests/data/pipeline, produced by tests/reference/pipeline.py (the tiny set's PyTorch modules
//! rebuilt by exporter-specs/export.py, diffusers 0.42.1 EulerDiscreteScheduler, transformers 5.23
//! CLIPTokenizer, OpenCV 5.0 / scikit-image 0.26 face alignment and skeleton, torch 2.11).

#![cfg(feature = "tract")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::tiny_dir;
use idpatch::{image_io, npy};

fn data_dir() -> PathBuf {
    common::test_data("pipeline")
}

fn idpatch(args: &[&str]) -> Output {
    common::command()
        .args(args)
        .current_dir(common::root())
        .output()
        .expect("the idpatch binary runs")
}

fn reference() -> serde_json::Value {
    common::read_json(&data_dir().join("reference.json"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run_strings(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    idpatch(&refs)
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Largest relative error (max abs error over max |reference|) of the final latents accepted by
/// the parity tests. Measured on the tiny set (debug and release builds alike): tract 1.05e-6
/// (CFG), 2.3e-7 (guidance 1), 7.7e-7 (control window); ort-cpu 6.7e-7, 2.3e-7, 6.4e-7.
const LATENTS_REL_TOL: f32 = 4e-6;

/// A reference pixel value (x * 255, before rounding) this close to a rounding boundary may
/// round the other way under an error of a few 1e-6 in the latents (one such value in the
/// control-window case on tract is 100.50001); everywhere else the PNGs must be identical.
const ROUNDING_MARGIN: f32 = 1e-3;

/// One reference case of tests/data/pipeline/reference.json by name, and its data folder.
fn case(name: &str) -> (serde_json::Value, PathBuf) {
    let r = reference();
    let case = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name} in reference.json"))
        .clone();
    let dir = data_dir().join(case["dir"].as_str().unwrap());
    (case, dir)
}

/// `generate` arguments of a reference case (its init noise, latents saved to `latents`).
fn case_args(case: &serde_json::Value, png: &Path, latents: &Path) -> Vec<String> {
    let layout = data_dir().join("layout.json");
    let noise = data_dir().join("init_noise.npy");
    let r = reference();
    let mut args: Vec<String> = vec![
        "generate".into(),
        "--layout".into(),
        s(&layout).into(),
        "--prompt".into(),
        r["prompt"].as_str().unwrap().into(),
        "--init-noise".into(),
        s(&noise).into(),
        "--save-latents".into(),
        s(latents).into(),
        "--out".into(),
        s(png).into(),
    ];
    for key in [
        "steps",
        "guidance",
        "controlnet_scale",
        "id_injection_ratio",
        "control_guidance_start",
        "control_guidance_end",
    ] {
        args.push(format!("--{}", key.replace('_', "-")));
        args.push(case[key].to_string());
    }
    let negative = case["negative_prompt"].as_str().unwrap();
    if !negative.is_empty() {
        args.extend(["--negative-prompt".into(), negative.into()]);
    }
    args
}

/// Runs a reference case with `extra` arguments (a backend, say) and compares latents and PNG
/// with the reference's; returns the run's stderr.
fn assert_case_matches(name: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (png, latents_path) = (dir.path().join("out.png"), dir.path().join("latents.npy"));
    let (case, case_dir) = case(name);
    let mut args = case_args(&case, &png, &latents_path);
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = run_strings(&args);
    assert_success(&out);

    let ours = npy::read(&latents_path).unwrap();
    let expected = npy::read(&case_dir.join("latents.npy")).unwrap();
    assert_eq!(ours.shape(), expected.shape());
    let (a, b) = (ours.as_f32().unwrap(), expected.as_f32().unwrap());
    let max_err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    let rel = max_err / scale;
    eprintln!("{name} {extra:?}: final latents relative error {rel:.3e}");
    assert!(
        rel <= LATENTS_REL_TOL,
        "{name}: latents relative error {rel:.3e}"
    );

    let img = image_io::load_rgb8(&png).unwrap();
    let reference_png = image_io::load_rgb8(&case_dir.join("image.png")).unwrap();
    assert_eq!((img.width(), img.height()), (96, 64));
    assert_eq!((reference_png.width(), reference_png.height()), (96, 64));
    let unrounded = npy::read(&case_dir.join("image.npy")).unwrap();
    let unrounded = unrounded.as_f32().unwrap();
    let plane = 64 * 96;
    let mut near_boundary = 0;
    for (i, (&x, &y)) in img.data().iter().zip(reference_png.data()).enumerate() {
        if x == y {
            continue;
        }
        let (p, c) = (i / 3, i % 3);
        let v = unrounded[c * plane + p] * 255.0;
        let off_half = (v - v.floor() - 0.5).abs();
        assert!(
            x.abs_diff(y) == 1 && off_half <= ROUNDING_MARGIN,
            "{name}: pixel {p} channel {c} is {x}, the reference {y} (unrounded {v})"
        );
        near_boundary += 1;
    }
    assert!(near_boundary <= 2, "{name}: {near_boundary} pixels differ");
    let text = image_io::read_png_text(&png).unwrap();
    for key in ["control_guidance_start", "control_guidance_end", "guidance"] {
        let chunk = text.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let expected = case[key].as_f64().unwrap().to_string();
        assert_eq!(chunk, Some(expected.as_str()), "{name}: chunk {key}");
    }
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// Expected latents and image: tests/reference/pipeline.py case "cfg" (torch modules of the tiny
// set, diffusers EulerDiscreteScheduler.step, CFG 5.5, ControlNet scale 0.8 on every step, ID
// tokens from step 2 of 7).
#[test]
fn matches_the_pytorch_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let cond_png = dir.path().join("cond.png");
    let stderr = assert_case_matches("cfg", &["--save-condition", s(&cond_png)]);
    // Timing summary on stderr; no progress line when stderr is not a terminal.
    assert!(
        stderr.contains("unet (all steps)") && stderr.contains("Rust-owned"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\r'),
        "progress printed to a pipe: {stderr:?}"
    );
    // tract has no device memory: no traffic lines.
    assert!(!stderr.contains("traffic:"), "{stderr}");

    // Expected preview: the reference condition clamped, times 255 and rounded, written by Pillow
    // (tests/reference/condition_preview.py). The condition itself agrees to 1e-4 (see
    // condition_computes_patches_from_the_faces), so a byte may round the other way.
    let preview = image_io::load_rgb8(&cond_png).unwrap();
    let expected = image_io::load_rgb8(&data_dir().join("condition_preview.png")).unwrap();
    assert_eq!(
        (preview.width(), preview.height()),
        (expected.width(), expected.height())
    );
    let diffs: Vec<u8> = preview
        .data()
        .iter()
        .zip(expected.data())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let off = diffs.iter().filter(|&&d| d > 0).count();
    eprintln!(
        "condition preview: {off} of {} bytes differ by 1",
        diffs.len()
    );
    assert!(
        diffs.iter().all(|&d| d <= 1),
        "a byte differs by more than 1"
    );
    assert!(
        off * 100 <= diffs.len(),
        "{off} of {} bytes differ",
        diffs.len()
    );
}

// Expected latents and image: tests/reference/pipeline.py case "guidance_1": diffusers runs
// without classifier-free guidance at guidance_scale 1 (batch 1, the conditional half alone).
#[test]
fn matches_diffusers_without_guidance_at_guidance_1() {
    assert_case_matches("guidance_1", &[]);
}

// Expected latents and image: tests/reference/pipeline.py case "control_window": the ControlNet
// at scale `0.8 * controlnet_keep[i]` with diffusers' window [0.3, 0.8] (steps 3 and 4 of 7 kept).
#[test]
fn matches_diffusers_with_a_control_guidance_window() {
    assert_case_matches("control_window", &[]);
}

// The same three reference cases on ONNX Runtime's CPU provider, through the device data path
// (constants uploaded once, device residuals, zero residuals outside the window). Needs
// libonnxruntime 1.31.1 (scripts/fetch-onnxruntime.sh; scripts/test.sh sets ORT_DYLIB_PATH).
#[cfg(feature = "ort")]
#[test]
fn ort_cpu_matches_the_pytorch_pipeline_in_every_case() {
    for name in ["cfg", "guidance_1", "control_window"] {
        let stderr = assert_case_matches(name, &["--backend", "ort", "--ep", "cpu"]);
        assert!(stderr.contains("traffic: per step (7 steps)"), "{stderr}");
    }
}

#[test]
fn control_window_is_reported_in_the_timing_table() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("out.png");
    let layout = data_dir().join("layout.json");
    let out = idpatch(&[
        "generate",
        "--layout",
        s(&layout),
        "--prompt",
        "x",
        "--steps",
        "5",
        "--control-guidance-start",
        "0.2",
        "--control-guidance-end",
        "0.8",
        "--out",
        s(&png),
    ]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Steps 1, 2 and 3 of 5 are kept: 1/5 >= 0.2 and 4/5 <= 0.8.
    assert!(
        stderr.contains("controlnet skipped on 2 of 5 steps (control guidance window): about"),
        "{stderr}"
    );
}

#[test]
fn guidance_window_and_negative_prompt_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("out.png");
    let layout = data_dir().join("layout.json");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--control-guidance-start", "0.8", "--control-guidance-end", "0.5"],
            "--control-guidance-start: 0.8 must be below --control-guidance-end (0.5)",
        ),
        (
            &["--control-guidance-start", "0.5", "--control-guidance-end", "0.5"],
            "--control-guidance-start: 0.5 must be below --control-guidance-end (0.5)",
        ),
        (
            &["--control-guidance-start", "-0.1"],
            "--control-guidance-start: -0.1 is not in [0, 1]",
        ),
        (
            &["--control-guidance-end", "1.5"],
            "--control-guidance-end: 1.5 is not in [0, 1]",
        ),
        (
            &["--control-guidance-end", "NaN"],
            "--control-guidance-end: NaN is not in [0, 1]",
        ),
        (
            &["--guidance", "1", "--negative-prompt", "blurry"],
            "--negative-prompt: is not used without classifier-free guidance (--guidance 1 is not above 1)",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec![
            "generate",
            "--layout",
            s(&layout),
            "--prompt",
            "x",
            "--steps",
            "2",
            "--out",
            s(&png),
        ];
        args.extend_from_slice(extra);
        let out = idpatch(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{extra:?}: {stderr:?} lacks {message:?}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{extra:?}: {stderr:?}"
        );
        assert!(!png.exists(), "{extra:?}: output written despite the error");
    }
}

// Expected condition: tests/reference/pipeline.py (torch arcface + patch_proj, OpenCV skeleton,
// numpy compositing), the same layout.
#[test]
fn condition_computes_patches_from_the_faces() {
    let dir = tempfile::tempdir().unwrap();
    let (png, raw) = (dir.path().join("cond.png"), dir.path().join("cond.npy"));
    let layout = data_dir().join("layout.json");
    let out = idpatch(&[
        "condition",
        "--layout",
        s(&layout),
        "--models",
        s(&tiny_dir()),
        "--out",
        s(&png),
        "--raw",
        s(&raw),
    ]);
    assert_success(&out);
    let ours = npy::read(&raw).unwrap();
    let expected = npy::read(&data_dir().join("condition.npy")).unwrap();
    assert_eq!(ours.shape(), expected.shape());
    let max_err = ours
        .as_f32()
        .unwrap()
        .iter()
        .zip(expected.as_f32().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = expected
        .as_f32()
        .unwrap()
        .iter()
        .map(|y| y.abs())
        .fold(0f32, f32::max);
    assert!(
        max_err <= 1e-4 * scale,
        "condition max abs err {max_err} (scale {scale})"
    );
}

#[test]
fn same_seed_gives_identical_png_and_metadata_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let layout = data_dir().join("layout.json");
    let outs: Vec<PathBuf> = ["a.png", "b.png", "c.png"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    for (path, seed) in outs.iter().zip(["7", "7", "8"]) {
        let out = idpatch(&[
            "generate",
            "--layout",
            s(&layout),
            "--prompt",
            "two friends",
            "--steps",
            "3",
            "--seed",
            seed,
            "--scheduler",
            "euler-a",
            "--out",
            s(path),
        ]);
        assert_success(&out);
    }
    let bytes: Vec<Vec<u8>> = outs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(bytes[0], bytes[1], "same seed, different PNG");
    let (a, c) = (
        image_io::load_rgb8(&outs[0]).unwrap(),
        image_io::load_rgb8(&outs[2]).unwrap(),
    );
    assert_ne!(a.data(), c.data(), "different seeds, same pixels");

    let text = image_io::read_png_text(&outs[0]).unwrap();
    let get = |k: &str| {
        text.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} chunk in {text:?}"))
    };
    assert_eq!(get("prompt"), "two friends");
    assert_eq!(get("negative_prompt"), "");
    assert_eq!(get("seed"), "7");
    assert_eq!(get("steps"), "3");
    assert_eq!(get("guidance"), "5.5");
    assert_eq!(get("controlnet_scale"), "0.8");
    assert_eq!(get("id_injection_ratio"), "0.8");
    assert_eq!(get("scheduler"), "euler-a");
    assert_eq!(get("model_set"), "tiny");
    assert_eq!(get("model_set_digest").len(), 64);
    assert!(get("software").starts_with("idpatch "));
}

#[test]
fn long_prompt_is_truncated_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("out.png");
    let layout = data_dir().join("layout.json");
    let prompt = "a photo of friends ".repeat(30);
    let out = idpatch(&[
        "generate",
        "--layout",
        s(&layout),
        "--prompt",
        &prompt,
        "--steps",
        "1",
        "--out",
        s(&png),
    ]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: --prompt is longer than 77"),
        "{stderr}"
    );
    assert!(png.exists());
}

/// Writes a layout into `dir` whose faces point at the pipeline test faces.
fn write_layout(dir: &Path, name: &str, json: &str) -> PathBuf {
    let path = dir.join(name);
    let faces = data_dir();
    std::fs::write(&path, json.replace("FACES", s(&faces))).unwrap();
    path
}

fn pose_json(cx: f32) -> String {
    let rows: Vec<String> = (0..17)
        .map(|i| format!("[{}, {}, 0.9]", cx + i as f32, 10.0 + i as f32 * 2.0))
        .collect();
    format!("[{}]", rows.join(", "))
}

#[test]
fn bad_inputs_exit_2_with_one_line_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let png = d.join("out.png");
    let good_person = r#"{"face": "FACES/face_coffee.png", "position": [30, 30]}"#;
    let one = |people: &str| format!(r#"{{"width": 64, "height": 64, "people": [{people}]}}"#);
    let good = write_layout(d, "good.json", &one(good_person));

    std::fs::write(d.join("not_an_image.png"), "hello, not a picture").unwrap();
    let nine = [good_person; 9].join(", ");
    let pose = pose_json(10.0);
    let short_pose = {
        let rows: Vec<String> = (0..16).map(|i| format!("[{i}, {i}, 0.9]")).collect();
        format!("[{}]", rows.join(", "))
    };
    let layouts = [
        (
            "missing_face.json",
            one(r#"{"face": "FACES/nope.png", "position": [30, 30]}"#),
            "nope.png does not exist",
        ),
        (
            "not_image.json",
            one(&format!(
                r#"{{"face": "{}", "position": [30, 30]}}"#,
                s(&d.join("not_an_image.png"))
            )),
            "not an image file",
        ),
        (
            // A photo (not an aligned crop) without keypoints goes through face detection.
            "no_face.json",
            one(r#"{"face": "FACES/../mtcnn/coffee.png", "position": [30, 30]}"#),
            "layout people[0].face: no face found in",
        ),
        (
            "face_index.json",
            one(
                r#"{"face": "FACES/../mtcnn/astronaut.png", "position": [30, 30], "face_index": 1}"#,
            ),
            "face_index 1, but",
        ),
        ("empty.json", one(""), "layout people: no people"),
        ("nine.json", one(&nine), "at most 8"),
        (
            "size.json",
            format!(r#"{{"width": 60, "height": 64, "people": [{good_person}]}}"#),
            "not a positive multiple of 8",
        ),
        (
            // A multiple of 8 gives 9x8 latents, which the UNet's two downsamplings cannot take.
            "size32.json",
            format!(r#"{{"width": 72, "height": 64, "people": [{good_person}]}}"#),
            "layout width: 72 is not a positive multiple of 32",
        ),
        (
            "both.json",
            one(&format!(
                r#"{{"face": "FACES/face_coffee.png", "position": [30, 30], "keypoints": {pose}}}"#
            )),
            "has both",
        ),
        (
            "neither.json",
            one(r#"{"face": "FACES/face_coffee.png"}"#),
            "has neither",
        ),
        (
            "short.json",
            one(&format!(
                r#"{{"face": "FACES/face_coffee.png", "keypoints": {short_pose}}}"#
            )),
            "keypoints: expected 17 entries, got 16",
        ),
        (
            "face_kps_count.json",
            one(
                r#"{"face": "FACES/face_coffee.png", "position": [30, 30], "face_keypoints": [[1, 2], [3, 4]]}"#,
            ),
            "face_keypoints: expected 5 entries, got 2",
        ),
        (
            "non_finite.json",
            one(r#"{"face": "FACES/face_coffee.png", "position": [30, 1e999]}"#),
            "layout",
        ),
        (
            "huge.json",
            one(r#"{"face": "FACES/face_coffee.png", "position": [30, 1e300]}"#),
            "out of range",
        ),
        (
            "degenerate_face.json",
            one(
                r#"{"face": "FACES/face_coffee.png", "position": [30, 30], "face_keypoints": [[1, 1], [1, 1], [1, 1], [1, 1], [1, 1]]}"#,
            ),
            "face_keypoints",
        ),
    ];

    let mut cases: Vec<(Vec<String>, String)> = Vec::new();
    let base = |layout: &Path, extra: &[&str]| {
        let mut args: Vec<String> = ["generate", "--layout", s(layout), "--prompt", "x"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        if !extra.contains(&"--steps") {
            args.extend(["--steps".to_string(), "2".to_string()]);
        }
        if !extra.contains(&"--out") {
            args.extend(["--out".to_string(), s(&png).to_string()]);
        }
        args
    };
    for (name, json, message) in &layouts {
        let path = write_layout(d, name, json);
        cases.push((base(&path, &[]), message.to_string()));
    }
    let flag_cases: [(&[&str], &str); 8] = [
        (&["--steps", "0"], "--steps: 0 is not between 1 and 1000"),
        (&["--steps", "1001"], "--steps: 1001"),
        (&["--guidance", "-1"], "--guidance: -1"),
        (
            &["--id-injection-ratio", "1.5"],
            "--id-injection-ratio: 1.5 is not in [0, 1]",
        ),
        (&["--id-injection-ratio", "-0.1"], "--id-injection-ratio"),
        (
            &["--scheduler", "lms"],
            "--scheduler: unknown scheduler \"lms\"",
        ),
        (
            &["--init-noise", "tests/data/pipeline/latents.npy"],
            "--init-noise: expected float32 [1, 4, 8, 8]",
        ),
        (
            &["--out", "/no/such/dir/out.png"],
            "--out: cannot write /no/such/dir/out.png",
        ),
    ];
    for (extra, message) in flag_cases {
        cases.push((base(&good, extra), message.to_string()));
    }
    // A model set missing a graph file.
    let broken = d.join("broken_set");
    std::fs::create_dir(&broken).unwrap();
    for entry in std::fs::read_dir(tiny_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "unet.onnx" {
            std::fs::copy(entry.path(), broken.join(entry.file_name())).unwrap();
        }
    }
    cases.push((
        base(&good, &["--models", s(&broken)]),
        "graph unet: file unet.onnx is missing".to_string(),
    ));

    for (args, message) in cases {
        let out = run_strings(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&message),
            "{args:?}: stderr {stderr:?} lacks {message:?}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {stderr:?}"
        );
        assert!(!png.exists(), "{args:?}: output written despite the error");
    }
    // Nothing else (temporary files) was left in the output folder.
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Copies the tiny set (top-level files and the two tokenizer folders) into `dest`.
fn copy_tiny_set(dest: &Path) {
    for sub in ["", "tokenizer", "tokenizer_2"] {
        std::fs::create_dir_all(dest.join(sub)).unwrap();
        for entry in std::fs::read_dir(tiny_dir().join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dest.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
}

/// Sets the first value of the graph's largest float initializer (a weight) to NaN.
fn poison_largest_weight(graph_file: &Path) {
    use prost::Message;
    let bytes = std::fs::read(graph_file).unwrap();
    let mut model = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let weight = graph
        .initializer
        .iter_mut()
        .filter(|t| t.data_type == 1) // FLOAT
        .max_by_key(|t| t.raw_data.len() + 4 * t.float_data.len())
        .expect("a float initializer");
    if weight.raw_data.is_empty() {
        weight.float_data[0] = f32::NAN;
    } else {
        weight.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(graph_file, model.encode_to_vec()).unwrap();
}

#[test]
fn non_finite_values_stop_the_run_naming_step_and_graph() {
    // Every number a user gives is range-checked, so a NaN can only come from a graph: here a
    // copy of the tiny set whose ControlNet has a NaN weight, its manifest checksum updated so
    // that the set verifies and the graph really runs.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("out.png");
    let set = dir.path().join("poisoned");
    copy_tiny_set(&set);
    let graph = set.join("controlnet.onnx");
    poison_largest_weight(&graph);
    let manifest_path = set.join("manifest.json");
    let mut manifest: serde_json::Value = common::read_json(&manifest_path);
    manifest["graphs"]["controlnet"]["sha256"] =
        idpatch::checksum::sha256_file(&graph).unwrap().into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let layout = data_dir().join("layout.json");
    let out = idpatch(&[
        "generate",
        "--layout",
        s(&layout),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--models",
        s(&set),
        "--out",
        s(&png),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("graph controlnet: NaN or infinity"),
        "{stderr}"
    );
    assert!(stderr.contains("at step 0 of 2"), "{stderr}");
    assert!(!png.exists());
}
