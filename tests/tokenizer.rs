//! CLIP tokenizer parity with transformers' CLIPTokenizer, both SDXL configurations.
//! Expected ids: tests/reference/tokenizer.py (transformers 5.23.0 CLIPTokenizer.from_pretrained
//! on the models/tiny/tokenizer files, padding="max_length", max_length=77, truncation=True).

mod common;

use std::path::{Path, PathBuf};

use common::tiny_dir;
use idpatch::tokenizer::{ClipTokenizer, MAX_LENGTH};
use idpatch::Error;
use serde_json::Value;

fn vocab_path() -> PathBuf {
    tiny_dir().join("tokenizer/vocab.json")
}

fn merges_path() -> PathBuf {
    tiny_dir().join("tokenizer/merges.txt")
}

fn load(pad_token_id: i64) -> ClipTokenizer {
    ClipTokenizer::from_files(&vocab_path(), &merges_path(), pad_token_id).unwrap()
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
fn check_all(pad_token_id: i64, ids_key: &str, truncated_key: &str) {
    let tokenizer = load(pad_token_id);
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
        let encoding = tokenizer.encode(prompt);
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
    check_all(49407, "tokenizer", "truncated");
}

// Expected: reference.json "tokenizer_2"/"truncated_2" (from_pretrained(dir, pad_token="!")).
#[test]
fn tokenizer_2_matches_transformers() {
    check_all(0, "tokenizer_2", "truncated_2");
}

// Expected: reference.json "tokenizer_2"; pad 0 differs from the end token, so the ids before
// padding end at the last 49407.
#[test]
fn tokens_used_counts_ids_before_padding() {
    let tokenizer = load(0);
    for entry in reference()["prompts"].as_array().unwrap() {
        let expected = ids(&entry["tokenizer_2"]);
        let last_eos = expected.iter().rposition(|&id| id == 49407).unwrap();
        let encoding = tokenizer.encode(entry["prompt"].as_str().unwrap());
        assert_eq!(encoding.tokens_used, last_eos + 1, "{:?}", entry["prompt"]);
    }
}

// Expected: transformers 5.23, t = CLIPTokenizer("models/tiny/tokenizer/vocab.json",
// "models/tiny/tokenizer/merges.txt"); len(t), t.bos_token_id, t.eos_token_id, t.pad_token_id
// -> 49408 49406 49407 49407 (the second SDXL tokenizer pads with 0, reference.json pad_token_id).
#[test]
fn special_ids_and_vocabulary_size() {
    let tokenizer = load(49407);
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_eq!(tokenizer.bos_id(), 49406);
    assert_eq!(tokenizer.eos_id(), 49407);
    assert_eq!(tokenizer.pad_id(), 49407);
    assert_eq!(load(0).pad_id(), 0);
}

// Expected: reference.json "tokenizer" for a prompt of common words; a warm cache and a cleared
// one must give the same ids.
#[test]
fn cache_does_not_change_results() {
    let tokenizer = load(49407);
    let reference = reference();
    let entry = &reference["prompts"][1];
    let prompt = entry["prompt"].as_str().unwrap();
    let expected = ids(&entry["tokenizer"]);
    assert_eq!(tokenizer.encode(prompt).ids, expected);
    assert_eq!(tokenizer.encode(prompt).ids, expected);
    tokenizer.clear_cache();
    assert_eq!(tokenizer.encode(prompt).ids, expected);
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
fn missing_files_are_io_errors() {
    let missing = scratch("does-not-exist.json");
    for result in [
        ClipTokenizer::from_files(&missing, &merges_path(), 49407),
        ClipTokenizer::from_files(&vocab_path(), &missing, 49407),
    ] {
        match result {
            Err(err @ Error::Io { .. }) => {
                assert!(err.to_string().contains("does-not-exist.json"), "{err}");
                assert_eq!(err.exit_code(), 2);
            }
            other => panic!("expected an io error, got {other:?}"),
        }
    }
}

#[test]
fn malformed_vocab_is_rejected() {
    let not_json = scratch("not-json.json");
    std::fs::write(&not_json, "{\"a\": 1,").unwrap();
    expect_invalid(
        ClipTokenizer::from_files(&not_json, &merges_path(), 49407),
        &not_json,
        "JSON",
    );

    let bad_id = scratch("bad-id.json");
    std::fs::write(&bad_id, "{\"a\": \"one\"}").unwrap();
    expect_invalid(
        ClipTokenizer::from_files(&bad_id, &merges_path(), 49407),
        &bad_id,
        "\"a\"",
    );

    // The real vocabulary without its end token: loading merges works, the special lookup fails.
    let text = std::fs::read_to_string(vocab_path()).unwrap();
    let mut vocab: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    vocab.remove("<|endoftext|>").unwrap();
    let no_eos = scratch("no-eos.json");
    std::fs::write(&no_eos, serde_json::to_string(&vocab).unwrap()).unwrap();
    expect_invalid(
        ClipTokenizer::from_files(&no_eos, &merges_path(), 0),
        &no_eos,
        "<|endoftext|>",
    );
}

#[test]
fn malformed_merges_are_rejected() {
    let merges = std::fs::read_to_string(merges_path()).unwrap();
    let mut lines: Vec<&str> = merges.lines().collect();

    lines[3] = "three parts here";
    let three_parts = scratch("three-parts.txt");
    std::fs::write(&three_parts, lines.join("\n")).unwrap();
    expect_invalid(
        ClipTokenizer::from_files(&vocab_path(), &three_parts, 49407),
        &three_parts,
        "line 4",
    );

    lines[3] = "zzz\u{2603} q";
    let unknown = scratch("unknown-symbol.txt");
    std::fs::write(&unknown, lines.join("\n")).unwrap();
    expect_invalid(
        ClipTokenizer::from_files(&vocab_path(), &unknown, 49407),
        &unknown,
        "line 4",
    );

    let empty = scratch("empty-merges.txt");
    std::fs::write(&empty, "#version: 0.2\n").unwrap();
    expect_invalid(
        ClipTokenizer::from_files(&vocab_path(), &empty, 49407),
        &empty,
        "no merges",
    );
}

#[test]
fn pad_id_outside_the_vocabulary_is_rejected() {
    for pad in [-1, 49408, i64::MAX] {
        match ClipTokenizer::from_files(&vocab_path(), &merges_path(), pad) {
            Err(err @ Error::InvalidInput { .. }) => {
                assert!(err.to_string().contains("pad_token_id"), "{err}")
            }
            other => panic!("pad {pad}: expected an invalid-input error, got {other:?}"),
        }
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
    std::fs::copy(vocab_path(), models.join("clip/vocab.json")).unwrap();
    std::fs::copy(merges_path(), models.join("clip/merges.txt")).unwrap();
    let sha = |p: PathBuf| idpatch::manifest::sha256_file(&p).unwrap();
    let entry = |vocab: &str, pad: i64| {
        serde_json::json!({
            "vocab": vocab, "vocab_sha256": sha(vocab_path()),
            "merges": "clip/merges.txt", "merges_sha256": sha(merges_path()),
            "pad_token_id": pad,
        })
    };
    let manifest = serde_json::json!({
        "format": 2,
        "tokenizers": { "tokenizer": entry("clip/vocab.json", 49407), "tokenizer_2": entry("clip/vocab.json", 0) }
    });
    std::fs::write(models.join("manifest.json"), manifest.to_string()).unwrap();
    check_cli(&models);

    // A manifest naming a missing file is an error (exit 2), not a silent fallback.
    let broken = scratch("broken-set");
    std::fs::create_dir_all(&broken).unwrap();
    let manifest = serde_json::json!({
        "tokenizers": { "tokenizer": entry("nope/vocab.json", 49407), "tokenizer_2": entry("clip/vocab.json", 0) }
    });
    std::fs::write(broken.join("manifest.json"), manifest.to_string()).unwrap();
    let output = common::command()
        .args(["tokenize", "--models"])
        .arg(&broken)
        .arg("a cat")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nope/vocab.json"));
}
