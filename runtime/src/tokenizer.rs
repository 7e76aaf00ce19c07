//! CLIP byte-level BPE tokenizer, id-for-id compatible with the tokenizers SDXL pipelines use.
//!
//! # Which reference
//! diffusers' SDXL pipelines load both tokenizers as transformers' `CLIPTokenizer`. From
//! transformers 5 on (checked against 5.23.0 with tokenizers 0.23.3) that class is always the
//! Rust-backed `tokenizers` pipeline, whether or not `ftfy` is installed; the pure-Python tokenizer
//! of transformers 4 (ftfy `fix_text`, double HTML unescape) no longer exists. This module
//! reproduces the transformers 5 pipeline:
//!
//! 1. The special tokens `<|startoftext|>`, `<|endoftext|>` and the padding token are cut out of
//!    the raw text first (leftmost, longest match, case-sensitive) and map straight to their ids.
//!    The padding token counts as special because transformers registers it as one: for
//!    `tokenizer_2` (pad `"!"`, id 0) every `!` in a prompt becomes id 0, where `tokenizer`
//!    produces `!</w>` (256) or merged runs such as `!!`. The reference data checks this.
//! 2. Each remaining segment: Unicode NFC, then per-character lower-casing (no final-sigma rule).
//!    The reference also collapses whitespace runs to one space at this point; that step cannot
//!    change the result since whitespace is dropped by the next step, so it is skipped.
//! 3. Pre-tokenisation with CLIP's pattern: the contractions `'s 't 're 've 'm 'll 'd`, runs of
//!    letters, single digits, runs of anything else that is not whitespace; whitespace is dropped.
//!    The reference's pattern also lists the special-token strings, after which its byte-level
//!    step splits them again into `<|`, the word and `|>`; leaving them out of the pattern gives
//!    the same pieces.
//! 4. Every piece becomes its UTF-8 bytes, each byte a symbol of the vocabulary (GPT-2's printable
//!    byte table), the last one carrying the end-of-word suffix `</w>`; merges are applied lowest
//!    rank first, leftmost first among equal ranks.
//! 5. `<|startoftext|>` + at most 75 tokens + `<|endoftext|>`, padded to 77 with the pad id.
//!
//! # Known differences
//! - Text is not repaired (no ftfy, no HTML unescaping: `&amp;` stays three tokens), as in
//!   transformers 5. Prompts tuned on transformers 4's slow tokenizer may tokenise differently
//!   when they contain HTML entities, mojibake or leading/trailing special-token text.
//! - Unicode tables: NFC comes from the `unicode-normalization` crate, lower-casing from Rust's
//!   standard library and the character classes from the `regex` crate; the reference uses its own
//!   (Oniguruma, an older normalisation table). Characters whose properties changed between
//!   Unicode versions could in principle tokenise differently; none of the reference prompts do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use regex::Regex;
use unicode_normalization::{IsNormalized, UnicodeNormalization};

use crate::{Error, Result};

/// Tokens per prompt, start and end tokens included.
pub const MAX_LENGTH: usize = 77;
/// Text tokens that fit between the start and end tokens.
pub const MAX_TEXT_TOKENS: usize = MAX_LENGTH - 2;

pub const BOS_TOKEN: &str = "<|startoftext|>";
pub const EOS_TOKEN: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// CLIP's pre-tokeniser pattern without the special-token alternatives (see the module docs).
const PIECE_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

/// Words this long or longer are not cached: they are rare, and would let one huge prompt fill
/// the cache with entries nobody reuses.
const MAX_CACHED_WORD_BYTES: usize = 100;
const CACHE_CAPACITY: usize = 10_000;

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

