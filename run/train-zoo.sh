#!/usr/bin/env bash
# Reproduce the zoo's pretrained models from their seeds, then score them (docs/results/zoo.md):
#   run/train-zoo.sh [WORKSPACE]        default workspace-zoo; about 50 min per model on a 2-core CPU
# Each model is trained by the same tasks a user runs (download -> preprocess -> train) with its parameters file;
# same seed, same torch build and same CPU kind, same weights. The result is WORKSPACE/models/ARCH/em_denoise_model.h5:
# copy it to emdenoise/zoo/NAME/ and re-measure its card (python -m emdenoise.zoo.check NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-workspace-zoo}
bash run/install.sh >/dev/null
for P in workspace/parameters/zoo-hrtem.parameters.yaml; do
    for t in download preprocess train; do
        OMP_NUM_THREADS=1 .venv/bin/emdenoise "$t" --workspace="$W" --parameters_file="$P"
    done
done
