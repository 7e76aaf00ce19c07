//! `idpatch tokenize`: the token ids both SDXL tokenizers give a prompt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::output::{note, outln};
use anyhow::Context;
use idpatch::limits::MAX_PROMPT_BYTES;
use idpatch::tokenizer::{ClipTokenizer, Encoding, MAX_TEXT_TOKENS};
use idpatch::{fsutil, Error};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Graph set directory. Tokenizer files come from its manifest.json `tokenizers` section;
    /// when there is no manifest or no such section, from tokenizer/vocab.json and
    /// tokenizer/merges.txt with SDXL's pad ids (49407 and 0).
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    /// Print one JSON object {"tokenizer": [77 ids], "tokenizer_2": [77 ids]}.
    #[arg(long)]
    json: bool,
    /// The prompt.
    prompt: String,
}

const NAMES: [&str; 2] = ["tokenizer", "tokenizer_2"];
/// Largest manifest.json read, in bytes (a full set's is about 15 KB).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::invalid_input(
            "PROMPT",
            format!(
                "{} bytes long, at most {MAX_PROMPT_BYTES} are accepted",
                args.prompt.len()
            ),
        )
        .into());
    }
    let mut encodings = Vec::new();
    for (name, files) in NAMES.iter().zip(tokenizer_files(&args.models)?) {
        let tokenizer = ClipTokenizer::from_files(&files.vocab, &files.merges, files.pad_token_id)
            .with_context(|| format!("loading {name}"))?;
        let encoding = tokenizer.encode(&args.prompt);
        if encoding.truncated {
            note!(
                "warning: {name}: the prompt has more than {MAX_TEXT_TOKENS} tokens (77 with the \
                 start and end tokens); the rest is ignored"
            );
        }
        encodings.push((*name, encoding));
    }
    if args.json {
        let object: serde_json::Map<String, Value> = encodings
            .iter()
            .map(|(name, encoding)| (name.to_string(), Value::from(encoding.ids.clone())))
            .collect();
        outln!("{}", Value::Object(object))?;
    } else {
        for (name, encoding) in &encodings {
            print_plain(name, encoding)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plain(name: &str, encoding: &Encoding) -> anyhow::Result<()> {
    let ids: Vec<String> = encoding.ids.iter().map(i64::to_string).collect();
    outln!(
        "{name} ({} of {} tokens used): {}",
        encoding.tokens_used,
        ids.len(),
        ids.join(" ")
    )
}

struct TokenizerFiles {
    vocab: PathBuf,
    merges: PathBuf,
    pad_token_id: i64,
}

/// The files of `tokenizer` and `tokenizer_2`, read from the manifest when it lists them.
fn tokenizer_files(models: &Path) -> anyhow::Result<Vec<TokenizerFiles>> {
    let manifest_path = models.join("manifest.json");
    let section = if manifest_path.exists() {
        let text = fsutil::read_text_limited(&manifest_path, MAX_MANIFEST_BYTES, "manifest")?;
        let manifest: Value = serde_json::from_str(&text).map_err(|e| {
            Error::invalid_input(
                manifest_path.display().to_string(),
                format!("not JSON: {e}"),
            )
        })?;
        manifest.get("tokenizers").cloned()
    } else {
        None
    };
    let Some(section) = section else {
        let dir = models.join("tokenizer");
        return Ok([49407, 0]
            .into_iter()
            .map(|pad_token_id| TokenizerFiles {
                vocab: dir.join("vocab.json"),
                merges: dir.join("merges.txt"),
                pad_token_id,
            })
            .collect());
    };
    NAMES
        .iter()
        .map(|name| {
            let bad = |reason: &str| {
                Error::invalid_input(
                    format!("{} tokenizers.{name}", manifest_path.display()),
                    reason.to_string(),
                )
            };
            let entry = section.get(name).ok_or_else(|| bad("missing"))?;
            let file = |key: &str| {
                entry
                    .get(key)
                    .and_then(Value::as_str)
                    .map(|relative| models.join(relative))
                    .ok_or_else(|| bad(&format!("{key} must be a file name")))
            };
            let pad_token_id = entry
                .get("pad_token_id")
                .and_then(Value::as_i64)
                .ok_or_else(|| bad("pad_token_id must be an integer"))?;
            Ok(TokenizerFiles {
                vocab: file("vocab")?,
                merges: file("merges")?,
                pad_token_id,
            })
        })
        .collect()
}
