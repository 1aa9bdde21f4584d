#!/usr/bin/env bash
# Install everything the tests need and run the whole suite (this is what .ci/run calls):
#   run/tests.sh [PYTEST ARGS...]
# It installs the package and test tools into ./.venv, mlcube 0.0.9, checks lint, format and types (ruff,
# mypy), and the container tools the
# `container` tests use (podman, runc, debootstrap, the Docker engine; a local base image in both; a wheels/
# folder), all cached. A Docker daemon that run/container-deps.sh starts here (none answered before) is
# stopped when the tests end, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash run/install.sh --test
# lint, format and types first (configured in pyproject.toml): a failure here fails CI like a failing test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if ! { command -v docker >/dev/null 2>&1 && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }; then
    trap 'bash run/container-deps.sh --stop-docker' EXIT
fi
bash run/container-deps.sh
.venv/bin/python -m pytest "$@"
