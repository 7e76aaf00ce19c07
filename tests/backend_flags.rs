//! No silent CPU run: every backend flag is honoured by the backend and provider that run, selects
//! ONNX Runtime when `--backend` is not given, or is an input error (exit 2, one line); and what
//! ran is what the PNG and the tables record (`--ep auto` as the provider it got).
//!
//! The tests that run ONNX Runtime need libonnxruntime 1.31.1: `scripts/test.sh` fetches it and
//! sets ORT_DYLIB_PATH.

mod common;

use std::path::Path;

use common::tiny_dir;

/// The commands that take backend flags, with the arguments they need to get that far.
fn commands(out: &Path) -> Vec<(&'static str, Vec<String>)> {
    let layout = tiny_dir().join("examples/layout.json");
    let layout = layout.to_str().unwrap().to_string();
    let examples = tiny_dir().join("examples");
    let photo = examples.join("photo_lfw.png").to_str().unwrap().to_string();
    let face = examples
        .join("face_chelsea.png")
        .to_str()
        .unwrap()
        .to_string();
    let out = out.to_str().unwrap().to_string();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        (
            "generate",
            s(&[
                "--layout", &layout, "--prompt", "x", "--steps", "1", "--out", &out,
            ]),
        ),
        ("validate", s(&["--graphs", "patch_proj"])),
        ("bench", s(&["--graphs", "patch_proj", "--runs", "1"])),
        ("condition", s(&["--layout", &layout, "--out", &out])),
        ("faces", s(&[&photo])),
        (
            "layout",
            s(&["--reference", &photo, "--faces", &face, "--out", &out]),
        ),
        ("eval", s(&["--layout", &layout, "--image", &photo])),
    ]
}

/// Runs `idpatch COMMAND BASE EXTRA --models models/tiny`: (exit code, stdout, stderr).
fn run(command: &str, base: &[String], extra: &[&str]) -> (i32, String, String) {
    let out = common::command()
        .arg(command)
        .args(base)
        .args(extra)
        .arg("--models")
        .arg(tiny_dir())
        .output()
        .unwrap();
    common::code_stdout_stderr(out)
}

fn assert_one_line_error(what: &str, code: i32, stderr: &str, needle: &str) {
    assert_eq!(code, 2, "{what}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{what}: {needle:?} not in {stderr:?}"
    );
}

/// Every ONNX Runtime-only flag, with a value.
const ORT_FLAGS: [&[&str]; 7] = [
    &["--ep", "cpu"],
    &["--ort-lib", "/nonexistent/libonnxruntime.so.1.31.1"],
    &["--device-id", "0"],
    &["--threads", "2"],
    &["--tf32"],
    &["--cuda-graph"],
    &["--trt-cache", "/tmp/idpatch-never-written"],
];

#[test]
fn onnx_runtime_flags_with_an_explicit_tract_backend_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    for (command, base) in commands(&out) {
        for flag in ORT_FLAGS {
            let mut extra = vec!["--backend", "tract"];
            extra.extend(flag);
            let (code, _, stderr) = run(command, &base, &extra);
            let what = format!("{command} {extra:?}");
            assert_one_line_error(&what, code, &stderr, &format!("error: {}: ", flag[0]));
            assert!(stderr.contains("tract"), "{what}: {stderr}");
            assert!(!out.exists(), "{what} wrote its output");
        }
    }
}

#[test]
fn an_unknown_provider_is_an_error_whatever_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    for (command, base) in commands(&out) {
        for backend in [&[][..], &["--backend", "tract"], &["--backend", "ort"]] {
            let mut extra = backend.to_vec();
            extra.extend(["--ep", "rocm"]);
            let (code, _, stderr) = run(command, &base, &extra);
            assert_one_line_error(
                &format!("{command} {extra:?}"),
                code,
                &stderr,
                "--ep: unknown execution provider \"rocm\"",
            );
        }
    }
}

#[cfg(feature = "ort")]
#[test]
fn an_onnx_runtime_flag_without_backend_selects_onnx_runtime() {
    // The library path is honoured, so ONNX Runtime was chosen: its absence is the error.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    for (command, base) in commands(&out) {
        let extra = ["--ort-lib", "/nonexistent/libonnxruntime.so.1.31.1"];
        let (code, _, stderr) = run(command, &base, &extra);
        assert_one_line_error(
            command,
            code,
            &stderr,
            "--ort-lib: no file at /nonexistent/",
        );
        assert!(!out.exists(), "{command} wrote its output");
    }
}

