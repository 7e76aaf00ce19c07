#!/usr/bin/env bash
# Python tests of the exporter's torch-free tools (weightless sets, materialize.py), in a virtual
# environment with onnx and numpy from PyPI (target/pyenv, made once). Runs the idpatch binary
# that `cargo test` built (IDPATCH_BIN, default target/debug/idpatch).
# usage: scripts/test-exporter.sh
set -euo pipefail
cd "$(dirname "$0")/.."
env=target/pyenv
if ! "$env/bin/python" -c "import onnx, numpy" 2>/dev/null; then
    python3 -m venv "$env"
    "$env/bin/python" -m pip install -q --disable-pip-version-check "onnx==1.23.2" "numpy==2.4.6" >&2
fi
IDPATCH_BIN=${IDPATCH_BIN:-target/debug/idpatch} "$env/bin/python" -m unittest discover -s exporter-specs/tests
