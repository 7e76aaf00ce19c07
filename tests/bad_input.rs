//! Bad input through the `idpatch` binary, by kind: every case exits with status 2 and one line
//! on stderr naming the input, quickly (nothing is decoded or allocated from the bad value, no
//! graph runs) and with no output file or temporary file left behind. A closed stdout is a quiet
//! success.
//!
//! Nothing here has a reference value: what is expected is the refusal and its wording.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::tiny_dir;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn faces() -> PathBuf {
    common::test_data("pipeline")
}

/// A one-person 64x64 layout in `dir` with the given face path and extra person fields.
fn layout(dir: &Path, name: &str, face: &Path, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let json = format!(
        r#"{{"width": 64, "height": 64, "people": [{{"face": "{}", "position": [30, 30]{extra}}}]}}"#,
        s(face)
    );
    std::fs::write(&path, json).unwrap();
    path
}

fn good_layout(dir: &Path) -> PathBuf {
    layout(dir, "good.json", &faces().join("face_coffee.png"), "")
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `idpatch args` and checks the refusal: status 2, one stderr line containing `message`,
/// under ten seconds (no graph ran, nothing huge was decoded), and `dir` as it was before (no
/// output, no temporary file).
fn assert_refused(args: &[String], message: &str, dir: &Path) {
    let before = listing(dir);
    let started = Instant::now();
    let out = common::command().args(args).output().unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: stderr {stderr:?} lacks {message:?}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
    assert!(
        elapsed < Duration::from_secs(10),
        "{args:?}: took {elapsed:?}"
    );
    assert_eq!(listing(dir), before, "{args:?}: files left behind");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `generate` on `layout` with two steps, plus `extra`.
fn generate(layout: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["generate", "--layout", s(layout), "--prompt", "x"]);
    args.extend(strings(&["--steps", "2"]));
    args.extend(strings(extra));
    args
}

#[test]
fn output_paths_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = good_layout(d);
    let out = d.join("out.png");
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let file = d.join("plain.txt");
    std::fs::write(&file, "a regular file").unwrap();
    std::os::unix::fs::symlink(d, d.join("alias")).unwrap();
    let noise = d.join("noise.npy");
    let zeros = idpatch::Tensor::from_f32(vec![1, 4, 8, 8], vec![0.0; 256]).unwrap();
    idpatch::npy::write(&noise, &zeros).unwrap();

    let spelled = format!("{}/./sub/../out.png", s(d));
    let aliased = d.join("alias/out.png");
    let under_file = file.join("out.png");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--out", s(&sub)],
            format!("--out: {} is a directory", s(&sub)),
        ),
        (
            vec!["--out", s(&under_file)],
            "plain.txt is not a directory".into(),
        ),
        // Tests run as root, so permission bits would not stop a write; /proc does.
        (
            vec!["--out", "/proc/out.png"],
            "--out: cannot write /proc/out.png".into(),
        ),
        (
            vec!["--out", "/dev/null"],
            "--out: /dev/null exists and is not a regular file".into(),
        ),
        (
            vec!["--out", s(&out), "--save-condition", s(&out)],
            "--save-condition: ".to_string() + s(&out) + " is the same file as the output --out",
        ),
        (
            vec!["--out", s(&out), "--save-latents", &spelled],
            "--save-latents: ".to_string() + &spelled + " is the same file as the output --out",
        ),
        (
            vec!["--out", s(&out), "--save-condition", s(&aliased)],
            "is the same file as the output --out".into(),
        ),
        (
            vec![
                "--out",
                s(&out),
                "--init-noise",
                s(&noise),
                "--save-latents",
                s(&noise),
            ],
            "--save-latents: ".to_string()
                + s(&noise)
                + " is the same file as the input --init-noise",
        ),
        (
            vec!["--out", s(&good)],
            "--out: ".to_string() + s(&good) + " is the same file as the input --layout",
        ),
    ];
    for (extra, message) in cases {
        assert_refused(&generate(&good, &extra), &message, d);
    }
    // A face photo is an input too.
    let face_copy = d.join("face.png");
    std::fs::copy(faces().join("face_coffee.png"), &face_copy).unwrap();
    let own = layout(d, "own.json", &face_copy, "");
    assert_refused(
        &generate(&own, &["--out", s(&out), "--save-condition", s(&face_copy)]),
        "is the same file as the input layout people[0].face",
        d,
    );

    // `condition` goes through the same check.
    let condition = |extra: &[&str]| {
        let mut args = strings(&["condition", "--layout", s(&good)]);
        args.extend(strings(extra));
        args
    };
    assert_refused(
        &condition(&["--out", s(&out), "--raw", s(&out)]),
        "--raw: ",
        d,
    );
    assert_refused(&condition(&["--out", s(&sub)]), "is a directory", d);
    assert_refused(
        &condition(&["--out", s(&out), "--raw", "/proc/cond.npy"]),
        "--raw: cannot write /proc/cond.npy",
        d,
    );

    // So does `layout`, whose inputs are the reference photo and the face photos.
    let reference = d.join("reference.png");
    std::fs::copy(tiny_dir().join("examples/photo_lfw.png"), &reference).unwrap();
    let layout_cmd = |out: &Path| {
        strings(&[
            "layout",
            "--reference",
            s(&reference),
            "--faces",
            s(&face_copy),
            "--out",
            s(out),
        ])
    };
    assert_refused(&layout_cmd(&sub), "--out: ", d);
    assert_refused(
        &layout_cmd(&reference),
        "is the same file as the input --reference",
        d,
    );
    assert_refused(
        &layout_cmd(&face_copy),
        "is the same file as the input --faces",
        d,
    );
}

