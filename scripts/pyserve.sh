#!/usr/bin/env bash
# Makes the small Python environment of the server's tests (target/pyenv-serve, once, from the
# pinned tests/serve-requirements.txt through scripts/pyenv.sh): the README's `requests` client
# example runs in it, and kubernetes-validate checks deploy/k8s. Prints its python.
# usage: scripts/pyserve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/pyenv.sh tests/serve-requirements.txt serve
