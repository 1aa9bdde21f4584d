#!/usr/bin/env bash
# Install (run/install.sh) and run the whole task chain natively, without containers:
#   run/local.sh [PARAMETERS_FILE] [WORKSPACE]
# Default: the quickstart parameters (synthetic data, a few minutes on a 2-core CPU) in ./workspace.
# Outputs: WORKSPACE/data/raw, data/processed, models/<model>/em_denoise_model.h5, output/, logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
PARAMS=${1:-workspace/parameters/quickstart.parameters.yaml}
WORKSPACE=${2:-workspace}
bash run/install.sh
for task in download preprocess train test; do
    .venv/bin/emdenoise "$task" --workspace="$WORKSPACE" --parameters_file="$PARAMS"
done
echo "results: $WORKSPACE/output/results.md"
cat "$WORKSPACE/output/results.md"
