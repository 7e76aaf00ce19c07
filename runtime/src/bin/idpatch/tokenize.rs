//! `idpatch tokenize`: the token ids both SDXL tokenizers give a prompt.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::{note, outln};
use idpatch::checksum::ChecksumCache;
use idpatch::limits::MAX_PROMPT_BYTES;
use idpatch::manifest::{open_tokenizers, Checksums};
use idpatch::tokenizer::{Encoding, Tokenizers, MAX_TEXT_TOKENS};
use idpatch::Error;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Graph set directory. The tokenizer.json files come from its manifest.json `tokenizers`
    /// section (their sha256 verified); the rest of the set is not needed.
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
    let checksums = Checksums::from_skip_flag(args.skip_checksums);
    let section = open_tokenizers(&args.models, checksums, &ChecksumCache::from_env())?;
    let tokenizers = Tokenizers::from_section(&args.models, &section)?;
    let mut encodings = Vec::new();
    for (name, tokenizer) in tokenizers.named() {
        let encoding = tokenizer.encode(&args.prompt)?;
        if encoding.truncated {
            note!(
                "warning: {name}: the prompt has more than {MAX_TEXT_TOKENS} tokens (77 with the \
                 start and end tokens); the rest is ignored"
            );
        }
        encodings.push((name, encoding));
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
