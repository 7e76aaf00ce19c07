#!/usr/bin/env bash
# Puts the ONNX Runtime CPU library (libonnxruntime.so.1.31.1, from the onnxruntime wheel on PyPI)
# into DIR (default: target/onnxruntime) and prints its path. Does nothing when it is already there.
# usage: scripts/fetch-onnxruntime.sh [DIR]
# Needs python3 with pip, unzip (or python3's zipfile) and access to PyPI. Linux x86_64 only.
set -euo pipefail
version=1.31.1
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/target/onnxruntime}
lib="$dir/libonnxruntime.so.$version"
if [ -f "$lib" ]; then
    echo "$lib"
    exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "fetch-onnxruntime.sh: only Linux x86_64 is supported; install onnxruntime $version yourself and set ORT_DYLIB_PATH" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The wheel's library does not depend on the Python version; asking for one fixed tag set makes
# the download the same whatever python3 runs pip (3.11, 3.12, ...).
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$work" "onnxruntime==$version" >&2
wheel=$(ls "$work"/onnxruntime-"$version"-*.whl)
member="onnxruntime/capi/libonnxruntime.so.$version"
mkdir -p "$dir"
python3 - "$wheel" "$member" "$lib.tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$lib.tmp" "$lib"
echo "$lib"
