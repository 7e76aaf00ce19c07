//! CLIP tokenizer parity with transformers' CLIPTokenizer, both SDXL configurations, through the
//! tokenizer.json files of models/tiny (written by exporter-specs/export.py).
//! Expected ids: tests/reference/tokenizer.py (transformers 5.23.0 CLIPTokenizer.from_pretrained
//! on the rebuilt CLIP vocabulary, padding="max_length", max_length=77, truncation=True).

mod common;

use std::path::{Path, PathBuf};

use common::tiny_dir;
use idpatch::tokenizer::{ClipTokenizer, MAX_LENGTH};
use idpatch::Error;
use serde_json::Value;

/// `tokenizer` or `tokenizer_2` of the tiny set.
fn json_path(name: &str) -> PathBuf {
    tiny_dir().join(name).join("tokenizer.json")
}

fn load(name: &str) -> ClipTokenizer {
    ClipTokenizer::from_file(&json_path(name)).unwrap()
}

fn reference() -> Value {
    common::read_json(&common::test_data("tokenizer").join("reference.json"))
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// Compares every reference prompt for one configuration; reports all mismatches at once.
fn check_all(name: &str, ids_key: &str, truncated_key: &str) {
    let tokenizer = load(name);
    let reference = reference();
    let prompts = reference["prompts"].as_array().unwrap();
    assert!(
        prompts.len() >= 60,
        "reference has {} prompts",
        prompts.len()
    );
    let mut failures = Vec::new();
    for entry in prompts {
        let prompt = entry["prompt"].as_str().unwrap();
        let expected = ids(&entry[ids_key]);
        let expected_truncated = entry[truncated_key].as_bool().unwrap();
        let encoding = tokenizer.encode(prompt).unwrap();
        assert_eq!(encoding.ids.len(), MAX_LENGTH);
        if encoding.ids != expected || encoding.truncated != expected_truncated {
            failures.push(format!(
                "{prompt:?}\n  expected {expected:?} truncated={expected_truncated}\n  got      {:?} truncated={}",
                encoding.ids, encoding.truncated
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// Expected: reference.json "tokenizer"/"truncated" (CLIPTokenizer.from_pretrained(dir)).
#[test]
fn tokenizer_matches_transformers() {
    check_all("tokenizer", "tokenizer", "truncated");
}

// Expected: reference.json "tokenizer_2"/"truncated_2" (from_pretrained(dir, pad_token="!")).
#[test]
fn tokenizer_2_matches_transformers() {
    check_all("tokenizer_2", "tokenizer_2", "truncated_2");
}

// Expected: reference.json "tokenizer_2"; pad 0 differs from the end token, so the ids before
// padding end at the last 49407.
#[test]
fn tokens_used_counts_ids_before_padding() {
    let tokenizer = load("tokenizer_2");
    for entry in reference()["prompts"].as_array().unwrap() {
        let expected = ids(&entry["tokenizer_2"]);
        let last_eos = expected.iter().rposition(|&id| id == 49407).unwrap();
        let encoding = tokenizer.encode(entry["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(encoding.tokens_used, last_eos + 1, "{:?}", entry["prompt"]);
    }
}

// Expected: transformers 5.23, t = CLIPTokenizer(vocab.json, merges.txt) on the rebuilt CLIP
// vocabulary (exporter-specs/clip_vocab.py); len(t), t.bos_token_id, t.eos_token_id,
// t.pad_token_id -> 49408 49406 49407 49407 (the second SDXL tokenizer pads with 0,
// reference.json pad_token_id).
#[test]
fn special_ids_and_vocabulary_size() {
    let tokenizer = load("tokenizer");
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_eq!(tokenizer.bos_id(), 49406);
    assert_eq!(tokenizer.eos_id(), 49407);
    assert_eq!(tokenizer.pad_id(), 49407);
    assert_eq!(load("tokenizer_2").pad_id(), 0);
    assert_eq!(load("tokenizer_2").vocab_size(), 49408);
}

// Expected: reference.json "tokenizer" for a prompt of common words; a warm cache and a cleared
// one must give the same ids.
#[test]
fn cache_does_not_change_results() {
    let tokenizer = load("tokenizer");
    let reference = reference();
    let entry = &reference["prompts"][1];
    let prompt = entry["prompt"].as_str().unwrap();
    let expected = ids(&entry["tokenizer"]);
    assert_eq!(tokenizer.encode(prompt).unwrap().ids, expected);
    assert_eq!(tokenizer.encode(prompt).unwrap().ids, expected);
    tokenizer.clear_cache();
    assert_eq!(tokenizer.encode(prompt).unwrap().ids, expected);
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn expect_invalid(result: idpatch::Result<ClipTokenizer>, input: &Path, needle: &str) {
    match result {
        Err(err @ Error::InvalidInput { .. }) => {
            let message = err.to_string();
            assert!(message.contains(&input.display().to_string()), "{message}");
            assert!(message.contains(needle), "{message}");
            assert_eq!(err.exit_code(), 2);
        }
        other => panic!("expected an invalid-input error, got {other:?}"),
    }
}

#[test]
fn a_missing_file_is_an_io_error() {
    let missing = scratch("does-not-exist.json");
    match ClipTokenizer::from_file(&missing) {
        Err(err @ Error::Io { .. }) => {
            assert!(err.to_string().contains("does-not-exist.json"), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
        other => panic!("expected an io error, got {other:?}"),
    }
}

/// The tiny set's `tokenizer_2` file as JSON, to damage.
fn tokenizer_2_json() -> serde_json::Map<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(json_path("tokenizer_2")).unwrap()).unwrap()
}

/// Writes `json` to a scratch file and expects loading it to fail naming the file and `needle`.
fn expect_rejected(name: &str, json: &str, needle: &str) {
    let path = scratch(name);
    std::fs::write(&path, json).unwrap();
    expect_invalid(ClipTokenizer::from_file(&path), &path, needle);
}

#[test]
fn malformed_tokenizer_files_are_rejected() {
    expect_rejected("not-json.json", "{\"model\": 1,", "not a tokenizer.json");
    expect_rejected("not-a-tokenizer.json", "{\"a\": 1}", "not a tokenizer.json");

    let mut no_eos = tokenizer_2_json();
    no_eos["model"]["vocab"]
        .as_object_mut()
        .unwrap()
        .remove("<|endoftext|>")
        .unwrap();
    let added = no_eos["added_tokens"].as_array_mut().unwrap();
    added.retain(|t| t["content"] != "<|endoftext|>");
    no_eos["post_processor"] = Value::Null;
    expect_rejected(
        "no-eos.json",
        &Value::Object(no_eos).to_string(),
        "\"<|endoftext|>\" is missing",
    );

    // Without the post-processor no start and end tokens are added.
    let mut no_post = tokenizer_2_json();
    no_post["post_processor"] = Value::Null;
    expect_rejected(
        "no-post.json",
        &Value::Object(no_post).to_string(),
        "post-processor",
    );
}

// The padding and truncation diffusers asks for must be in the file: without them, or with
// other lengths, the ids would silently differ from the reference's.
/// An edit of a parsed tokenizer.json.
type Edit = fn(&mut serde_json::Map<String, Value>);

#[test]
fn padding_and_truncation_must_be_sdxl_s() {
    let cases: [(&str, Edit, &str); 5] = [
        (
            "no-padding.json",
            |j| j["padding"] = Value::Null,
            "gives no padding",
        ),
        (
            "short-padding.json",
            |j| j["padding"]["strategy"] = serde_json::json!({"Fixed": 64}),
            "pads Fixed(64)",
        ),
        (
            "no-truncation.json",
            |j| j["truncation"] = Value::Null,
            "gives no truncation",
        ),
        (
            "left-truncation.json",
            |j| j["truncation"]["direction"] = "Left".into(),
            "truncates to 77 ids on the Left",
        ),
        (
            "pad-id.json",
            |j| j["padding"]["pad_id"] = 49408.into(),
            "the padding token \"!\" is not token 49408",
        ),
    ];
    for (name, edit, needle) in cases {
        let mut json = tokenizer_2_json();
        edit(&mut json);
        expect_rejected(name, &Value::Object(json).to_string(), needle);
    }
}

fn run_cli(models: &Path, prompt: &str) -> (Value, String) {
    let output = common::command()
        .args(["tokenize", "--json", "--models"])
        .arg(models)
        .arg(prompt)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    (serde_json::from_slice(&output.stdout).unwrap(), stderr)
}

/// Checks the CLI's JSON for a few reference prompts, a truncated one included.
fn check_cli(models: &Path) {
    let reference = reference();
    let prompts = reference["prompts"].as_array().unwrap();
    let chosen = [
        "hello! world!!",
        "it's a dog's life",
        "",
        "\u{5bcc}\u{58eb}\u{5c71}\u{306e}\u{5199}\u{771f}",
    ];
    let mut entries: Vec<&Value> = prompts
        .iter()
        .filter(|e| chosen.contains(&e["prompt"].as_str().unwrap()))
        .collect();
    entries.push(
        prompts
            .iter()
            .find(|e| e["truncated"].as_bool().unwrap())
            .unwrap(),
    );
    assert_eq!(entries.len(), chosen.len() + 1);
    for entry in entries {
        let prompt = entry["prompt"].as_str().unwrap();
        let (json, stderr) = run_cli(models, prompt);
        assert_eq!(json.as_object().unwrap().len(), 2);
        assert_eq!(
            ids(&json["tokenizer"]),
            ids(&entry["tokenizer"]),
            "{prompt:?}"
        );
        assert_eq!(
            ids(&json["tokenizer_2"]),
            ids(&entry["tokenizer_2"]),
            "{prompt:?}"
        );
        let truncated = entry["truncated"].as_bool().unwrap();
        assert_eq!(
            stderr.contains("warning: tokenizer:"),
            truncated,
            "{prompt:?}: {stderr}"
        );
    }
}

// Expected: reference.json (transformers CLIPTokenizer, both configurations), via the default
// graph set's tokenizer files.
#[test]
fn cli_json_matches_reference() {
    check_cli(&tiny_dir());
}

// Expected: reference.json; the tokenizer files and pad ids come from a manifest's `tokenizers`
// section (pad ids deliberately listed there, not defaulted).
#[test]
fn cli_reads_tokenizers_from_manifest() {
    // Manifest paths are relative to the set and carry sha256 entries: copy the files in.
    let models = scratch("manifest-set");
    std::fs::create_dir_all(models.join("clip")).unwrap();
    for name in ["tokenizer", "tokenizer_2"] {
        std::fs::copy(json_path(name), models.join(format!("clip/{name}.json"))).unwrap();
    }
    let sha = |name: &str| idpatch::manifest::sha256_file(&json_path(name)).unwrap();
    let entry = |file: &str, name: &str| serde_json::json!({"file": file, "sha256": sha(name)});
    let manifest = serde_json::json!({
        "format": 3,
        "tokenizers": {
            "tokenizer": entry("clip/tokenizer.json", "tokenizer"),
            "tokenizer_2": entry("clip/tokenizer_2.json", "tokenizer_2"),
        }
    });
    std::fs::write(models.join("manifest.json"), manifest.to_string()).unwrap();
    check_cli(&models);

    // A manifest naming a missing file is an error (exit 2), not a silent fallback.
    let broken = scratch("broken-set");
    std::fs::create_dir_all(&broken).unwrap();
    let manifest = serde_json::json!({
        "tokenizers": {
            "tokenizer": entry("nope/tokenizer.json", "tokenizer"),
            "tokenizer_2": entry("clip/tokenizer_2.json", "tokenizer_2"),
        }
    });
    std::fs::write(broken.join("manifest.json"), manifest.to_string()).unwrap();
    let output = common::command()
        .args(["tokenize", "--models"])
        .arg(&broken)
        .arg("a cat")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nope/tokenizer.json"));
}
