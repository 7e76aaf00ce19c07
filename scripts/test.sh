#!/usr/bin/env bash
# The test command: fetches the ONNX Runtime library the ort backend's tests need (once, into
# target/onnxruntime), points ORT_DYLIB_PATH at it, and runs the whole test suite.
# usage: scripts/test.sh [cargo test arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH
exec cargo test --locked "$@"
