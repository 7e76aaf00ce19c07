//! Loading the bundled tiny set on tract, and the errors a damaged set must produce.
//!
//! The golden tensors under models/tiny/golden were written by exporter-specs/export.py from the
//! PyTorch modules the graphs were exported from (see exporter-specs/README.md).

#![cfg(feature = "tract")]

mod common;

use std::path::Path;

use common::tiny_dir;
use idpatch::TractBackend;

/// A private copy of the tiny set that a test may damage.
fn tiny_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&tiny_dir(), tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value = common::read_json(&path);
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

/// Runs `idpatch validate` on `dir` for one graph; returns (exit code, stderr).
fn validate_cli(dir: &Path, graph: &str) -> (i32, String) {
    let out = common::command()
        .args(["validate", "--models"])
        .arg(dir)
        .args(["--graphs", graph])
        .output()
        .unwrap();
    let (code, _, stderr) = common::code_stdout_stderr(out);
    (code, stderr)
}

fn assert_one_line_error(code: i32, stderr: &str, needle: &str) {
    assert_eq!(code, 2, "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{needle:?} not in {:?}",
        lines[0]
    );
}

#[test]
fn every_tiny_graph_matches_pytorch_on_tract() {
    common::assert_tiny_set_matches_goldens(&TractBackend::new());
}

#[test]
fn truncated_onnx_file_is_a_model_set_error() {
    let tmp = tiny_copy();
    let path = tmp.path().join("vae_decoder.onnx");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    // Keep the checksum consistent so that the parser, not the hash, finds the damage.
    let sha = idpatch::manifest::sha256_file(&path).unwrap();
    edit_manifest(tmp.path(), |m| {
        m["graphs"]["vae_decoder"]["sha256"] = sha.into()
    });
    let (code, stderr) = validate_cli(tmp.path(), "vae_decoder");
    assert_one_line_error(code, &stderr, "graph vae_decoder: cannot parse ONNX file");
}

#[test]
fn wrong_checksum_is_reported_before_loading() {
    let tmp = tiny_copy();
    edit_manifest(tmp.path(), |m| {
        m["graphs"]["patch_proj"]["sha256"] = "00".repeat(32).into();
    });
    let (code, stderr) = validate_cli(tmp.path(), "patch_proj");
    assert_one_line_error(
        code,
        &stderr,
        "graph patch_proj: checksum mismatch for patch_proj.onnx",
    );
}

#[test]
fn graph_inputs_that_do_not_match_the_spec_are_rejected() {
    let tmp = tiny_copy();
    edit_manifest(tmp.path(), |m| {
        m["graphs"]["arcface"]["inputs"][0]["dtype"] = "int64".into()
    });
    let (code, stderr) = validate_cli(tmp.path(), "arcface");
    assert_one_line_error(
        code,
        &stderr,
        "graph arcface: input face is float32 in the graph, manifest says int64",
    );

    let tmp = tiny_copy();
    edit_manifest(tmp.path(), |m| {
        m["graphs"]["prompt_proj"]["inputs"][0]["shape"] = serde_json::json!(["faces", 512]);
    });
    let (code, stderr) = validate_cli(tmp.path(), "prompt_proj");
    assert_one_line_error(
        code,
        &stderr,
        "graph prompt_proj: input id_embeds has shape",
    );

    let tmp = tiny_copy();
    edit_manifest(tmp.path(), |m| {
        m["graphs"]["unet"]["inputs"][0]["name"] = "latents".into()
    });
    let (code, stderr) = validate_cli(tmp.path(), "unet");
    assert_one_line_error(
        code,
        &stderr,
        "graph unet: input latents is in the manifest but not in the graph",
    );
}

#[test]
fn missing_graph_file_and_missing_role_are_reported() {
    let tmp = tiny_copy();
    std::fs::remove_file(tmp.path().join("controlnet.onnx")).unwrap();
    let (code, stderr) = validate_cli(tmp.path(), "unet");
    assert_one_line_error(
        code,
        &stderr,
        "graph controlnet: file controlnet.onnx is missing",
    );

    let tmp = tiny_copy();
    edit_manifest(tmp.path(), |m| {
        m["graphs"]
            .as_object_mut()
            .unwrap()
            .remove("text_encoder_2");
    });
    let (code, stderr) = validate_cli(tmp.path(), "unet");
    assert_one_line_error(
        code,
        &stderr,
        "graph text_encoder_2 is missing from manifest.json",
    );
}

#[test]
fn missing_directory_and_malformed_manifest_are_reported() {
    let (code, stderr) = validate_cli(Path::new("/nonexistent/models"), "unet");
    assert_one_line_error(code, &stderr, "directory does not exist");

    let tmp = tiny_copy();
    std::fs::write(tmp.path().join("manifest.json"), "{ not json").unwrap();
    let (code, stderr) = validate_cli(tmp.path(), "unet");
    assert_one_line_error(code, &stderr, "manifest.json is malformed");
}

#[test]
fn weightless_set_asks_for_materialization() {
    // exporter-specs/export.py --weightless writes graphs without weight data and marks the
    // manifest; its external data entries carry sizes instead of checksums.
    let tmp = tiny_copy();
    edit_manifest(tmp.path(), |m| {
        m["weightless"] = serde_json::Value::Bool(true);
        for entry in m["graphs"].as_object_mut().unwrap().values_mut() {
            entry["external_data"] = serde_json::json!([{"file": "x.onnx.data", "bytes": 4096}]);
        }
    });
    let (code, stderr) = validate_cli(tmp.path(), "unet");
    assert_one_line_error(code, &stderr, "exporter-specs/materialize.py");
}
