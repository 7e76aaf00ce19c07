"""Reference token ids for tests/tokenizer.rs, from transformers' CLIPTokenizer.

SDXL pipelines load two CLIPTokenizer instances from the same vocabulary: `tokenizer` pads with
<|endoftext|> (49407) and `tokenizer_2` with "!" (id 0). Both are called the way diffusers calls
them: padding="max_length", max_length=77, truncation=True.

The vocabulary files are rebuilt from open_clip's shipped merge list (exporter-specs/clip_vocab.py),
so this script also checks the rebuild against open_clip's own tokenizer on every prompt whose text
normalisation is the same in both (open_clip additionally runs ftfy and HTML unescaping). It also
checks that the committed models/tiny/tokenizer{,_2}/tokenizer.json files are exactly what the
exporter writes from these tokenizers (the runtime reads those files).

Run by hand: "$(scripts/pyenv.sh)" tests/reference/tokenizer.py
Writes tests/data/tokenizer/reference.json.
"""

import importlib.util
import json
import pathlib
import tempfile

import open_clip
import tokenizers
import transformers
from open_clip.tokenizer import _clean_lower
from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "tokenizer" / "reference.json"
MAX_LENGTH = 77

LONG = (
    "a breathtaking cinematic group photograph of five close friends laughing together on a "
    "sunlit wooden pier at golden hour, warm rim light, shallow depth of field, 85mm lens, "
    "film grain, ultra detailed skin texture, soft bokeh background with sailboats and seagulls, "
    "award winning composition, vivid colors, sharp focus, professional color grading, 8k"
)

PROMPTS = [
    # plain
    "a photo of a cat",
    "two people standing on a beach at sunset",
    "portrait of a woman, studio lighting",
    "a group of friends having dinner in a cozy restaurant",
    "hyperrealistic photo of three kids playing football in the park",
    # punctuation
    "hello, world!",
    "wow!!! really??? yes...",
    "a cat (sitting) on [the] {mat}; then: stop.",
    "masterpiece, best quality, (smiling:1.2), <lora:foo:0.8>",
    "e-mail me at someone@example.com / http://x.y/z?q=1&r=2",
    "#hashtag @mention $100 50% ^caret* ~tilde_ `back`",
    "!",
    "hello! world!!",
    "!!!",
    "don't stop!",
    # contractions
    "it's a dog's life",
    "they don't know, we're here, you've seen, i'm fine, we'll go, he'd say",
    "IT'S LOUD AND THEY'RE HERE",
    "'s 't 're 've 'm 'll 'd",
    "rock'n'roll o'clock",
    "it\u2019s a curly apostrophe",
    "'hello' \"quoted\"",
    # numbers
    "1234567890",
    "the year 2024 and 3.14159",
    "version 1.2.3-beta, 4k, 8K, 1080p, 16:9",
    "\u0663\u0664\u0665 arabic-indic digits and \u00b2 superscript and \u216b roman",
    # accents and emoji
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade",
    "cafe\u0301 with a combining accent",
    "stra\u00dfe in M\u00fcnchen",
    "\u0130stanbul and \u0131",
    "\u1f08\u03b8\u03b7\u03bd\u03b1 \u039f\u0394\u039f\u03a3",
    "a dog \U0001f436 and a cat \U0001f431",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 with skin tones \U0001f44d\U0001f3fd",
    "flags \U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5 and hearts \u2764\ufe0f",
    "\ufb01ne ligature and \uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 letters",
    # CJK
    "\u5bcc\u58eb\u5c71\u306e\u5199\u771f",
    "\u4e24\u4e2a\u4eba\u5728\u6d77\u6ee9\u4e0a",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4",
    "\u30ab\u30bf\u30ab\u30ca and \u3072\u3089\u304c\u306a mixed with english",
    # Arabic, Cyrillic, others
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0414\u0432\u0430 \u0447\u0435\u043b\u043e\u0432\u0435\u043a\u0430",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    # whitespace
    "a   photo    of     a    cat",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\u000bvertical\u000cfeed",
    "no\u00a0break\u2003em\u3000ideographic\u2028line\u0085nel",
    "zero\u200bwidth and bom\ufeffhere",
    " ",
    "\n\t \n",
    # HTML entities
    "salt &amp; pepper",
    "&lt;b&gt;bold&lt;/b&gt; &quot;x&quot; &#39;y&#39; &amp;amp;",
    "fish & chips",
    # empty
    "",
    # over-long and around the limit
    LONG,
    LONG + " " + LONG,
    " ".join(["cat"] * 74),
    " ".join(["cat"] * 75),
    " ".join(["cat"] * 76),
    " ".join(["cat"] * 200),
    "!" * 100,
    "hello " * 40 + "!",
    # mixed case
    "A PhOtO oF a CaT",
    "NASA Launches ROCKET",
    "iPhone McDonald's eBay",
    # special-token text
    "a <|endoftext|> b",
    "<|startoftext|>hello<|endoftext|>",
    "<|EndOfText|> upper case",
    "<|endoftext",
    # odd characters
    "control\u0001chars\u007fhere",
    "replacement \ufffd char",
    "math \u2211 \u222b \u221e \u2248 \u00b1",
    "a_b snake_case and CamelCase",
]


