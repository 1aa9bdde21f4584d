#!/usr/bin/env bash
# Reproduce the zoo's pretrained models from their seeds (docs/results/zoo.md):
#   run/train-zoo.sh [WORKSPACE] [NAME ...]     default workspace-zoo and every model below
# Each model is trained by the same tasks a user runs (download -> preprocess -> train) with its parameters file,
# in WORKSPACE/NAME; same seed, same torch build and same CPU kind, same weights. The models run one after the
# other (about an hour each on one core of a 2-core CPU); run several at once by naming one per call. The result
# is WORKSPACE/NAME/models/ARCH/em_denoise_model.h5: copy it to emdenoise/zoo/NAME/ and re-measure its card
# (python -m emdenoise.zoo.check NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A PARAMS=(
    [hrtem-ffdnet]=workspace/parameters/zoo-hrtem-ffdnet-v2.parameters.yaml
    [hrtem-unet]=workspace/parameters/zoo-hrtem-unet.parameters.yaml
    [haadf-unet]=workspace/parameters/zoo-haadf-unet.parameters.yaml
    [abf-unet]=workspace/parameters/zoo-abf-unet.parameters.yaml
    [hrtem-mixed-unet]=workspace/parameters/zoo-hrtem-mixed-unet.parameters.yaml
    [hrtem-prior-unet]=workspace/parameters/zoo-hrtem-prior-unet.parameters.yaml
)
W=${1:-workspace-zoo}
shift || true
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(hrtem-ffdnet hrtem-unet haadf-unet abf-unet hrtem-mixed-unet hrtem-prior-unet)
bash run/install.sh >/dev/null
for NAME in "${NAMES[@]}"; do
    P=${PARAMS[$NAME]:?"unknown zoo model $NAME (known: ${!PARAMS[*]})"}
    for t in download preprocess train; do
        OMP_NUM_THREADS=1 .venv/bin/emdenoise "$t" --workspace="$W/$NAME" --parameters_file="$P"
    done
done
