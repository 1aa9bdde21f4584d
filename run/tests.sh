#!/usr/bin/env bash
# Install everything the tests need and run the whole suite (this is what .ci/run calls):
#   run/tests.sh [PYTEST ARGS...]
# It installs the package and test tools into ./.venv, mlcube 0.0.9, and the container tools the
# `container` tests use (podman, runc, debootstrap; a local base image; a wheels/ folder), all cached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash run/install.sh --test
bash run/container-deps.sh
exec .venv/bin/python -m pytest "$@"