#[test]
fn user_numbers_are_checked_in_the_precision_they_are_used_in() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = good_layout(d);
    let out = d.join("out.png");
    let noise = |name: &str, value: f32| {
        let path = d.join(name);
        let t = idpatch::Tensor::from_f32(vec![1, 4, 8, 8], vec![value; 256]).unwrap();
        idpatch::npy::write(&path, &t).unwrap();
        path
    };
    let huge_noise = noise("huge.npy", 3e38);
    let big_noise = noise("big.npy", 101.0);
    let cases: [(&[&str], &str); 6] = [
        // 1e39 is a finite f64 and an infinite f32.
        (
            &["--guidance", "1e39"],
            "--guidance: 1e39 is not a number between 0 and 100",
        ),
        (
            &["--controlnet-scale", "1e39"],
            "--controlnet-scale: 1e39 is not a number",
        ),
        (
            &["--controlnet-scale", "-1"],
            "--controlnet-scale: -1 is not a number between 0 and 10",
        ),
        (&["--guidance", "NaN"], "--guidance: NaN"),
        (
            &["--init-noise", s(&huge_noise)],
            "--init-noise: value 3e38 at flat index 0 is not standard normal noise",
        ),
        (
            &["--init-noise", s(&big_noise)],
            "--init-noise: value 101 at flat index 0",
        ),
    ];
    for (extra, message) in cases {
        let mut extra = extra.to_vec();
        extra.extend(["--out", s(&out)]);
        assert_refused(&generate(&good, &extra), message, d);
    }
    let face = faces().join("face_coffee.png");
    let layouts = [
        (
            r#", "face_keypoints": [[1e39, 2], [3, 4], [5, 6], [7, 8], [9, 10]]"#,
            "layout people[0].face_keypoints[0]: value 1e39 is out of range",
        ),
        // The face photo is 112x112: points more than two photo sizes off are refused.
        (
            r#", "face_keypoints": [[10, 10], [90, 10], [50, 60], [20, 90], [80, 500]]"#,
            "layout people[0].face_keypoints[4]: (80, 500) is far outside the 112x112 face photo",
        ),
    ];
    for (i, (extra, message)) in layouts.iter().enumerate() {
        let name = format!("bad{i}.json");
        let path = layout(d, &name, &face, extra);
        assert_refused(&generate(&path, &["--out", s(&out)]), message, d);
    }
    // Position far outside the 64x64 image.
    let path = d.join("far.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"width": 64, "height": 64, "people": [{{"face": "{}", "position": [30, 300]}}]}}"#,
            s(&face)
        ),
    )
    .unwrap();
    assert_refused(
        &generate(&path, &["--out", s(&out)]),
        "layout people[0].position: value 300 is out of range [-128, 192]",
        d,
    );
    // ID patches given to `condition` are user floats too.
    let patches = d.join("patches.npy");
    let t = idpatch::Tensor::from_f32(vec![1, 3, 64, 64], vec![1e30; 3 * 64 * 64]).unwrap();
    idpatch::npy::write(&patches, &t).unwrap();
    let args = strings(&[
        "condition",
        "--layout",
        s(&good),
        "--patches",
        s(&patches),
        "--out",
        s(&out),
    ]);
    assert_refused(
        &args,
        "--patches: value 1e30 at flat index 0 is not finite or exceeds 10000 in magnitude",
        d,
    );
    // validate's tolerance is a user float too.
    let args = strings(&["validate", "--models", s(&tiny_dir()), "--tolerance", "NaN"]);
    assert_refused(&args, "--tolerance: NaN is not in (0, 1]", d);
}

