#!/usr/bin/env bash
# The GPU measurement, run on the GPU machine from the repository root in phases, each short
# enough for one copy-and-run (see benches/gpu/README.md). benches/gpu/prepare.sh made .gpu/.
#
#   run.sh ort-a      keep the first half of the ONNX Runtime bundle (needs .gpu/ort-a)
#   run.sh ort-b      join both halves, unpack ONNX Runtime to /tmp/ort, record the machine
#                     (needs .gpu/ort-b)
#   run.sh graphs     write the weights of both FP16 sets (plain and fused), then UNet and
#                     ControlNet on the CUDA provider, fused against plain, sequence 109
#                     (needs .gpu/run)
#   run.sh torch      PyTorch eager reference twice, around fused UNet/ControlNet at sequence 77
#   run.sh loop       fused with CUDA graphs; the whole 50-step 2-person pipeline split by stage,
#                     fused, with and without CUDA graphs
#   run.sh extra      (optional) the pipeline on the plain set; plain FP16 against FP32
# Every measured command has a time limit and each phase's limits add up to under 9.5 minutes.
#
# Results collect in /tmp/idpatch-gpu/results (one file per command, stderr beside it, and
# commands.txt); each phase ends by packing them all into $OUT/results-PHASE.tar.gz when OUT is
# set. /tmp must survive between phases.
#
# Knobs, for a dry run of the measuring phases on a CPU machine with tiny sets (see the README):
# EP (cuda), SIDE (1024), STEPS (50), SKELETONS (weightless sets; default: unpacked from
# .gpu/run/sets.tar.xz), BIN_SRC (.gpu/run/idpatch), MATERIALIZE_DEVICE (cuda), TORCH_ARGS (extra
# torch_reference.py arguments), GPU_PYTHON, TORCH_SITE, ORT_DYLIB_PATH.
set -uo pipefail
phase=${1:?usage: run.sh ort-a|ort-b|graphs|torch|loop|extra}
out=/tmp/idpatch-gpu/results
mkdir -p "$out"
site=${TORCH_SITE:-/opt/torch/.venv/lib/python3.12/site-packages}
py=${GPU_PYTHON:-/opt/torch/.venv/bin/python3}
export LD_LIBRARY_PATH=$site/nvidia/cu13/lib:$site/nvidia/cudnn/lib:/tmp/ort${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-/tmp/ort/libonnxruntime.so.1.31.1}
export PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/idpatch-gpu/py${PYTHONPATH:+:$PYTHONPATH}
sets=/tmp/idpatch-gpu/sets
bin=/tmp/idpatch-gpu/idpatch
ep=${EP:-cuda}
side=${SIDE:-1024}
steps=${STEPS:-50}
skeletons=${SKELETONS:-/tmp/idpatch-gpu/skeletons}
read -r -a torch_args <<< "${TORCH_ARGS:-}"
# Per-graph timing of UNet and ControlNet at the measured size: batch 2 (CFG), 2 people.
# --skip-checksums: materialize.py wrote these sets and their checksums minutes before, on this
# machine; hashing 20 GB again would spend the device time the measurements need.
common=(bench --graphs unet,controlnet --inputs synth --height "$side" --width "$side" --people 2
  --backend ort --ep "$ep" --warmup 5 --runs 30 --json --skip-checksums)

# Runs one measured command with a time limit; its output goes to the console and $out/NAME.
measure() { # NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$out/commands.txt"
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name" 2> "$out/$name.err"
  local code=$?
  echo "== $name: exit $code after $((SECONDS - start)) s" | tee -a "$out/commands.txt"
  tail -n 30 "$out/$name"
  [ $code -eq 0 ] || tail -n 5 "$out/$name.err"
}

materialize() { # SET
  [ -f "$sets/$1/manifest.json" ] && return
  timeout 120 "$py" exporter-specs/materialize.py "$skeletons/$1" "$sets/$1" --device "${MATERIALIZE_DEVICE:-cuda}" 2>&1 |
    tail -n 3
}

pipeline() { # SET: the whole pipeline, 2 people, split by stage
  echo bench --pipeline --models "$sets/$1" --backend ort --ep "$ep" --height "$side" --width "$side" \
    --people 2 --steps "$steps" --warmup 1 --runs 3 --json --skip-checksums
}

case $phase in
  ort-a)
    cp .gpu/ort-a/ort-gpu.tar.xz.part-aa /tmp/idpatch-gpu/
    ls -la /tmp/idpatch-gpu
    ;;
  ort-b)
    cat /tmp/idpatch-gpu/ort-gpu.tar.xz.part-aa .gpu/ort-b/ort-gpu.tar.xz.part-ab > /tmp/idpatch-gpu/ort-gpu.tar.xz
    echo "$(cat .gpu/ort-b/ort-gpu.tar.xz.sha256)  /tmp/idpatch-gpu/ort-gpu.tar.xz" | sha256sum -c - || exit 1
    mkdir -p /tmp/ort && tar -C /tmp/ort -xJf /tmp/idpatch-gpu/ort-gpu.tar.xz && ls /tmp/ort
    {
      date -u +%Y-%m-%dT%H:%MZ
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
      "$py" -c "import torch, onnx; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'onnx', onnx.__version__)"
      nproc
    } 2>&1 | tee "$out/machine.txt"
    ;;
  graphs)
    cp "${BIN_SRC:-.gpu/run/idpatch}" "$bin" && chmod +x "$bin"
    "$py" -m pip install -q --no-index --no-deps --target /tmp/idpatch-gpu/py .gpu/run/wheels/*.whl
    if [ -z "${SKELETONS:-}" ]; then
      mkdir -p "$skeletons" && tar -C "$skeletons" -xJf .gpu/run/sets.tar.xz
    fi
    materialize full-fp16
    materialize full-fp16-cuda
    measure fused-vs-plain-seq109.jsonl 300 "$bin" "${common[@]}" --compare "$sets/full-fp16-cuda" "$sets/full-fp16"
    ;;
  torch)
    measure torch-reference.json 200 "$py" benches/gpu/torch_reference.py --people 2 --steps "$steps" "${torch_args[@]}"
    measure fused-seq77.jsonl 150 "$bin" "${common[@]}" --models "$sets/full-fp16-cuda" --sequence 77
    # PyTorch eager moves from run to run: a second sample, minutes after the first.
    measure torch-reference-2.json 200 "$py" benches/gpu/torch_reference.py --people 2 --steps "$steps" "${torch_args[@]}"
    ;;
  loop)
    measure fused-cuda-graph-seq109.jsonl 150 "$bin" "${common[@]}" --models "$sets/full-fp16-cuda" --cuda-graph
    measure pipeline-fused.json 200 "$bin" $(pipeline full-fp16-cuda)
    measure pipeline-fused-cuda-graph.json 200 "$bin" $(pipeline full-fp16-cuda) --cuda-graph
    ;;
  extra)
    measure pipeline-plain.json 200 "$bin" $(pipeline full-fp16)
    materialize full-fp32
    measure fp16-vs-fp32-seq109.jsonl 200 "$bin" "${common[@]}" --compare "$sets/full-fp16" "$sets/full-fp32"
    ;;
  *)
    echo "run.sh: unknown phase $phase (ort-a, ort-b, graphs, torch, loop, extra)" >&2
    exit 2
    ;;
esac
if [ -n "${OUT:-}" ]; then
  tar -C "$out" -czf "$OUT/results-$phase.tar.gz" .
fi
