//! The two SDXL CLIP tokenizers, run by Hugging Face's `tokenizers` library from the
//! `tokenizer.json` files a graph set lists.
//!
//! # Which reference
//! diffusers' SDXL pipelines load both tokenizers as transformers' `CLIPTokenizer`, which from
//! transformers 5 on is always the `tokenizers`-backed pipeline (no ftfy, no HTML unescaping).
//! The exporter writes that pipeline's own `tokenizer.json` (`exporter-specs/export.py`: from an
//! SDXL folder's `tokenizer/` and `tokenizer_2/`, or from the CLIP vocabulary it rebuilds), with
//! the padding and truncation diffusers asks for at call time (`padding="max_length"`,
//! `max_length=77`, `truncation=True`) stored in the file. This module runs the same library on
//! the same file, so the ids are transformers' by construction; `tests/tokenizer.rs` checks 74
//! prompts against transformers 5.23.
//!
//! What the file holds, for SDXL: NFC, whitespace runs collapsed, lower-casing; CLIP's split
//! pattern, byte-level symbols and BPE merges with the `</w>` end-of-word suffix;
//! `<|startoftext|>` + at most 75 tokens + `<|endoftext|>`, padded to 77. The special tokens
//! and the padding token are "added tokens", cut out of the raw text before normalisation: the
//! second tokenizer registers `!` (id 0) as its padding token, so every `!` in a prompt becomes
//! id 0 there, where the first tokenizer gives `!</w>` (256) or merged runs such as `!!`.
//!
//! `tokenizers` is built with its pure-Rust regex engine (`fancy-regex`, backed by the `regex`
//! crate for these patterns) where transformers uses Oniguruma; characters whose Unicode
//! properties differ between the two tables could in principle split differently, none of the
//! reference prompts do.

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::models::ModelWrapper;
use tokenizers::utils::padding::{PaddingDirection, PaddingStrategy};
use tokenizers::utils::truncation::TruncationDirection;
use tokenizers::Tokenizer;

use crate::manifest::FileEntry;
use crate::{Error, Result};

/// Tokens per prompt, start and end tokens included.
pub const MAX_LENGTH: usize = 77;
/// Text tokens that fit between the start and end tokens.
pub const MAX_TEXT_TOKENS: usize = MAX_LENGTH - 2;

pub const BOS_TOKEN: &str = "<|startoftext|>";
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// Largest tokenizer file read, in bytes (CLIP's tokenizer.json is about 2 MB).
const MAX_TOKENIZER_FILE_BYTES: u64 = 64 << 20;

/// One prompt's token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Always [`MAX_LENGTH`] ids: start token, text tokens, end token, padding.
    pub ids: Vec<i64>,
    /// The prompt had more than [`MAX_TEXT_TOKENS`] text tokens; the rest were dropped.
    pub truncated: bool,
    /// Ids before the padding (start and end tokens included).
    pub tokens_used: usize,
}