#[test]
fn bench_sizes_and_counts_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = tiny_dir();
    let bench = |extra: &[&str]| {
        let mut args = strings(&["bench", "--models", s(&models)]);
        args.extend(strings(extra));
        args
    };
    let cases: [(&[&str], &str); 10] = [
        (
            &["--people", "1000000"],
            "--people: must be at least 1 and at most 8, got 1000000",
        ),
        (
            &["--people", "0"],
            "--people: must be at least 1 and at most 8, got 0",
        ),
        (
            &["--height", "100000000"],
            "--height: must be at least 1 and at most 8192, got 100000000",
        ),
        (
            &["--width", "18446744073709551615"],
            "--width: must be at least 1 and at most 8192, got 18446744073709551615",
        ),
        (
            &["--sequence", "1000000000000000"],
            "--sequence: must be at least 1 and at most 205 (77 text tokens + 16 ID tokens for each of at most 8 people), got 1000000000000000",
        ),
        (
            &["--warmup", "18446744073709551615"],
            "--warmup: must be at least 0 and at most 1000, got 18446744073709551615",
        ),
        (
            &["--runs", "18446744073709551615"],
            "--runs: must be at least 1 and at most 100000, got 18446744073709551615",
        ),
        (
            &["--runs", "0"],
            "--runs: must be at least 1 and at most 100000, got 0",
        ),
        (
            &["--pipeline", "--steps", "5000"],
            "--steps: must be at least 1 and at most 1000, got 5000",
        ),
        (
            &["--pipeline", "--people", "9"],
            "--people: must be at least 1 and at most 8, got 9",
        ),
    ];
    for (extra, message) in cases {
        assert_refused(&bench(extra), message, d);
    }
}

/// A PNG whose header says 60000x60000 (1-bit grey) with a few bytes of image data.
fn png_claiming_60000() -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out
    };
    let mut ihdr = 60_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&60_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", b""));
    png
}

#[test]
fn face_photos_go_through_the_checked_decoder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.png");
    let huge = d.join("huge.png");
    std::fs::write(&huge, png_claiming_60000()).unwrap();
    let jpeg = std::fs::read(common::test_data("image_io").join("jpeg_420.jpg")).unwrap();
    let cut = d.join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() / 5]).unwrap();
    let cases = [
        (&huge, "image is 60000x60000 (3600000000 pixels)"),
        (&cut, "damaged JPEG"),
    ];
    for (i, (face, message)) in cases.iter().enumerate() {
        let path = layout(d, &format!("layout{i}.json"), face, "");
        let photo_message = format!("{}: {message}", s(face));
        let message = format!("layout people[0].face: {photo_message}");
        assert_refused(&generate(&path, &["--out", s(&out)]), &message, d);
        // `condition` decodes the faces through the same path.
        let args = strings(&["condition", "--layout", s(&path), "--out", s(&out)]);
        assert_refused(&args, message.as_str(), d);
        // So do the photos that `faces` and `layout --reference` detect faces in.
        assert_refused(&strings(&["faces", s(face)]), &photo_message, d);
        let reference = strings(&[
            "layout",
            "--reference",
            s(face),
            "--faces",
            s(&faces().join("face_coffee.png")),
            "--out",
            s(&d.join("layout.json")),
        ]);
        assert_refused(&reference, &photo_message, d);
    }
}

