//! Loading the bundled tiny set on tract, the errors a damaged set must produce, and where sets
//! are verified: checksums through the cache, paths, config and scheduler bounds, the digest.
//!
//! The golden tensors under models/tiny/golden were written by exporter-specs/export.py from the
//! PyTorch modules the graphs were exported from (see exporter-specs/README.md).

#![cfg(feature = "tract")]

mod common;

use std::path::Path;

use common::tiny_dir;
use idpatch::checksum::ChecksumCache;
use idpatch::manifest::{Checksums, ModelSet};
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

/// An edit of a manifest's JSON.
type ManifestEdit = fn(&mut serde_json::Value);

/// A directory holding only the tiny set's manifest, edited: enough for the checks that come
/// before any file is looked at (paths, config, scheduler).
fn manifest_only(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_dir().join("manifest.json"),
        tmp.path().join("manifest.json"),
    )
    .unwrap();
    edit_manifest(tmp.path(), edit);
    tmp
}

/// The reason `ModelSet::open` refuses `dir` (without hashing and without a cache).
fn open_error(dir: &Path) -> String {
    match ModelSet::open_with_cache(dir, Checksums::Skip, &ChecksumCache::disabled()) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e @ idpatch::Error::ModelSet { .. }) => e.to_string(),
        Err(other) => panic!("not a model set error: {other}"),
    }
}

/// Sets a file's modification time back to `mtime` (what a user can do with `touch -d`).
fn set_mtime(path: &Path, mtime: std::time::SystemTime) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
}

// 11 graph files (8 of the pipeline, 3 of the face detector) and the 2 tokenizer.json files.
const TINY_FILES: usize = 13;

#[test]
fn cached_files_are_not_reread_and_a_changed_file_is_caught() {
    let set = tiny_copy();
    let cache_dir = tempfile::tempdir().unwrap();
    // Files changed in the last SETTLE_SECONDS are not cached: let the copies settle.
    std::thread::sleep(std::time::Duration::from_secs(
        idpatch::checksum::SETTLE_SECONDS as u64 + 1,
    ));
    let first = ChecksumCache::new(cache_dir.path());
    ModelSet::open_with_cache(set.path(), Checksums::Verify, &first).unwrap();
    assert_eq!(first.files_hashed(), TINY_FILES);
    let entries = std::fs::read_dir(cache_dir.path()).unwrap().count();
    assert_eq!(entries, TINY_FILES, "one cache entry per file");

    // A second run (a new cache object, as a new process has) reads no file.
    let second = ChecksumCache::new(cache_dir.path());
    ModelSet::open_with_cache(set.path(), Checksums::Verify, &second).unwrap();
    assert_eq!(second.files_hashed(), 0);

    // Two bytes flipped in place: same size, same inode, and the mtime set back. The cache
    // still holds the old digest; the ctime tells the file changed.
    let unet = set.path().join("unet.onnx");
    let mtime = std::fs::metadata(&unet).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&unet).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    bytes[middle + 1] ^= 0xff;
    std::fs::write(&unet, &bytes).unwrap();
    set_mtime(&unet, mtime);
    assert_eq!(std::fs::metadata(&unet).unwrap().modified().unwrap(), mtime);
    let third = ChecksumCache::new(cache_dir.path());
    let err = ModelSet::open_with_cache(set.path(), Checksums::Verify, &third).unwrap_err();
    assert!(
        err.to_string()
            .contains("graph unet: checksum mismatch for unet.onnx"),
        "{err}"
    );
    assert_eq!(
        third.files_hashed(),
        1,
        "only the changed file is read again"
    );
}

