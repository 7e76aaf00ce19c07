#!/usr/bin/env bash
# Prepare, on a CPU machine with PyPI access, everything the GPU measurement needs, under .gpu/
# (kept out of git). The GPU machine has no network, no Rust toolchain and no diffusers, and each
# copy to it is limited (64 MiB per transfer, the ~32 MB repository included), so the pieces are
# sized to travel in separate transfers:
#   .gpu/ort-a, .gpu/ort-b   the ONNX Runtime CUDA bundle (~57 MiB) in two halves
#   .gpu/run                 idpatch (release, ort backend only), the diffusers wheel and
#                            sets.tar.xz: the weightless full-size graph sets (structure only;
#                            benches/gpu/run.sh writes their random weights on the GPU machine),
#                            made in .gpu/sets
#
# usage: benches/gpu/prepare.sh [PACK_ORT_SCRIPT]
#   PACK_ORT_SCRIPT: the GPU environment's pack-ort-gpu.sh (default ../shared/gpu/pack-ort-gpu.sh)
# Environment: PYTHON (exporter Python, default: the one scripts/pyenv.sh makes).
# The weightless exports take ~40 min on 2 cores and ~12 GB of memory at the UNet; steps already
# done are skipped on a re-run.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
pack_ort=${1:-../shared/gpu/pack-ort-gpu.sh}
python=${PYTHON:-$(scripts/pyenv.sh)}
gpu=.gpu
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
mkdir -p "$gpu/ort-a" "$gpu/ort-b" "$gpu/sets" "$gpu/run/wheels"

if [ ! -f "$gpu/ort-b/ort-gpu.tar.xz.part-ab" ]; then
  "$pack_ort" "$gpu/ort-pack"
  split -b 30M "$gpu/ort-pack/ort-gpu.tar.xz" "$gpu/ort-pack/ort-gpu.tar.xz.part-"
  mv "$gpu/ort-pack/ort-gpu.tar.xz.part-aa" "$gpu/ort-a/"
  mv "$gpu/ort-pack/ort-gpu.tar.xz.part-ab" "$gpu/ort-b/"
  if compgen -G "$gpu/ort-pack/ort-gpu.tar.xz.part-a[c-z]" > /dev/null; then
    echo "prepare.sh: the ONNX Runtime bundle no longer fits two 30 MiB halves" >&2
    exit 1
  fi
  sha256sum "$gpu/ort-pack/ort-gpu.tar.xz" | cut -d' ' -f1 > "$gpu/ort-b/ort-gpu.tar.xz.sha256"
  rm -rf "$gpu/ort-pack"
fi

# Only the ONNX Runtime backend is needed there; without tract the binary is much smaller.
cargo build --release --locked --no-default-features --features ort --target-dir target/gpu --bin idpatch
strip -o "$gpu/run/idpatch" target/gpu/release/idpatch

# The diffusers pin of the exporter's environment (exporter-specs/requirements.txt).
diffusers_pin=$(grep -E '^diffusers==' exporter-specs/requirements.txt)
ls "$gpu/run/wheels"/diffusers-"${diffusers_pin#diffusers==}"-*.whl > /dev/null 2>&1 ||
  python3 -m pip download -q --no-deps "$diffusers_pin" -d "$gpu/run/wheels"

export_set() { # SET_NAME PRECISION EXTRA_ARGS...
  local set=$1 precision=$2
  shift 2
  local graphs
  for graphs in text_encoder,text_encoder_2 unet controlnet vae_decoder,arcface,patch_proj,prompt_proj; do
    if [ -f "$gpu/sets/$set/manifest.json" ] &&
      "$python" -c "import json,sys; m=json.load(open(sys.argv[1])); sys.exit(0 if all(g in m['graphs'] for g in sys.argv[2].split(',')) else 1)" \
        "$gpu/sets/$set/manifest.json" "$graphs"; then
      continue
    fi
    "$python" exporter-specs/export.py --random --size full --weightless --precision "$precision" \
      --graphs "$graphs" --out "$gpu/sets/$set" "$@"
  done
}
export_set full-fp16 fp16
# FP32, for the FP16-vs-FP32 comparison (weights are 20 GB once materialized).
export_set full-fp32 fp32
# The fused set shares the six small graphs with the plain one; only UNet and ControlNet differ.
# One graph per run: the UNet and ControlNet modules together would not fit in 24 GB.
if [ ! -f "$gpu/sets/full-fp16-cuda.done" ]; then
  rm -rf "$gpu/sets/full-fp16-cuda"
  cp -r "$gpu/sets/full-fp16" "$gpu/sets/full-fp16-cuda"
  for graph in unet controlnet; do
    "$python" exporter-specs/export.py --random --size full --weightless --precision fp16 --optimize cuda \
      --graphs "$graph" --out "$gpu/sets/full-fp16-cuda"
  done
  touch "$gpu/sets/full-fp16-cuda.done"
fi

# About 22 MB as files, under 2 MB packed: the repository takes ~32 MB of each 64 MiB transfer.
tar -C "$gpu/sets" -cf - full-fp16 full-fp16-cuda full-fp32 | xz -9 -T0 > "$gpu/run/sets.tar.xz"
du -sh "$gpu"/ort-a "$gpu"/ort-b "$gpu"/run
