#!/usr/bin/env bash
# The exporter's Python tests, in two environments:
# - exporter-specs/tests (weightless sets, materialize.py) and calibration/tests (quantize.py) in
#   target/pyenv: onnx, numpy and onnxruntime at the versions exporter-specs/requirements.txt pins
#   (made once: ~200 MB, under a minute);
# - exporter-specs/tests_torch (graph IO specs and ControlNet residual layout, id-patch.bin keys,
#   the FP16 timestep embedding, --from-pretrained on stand-in checkpoints) in target/refenv, the
#   environment scripts/pyenv.sh makes from exporter-specs/requirements.txt (torch and its CUDA
#   libraries from PyPI: about 5.5 GB and 9 minutes once per clone).
# Both are remade when requirements.txt changes. The tests run the idpatch binary cargo built
# (IDPATCH_BIN, default target/debug/idpatch) and the ONNX Runtime library (ORT_DYLIB_PATH, fetched
# by scripts/fetch-onnxruntime.sh when unset).
# usage: scripts/test-exporter.sh [light|torch|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
case $which in
light | torch | all) ;;
*)
    echo "test-exporter.sh: unknown suite '$which' (light, torch or all)" >&2
    exit 2
    ;;
esac
export IDPATCH_BIN=${IDPATCH_BIN:-target/debug/idpatch}
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
    ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
    export ORT_DYLIB_PATH
fi
requirements=exporter-specs/requirements.txt
want=$(sha256sum "$requirements" | cut -d' ' -f1)

if [ "$which" != torch ]; then
    env=target/pyenv
    packages="onnx numpy onnxruntime"
    stamp="$want $packages"
    if [ ! -x "$env/bin/python" ] || [ "$(cat "$env/requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
        python3 -m venv "$env"
        # The pins of the full environment, for the packages these tests import.
        # shellcheck disable=SC2086
        "$env/bin/python" -m pip install -q --disable-pip-version-check -c "$requirements" $packages >&2
        echo "$stamp" >"$env/requirements.sha256"
    fi
    "$env/bin/python" -m unittest discover -s exporter-specs/tests
    "$env/bin/python" -m unittest discover -s calibration/tests
fi
if [ "$which" != light ]; then
    py=$(scripts/pyenv.sh)
    "$py" -m unittest discover -s exporter-specs/tests_torch
fi
