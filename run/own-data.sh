#!/usr/bin/env bash
# Train a denoiser on your own micrographs alone (no clean images) and denoise them:
#   run/own-data.sh INPUT_DIR [OUTPUT_DIR]
# INPUT_DIR: a folder (or .zip) of micrographs in any format `emdenoise denoise` reads (TIFF stacks, MRC, HDF5,
# NPY, PNG, ...). OUTPUT_DIR (default ./own-data): the workspace: data/raw (a copy of the inputs),
# data/processed (noisy-only tiles), models/, output/ (train_metrics.json), denoised/ (the denoised inputs,
# same names and formats) and before_after.png.
# Supervision: poisson_split when every pixel is a whole number (counted frames), else noise2void; set
# EMDENOISE_SUPERVISION (noise2void, poisson_split, frame_pairs) or EMDENOISE_PARAMETERS (a parameters file
# whose sections are used as they are) to choose; EMDENOISE_EPOCHS (default 20), EMDENOISE_TILE (the tile side,
# default 128; frames must be at least that large).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: run/own-data.sh INPUT_DIR [OUTPUT_DIR]" >&2
    exit 2
fi
INPUT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
OUT=${2:-own-data}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
bash run/install.sh
EM=.venv/bin/emdenoise
PARAMS=${EMDENOISE_PARAMETERS:-$OUT/own-data.parameters.yaml}
if [ -z "${EMDENOISE_PARAMETERS:-}" ]; then
    cat > "$PARAMS" <<YAML
download: {source: "micrographs:$INPUT"}
preprocess: {tile_size: ${EMDENOISE_TILE:-128}, val_fraction: 0.1}
train: {model: sciml_ae, epochs: ${EMDENOISE_EPOCHS:-20}, batch_size: 16}
YAML
fi
$EM download --workspace="$OUT" --parameters_file="$PARAMS"
$EM preprocess --workspace="$OUT" --parameters_file="$PARAMS"
MODE=${EMDENOISE_SUPERVISION:-}
if [ -z "$MODE" ] && [ -z "${EMDENOISE_PARAMETERS:-}" ]; then  # counted frames: poisson_split, else noise2void
    MODE=$(.venv/bin/python -c "import json, sys; c = json.load(open(sys.argv[1])); \
print('poisson_split' if c.get('count_scale') else 'noise2void')" "$OUT/data/processed/dataset_card.json")
fi
SETS=()
if [ -n "$MODE" ]; then
    echo "training with train.supervision: $MODE"
    SETS=(--set "train.supervision=$MODE")
fi
$EM train --workspace="$OUT" --parameters_file="$PARAMS" "${SETS[@]}"
INPUT_FILES=$INPUT
if [ -f "$INPUT" ]; then INPUT_FILES=$OUT/data/raw/micrographs; fi  # a zip: its copy in data/raw
$EM denoise --workspace="$OUT" --parameters_file="$PARAMS" --input_dir="$INPUT_FILES" --output_dir="$OUT/denoised"
.venv/bin/python -m emdenoise.report.before_after "$INPUT_FILES" "$OUT/denoised" "$OUT/before_after.png"
echo "denoised frames: $OUT/denoised"
echo "training metrics: $OUT/output/train_metrics.json; model: $OUT/models/"
echo "before/after figure: $OUT/before_after.png"
