//! Tokenising a prompt that fills all 77 positions, with an empty and with a warm word cache.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use idpatch::tokenizer::ClipTokenizer;

const PROMPT: &str = "a breathtaking cinematic group photograph of five close friends laughing \
    together on a sunlit wooden pier at golden hour, warm rim light, shallow depth of field, 85mm \
    lens, film grain, ultra detailed skin texture, soft bokeh background with sailboats and \
    seagulls, award winning composition, vivid colors, sharp focus, professional color grading, \
    masterpiece, best quality, calm blue sea";

fn tokenize(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/tokenizer/tokenizer.json");
    let tokenizer = ClipTokenizer::from_file(&path).expect("models/tiny/tokenizer loads");
    let encoding = tokenizer.encode(PROMPT).expect("the prompt encodes");
    // 75 text tokens exactly (transformers' CLIPTokenizer agrees): full, nothing truncated.
    assert!(
        encoding.tokens_used == 77 && !encoding.truncated,
        "the prompt must fill 77 tokens"
    );

    c.bench_function("tokenize_77_cold", |b| {
        b.iter(|| {
            tokenizer.clear_cache();
            tokenizer.encode(std::hint::black_box(PROMPT))
        })
    });
    c.bench_function("tokenize_77_warm", |b| {
        b.iter(|| tokenizer.encode(std::hint::black_box(PROMPT)))
    });
}

criterion_group!(benches, tokenize);
criterion_main!(benches);
