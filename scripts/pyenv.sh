#!/usr/bin/env bash
# Makes the Python environment the exporter and the reference scripts in tests/reference/ run in
# (target/refenv, from the pinned exporter-specs/requirements.txt; made once, remade when that
# file changes) and prints the path of its python. Needs python3 (3.11 or 3.12) with venv and
# access to PyPI; the first run downloads torch (a few GB).
# usage: "$(scripts/pyenv.sh)" tests/reference/pipeline.py
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env=$root/target/refenv
requirements=$root/exporter-specs/requirements.txt
stamp=$env/requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$env/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$env" >&2
    "$env/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
    echo "$want" >"$stamp"
fi
echo "$env/bin/python"