/// A CLIP tokenizer loaded from a Hugging Face `tokenizer.json`.
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// How errors name the file.
    input: String,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("file", &self.input)
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Loads a `tokenizer.json` (at most 64 MiB).
    ///
    /// Errors: [`Error::Io`] when the file cannot be read; [`Error::InvalidInput`] naming the
    /// file when it does not parse, its model is not BPE, `<|startoftext|>` or
    /// `<|endoftext|>` is missing, or it does not pad and truncate to exactly 77 ids on the
    /// right (see [`ClipTokenizer::from_json`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_text_limited(path, MAX_TOKENIZER_FILE_BYTES, "tokenizer")?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses `tokenizer.json` text; `input` names it in errors. The file must give the
    /// padding (`"padding": {"strategy": {"Fixed": 77}, "direction": "Right", "pad_id": ..,
    /// "pad_token": ..}`, the pad token being the vocabulary's token of `pad_id`) and the
    /// truncation (`"truncation": {"max_length": 77, "direction": "Right", "stride": 0}`) that
    /// diffusers requests, and an empty prompt must encode as `<|startoftext|> <|endoftext|>`
    /// followed by padding.
    pub fn from_json(text: &str, input: &str) -> Result<Self> {
        let bad = |reason: String| Error::invalid_input(input, reason);
        let inner: Tokenizer = text
            .parse()
            .map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
        if !matches!(inner.get_model(), ModelWrapper::BPE(_)) {
            return Err(bad("the model is not BPE (CLIP's tokenizers are)".into()));
        }
        let id_of = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| bad(format!("token {token:?} is missing")))
        };
        let (bos_id, eos_id) = (id_of(BOS_TOKEN)?, id_of(EOS_TOKEN)?);
        let pad_id = check_padding(&inner).map_err(&bad)?;
        check_truncation(&inner).map_err(&bad)?;
        let tokenizer = ClipTokenizer {
            inner,
            bos_id,
            eos_id,
            pad_id,
            input: input.to_string(),
        };
        let empty = tokenizer.encode("")?;
        let mut expected = vec![i64::from(pad_id); MAX_LENGTH];
        expected[..2].copy_from_slice(&[i64::from(bos_id), i64::from(eos_id)]);
        if empty.ids != expected {
            return Err(bad(format!(
                "an empty prompt encodes as {:?}, not {BOS_TOKEN} {EOS_TOKEN} and padding \
                 (the post-processor must add both)",
                &empty.ids[..empty.ids.len().min(4)]
            )));
        }
        Ok(tokenizer)
    }

    pub fn bos_id(&self) -> i64 {
        self.bos_id.into()
    }

    pub fn eos_id(&self) -> i64 {
        self.eos_id.into()
    }

    pub fn pad_id(&self) -> i64 {
        self.pad_id.into()
    }

    /// Tokens in the vocabulary, added tokens included (49408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Forgets every cached word (for measuring the uncached cost).
    pub fn clear_cache(&self) {
        if let ModelWrapper::BPE(bpe) = self.inner.get_model() {
            bpe.clear_cache();
        }
    }

    /// Tokenises `prompt` into exactly [`MAX_LENGTH`] ids: start token, at most
    /// [`MAX_TEXT_TOKENS`] text tokens, end token, padding.
    ///
    /// Errors: [`Error::InvalidInput`] naming the tokenizer file when the library fails (a
    /// tokenizer that passed [`ClipTokenizer::from_json`] does not, for any text).
    pub fn encode(&self, prompt: &str) -> Result<Encoding> {
        let encoding = self
            .inner
            .encode_fast(prompt, true)
            .map_err(|e| Error::invalid_input(&self.input, format!("cannot encode: {e}")))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| id.into()).collect();
        if ids.len() != MAX_LENGTH {
            return Err(Error::invalid_input(
                &self.input,
                format!("gave {} ids, not {MAX_LENGTH}", ids.len()),
            ));
        }
        Ok(Encoding {
            ids,
            truncated: !encoding.get_overflowing().is_empty(),
            tokens_used: encoding
                .get_attention_mask()
                .iter()
                .filter(|&&m| m != 0)
                .count(),
        })
    }
}

/// The pad id, when the file pads on the right to exactly [`MAX_LENGTH`] with a token of its
/// vocabulary.
fn check_padding(tokenizer: &Tokenizer) -> std::result::Result<u32, String> {
    let Some(padding) = tokenizer.get_padding() else {
        return Err(format!(
            "gives no padding; SDXL pads every prompt to {MAX_LENGTH} ids (write the file with \
             exporter-specs/export.py)"
        ));
    };
    if !matches!(padding.strategy, PaddingStrategy::Fixed(MAX_LENGTH))
        || !matches!(padding.direction, PaddingDirection::Right)
        || padding.pad_to_multiple_of.is_some()
    {
        return Err(format!(
            "pads {:?} on the {:?}; SDXL pads to exactly {MAX_LENGTH} ids on the right",
            padding.strategy, padding.direction
        ));
    }
    if tokenizer.token_to_id(&padding.pad_token) != Some(padding.pad_id) {
        return Err(format!(
            "the padding token {:?} is not token {} of the vocabulary",
            padding.pad_token, padding.pad_id
        ));
    }
    Ok(padding.pad_id)
}