#[test]
fn npy_headers_are_checked_before_the_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = good_layout(d);
    let out = d.join("out.png");
    let npy = |name: &str, shape: &str, data: usize| {
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        let path = d.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let overflow = npy("overflow.npy", "(1, 4, 100000000000, 100000000000)", 0);
    // The size this layout needs (1 x 4 x 8 x 8 float32), declared but not held.
    let lying = npy("lying.npy", "(1, 4, 8, 8)", 64);
    let short = npy("short.npy", "(1, 4, 8, 8)", 1000);
    let cases = [
        (
            &overflow,
            "shape [1, 4, 100000000000, 100000000000] is too large",
        ),
        (
            &lying,
            "data truncated: the header's shape [1, 4, 8, 8] needs 1024 bytes, the file holds 64",
        ),
        (
            &short,
            "data truncated: the header's shape [1, 4, 8, 8] needs 1024 bytes, the file holds 1000",
        ),
    ];
    for (path, message) in cases {
        let args = generate(&good, &["--init-noise", s(path), "--out", s(&out)]);
        let message = format!("{}: not a readable .npy file: {message}", s(path));
        assert_refused(&args, &message, d);
    }
}

/// Runs `idpatch args` with stdout a pipe whose reading end is already closed, as `| head`
/// leaves it once it has its lines; returns (status, stderr).
fn with_closed_stdout(args: &[&str], stderr_closed: bool) -> (Option<i32>, String) {
    let mut child = common::command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    if stderr_closed {
        drop(child.stderr.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_is_a_quiet_success() {
    let models = tiny_dir();
    let m = s(&models);
    let long_prompt = "a photo of friends ".repeat(30);
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["schedule", "--steps", "1000"],
        vec!["schedule", "--steps", "1000", "--json"],
        vec!["tokenize", "--models", m, "two friends"],
        vec!["tokenize", "--models", m, "--json", &long_prompt],
    ];
    let photo = models.join("examples/photo_lfw.png");
    // These run graphs on the default backend, tract.
    let graph_commands = [
        vec!["faces", "--models", m, s(&photo)],
        vec!["faces", "--models", m, "--json", s(&photo)],
        vec![
            "validate",
            "--models",
            m,
            "--graphs",
            "prompt_proj",
            "--skip-checksums",
        ],
        vec![
            "bench",
            "--models",
            m,
            "--graphs",
            "prompt_proj",
            "--warmup",
            "0",
            "--runs",
            "1",
        ],
    ];
    if cfg!(feature = "tract") {
        commands.extend(graph_commands);
    }
    for args in commands {
        let (code, stderr) = with_closed_stdout(&args, false);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        // The truncation warning of the long prompt may come first; nothing about stdout.
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?}: {stderr}"
        );
        if !args.contains(&long_prompt.as_str()) {
            assert_eq!(stderr, "", "{args:?}");
        }
    }
    // With stderr closed as well, a warning has nowhere to go: still no panic.
    let (code, _) = with_closed_stdout(&["tokenize", "--models", m, &long_prompt], true);
    assert_eq!(code, Some(0));
}

#[cfg(feature = "tract")]
#[test]
fn a_closed_stderr_does_not_stop_generate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let layout = faces().join("layout.json");
    let mut child = common::command()
        .args([
            "generate",
            "--layout",
            s(&layout),
            "--prompt",
            "x",
            "--steps",
            "1",
        ])
        .args(["--out", s(&out)])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(out.exists());
}

#[test]
fn usage_errors_are_one_line_and_negative_numbers_reach_the_range_checks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let photo = common::test_data("mtcnn").join("lfw.png");
    // Read as values, so the flag's own check answers (clap would take `-1` for a flag).
    assert_refused(
        &strings(&["faces", s(&photo), "--min-face-size", "-1"]),
        "--min-face-size: -1 is not between 12",
        d,
    );
    assert_refused(
        &generate(
            &good_layout(d),
            &["--seed", "-1", "--out", s(&d.join("o.png"))],
        ),
        "error: invalid value '-1' for '--seed <SEED>'",
        d,
    );
    // clap's own errors: on one line (without the usage block), status 2.
    assert_refused(
        &strings(&["faces", s(&photo), "--bogus"]),
        "error: unexpected argument '--bogus' found",
        d,
    );
    assert_refused(
        &strings(&["faces"]),
        "error: the following required arguments were not provided",
        d,
    );
}

