#!/usr/bin/env bash
# Install everything the tests need and run the whole suite (this is what .ci/run calls):
#   run/tests.sh [PYTEST ARGS...]
# It installs the package and test tools into ./.venv, mlcube 0.0.9, checks lint, format and types (ruff,
# mypy), builds the docs site (mkdocs --strict), and the container tools the
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
# the documentation site: a dead link, a missing page or a stale anchor fails CI like a failing test
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)"
if ! { command -v docker >/dev/null 2>&1 && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }; then
    trap 'bash run/container-deps.sh --stop-docker' EXIT
fi
bash run/container-deps.sh
# pytest-xdist, one worker per core; --dist loadfile keeps each file on one worker, so the container tests (all in
# tests/test_container.py) run one after the other and share their module-scoped images. `-n 0` after it: serial.
.venv/bin/python -m pytest -n auto --dist loadfile "$@"
