#!/usr/bin/env bash
# Fine-tune the pretrained zoo model on your own micrographs alone (no clean images), denoise them, and compare
# the result with the zoo model as is and the tuned classical filters on the same frames:
#   run/own-data.sh INPUT_DIR [OUTPUT_DIR]
# INPUT_DIR: a folder (or .zip) of micrographs in any format `emdenoise denoise` reads (TIFF stacks, MRC, HDF5,
# NPY, PNG, DM3/DM4, EMD, SER ...). OUTPUT_DIR (default ./own-data): the workspace: data/raw (a copy of the
# inputs), data/processed (noisy-only tiles, the stacks' frames drift-aligned), models/, output/
# (train_metrics.json), denoised/ (the denoised inputs, same names and formats), before_after.png and
# comparison.json (the table printed at the end: python -m emdenoise.evaluation.own_data).
# Installs the package (run/install.sh) and, when an input is a DM3/DM4, EMD, SER or HSPY file, the formats
# extra (rosettasciio, GPL-3.0). The settings come from workspace/parameters/own-data.parameters.yaml (ffdnet
# fine-tuned from zoo:hrtem-ffdnet, train.init_from; a few minutes on one CPU core), or from the file
# EMDENOISE_PARAMETERS names; download.source is INPUT_DIR.
# Supervision: poisson_split when the frames are counts (whole numbers) or detector values with a fitted offset
# and gain (the card's detector_gain), else frame_pairs when a stack's frames were aligned (a movie), else
# noise2void (with
# EMDENOISE_PARAMETERS: the file's train.supervision); set EMDENOISE_SUPERVISION (noise2void, poisson_split, frame_pairs) to choose; EMDENOISE_EPOCHS and EMDENOISE_TILE
# (the tile side; frames must be at least that large) override the file's train.epochs and preprocess.tile_size.
# EMDENOISE_TRUTH: a folder of clean frames named like the inputs (simulated data): the comparison is then scored
# against it (PSNR after the best affine fit; the filters at their best setting); else by scores without truth. EMDENOISE_PYTHON: an interpreter with
# emdenoise installed, used instead of installing ./.venv. EMDENOISE_BASELINES: the filters compared (comma
# separated; default gaussian,flat_gaussian,bragg,wiener,pnlm).
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
if [ -n "${EMDENOISE_PYTHON:-}" ]; then
    PY=$EMDENOISE_PYTHON
else
    bash run/install.sh
    PY=.venv/bin/python
fi
NEEDS_FORMATS=$($PY - "$INPUT" <<'PY'
import pathlib, sys, zipfile

src = pathlib.Path(sys.argv[1])
names = zipfile.ZipFile(src).namelist() if zipfile.is_zipfile(src) else [str(p) for p in src.rglob("*")]
print("yes" if any(pathlib.PurePath(n).suffix.lower() in {".dm3", ".dm4", ".emd", ".ser", ".hspy"} for n in names) else "")
PY
)
if [ -n "$NEEDS_FORMATS" ] && ! $PY -c "import rsciio" 2>/dev/null; then
    echo "DM/EMD/SER input: installing the formats extra (rosettasciio, GPL-3.0)"
    $PY -m pip install --quiet --disable-pip-version-check -e ".[formats]"
fi
EM=($PY -m emdenoise)
PARAMS=${EMDENOISE_PARAMETERS:-workspace/parameters/own-data.parameters.yaml}
SETS=(--set "download.source=micrographs:$INPUT")
if [ -n "${EMDENOISE_EPOCHS:-}" ]; then SETS+=(--set "train.epochs=$EMDENOISE_EPOCHS"); fi
if [ -n "${EMDENOISE_TILE:-}" ]; then SETS+=(--set "preprocess.tile_size=$EMDENOISE_TILE"); fi
"${EM[@]}" download --workspace="$OUT" --parameters_file="$PARAMS" "${SETS[@]}"
"${EM[@]}" preprocess --workspace="$OUT" --parameters_file="$PARAMS" "${SETS[@]}"
MODE=${EMDENOISE_SUPERVISION:-}
if [ -z "$MODE" ] && [ -z "${EMDENOISE_PARAMETERS:-}" ]; then
    # counted frames: poisson_split; else movies whose frames were aligned: frame_pairs; else noise2void
    MODE=$($PY -c "import json, sys; c = json.load(open(sys.argv[1])); \
movie = any(m['frames'] > 1 and m['align'] == 'measured' for m in c.get('micrographs', [])); \
print('poisson_split' if c.get('count_scale') or c.get('detector_gain') else 'frame_pairs' if movie else 'noise2void')" \
        "$OUT/data/processed/dataset_card.json")
fi
TRAIN_SETS=()
if [ -n "$MODE" ]; then
    echo "training with train.supervision: $MODE"
    TRAIN_SETS=(--set "train.supervision=$MODE")
fi
"${EM[@]}" train --workspace="$OUT" --parameters_file="$PARAMS" "${SETS[@]}" "${TRAIN_SETS[@]}"
INPUT_FILES=$INPUT
if [ -f "$INPUT" ]; then INPUT_FILES=$OUT/data/raw/micrographs; fi  # a zip: its copy in data/raw
"${EM[@]}" denoise --workspace="$OUT" --parameters_file="$PARAMS" "${SETS[@]}" --input_dir="$INPUT_FILES" \
    --output_dir="$OUT/denoised"
$PY -m emdenoise.report.before_after "$INPUT_FILES" "$OUT/denoised" "$OUT/before_after.png"
read -r MODEL_NAME LABEL < <($PY -c "import sys; from emdenoise.config.params import load; \
t = load(sys.argv[1]).train; print(t.model_names()[0], 'from-scratch' if t.init_from == 'none' else 'fine-tuned')" \
    "$PARAMS")
EXTRA=()
if [ -n "${EMDENOISE_TRUTH:-}" ]; then EXTRA+=(--truth "$EMDENOISE_TRUTH"); fi
if [ -n "${EMDENOISE_BASELINES:-}" ]; then EXTRA+=(--baselines "$EMDENOISE_BASELINES"); fi
echo "comparing the $LABEL model, the model it started from and the classical filters on the same frames"
$PY -m emdenoise.evaluation.own_data "$INPUT_FILES" --model "$LABEL=$OUT/models/$MODEL_NAME" "${EXTRA[@]}" \
    --out "$OUT/comparison.json"
echo "denoised frames: $OUT/denoised"
echo "training metrics: $OUT/output/train_metrics.json; model: $OUT/models/"
echo "before/after figure: $OUT/before_after.png; comparison: $OUT/comparison.json"
