#!/usr/bin/env bash
# Makes a Python environment from a pinned requirements file (made once, remade when that file
# changes) and prints the path of its python. Needs python3 (3.11 or 3.12) with venv and access
# to PyPI.
#
# Without arguments: target/refenv from exporter-specs/requirements.txt, where the exporter and
# the reference scripts in tests/reference/ run (the first run downloads torch, a few GB).
# With REQUIREMENTS: target/pyenv-NAME, NAME defaulting to the file's name without
# "-requirements.txt" (tests/reference/mtcnn-requirements.txt -> target/pyenv-mtcnn).
# usage: "$(scripts/pyenv.sh)" tests/reference/pipeline.py
#        "$(scripts/pyenv.sh tests/reference/mtcnn-requirements.txt)" tests/reference/mtcnn.py
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -eq 0 ]; then
    env=$root/target/refenv
    requirements=$root/exporter-specs/requirements.txt
else
    requirements=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
    if [ ! -f "$requirements" ]; then
        echo "pyenv.sh: $1 is not a file" >&2
        exit 2
    fi
    name=${2:-$(basename "$requirements" .txt)}
    name=${name%-requirements}
    case $name in
    "" | *[!A-Za-z0-9_.-]*)
        echo "pyenv.sh: environment name '$name' must be letters, digits, '.', '_' or '-'" >&2
        exit 2
        ;;
    esac
    env=$root/target/pyenv-$name
fi
stamp=$env/requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$env/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$env" >&2
    "$env/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
    echo "$want" >"$stamp"
fi
echo "$env/bin/python"
