//! Inputs that are not regular files, by kind: every file a command reads (face photos, layouts,
//! `.npy` inputs, scheduler configs, the set's manifest, graph files, checksum cache entries) is
//! refused when it is a FIFO or a device, before it is opened: opening a FIFO that nobody
//! writes blocks forever, and a device can be endless. Each case must end within seconds
//! (a hang is caught by a timeout here, not by the test runner), with status 2 and one line
//! that names the file and what it is.
//!
//! Nothing here has a reference value: what is expected is the refusal and its wording.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::tiny_dir;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A FIFO at `path` (no writer ever opens it).
fn fifo(path: &Path) -> PathBuf {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
    path.to_path_buf()
}

/// Waits at most `limit` for `child`; kills it and fails the test when it is still running.
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{what}: still running after {limit:?} (blocked on a special file?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs `idpatch args` (with `envs`) and checks the refusal: status 2 within 20 seconds and one
/// stderr line containing `message`.
fn assert_refused_with(args: &[&str], envs: &[(&str, &Path)], message: &str) {
    let mut command = common::command();
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let out = wait_at_most(
        command.spawn().unwrap(),
        Duration::from_secs(20),
        &format!("{args:?}"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: stderr {stderr:?} lacks {message:?}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
}

fn assert_refused(args: &[&str], message: &str) {
    assert_refused_with(args, &[], message);
}

/// A one-person layout in `dir` whose face is `face`.
fn layout_with_face(dir: &Path, face: &Path) -> PathBuf {
    let path = dir.join("layout.json");
    let json = format!(
        r#"{{"width": 64, "height": 64, "people": [{{"face": "{}", "position": [30, 30]}}]}}"#,
        s(face)
    );
    std::fs::write(&path, json).unwrap();
    path
}

fn good_face() -> PathBuf {
    common::test_data("pipeline").join("face_coffee.png")
}

#[test]
fn fifos_given_as_inputs_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(&dir.path().join("pipe"));
    let models = tiny_dir();
    let out = dir.path().join("out.png");
    let good = layout_with_face(dir.path(), &good_face());
    let (face, layout_out) = (good_face(), dir.path().join("l.json"));
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["faces", s(&pipe), "--models", s(&models)],
            format!("{}: image file is a FIFO, not a regular file", s(&pipe)),
        ),
        (
            vec![
                "generate",
                "--layout",
                s(&pipe),
                "--prompt",
                "x",
                "--out",
                s(&out),
            ],
            format!("{}: layout file is a FIFO, not a regular file", s(&pipe)),
        ),
        (
            vec![
                "generate",
                "--layout",
                s(&good),
                "--prompt",
                "x",
                "--steps",
                "2",
                "--init-noise",
                s(&pipe),
                "--out",
                s(&out),
            ],
            format!("{}: .npy file is a FIFO, not a regular file", s(&pipe)),
        ),
        (
            vec!["schedule", "--steps", "3", "--config", s(&pipe)],
            format!(
                "{}: scheduler config file is a FIFO, not a regular file",
                s(&pipe)
            ),
        ),
        (
            vec![
                "layout",
                "--reference",
                s(&pipe),
                "--faces",
                s(&face),
                "--out",
                s(&layout_out),
                "--models",
                s(&models),
            ],
            format!("{}: image file is a FIFO, not a regular file", s(&pipe)),
        ),
        (
            vec![
                "layout",
                "--reference",
                s(&face),
                "--faces",
                s(&pipe),
                "--out",
                s(&layout_out),
                "--models",
                s(&models),
            ],
            format!("--faces: {} is a FIFO, not a regular file", s(&pipe)),
        ),
    ];
    for (args, message) in cases {
        assert_refused(&args, &message);
    }
    // A face photo in a layout.
    let fifo_face = dir.path().join("fifo_face");
    std::fs::create_dir(&fifo_face).unwrap();
    let layout = layout_with_face(&fifo_face, &pipe);
    assert_refused(
        &[
            "generate",
            "--layout",
            s(&layout),
            "--prompt",
            "x",
            "--out",
            s(&out),
        ],
        &format!(
            "layout people[0].face: {} is a FIFO, not a regular file",
            s(&pipe)
        ),
    );
    assert!(!out.exists());
}

#[test]
fn devices_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    assert_refused(
        &["schedule", "--steps", "3", "--config", "/dev/zero"],
        "/dev/zero: scheduler config file is a character device, not a regular file",
    );
    assert_refused(
        &["faces", "/dev/urandom", "--models", s(&tiny_dir())],
        "/dev/urandom: image file is a character device, not a regular file",
    );
    let layout = layout_with_face(dir.path(), Path::new("/dev/zero"));
    assert_refused(
        &[
            "generate",
            "--layout",
            s(&layout),
            "--prompt",
            "x",
            "--out",
            s(&out),
        ],
        "layout people[0].face: /dev/zero is a character device, not a regular file",
    );
}

/// A copy of the tiny set's top-level files and tokenizer folders (links to the graphs).
fn set_copy(dir: &Path) -> PathBuf {
    let set = dir.join("set");
    std::fs::create_dir(&set).unwrap();
    for entry in std::fs::read_dir(tiny_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "manifest.json" {
            std::os::unix::fs::symlink(entry.path(), set.join(entry.file_name())).unwrap();
        }
    }
    set
}

#[test]
fn special_files_in_a_set_are_set_errors() {
    let dir = tempfile::tempdir().unwrap();
    let set = set_copy(dir.path());
    let manifest = fifo(&set.join("manifest.json"));
    assert_refused(
        &["faces", s(&good_face()), "--models", s(&set)],
        &format!(
            "cannot read manifest.json: {}: manifest file is a FIFO, not a regular file",
            s(&manifest)
        ),
    );
    std::fs::remove_file(&manifest).unwrap();
    std::fs::copy(tiny_dir().join("manifest.json"), &manifest).unwrap();
    std::fs::remove_file(set.join("face_detector_rnet.onnx")).unwrap();
    fifo(&set.join("face_detector_rnet.onnx"));
    assert_refused(
        &["faces", s(&good_face()), "--models", s(&set)],
        "graph face_detector_rnet: file face_detector_rnet.onnx is a FIFO, not a regular file",
    );
}

#[test]
fn a_special_file_in_the_checksum_cache_means_hashing_again() {
    // A cache entry that is a FIFO or a device is not one of ours: the run hashes the file
    // again and succeeds, without blocking or reading the device.
    let home = tempfile::tempdir().unwrap();
    let run = |what: &str| {
        let child = common::command()
            .args(["faces", s(&good_face()), "--models", s(&tiny_dir())])
            .env("IDPATCH_HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_at_most(child, Duration::from_secs(60), what);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
    };
    run("filling the cache");
    let entries = home.path().join("cache/checksums");
    let names: Vec<PathBuf> = std::fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        !names.is_empty(),
        "no cache entries in {}",
        entries.display()
    );
    for (i, entry) in names.iter().enumerate() {
        std::fs::remove_file(entry).unwrap();
        if i % 2 == 0 {
            fifo(entry);
        } else {
            std::os::unix::fs::symlink("/dev/zero", entry).unwrap();
        }
    }
    run("with special cache entries");
}
