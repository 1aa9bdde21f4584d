#!/usr/bin/env bash
# Reproduce the zoo's pretrained models from their seeds (docs/results/zoo.md):
#   run/train-zoo.sh [WORKSPACE] [NAME ...]     default workspace-zoo and every model below
# Each model is trained by the same tasks a user runs (download -> preprocess -> train) with its parameters file,
# in WORKSPACE/NAME; same seed, same torch build and same CPU kind, same weights. The models run one after the
# other (about an hour each on one core of a 2-core CPU); run several at once by naming one per call. The result
# is WORKSPACE/NAME/models/ARCH/em_denoise_model.h5, compared at the end with the shipped model
# (python -m emdenoise.zoo.check NAME --same-weights FILE): exit 1 when one is not the shipped weights bit for bit.
# A new or changed model: copy it to emdenoise/zoo/NAME/ and re-measure its card (python -m emdenoise.zoo.check NAME).
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
status=0
for NAME in "${NAMES[@]}"; do
    P=${PARAMS[$NAME]:?"unknown zoo model $NAME (known: ${!PARAMS[*]})"}
    for t in download preprocess train; do
        OMP_NUM_THREADS=1 .venv/bin/emdenoise "$t" --workspace="$W/$NAME" --parameters_file="$P"
    done
    for F in "$W/$NAME"/models/*/em_denoise_model.h5; do
        .venv/bin/python -m emdenoise.zoo.check "$NAME" --same-weights "$F" || status=1
    done
done
exit $status