#[test]
fn corrupt_or_unwritable_cache_never_fails_a_run() {
    // The bundled set's files are older than SETTLE_SECONDS, so they are cached at once.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ChecksumCache::new(cache_dir.path());
    ModelSet::open_with_cache(&tiny_dir(), Checksums::Verify, &cache).unwrap();
    assert_eq!(cache.files_hashed(), TINY_FILES);
    let entries: Vec<_> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), TINY_FILES);
    // Garbage, an empty file, and an entry claiming another digest: all ignored, all rehashed.
    for (i, path) in entries.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap();
        let damaged = match i % 3 {
            0 => "{ not json".to_string(),
            1 => String::new(),
            _ => {
                let mut entry: serde_json::Value = serde_json::from_str(&text).unwrap();
                entry["sha256"] = "not a digest".into();
                entry.to_string()
            }
        };
        std::fs::write(path, damaged).unwrap();
    }
    let rehash = ChecksumCache::new(cache_dir.path());
    ModelSet::open_with_cache(&tiny_dir(), Checksums::Verify, &rehash).unwrap();
    assert_eq!(rehash.files_hashed(), TINY_FILES);
    let repaired = ChecksumCache::new(cache_dir.path());
    ModelSet::open_with_cache(&tiny_dir(), Checksums::Verify, &repaired).unwrap();
    assert_eq!(repaired.files_hashed(), 0, "entries rewritten");

    // A cache directory that cannot be created (its parent is a file): hashed, no error.
    let blocker = cache_dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let unwritable = ChecksumCache::new(blocker.join("checksums"));
    for _ in 0..2 {
        ModelSet::open_with_cache(&tiny_dir(), Checksums::Verify, &unwritable).unwrap();
    }
    assert_eq!(unwritable.files_hashed(), 2 * TINY_FILES);
    // The same through the CLI: IDPATCH_HOME is a file.
    let out = common::command()
        .env("IDPATCH_HOME", &blocker)
        .args(["validate", "--models"])
        .arg(tiny_dir())
        .args(["--graphs", "patch_proj"])
        .output()
        .unwrap();
    let (code, _, stderr) = common::code_stdout_stderr(out);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "", "no warning either");
}

/// Runs `idpatch ARGS` with a private IDPATCH_HOME (checksum cache) in `home`.
fn run_in(home: &Path, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = common::command()
        .env("IDPATCH_HOME", home)
        .args(args)
        .output()
        .unwrap();
    common::code_stdout_stderr(out)
}

