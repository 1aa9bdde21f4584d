#!/usr/bin/env bash
# The "Real data" results page (docs/results/real-data.md) and its figures (docs/results/real-data/): every real
# micrograph (../shared/realdata, and the DM3/EMD files of the temul-toolkit wheel, fetched into
# ~/.cache/emdenoise) through the zoo model and every classical filter, on one thread as the page says.
#   run/realdata.sh [--realdata DIR] [--out DIR] [--page FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec "$PYTHON" -m emdenoise.study.realdata_page --command "bash run/realdata.sh" "$@"
