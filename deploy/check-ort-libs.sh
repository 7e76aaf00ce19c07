#!/usr/bin/env bash
# Checks the GPU image's library closure without Docker: installs what deploy/Dockerfile's stage
# 2 installs (onnxruntime-gpu with its cuda and cudnn extras, from PyPI) into a scratch folder,
# collects the shared libraries the same way, and asks the dynamic loader whether ONNX Runtime's
# CUDA provider finds every library it needs there. Only the driver's libcuda.so.1 may be
# missing (the container runtime mounts it from the host). Downloads about 1.5 GB.
#   usage: deploy/check-ort-libs.sh [SCRATCH_DIR]
set -euo pipefail
version=$(sed -n 's/^ARG ORT_VERSION=//p' "$(dirname "$0")/Dockerfile" | head -n 1)
dir=${1:-$(mktemp -d)}
python3 -m pip install -q --no-compile --only-binary=:all: --target "$dir/py" \
  "onnxruntime-gpu[cuda,cudnn]==$version"
mkdir -p "$dir/ort"
cp -a "$dir"/py/onnxruntime/capi/libonnxruntime*.so* "$dir/ort/"
find "$dir/py/nvidia" -name 'lib*.so*' -exec cp -a {} "$dir/ort/" \;
status=0
for lib in "$dir"/ort/libonnxruntime.so."$version" "$dir"/ort/libonnxruntime_providers_cuda.so; do
  missing=$(LD_LIBRARY_PATH="$dir/ort" ldd "$lib" | awk '/not found/ {print $1}' | grep -v '^libcuda\.so\.1$' || true)
  if [ -n "$missing" ]; then
    echo "$(basename "$lib"): not in the image: $missing" >&2
    status=1
  else
    echo "$(basename "$lib"): every library found (libcuda.so.1 from the host driver)"
  fi
done
du -sh "$dir/ort"
exit $status
