#!/usr/bin/env bash
# Makes the bundled INT8 set models/tiny-int8 from models/tiny: records calibration data with
# `idpatch calibrate` (ONNX Runtime's CPU provider, the command's default plan) into
# target/calib-tiny, then quantizes the UNet and ControlNet with calibration/quantize.py in
# target/pyenv-quantize (onnxruntime, onnx and numpy from PyPI, about 200 MB). The other graphs,
# the tokenizers and the goldens stay models/tiny's (the new set names them through "base").
# Replaces models/tiny-int8 and target/calib-tiny. Deterministic: the same inputs give
# byte-identical graphs.
# usage: calibration/make-tiny-int8.sh [quantize.py options...]
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH
python=$(scripts/pyenv.sh calibration/quantize-requirements.txt)
calib=target/calib-tiny
rm -rf "$calib" models/tiny-int8
cargo run --locked --quiet -- calibrate --models models/tiny --out "$calib" --backend ort --ep cpu
"$python" calibration/quantize.py models/tiny "$calib" models/tiny-int8 --holdout 4 "$@"
