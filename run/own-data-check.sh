#!/usr/bin/env bash
# Measure the own-data path (run/own-data.sh) on simulated frames of a material the zoo model never saw, with the
# clean truth kept aside (docs/results/own-data.md):
#   run/own-data-check.sh [WORK_DIR]        (default ./own-data-check)
# For each dose (EMDENOISE_DOSES, default "8 30" e/px): run/own_data_frames.py writes 8 SrTiO3 frames of 384x384
# (flat beam, counts) and their truth; run/own-data.sh fine-tunes zoo:hrtem-ffdnet on the noisy frames alone
# (its default) and compares it with the zoo model as is and the classical filters at their best setting on the
# truth; then the same path trains from scratch (workspace/parameters/own-data-check.parameters.yaml; compared
# with the Gaussian filter only, the other filters' rows being those of the fine-tune run). Tables:
# WORK_DIR/d<dose>/{fine-tune,scratch}/comparison.json and the log. EMDENOISE_PYTHON as for run/own-data.sh.
set -euo pipefail
WORK=${1:-own-data-check}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cd "$(dirname "$0")/.."
if [ -z "${EMDENOISE_PYTHON:-}" ]; then
    bash run/install.sh
    export EMDENOISE_PYTHON=$PWD/.venv/bin/python
fi
for DOSE in ${EMDENOISE_DOSES:-8 30}; do
    D=$WORK/d$DOSE
    $EMDENOISE_PYTHON run/own_data_frames.py "$D" --material srtio3 --dose "$DOSE" --frames 8 --size 384
    START=$(date +%s)
    EMDENOISE_TRUTH=$D/truth bash run/own-data.sh "$D/frames" "$D/fine-tune"
    echo "dose $DOSE e/px: fine-tune path $(($(date +%s) - START)) s"
    START=$(date +%s)
    EMDENOISE_TRUTH=$D/truth EMDENOISE_SUPERVISION=poisson_split EMDENOISE_BASELINES=gaussian \
        EMDENOISE_PARAMETERS=workspace/parameters/own-data-check.parameters.yaml \
        bash run/own-data.sh "$D/frames" "$D/scratch"
    echo "dose $DOSE e/px: from-scratch path $(($(date +%s) - START)) s"
done