def load(directory, **kwargs):
    tok = CLIPTokenizer.from_pretrained(directory, **kwargs)
    return tok


def encode(tok, prompt):
    return tok(prompt, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids


def main():
    spec = importlib.util.spec_from_file_location("clip_vocab", ROOT / "exporter-specs" / "clip_vocab.py")
    clip_vocab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip_vocab)

    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        clip_vocab.write_vocab(directory)
        merges_count = len((directory / "merges.txt").read_text(encoding="utf-8").splitlines()) - 1
        tokenizer = load(directory)
        tokenizer_2 = load(directory, pad_token="!")
        # The committed tiny-set files must be exactly what the exporter writes.
        written = clip_vocab.write_sdxl_tokenizers(directory / "set")
        for name, file in written.items():
            committed = (ROOT / "models" / "tiny" / file).read_bytes()
            assert committed == (directory / "set" / file).read_bytes(), f"models/tiny/{file} is stale"

    vocab = tokenizer.get_vocab()
    assert len(vocab) == 49408, len(vocab)
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert tokenizer.pad_token_id == 49407 and tokenizer_2.pad_token_id == 0
    assert merges_count == 48894, merges_count

    reference_clip = open_clip.get_tokenizer("ViT-L-14")
    normaliser = tokenizer.backend_tokenizer.normalizer
    compared = 0
    entries = []
    for prompt in PROMPTS:
        ids = encode(tokenizer, prompt)
        ids_2 = encode(tokenizer_2, prompt)
        assert len(ids) == MAX_LENGTH and len(ids_2) == MAX_LENGTH
        untruncated = tokenizer(prompt).input_ids
        untruncated_2 = tokenizer_2(prompt).input_ids
        entries.append(
            {
                "prompt": prompt,
                "tokenizer": ids,
                "tokenizer_2": ids_2,
                "truncated": len(untruncated) > MAX_LENGTH,
                "truncated_2": len(untruncated_2) > MAX_LENGTH,
            }
        )
        # open_clip pads with 0; compare up to and including the end token.
        open_ids = reference_clip([prompt])[0].tolist()
        hf_text = " ".join(normaliser.normalize_str(prompt).split())
        # open_clip does not treat special-token text inside a prompt as special.
        if hf_text == _clean_lower(prompt) and "<|" not in prompt:
            compared += 1
            end = ids.index(49407, 1) + 1
            assert open_ids[:end] == ids[:end], (prompt, open_ids[:end], ids[:end])

    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "{",
        f'  "transformers": {json.dumps(transformers.__version__)},',
        f'  "tokenizers": {json.dumps(tokenizers.__version__)},',
        f'  "open_clip": {json.dumps(open_clip.__version__)},',
        f'  "tokenizer_class": {json.dumps(type(tokenizer).__module__ + "." + type(tokenizer).__name__)},',
        f'  "max_length": {MAX_LENGTH},',
        '  "pad_token_id": {"tokenizer": 49407, "tokenizer_2": 0},',
        '  "prompts": [',
    ]
    for i, entry in enumerate(entries):
        sep = "," if i + 1 < len(entries) else ""
        lines.append("    " + json.dumps(entry, ensure_ascii=True) + sep)
    lines += ["  ]", "}"]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{len(entries)} prompts written to {OUT}; {compared} also matched open_clip")


if __name__ == "__main__":
    main()
