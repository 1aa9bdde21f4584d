#!/usr/bin/env bash
# Create ./.venv and install emdenoise with the pinned dependencies of the image (requirements.txt).
#   run/install.sh          the package and its runtime dependencies
#   run/install.sh --test   also the test tools (pytest, moto, hypothesis) and mlcube 0.0.9
# PYTHON selects the interpreter (default: python3.11, else python3). Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and alone: on our build machines torch==2.13.0 is a local CPU wheel; elsewhere pip takes the
# build for your platform from the index.
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-deps -e .
if [ "${1:-}" = "--test" ]; then
    "${PIP[@]}" -e ".[test]"
    bash run/install-mlcube.sh .venv
fi
.venv/bin/emdenoise --version