#[test]
fn provider_settings_need_a_provider_that_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--ep", "cpu", "--device-id", "1"],
            "--device-id: the GPU ordinal is a CUDA and TensorRT setting (got --ep cpu)",
        ),
        (
            &["--device-id", "1"],
            "--device-id: applies to ONNX Runtime's CUDA provider: give --ep cuda, tensorrt or auto",
        ),
        (
            &["--ep", "cuda", "--trt-cache", "/tmp/x"],
            "--trt-cache: the engine cache is a TensorRT setting (got --ep cuda)",
        ),
        (
            &["--ep", "tensorrt", "--cuda-graph"],
            "--cuda-graph: CUDA graphs need --ep cuda (got --ep tensorrt)",
        ),
        (&["--ep", "cpu", "--tf32"], "--tf32: TF32 is a CUDA setting (got --ep cpu)"),
        (&["--threads", "0"], "--threads: 0 is not 1 to 1024"),
    ];
    for (command, base) in commands(&out) {
        for (extra, needle) in cases {
            let (code, _, stderr) = run(command, &base, extra);
            assert_one_line_error(&format!("{command} {extra:?}"), code, &stderr, needle);
        }
    }
}

#[test]
fn condition_with_given_patches_takes_no_set_or_backend_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cond.png");
    let data = common::test_data("condition");
    let base: Vec<String> = [
        "--layout",
        data.join("overlap.json").to_str().unwrap(),
        "--patches",
        data.join("overlap_patches.npy").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let tiny = tiny_dir();
    let cases: [&[&str]; 5] = [
        &["--models", tiny.to_str().unwrap()],
        &["--backend", "tract"],
        &["--skip-checksums"],
        &["--ep", "cuda"],
        &["--threads", "2"],
    ];
    for extra in cases {
        let output = common::command()
            .arg("condition")
            .args(&base)
            .args(extra)
            .output()
            .unwrap();
        let (code, _, stderr) = common::code_stdout_stderr(output);
        assert_one_line_error(
            &format!("{extra:?}"),
            code,
            &stderr,
            &format!("{}: cannot be combined with --patches", extra[0]),
        );
        assert!(!out.exists());
    }
}

#[test]
fn bench_compare_gives_each_flag_to_a_configuration_that_honours_it() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--compare", "tract", "ort-rocm"],
            "--compare: unknown execution provider \"rocm\"",
        ),
        (
            &["--compare", "tract", "ort-cpu", "--ep", "cuda"],
            "--ep: --compare names the backend of both configurations",
        ),
        (
            &["--compare", "tract", "ort-cpu", "--backend", "ort"],
            "--backend: --compare names the backend of both configurations",
        ),
        (
            &["--compare", "tract", "ort-cpu", "--device-id", "1"],
            "--device-id: neither compared configuration (tract, ort-cpu) can honour it",
        ),
    ];
    for (extra, needle) in cases {
        let (code, _, stderr) = common::bench(&[&["--graphs", "patch_proj"][..], extra].concat());
        assert_one_line_error(&format!("{extra:?}"), code, &stderr, needle);
    }
    // The ONNX Runtime flag goes to ort-cpu, not silently dropped: its bad path is the error.
    #[cfg(feature = "ort")]
    {
        let (code, _, stderr) = common::bench(&[
            "--graphs",
            "patch_proj",
            "--compare",
            "tract",
            "ort-cpu",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so.1.31.1",
        ]);
        assert_one_line_error(
            "--ort-lib",
            code,
            &stderr,
            "--ort-lib: no file at /nonexistent/",
        );
    }
}

/// libonnxruntime 1.31.1: ORT_DYLIB_PATH, else where scripts/fetch-onnxruntime.sh puts it.
#[cfg(feature = "ort")]
fn ort_lib() -> std::path::PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::root().join("target/onnxruntime/libonnxruntime.so.1.31.1"));
    assert!(
        path.is_file(),
        "no ONNX Runtime library at {}: run scripts/fetch-onnxruntime.sh or set ORT_DYLIB_PATH \
         (scripts/test.sh does both)",
        path.display()
    );
    path
}