/// A CLIP tokenizer loaded from Hugging Face's `vocab.json` and `merges.txt`.
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Vocabulary id of each byte's symbol, without and with the end-of-word suffix.
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// Text cut out before normalisation, longest first, with its id.
    specials: Vec<(String, u32)>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    pieces: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab.len())
            .field("merges", &self.merges.len())
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Loads the vocabulary and merge list. `pad_token_id` is the id used for padding (49407 for
    /// SDXL's first tokenizer, 0, i.e. `!`, for the second); it must exist in the vocabulary.
    pub fn from_files(vocab_path: &Path, merges_path: &Path, pad_token_id: i64) -> Result<Self> {
        let vocab_text = read_text(vocab_path)?;
        let merges_text = read_text(merges_path)?;
        let vocab = parse_vocab(vocab_path, &vocab_text)?;
        let merges = parse_merges(merges_path, &merges_text, &vocab)?;
        Self::new(vocab_path, vocab, merges, pad_token_id)
    }

    fn new(
        vocab_path: &Path,
        vocab: HashMap<String, u32>,
        merges: HashMap<(u32, u32), (u32, u32)>,
        pad_token_id: i64,
    ) -> Result<Self> {
        let vocab_input = vocab_path.display().to_string();
        let lookup = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| {
                Error::invalid_input(&vocab_input, format!("token {token:?} is missing"))
            })
        };
        let symbols = byte_symbols();
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for byte in 0..256 {
            let symbol = symbols[byte].to_string();
            byte_ids[byte] = lookup(&symbol)?;
            byte_end_ids[byte] = lookup(&(symbol + END_OF_WORD))?;
        }
        let bos_id = lookup(BOS_TOKEN)?;
        let eos_id = lookup(EOS_TOKEN)?;

        let pad_id = u32::try_from(pad_token_id)
            .ok()
            .filter(|id| vocab.values().any(|v| v == id));
        let Some(pad_id) = pad_id else {
            return Err(Error::invalid_input(
                "pad_token_id",
                format!("{pad_token_id} is not an id of {vocab_input}"),
            ));
        };
        let pad_token = vocab
            .iter()
            .find(|(_, &id)| id == pad_id)
            .map(|(t, _)| t.clone());

        let mut specials = vec![
            (BOS_TOKEN.to_string(), bos_id),
            (EOS_TOKEN.to_string(), eos_id),
        ];
        if let Some(pad_token) = pad_token {
            if !pad_token.is_empty() && !specials.iter().any(|(t, _)| *t == pad_token) {
                specials.push((pad_token, pad_id));
            }
        }
        specials.sort_by_key(|(text, _)| Reverse(text.len()));

        Ok(ClipTokenizer {
            vocab,
            merges,
            byte_ids,
            byte_end_ids,
            specials,
            bos_id,
            eos_id,
            pad_id,
            pieces: Regex::new(PIECE_PATTERN).expect("the piece pattern is valid"),
            cache: Mutex::new(HashMap::new()),
        })
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

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Forgets every cached word (for measuring the uncached cost).
    pub fn clear_cache(&self) {
        self.lock_cache().clear();
    }

    /// Tokenises `prompt` into exactly [`MAX_LENGTH`] ids: start token, at most
    /// [`MAX_TEXT_TOKENS`] text tokens, end token, padding.
    pub fn encode(&self, prompt: &str) -> Encoding {
        // One token more than fits tells truncation apart from an exact fit.
        let text = self.text_tokens(prompt, MAX_TEXT_TOKENS + 1);
        let truncated = text.len() > MAX_TEXT_TOKENS;
        let kept = &text[..text.len().min(MAX_TEXT_TOKENS)];

        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(i64::from(self.bos_id));
        ids.extend(kept.iter().map(|&id| i64::from(id)));
        ids.push(i64::from(self.eos_id));
        let tokens_used = ids.len();
        ids.resize(MAX_LENGTH, i64::from(self.pad_id));
        Encoding {
            ids,
            truncated,
            tokens_used,
        }
    }

    /// The text tokens of `prompt` (no start/end tokens), stopping once `limit` are found.
    pub fn text_tokens(&self, prompt: &str, limit: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = prompt;
        while !rest.is_empty() && out.len() < limit {
            let (before, special) = self.split_special(rest);
            self.tokenize_segment(before, limit, &mut out);
            match special {
                Some((id, len)) => {
                    if out.len() < limit {
                        out.push(id);
                    }
                    rest = &rest[before.len() + len..];
                }
                None => break,
            }
        }
        out.truncate(limit);
        out
    }

    /// The text before the first special token, and that token's id and byte length.
    fn split_special<'a>(&self, text: &'a str) -> (&'a str, Option<(u32, usize)>) {
        for (start, _) in text.char_indices() {
            let tail = &text[start..];
            // `specials` is sorted longest first, so the first hit is the longest match.
            if let Some((special, id)) = self.specials.iter().find(|(s, _)| tail.starts_with(s)) {
                return (&text[..start], Some((*id, special.len())));
            }
        }
        (text, None)
    }

    fn tokenize_segment(&self, segment: &str, limit: usize, out: &mut Vec<u32>) {
        if segment.is_empty() {
            return;
        }
        let normalized = normalize(segment);
        let mut cache = self.lock_cache();
        for piece in self.pieces.find_iter(&normalized) {
            if out.len() >= limit {
                return;
            }
            let word = piece.as_str();
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(word.as_bytes());
            out.extend_from_slice(&ids);
            if word.len() < MAX_CACHED_WORD_BYTES && cache.len() < CACHE_CAPACITY {
                cache.insert(word.to_string(), ids);
            }
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u32>>> {
        // A poisoned cache only ever holds complete entries: keep using it.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Byte-pair merges over one piece. Symbols form a linked list; a min-heap of candidate
    /// pairs keyed by (rank, position) picks the lowest-ranked, leftmost pair each time, so long
    /// pieces cost O(n log n).
    fn bpe(&self, bytes: &[u8]) -> Vec<u32> {
        let n = bytes.len();
        let mut ids: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        if let Some(last) = ids.last_mut() {
            *last = self.byte_end_ids[bytes[n - 1] as usize];
        }
        if n < 2 {
            return ids;
        }
        const NONE: usize = usize::MAX;
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut alive = vec![true; n];

        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, merged)) = self.merges.get(&(ids[i], ids[i + 1])) {
                heap.push(Reverse((rank, i, merged)));
            }
        }
        while let Some(Reverse((_, pos, merged))) = heap.pop() {
            let right = next[pos];
            if !alive[pos] || right == NONE {
                continue;
            }
            // Skip entries made stale by an earlier merge at either symbol.
            match self.merges.get(&(ids[pos], ids[right])) {
                Some(&(_, m)) if m == merged => {}
                _ => continue,
            }
            ids[pos] = merged;
            alive[right] = false;
            next[pos] = next[right];
            if next[pos] != NONE {
                prev[next[pos]] = pos;
            }
            if prev[pos] != NONE {
                let left = prev[pos];
                if let Some(&(rank, m)) = self.merges.get(&(ids[left], ids[pos])) {
                    heap.push(Reverse((rank, left, m)));
                }
            }
            if next[pos] != NONE {
                if let Some(&(rank, m)) = self.merges.get(&(ids[pos], ids[next[pos]])) {
                    heap.push(Reverse((rank, pos, m)));
                }
            }
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i != NONE {
            out.push(ids[i]);
            i = next[i];
        }
        out
    }
}

