#!/usr/bin/env bash
# Makes the small Python environment of the server's tests (target/pyserve, once): the README's
# `requests` client example runs in it, and kubernetes-validate checks deploy/k8s. Prints its
# python.
# usage: scripts/pyserve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
env=target/pyserve
if ! "$env/bin/python" -c "import requests, kubernetes_validate" 2>/dev/null; then
    python3 -m venv "$env"
    "$env/bin/python" -m pip install -q --disable-pip-version-check \
        "requests==2.34.2" "kubernetes-validate==1.37.0" >&2
fi
echo "$PWD/$env/bin/python"