/// The provider `--ep auto` reported choosing on stderr ("cpu", "cuda", "tensorrt").
#[cfg(feature = "ort")]
fn auto_choice(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("ONNX Runtime: --ep auto chose "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no choice reported: {stderr}"))
        .to_string()
}

#[cfg(feature = "ort")]
#[test]
fn generate_records_the_provider_that_ran() {
    let lib = ort_lib();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let (_, base) = commands(&out).remove(0);
    // --threads alone selects ONNX Runtime on its CPU provider.
    for (extra, expected) in [
        (vec!["--threads", "1"], Some("ort-cpu")),
        (vec!["--ep", "auto"], None),
    ] {
        let mut extra = extra;
        extra.extend(["--ort-lib", lib.to_str().unwrap()]);
        let (code, _, stderr) = run("generate", &base, &extra);
        assert_eq!(code, 0, "{extra:?}: {stderr}");
        let expected = match expected {
            Some(label) => label.to_string(),
            None => format!("ort-{}", auto_choice(&stderr)),
        };
        let text = idpatch::image_io::read_png_text(&out).unwrap();
        let backend = text.iter().find(|(k, _)| k == "backend").map(|(_, v)| v);
        assert_eq!(backend, Some(&expected), "{extra:?}");
        std::fs::remove_file(&out).unwrap();
    }
}

#[cfg(feature = "ort")]
#[test]
fn bench_tables_and_json_show_the_provider_auto_got() {
    let lib = ort_lib();
    let lib = lib.to_str().unwrap();
    let (code, stdout, stderr) = common::bench(&[
        "--graphs",
        "patch_proj",
        "--runs",
        "1",
        "--ep",
        "auto",
        "--ort-lib",
        lib,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let got = format!("ort-{}", auto_choice(&stderr));
    let line = &common::json_lines(&stdout)[0];
    assert_eq!(line["backend"], got.as_str());
    assert_eq!(line["config"], format!("ort-auto ({got})").as_str());

    let (code, stdout, stderr) = common::bench(&[
        "--pipeline",
        "--steps",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--height",
        "64",
        "--width",
        "64",
        "--people",
        "1",
        "--ep",
        "auto",
        "--ort-lib",
        lib,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let line = &common::json_lines(&stdout)[0];
    assert_eq!(line["backend"], got.as_str());
    assert_eq!(line["config"], format!("ort-auto ({got})").as_str());

    let (code, stdout, stderr) = common::bench(&[
        "--graphs",
        "patch_proj",
        "--runs",
        "1",
        "--ep",
        "auto",
        "--ort-lib",
        lib,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("ort-auto ({got})")), "{stdout}");
}

#[cfg(feature = "ort")]
#[test]
fn auto_settling_on_a_provider_without_a_given_setting_is_an_error() {
    let lib = ort_lib();
    // The CPU build of ONNX Runtime settles on the CPU, which has no device ordinal. (A GPU
    // build on a GPU settles on TensorRT and takes it.)
    let (code, stdout, stderr) = common::run(&[
        "validate",
        "--models",
        tiny_dir().to_str().unwrap(),
        "--graphs",
        "patch_proj",
        "--ep",
        "auto",
        "--device-id",
        "0",
        "--ort-lib",
        lib.to_str().unwrap(),
    ]);
    if auto_choice(&stderr) == "cpu" {
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("error: --device-id: the GPU ordinal is a CUDA and TensorRT setting and --ep auto settled on ort-cpu"),
            "{stderr}"
        );
        assert!(!stdout.contains("within tolerance"), "{stdout}");
    } else {
        assert_eq!(code, 0, "{stderr}");
    }
}

#[cfg(feature = "ort")]
#[test]
fn cuda_without_backend_runs_on_cuda_or_fails_never_on_the_cpu() {
    let lib = ort_lib();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let (_, base) = commands(&out).remove(0);
    let (code, _, stderr) = run(
        "generate",
        &base,
        &["--ep", "cuda", "--ort-lib", lib.to_str().unwrap()],
    );
    if code == 0 {
        let text = idpatch::image_io::read_png_text(&out).unwrap();
        let backend = text
            .iter()
            .find(|(k, _)| k == "backend")
            .map(|(_, v)| v.as_str());
        assert_eq!(backend, Some("ort-cuda"));
    } else {
        assert_one_line_error("--ep cuda", code, &stderr, "cannot start the cuda provider");
        assert!(!out.exists());
    }
}
