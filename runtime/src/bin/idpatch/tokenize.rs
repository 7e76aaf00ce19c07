//! `idpatch tokenize`: the token ids both SDXL tokenizers give a prompt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::output::{note, outln};
use anyhow::Context;
use idpatch::checksum::ChecksumCache;
use idpatch::limits::MAX_PROMPT_BYTES;
use idpatch::manifest::{open_tokenizers, Checksums};
use idpatch::tokenizer::{ClipTokenizer, Encoding, MAX_TEXT_TOKENS};
use idpatch::Error;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Graph set directory. Tokenizer files come from its manifest.json `tokenizers` section
    /// (their sha256 verified); when there is no manifest or no such section, from
    /// tokenizer/vocab.json and tokenizer/merges.txt with SDXL's pad ids (49407 and 0).
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    /// Do not verify the tokenizer files against the manifest's sha256.
    #[arg(long)]
    skip_checksums: bool,
    /// Print one JSON object {"tokenizer": [77 ids], "tokenizer_2": [77 ids]}.
    #[arg(long)]
    json: bool,
    /// The prompt.
    prompt: String,
}

const NAMES: [&str; 2] = ["tokenizer", "tokenizer_2"];

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
    for (name, files) in NAMES.iter().zip(tokenizer_files(
        &args.models,
        Checksums::from_skip_flag(args.skip_checksums),
    )?) {
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

/// The files of `tokenizer` and `tokenizer_2`: from the manifest when it lists them (paths and
/// checksums checked as when a set is opened), else SDXL's layout.
fn tokenizer_files(models: &Path, checksums: Checksums) -> anyhow::Result<Vec<TokenizerFiles>> {
    let Some(section) = open_tokenizers(models, checksums, &ChecksumCache::from_env())? else {
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
    Ok(NAMES
        .iter()
        .map(|name| {
            // open_tokenizers checked that both are listed.
            let files = &section[*name];
            TokenizerFiles {
                vocab: models.join(&files.vocab),
                merges: models.join(&files.merges),
                pad_token_id: files.pad_token_id,
            }
        })
        .collect())
}