/// The file must cut prompts to [`MAX_LENGTH`] ids, start and end tokens included, keeping the
/// beginning.
fn check_truncation(tokenizer: &Tokenizer) -> std::result::Result<(), String> {
    match tokenizer.get_truncation() {
        Some(t)
            if t.max_length == MAX_LENGTH
                && t.direction == TruncationDirection::Right
                && t.stride == 0 =>
        {
            Ok(())
        }
        Some(t) => Err(format!(
            "truncates to {} ids on the {:?} with stride {}; SDXL keeps the first {MAX_LENGTH}",
            t.max_length, t.direction, t.stride
        )),
        None => Err(format!(
            "gives no truncation; SDXL cuts prompts to {MAX_LENGTH} ids (write the file with \
             exporter-specs/export.py)"
        )),
    }
}

/// The tokenizers a set must list, in the order the pipeline uses them.
pub const TOKENIZERS: [&str; 2] = ["tokenizer", "tokenizer_2"];

/// The manifest's `tokenizers` section: `{"tokenizer": {"file": .., "sha256": ..},
/// "tokenizer_2": {..}}`, each file a `tokenizer.json` relative to the set directory.
pub type TokenizerSection = BTreeMap<String, FileEntry>;

/// The two SDXL tokenizers of a set.
pub struct Tokenizers {
    pub first: ClipTokenizer,
    pub second: ClipTokenizer,
}

impl Tokenizers {
    /// Loads `tokenizer` and `tokenizer_2` from a checked section (see
    /// [`crate::manifest::check_tokenizer_section`]); files are relative to `dir`. Errors name
    /// the section entry and the file.
    pub fn from_section(dir: &Path, section: &TokenizerSection) -> Result<Self> {
        let load = |name: &str| {
            let entry = section.get(name).ok_or_else(|| {
                Error::model_set(
                    dir.display().to_string(),
                    format!("manifest.json has no tokenizers.{name} entry"),
                )
            })?;
            ClipTokenizer::from_file(&dir.join(&entry.file)).map_err(|e| match e {
                Error::InvalidInput { input, reason } => Error::model_set(
                    dir.display().to_string(),
                    format!("tokenizers.{name}: {input}: {reason}"),
                ),
                other => other,
            })
        };
        Ok(Tokenizers {
            first: load(TOKENIZERS[0])?,
            second: load(TOKENIZERS[1])?,
        })
    }

    /// Loads the tokenizers of an opened set.
    pub fn load(set: &crate::manifest::ModelSet) -> Result<Self> {
        Self::from_section(&set.dir, &set.manifest.tokenizers)
    }

    /// Both tokenizers on each of `prompts`: `[first, second]`, each in the order given.
    pub fn encode<const N: usize>(&self, prompts: [&str; N]) -> Result<[[Encoding; N]; 2]> {
        let encode_all = |t: &ClipTokenizer| -> Result<[Encoding; N]> {
            let encodings = prompts
                .iter()
                .map(|p| t.encode(p))
                .collect::<Result<Vec<_>>>()?;
            Ok(encodings.try_into().expect("one encoding per prompt"))
        };
        Ok([encode_all(&self.first)?, encode_all(&self.second)?])
    }

    /// The two tokenizers with their names, in pipeline order.
    pub fn named(&self) -> [(&'static str, &ClipTokenizer); 2] {
        [(TOKENIZERS[0], &self.first), (TOKENIZERS[1], &self.second)]
    }
}
