#!/usr/bin/env bash
# The test command: fetches the ONNX Runtime library the ort backend's tests need (once, into
# target/onnxruntime), points ORT_DYLIB_PATH at it, and runs the whole test suite: the Rust tests,
# then the exporter's Python tests (scripts/test-exporter.sh: torch-free ones in target/pyenv, the
# others in target/refenv, which scripts/pyenv.sh makes once per clone). The server's tests run
# the README's Python client and validate deploy/k8s in target/pyenv-serve (scripts/pyserve.sh).
# usage: scripts/test.sh [cargo test arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH
IDPATCH_SERVE_PYTHON=$(scripts/pyserve.sh)
export IDPATCH_SERVE_PYTHON
cargo test --locked "$@"
# The Python tests run the binary cargo just built.
case " $* " in
*" --release "*) export IDPATCH_BIN=target/release/idpatch ;;
esac
scripts/test-exporter.sh