#[test]
fn every_command_that_opens_a_set_verifies_it() {
    let set = tiny_copy();
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out.png");
    // Two bytes of the UNet flipped, size unchanged.
    let unet = set.path().join("unet.onnx");
    let mut bytes = std::fs::read(&unet).unwrap();
    bytes[1000] ^= 1;
    bytes[2000] ^= 1;
    std::fs::write(&unet, &bytes).unwrap();
    let layout = tiny_dir().join("examples/layout.json");
    let photo = tiny_dir().join("examples/photo_lfw.png");
    let face = tiny_dir().join("examples/face_chelsea.png");
    let os = |s: &str| std::ffi::OsString::from(s);
    let models = [os("--models"), set.path().into()];
    let commands: [Vec<std::ffi::OsString>; 7] = [
        vec![
            os("generate"),
            os("--layout"),
            layout.clone().into(),
            os("--prompt"),
            os("x"),
        ],
        vec![os("condition"), os("--layout"), layout.clone().into()],
        vec![os("validate"), os("--graphs"), os("patch_proj")],
        vec![
            os("bench"),
            os("--graphs"),
            os("patch_proj"),
            os("--runs"),
            os("1"),
        ],
        vec![os("faces"), photo.clone().into()],
        vec![
            os("layout"),
            os("--reference"),
            photo.clone().into(),
            os("--faces"),
            face.into(),
        ],
        vec![
            os("eval"),
            os("--layout"),
            layout.clone().into(),
            os("--image"),
            photo.clone().into(),
        ],
    ];
    for mut args in commands {
        args.extend(models.iter().cloned());
        if matches!(args[0].to_str(), Some("generate" | "condition" | "layout")) {
            args.extend([os("--out"), out.clone().into()]);
        }
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, _, stderr) = run_in(home.path(), &refs);
        assert_one_line_error(code, &stderr, "graph unet: checksum mismatch for unet.onnx");
        assert!(!out.exists(), "{args:?} wrote its output");
    }
    // --skip-checksums: the damage is not looked for (patch_proj itself is intact).
    let (code, _, stderr) = run_in(
        home.path(),
        &[
            "bench".as_ref(),
            "--skip-checksums".as_ref(),
            "--graphs".as_ref(),
            "patch_proj".as_ref(),
            "--runs".as_ref(),
            "1".as_ref(),
            "--models".as_ref(),
            set.path().as_os_str(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    // The face detector's graphs are intact too.
    let (code, stdout, stderr) = run_in(
        home.path(),
        &[
            "faces".as_ref(),
            photo.as_os_str(),
            "--skip-checksums".as_ref(),
            "--models".as_ref(),
            set.path().as_os_str(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("face  score"), "{stdout}");

    // A tokenizer file changed: tokenize verifies the files it reads too.
    std::fs::write(
        set.path().join("unet.onnx"),
        std::fs::read(tiny_dir().join("unet.onnx")).unwrap(),
    )
    .unwrap();
    let tokenizer = set.path().join("tokenizer/tokenizer.json");
    let mut text = std::fs::read(&tokenizer).unwrap();
    text.push(b'\n');
    std::fs::write(&tokenizer, text).unwrap();
    for command in ["tokenize", "validate"] {
        let (code, _, stderr) = run_in(
            home.path(),
            &[
                command.as_ref(),
                "--models".as_ref(),
                set.path().as_os_str(),
                "a cat".as_ref(),
            ][..if command == "tokenize" { 4 } else { 3 }],
        );
        assert_one_line_error(
            code,
            &stderr,
            "tokenizers.tokenizer: checksum mismatch for tokenizer/tokenizer.json",
        );
    }
}

#[test]
fn skipped_checksums_are_recorded_in_the_png() {
    // The manifest lists a wrong sha256 for an intact file.
    let set = tiny_copy();
    edit_manifest(set.path(), |m| {
        m["graphs"]["vae_decoder"]["sha256"] = "00".repeat(32).into();
    });
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out.png");
    let layout = tiny_dir().join("examples/layout.json");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "generate".as_ref(),
        "--layout".as_ref(),
        layout.as_os_str(),
        "--prompt".as_ref(),
        "x".as_ref(),
        "--steps".as_ref(),
        "1".as_ref(),
        "--models".as_ref(),
        set.path().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    let (code, _, stderr) = run_in(home.path(), &args);
    assert_one_line_error(code, &stderr, "graph vae_decoder: checksum mismatch");
    args.push("--skip-checksums".as_ref());
    let (code, _, stderr) = run_in(home.path(), &args);
    assert_eq!(code, 0, "{stderr}");
    let text = idpatch::image_io::read_png_text(&out).unwrap();
    let get = |k: &str| {
        text.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("model_set_checksums"), Some("skipped"));
}

// Expected: tests/reference/model_set.py (hashlib over the files, json.dumps with sorted keys).
#[test]
fn digest_matches_the_reference_and_covers_tokenizers_config_and_scheduler() {
    let reference: serde_json::Value =
        common::read_json(&common::test_data("model_set").join("digest.json"));
    let digest = |dir: &Path| {
        ModelSet::open_with_cache(dir, Checksums::Skip, &ChecksumCache::disabled())
            .unwrap()
            .model_set_digest()
            .unwrap()
    };
    let tiny = digest(&tiny_dir());
    assert_eq!(tiny, reference["model_set_digest"].as_str().unwrap());

    let set = tiny_copy();
    let base = digest(set.path());
    assert_eq!(base, tiny);
    let edits: [(&str, ManifestEdit); 5] = [
        ("tokenizer sha256", |m| {
            m["tokenizers"]["tokenizer_2"]["sha256"] = "ab".repeat(32).into()
        }),
        ("tokenizer file", |m| {
            m["tokenizers"]["tokenizer"]["file"] = "tokenizer_2/tokenizer.json".into()
        }),
        ("scheduler", |m| m["scheduler"]["beta_end"] = 0.02.into()),
        ("config", |m| {
            m["config"]["vae_scaling_factor"] = 0.18215.into()
        }),
        ("graph sha256", |m| {
            m["graphs"]["arcface"]["sha256"] = "cd".repeat(32).into()
        }),
    ];
    for (what, edit) in edits {
        let copy = manifest_only(|_| {});
        for entry in std::fs::read_dir(set.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "manifest.json" {
                std::os::unix::fs::symlink(entry.path(), copy.path().join(entry.file_name()))
                    .unwrap();
            }
        }
        edit_manifest(copy.path(), edit);
        assert_ne!(digest(copy.path()), base, "{what} is not covered");
    }
    // Key order and an explicit default do not change it.
    edit_manifest(set.path(), |m| {
        let scheduler: serde_json::Map<String, serde_json::Value> = m["scheduler"]
            .as_object()
            .unwrap()
            .clone()
            .into_iter()
            .rev()
            .collect();
        m["scheduler"] = scheduler.into();
        m["config"]["latent_multiple"] = 4.into();
    });
    assert_eq!(digest(set.path()), base);
}

#[test]
fn paths_leaving_the_set_are_refused() {
    let cases: [(ManifestEdit, &str); 7] = [
        (
            |m| m["graphs"]["unet"]["file"] = "/etc/passwd".into(),
            "graph unet: file \"/etc/passwd\" is absolute",
        ),
        (
            |m| m["graphs"]["unet"]["file"] = "../models/unet.onnx".into(),
            "graph unet: file \"../models/unet.onnx\" leaves the set directory",
        ),
        (
            |m| m["graphs"]["unet"]["file"] = "".into(),
            "graph unet: file \"\" is empty",
        ),
        (
            |m| {
                m["graphs"]["controlnet"]["external_data"] =
                    serde_json::json!([{"file": "a/../../x.data", "sha256": "ab".repeat(32)}])
            },
            "graph controlnet: external_data file \"a/../../x.data\" leaves the set directory",
        ),
        (
            |m| m["tokenizers"]["tokenizer_2"]["file"] = "/tmp/tokenizer.json".into(),
            "tokenizers.tokenizer_2: file \"/tmp/tokenizer.json\" is absolute",
        ),
        (
            |m| m["graphs"]["arcface"]["golden"] = "../../golden".into(),
            "graph arcface: golden \"../../golden\" leaves the set directory",
        ),
        (
            |m| m["graphs"]["arcface"]["golden"] = ".".into(),
            "graph arcface: golden \".\" names no file in the set",
        ),
    ];
    for (edit, needle) in cases {
        let dir = manifest_only(edit);
        let err = open_error(dir.path());
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    // Through the CLI: exit 2, one line.
    let dir = manifest_only(|m| m["graphs"]["vae_decoder"]["file"] = "/dev/zero".into());
    let (code, stderr) = validate_cli(dir.path(), "vae_decoder");
    assert_one_line_error(
        code,
        &stderr,
        "graph vae_decoder: file \"/dev/zero\" is absolute",
    );
}

#[test]
fn symlinks_to_files_outside_the_set_are_followed_and_verified() {
    // A set of links into the bundled one, as a hub cache or a shared weight store makes.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_dir()).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let cache = ChecksumCache::disabled();
    ModelSet::open_with_cache(dir.path(), Checksums::Verify, &cache).unwrap();
    assert_eq!(cache.files_hashed(), TINY_FILES);
}

#[test]
fn config_values_that_would_break_the_pipeline_are_set_errors() {
    use serde_json::json;
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("vae_scale_factor", json!(0), "config.vae_scale_factor is 0; must be 1 to 64"),
        ("latent_multiple", json!(0), "config.latent_multiple is 0; must be 1 to 64"),
        ("latent_channels", json!(1_000_000_000_000u64), "config.latent_channels is 1000000000000; must be 1 to 64"),
        ("down_residuals", json!(0), "config.down_residuals is 0"),
        ("text_len", json!(0), "config.text_len is 0; this runtime works with 77 token ids"),
        ("id_tokens_per_face", json!(u64::MAX), "config.id_tokens_per_face is 18446744073709551615; this runtime works with 16"),
        ("patch_size", json!(0), "config.patch_size is 0; this runtime works with 64"),
        ("pooled_dim", json!(0), "config.pooled_dim is 0; must be 1 to 65536"),
        ("id_embedding_dim", json!(1u64 << 40), "config.id_embedding_dim is 1099511627776"),
        ("cross_attention_dim", json!(65), "config.cross_attention_dim is 65; the two text encoders give 32 + 32"),
        ("vae_scaling_factor", json!(0.0), "config.vae_scaling_factor is 0.0; must be a positive normal float32"),
        ("vae_scaling_factor", json!(-0.13), "config.vae_scaling_factor is -0.13;"),
        // serde_json reads 1e-50 as 9.999999999999999e-51: the message gives what was read.
        ("vae_scaling_factor", json!(1e-50), "e-51; must be a positive normal float32"),
        ("vae_scaling_factor", json!(1e300), "config.vae_scaling_factor is 1e300;"),
        ("text_dim_1", json!(-1), "manifest.json is malformed: config.text_dim_1: invalid value: integer `-1`, expected usize"),
    ];
    for (field, value, needle) in cases {
        let dir = manifest_only(|m| m["config"][field] = value.clone());
        let err = open_error(dir.path());
        assert!(
            err.contains(needle),
            "{field}={value}: {needle:?} not in {err:?}"
        );
    }
}

#[test]
fn config_sizes_that_disagree_with_the_graphs_are_set_errors() {
    use serde_json::json;
    // Each value is valid on its own; the message gives the graph dim the manifest declares
    // (the exporter writes config and shapes from one model configuration).
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "pooled_dim",
            json!(25),
            "config.pooled_dim is 25; graph text_encoder_2 output text_embeds has 24 on axis 1",
        ),
        (
            "id_embedding_dim",
            json!(256),
            "config.id_embedding_dim is 256; graph arcface output embedding has 512 on axis 1",
        ),
        (
            "down_residuals",
            json!(12),
            "config.down_residuals is 12; graph controlnet has 9 output down_residual_* tensors",
        ),
        (
            "latent_channels",
            json!(16),
            "config.latent_channels is 16; graph unet input sample has 4 on axis 1",
        ),
    ];
    for (field, value, needle) in cases {
        let dir = manifest_only(|m| m["config"][field] = value.clone());
        let err = open_error(dir.path());
        assert!(
            err.contains(needle),
            "{field}={value}: {needle:?} not in {err:?}"
        );
    }
    // text_dim_1 and text_dim_2 must still add up to cross_attention_dim.
    let dir = manifest_only(|m| {
        m["config"]["text_dim_1"] = json!(40);
        m["config"]["text_dim_2"] = json!(24);
    });
    let err = open_error(dir.path());
    let needle =
        "config.text_dim_1 is 40; graph text_encoder output hidden_states has 32 on axis 2";
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn scheduler_values_that_would_break_the_schedule_are_set_errors() {
    use serde_json::json;
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("num_train_timesteps", json!(1_000_000_000_000_000u64), "scheduler num_train_timesteps: 1000000000000000 is not 2 to 100000"),
        ("num_train_timesteps", json!(0), "scheduler num_train_timesteps: 0 is not 2 to 100000"),
        ("beta_start", json!(0.0), "scheduler beta_start: 0 is not in (0, 1)"),
        ("beta_end", json!(1.0), "scheduler beta_end: 1 is not in (0, 1)"),
        ("steps_offset", json!(i64::MAX), "scheduler steps_offset: 9223372036854775807 is not a training timestep (0 to 999)"),
        ("steps_offset", json!(-1), "scheduler steps_offset: -1 is not a training timestep"),
        // float32 betas round to 0: a zero noise level, divided by in every Euler step.
        ("beta_start", json!(1e-20), "scheduler beta_start: with beta_end 0.012 (scaled_linear over 1000 timesteps) the noise level at training timestep 0 is 0"),
    ];
    for (key, value, needle) in cases {
        let dir = manifest_only(|m| m["scheduler"][key] = value.clone());
        let err = open_error(dir.path());
        assert!(
            err.contains(needle),
            "{key}={value}: {needle:?} not in {err:?}"
        );
    }
    // Through generate: exit 2 and one line, not a panic or an abort.
    let dir = manifest_only(|m| m["config"]["vae_scale_factor"] = 0.into());
    let out = common::command()
        .args([
            "generate",
            "--prompt",
            "x",
            "--out",
            "never.png",
            "--layout",
        ])
        .arg(tiny_dir().join("examples/layout.json"))
        .arg("--models")
        .arg(dir.path())
        .output()
        .unwrap();
    let (code, _, stderr) = common::code_stdout_stderr(out);
    assert_one_line_error(code, &stderr, "config.vae_scale_factor is 0");
}

#[test]
fn an_older_format_is_refused_with_what_to_do() {
    // Format 2 listed vocab.json and merges.txt; this build reads one tokenizer.json each.
    for old in [1, 2] {
        let dir = manifest_only(|m| m["format"] = old.into());
        let err = open_error(dir.path());
        let expected = format!(
            "manifest.json has format {old}, this build reads format 3 (export the set again"
        );
        assert!(err.contains(&expected), "{err}");
    }
}