/// NFC, then lower-casing character by character (as the reference does: no final-sigma rule,
/// unlike `str::to_lowercase`). ASCII text, the usual prompt, is already NFC.
fn normalize(segment: &str) -> String {
    if segment.is_ascii() {
        return segment.to_ascii_lowercase();
    }
    let lower = |text: &str| {
        text.chars()
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    if unicode_normalization::is_nfc_quick(segment.chars()) == IsNormalized::Yes {
        lower(segment)
    } else {
        lower(&segment.nfc().collect::<String>())
    }
}

/// Largest tokenizer file read, in bytes (CLIP's vocab.json is about 1 MB).
const MAX_TOKENIZER_FILE_BYTES: u64 = 64 << 20;

fn read_text(path: &Path) -> Result<String> {
    crate::fsutil::read_text_limited(path, MAX_TOKENIZER_FILE_BYTES, "tokenizer")
}

fn parse_vocab(path: &Path, text: &str) -> Result<HashMap<String, u32>> {
    let input = path.display().to_string();
    let raw: HashMap<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        Error::invalid_input(
            &input,
            format!("expected a JSON object of token -> id: {e}"),
        )
    })?;
    let mut vocab = HashMap::with_capacity(raw.len());
    for (token, value) in raw {
        let id = value
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                Error::invalid_input(&input, format!("token {token:?} has id {value}, not an id"))
            })?;
        vocab.insert(token, id);
    }
    if vocab.is_empty() {
        return Err(Error::invalid_input(&input, "the vocabulary is empty"));
    }
    Ok(vocab)
}

fn parse_merges(
    path: &Path,
    text: &str,
    vocab: &HashMap<String, u32>,
) -> Result<HashMap<(u32, u32), (u32, u32)>> {
    let input = path.display().to_string();
    let mut merges = HashMap::new();
    let mut rank = 0u32;
    for (index, line) in text.lines().enumerate() {
        if index == 0 && line.starts_with("#version") {
            continue;
        }
        let bad =
            |reason: String| Error::invalid_input(&input, format!("line {}: {reason}", index + 1));
        let (left, right) = match line.split_once(' ') {
            Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains(' ') => (l, r),
            _ => {
                return Err(bad(format!(
                    "expected two symbols separated by one space, got {line:?}"
                )))
            }
        };
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| bad(format!("{token:?} is not in the vocabulary")))
        };
        let pair = (id(left)?, id(right)?);
        let merged = id(&format!("{left}{right}"))?;
        // A repeated pair keeps its first (best) rank.
        merges.entry(pair).or_insert((rank, merged));
        rank += 1;
    }
    if merges.is_empty() {
        return Err(Error::invalid_input(&input, "no merges"));
    }
    Ok(merges)
}

/// The printable character standing for each byte: printable Latin-1 bytes stand for
/// themselves, the other 68 are shifted to U+0100 onwards in byte order.
fn byte_symbols() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut symbols = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..256u32 {
        let code = if printable(b) {
            b
        } else {
            shifted += 1;
            0x100 + shifted - 1
        };
        symbols[b as usize] = char::from_u32(code).expect("byte symbols are valid characters");
    }
    symbols
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected: transformers 5.23, b = transformers.convert_slow_tokenizer.bytes_to_unicode();
    // len(set(b.values())), b[ord("!")], hex(ord(b[ord(" ")])), hex(ord(b[0]))
    // -> 256 '!' 0x120 0x100
    #[test]
    fn byte_symbols_are_distinct_and_printable_bytes_map_to_themselves() {
        let symbols = byte_symbols();
        let distinct: std::collections::HashSet<char> = symbols.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(symbols[b'!' as usize], '!');
        assert_eq!(symbols[b' ' as usize], '\u{120}');
        assert_eq!(symbols[0], '\u{100}');
    }
}