#[test]
fn bench_names_the_size_flag_given_with_a_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = good_layout(d);
    for mode in [&["--pipeline"][..], &["--fidelity", "--compare", "a", "b"]] {
        for flag in ["--people", "--width", "--height"] {
            let mut args = vec!["bench"];
            args.extend_from_slice(mode);
            args.extend_from_slice(&["--layout", s(&layout), flag, "64"]);
            assert_refused(
                &strings(&args),
                &format!("{flag}: cannot be combined with --layout"),
                d,
            );
        }
    }
}

#[test]
fn layout_checks_that_need_no_graph_come_before_face_detection() {
    // A photo without face keypoints needs the detector; a layout side the set cannot take
    // (8 is not a multiple of 32) is refused first, with nothing printed about detection.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = d.join("small.json");
    let photo = common::test_data("mtcnn").join("lfw.png");
    std::fs::write(
        &path,
        format!(
            r#"{{"width": 8, "height": 64, "people": [{{"face": "{}", "position": [4, 30]}}]}}"#,
            s(&photo)
        ),
    )
    .unwrap();
    let out = d.join("o.png");
    assert_refused(&generate(&path, &["--out", s(&out)]), "layout width: 8", d);
}

#[test]
fn init_noise_larger_than_the_layout_needs_is_refused_unread() {
    // The header declares 2 GiB of float32; the file is sparse, so writing it costs nothing,
    // but reading it would. No layout needs more than 16 MiB of noise (4 x 1024 x 1024 float32
    // latents for 8192 x 8192), so the header alone is refused.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let noise = d.join("noise.npy");
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 8192, 16384), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let padded = format!("{header:<117}\n");
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    std::fs::write(&noise, &bytes).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&noise)
        .unwrap();
    file.set_len(bytes.len() as u64 + (1u64 << 31)).unwrap();
    let out = d.join("o.png");
    assert_refused(
        &generate(
            &good_layout(d),
            &["--init-noise", s(&noise), "--out", s(&out)],
        ),
        "holds 2147483648 bytes of data, more than the 16777216 bytes expected",
        d,
    );
}

#[test]
fn control_characters_in_messages_are_escaped() {
    // A face path holding ESC: the message shows it escaped, never sends it to the terminal.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = d.join("esc.json");
    std::fs::write(
        &path,
        r#"{"width": 64, "height": 64, "people": [{"face": "a\u001b[31mred", "position": [1, 2]}]}"#,
    )
    .unwrap();
    let out = d.join("o.png");
    assert_refused(
        &generate(&path, &["--out", s(&out)]),
        r"a\u{1b}[31mred does not exist",
        d,
    );
    let stderr = common::command()
        .args(generate(&path, &["--out", s(&out)]))
        .output()
        .unwrap()
        .stderr;
    assert!(!stderr.contains(&0x1b), "raw ESC in {stderr:?}");
}

/// Usage errors keep what clap says is wrong (the missing flags, a similar flag's name) on their
/// one line; no subcommand at all shows the command list, exit 2.
#[test]
fn usage_errors_say_what_to_fix_on_one_line() {
    let cases: [(&[&str], &[&str]); 3] = [
        (&["generate", "--prompt", "x"], &["--layout", "--out"]),
        (
            &[
                "generate", "--step", "5", "--prompt", "x", "--layout", "a", "--out", "b",
            ],
            &["'--step'", "'--steps'"],
        ),
        (&["bogus"], &["'bogus'"]),
    ];
    for (args, wanted) in cases {
        let (code, _, stderr) = common::run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
        for w in wanted {
            assert!(stderr.contains(w), "{args:?}: {stderr}");
        }
    }
    let (code, _, stderr) = common::run(&[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("Commands:") && stderr.contains("generate"),
        "{stderr}"
    );
}
