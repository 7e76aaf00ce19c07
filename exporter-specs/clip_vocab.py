"""CLIP BPE vocabulary files (vocab.json + merges.txt) in the layout of Hugging Face's CLIP tokenizer,
and the SDXL tokenizers' tokenizer.json files a graph set carries.

No model hub is reachable, so the files are rebuilt from the BPE merge list that ships inside the
open_clip_torch wheel (open_clip/bpe_simple_vocab_16e6.txt.gz), the same list OpenAI's CLIP and
both SDXL text encoders were trained with. The id order is CLIP's own:

    0..255       the 256 byte symbols, in byte-to-unicode table order ("!" is id 0)
    256..511     the same symbols with the end-of-word suffix "</w>"
    512..49405   one token per merge, in merge order
    49406        <|startoftext|>
    49407        <|endoftext|>

A graph set holds one tokenizer.json per SDXL tokenizer (tokenizer/ and tokenizer_2/, as in a diffusers
folder): the `tokenizers` pipeline transformers' CLIPTokenizer builds, with the padding and truncation
diffusers asks for at call time (padding="max_length", max_length=77, truncation=True) stored in it, so
that the runtime, running the same library on the file, gives transformers' ids. The tokenizers come
from an SDXL folder's tokenizer/ and tokenizer_2/ when one is given (transformers reads their
tokenizer.json, or converts their vocab.json/merges.txt when there is none, and takes the padding token
from their tokenizer_config.json: "!" for tokenizer_2), else from the vocabulary rebuilt here with
SDXL's padding tokens (<|endoftext|> for tokenizer, "!" for tokenizer_2).

Usage: python exporter-specs/clip_vocab.py OUT_DIR   (vocab.json and merges.txt only)
"""

from __future__ import annotations

import gzip
import json
import pathlib
import sys

VOCAB_SIZE = 49408
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP keeps the first 49152 - 256 - 2 merges of the shipped list (so that, with the 512 byte
# symbols and the two specials, the vocabulary is exactly 49408).
MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte, listed in CLIP's table order (printable bytes first)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    order = list(printable)
    symbols = [chr(b) for b in printable]
    shifted = 0
    for b in range(256):
        if b not in printable:
            order.append(b)
            symbols.append(chr(256 + shifted))
            shifted += 1
    assert len(order) == 256 and len(set(symbols)) == 256
    return symbols


def shipped_merges() -> list[tuple[str, str]]:
    import open_clip  # only needed for the location of the shipped file

    path = pathlib.Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # Line 0 is a "#version" header; CLIP uses the next MERGE_COUNT lines.
    if not lines[0].endswith("#version: 0.2"):
        raise ValueError(f"{path}: unexpected header {lines[0]!r}")
    merges = []
    for number, line in enumerate(lines[1 : 1 + MERGE_COUNT], start=2):
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}: line {number} is not a merge: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != MERGE_COUNT:
        raise ValueError(f"{path}: only {len(merges)} merges, expected {MERGE_COUNT}")
    return merges


def build() -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = byte_symbols()
    merges = shipped_merges()
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    assert vocab[BOS] == 49406 and vocab[EOS] == 49407 and vocab["!"] == 0
    return vocab, merges


def write_vocab(out_dir: pathlib.Path) -> None:
    """Write vocab.json and merges.txt (Hugging Face CLIPTokenizer layout) into out_dir."""
    vocab, merges = build()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Hugging Face's file is one JSON object in id order with the symbols written as UTF-8.
    (out_dir / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )


SDXL_TOKENIZERS = ("tokenizer", "tokenizer_2")
# Token ids per prompt in SDXL (the text encoders' max_position_embeddings).
MAX_LENGTH = 77
# The padding tokens of SDXL's two tokenizers (stable-diffusion-xl-base-1.0 tokenizer_config.json).
SDXL_PAD_TOKENS = {"tokenizer": EOS, "tokenizer_2": "!"}
# Prompts the written files are checked on against the CLIPTokenizer they came from.
CHECK_PROMPTS = ["a photo of a cat", "hello! world!!", "it's a dog's life", " ".join(["cat"] * 80), ""]


def sdxl_tokenizers(sdxl: pathlib.Path | None = None) -> dict:
    """SDXL's two CLIPTokenizers: from `sdxl`'s tokenizer/ and tokenizer_2/, else from the rebuilt vocabulary."""
    import tempfile

    from transformers import CLIPTokenizer

    if sdxl is not None:
        return {name: CLIPTokenizer.from_pretrained(sdxl, subfolder=name) for name in SDXL_TOKENIZERS}
    with tempfile.TemporaryDirectory() as tmp:
        write_vocab(pathlib.Path(tmp))
        return {name: CLIPTokenizer.from_pretrained(tmp, pad_token=SDXL_PAD_TOKENS[name]) for name in SDXL_TOKENIZERS}


def write_tokenizer_json(tokenizer, path: pathlib.Path) -> None:
    """Write `tokenizer`'s `tokenizers` pipeline with diffusers' padding and truncation as one tokenizer.json."""
    if tokenizer.model_max_length != MAX_LENGTH and tokenizer.model_max_length < 10**9:
        raise ValueError(f"{path}: model_max_length is {tokenizer.model_max_length}, SDXL's is {MAX_LENGTH}")
    backend = tokenizer.backend_tokenizer
    backend.enable_padding(direction="right", pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, length=MAX_LENGTH)
    backend.enable_truncation(MAX_LENGTH, stride=0, strategy="longest_first", direction="right")
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(path), pretty=False)
    # The file alone must give what the CLIPTokenizer gives when diffusers calls it.
    from tokenizers import Tokenizer

    written = Tokenizer.from_file(str(path))
    for prompt in CHECK_PROMPTS:
        expected = tokenizer(prompt, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
        if written.encode(prompt).ids != expected:
            raise ValueError(f"{path}: {prompt!r} encodes differently from the CLIPTokenizer it was written from")


def write_sdxl_tokenizers(out_dir: pathlib.Path, sdxl: pathlib.Path | None = None) -> dict:
    """Write <out_dir>/tokenizer/tokenizer.json and tokenizer_2/tokenizer.json; return {name: relative path}."""
    files = {}
    for name, tokenizer in sdxl_tokenizers(sdxl).items():
        relative = f"{name}/tokenizer.json"
        write_tokenizer_json(tokenizer, pathlib.Path(out_dir) / relative)
        files[name] = relative
    return files


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out_dir = pathlib.Path(argv[1])
    write_vocab(out_dir)
    print(f"wrote {out_dir / 'vocab.json'} and {out_dir / 'merges.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
