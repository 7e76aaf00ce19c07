"""Reference `model_set_digest` of models/tiny for runtime/src/manifest.rs, written independently
with hashlib and json: sha256 of the lines

    <role> <file> <sha256>                      graph files and external data, pipeline order,
                                                then the face detector's three networks
    <tokenizer> <file> <sha256>                 tokenizer.json of tokenizer, then tokenizer_2
    config <canonical JSON>                     latent_multiple filled in with its default 4
    scheduler <canonical JSON>

canonical JSON being json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) (the
tiny manifest holds no float whose repr differs from Rust's shortest round-trip form). The
checksums are recomputed from the files, so the digest also attests that the manifest lists
them correctly. Run once by hand:

    "$(scripts/pyenv.sh)" tests/reference/model_set.py
"""

import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SET = ROOT / "models" / "tiny"
ROLES = [
    "text_encoder", "text_encoder_2", "arcface", "patch_proj", "prompt_proj", "controlnet", "unet", "vae_decoder",
    "face_detector_pnet", "face_detector_rnet", "face_detector_onet",
]


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


manifest = json.loads((SET / "manifest.json").read_text())
lines = []
for role in ROLES:
    entry = manifest["graphs"][role]
    for item in [entry] + entry.get("external_data", []):
        lines.append(f"{role} {item['file']} {sha256(SET / item['file'])}")
for name in ["tokenizer", "tokenizer_2"]:
    file = manifest["tokenizers"][name]["file"]
    lines.append(f"{name} {file} {sha256(SET / file)}")
config = dict(manifest["config"])
config.setdefault("latent_multiple", 4)
lines.append(f"config {canonical(config)}")
lines.append(f"scheduler {canonical(manifest['scheduler'])}")
text = "".join(line + "\n" for line in lines)
out = {
    "set": "models/tiny",
    "lines": text,
    "model_set_digest": hashlib.sha256(text.encode()).hexdigest(),
}
path = ROOT / "tests" / "data" / "model_set" / "digest.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(path)
