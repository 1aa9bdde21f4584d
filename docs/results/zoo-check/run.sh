#!/usr/bin/env bash
# Score the zoo models beside the tuned classical rows on the fidelity run's test set (and its MoS2
# generalisation split), on the abTEM set and on the HAADF and ABF STEM sets, then rewrite each model's card scores
# (docs/results/zoo.md): each HRTEM model's from the HRTEM sets, each STEM model's from its own mode's set.
#   bash docs/results/zoo-check/run.sh [SET ...]   (from the repository root; SET: hrtem, abtem, haadf, abf, mixed,
#                                                   prior; default all; abtem needs the [abtem] extra, haadf and
#                                                   abf the [peer] extra for the peer's STEM rows; mixed and prior
#                                                   score zoo:hrtem-mixed-unet and zoo:hrtem-prior-unet beside
#                                                   zoo:hrtem-unet on the hrtem and abtem sets, after those sets)
# Outputs go to workspace-zoo-check/, workspace-zoo-abtem/, workspace-zoo-haadf/, workspace-zoo-abf/; the reports
# are copied here. A set not named keeps its last run's test_metrics.json for the cards; a model whose runs are
# not there keeps its card's scores.
set -euo pipefail
D=docs/results/zoo-check; E=.venv/bin/emdenoise; PY=.venv/bin/python
declare -A RUN=([hrtem]=zoo-check:workspace-zoo-check [abtem]=zoo-abtem:workspace-zoo-abtem
                [haadf]=zoo-check-haadf:workspace-zoo-haadf [abf]=zoo-check-abf:workspace-zoo-abf)
SETS=("$@"); [ ${#SETS[@]} -gt 0 ] || SETS=(hrtem abtem haadf abf mixed prior)
beside() {  # beside NAME BASELINES SET:WORKSPACE:REPORT ...: zoo:NAME beside its base model and the strongest filters
    local NAME=$1 BASE=$2 BASELINES=$3 S P W R; shift 3
    for S in "$@"; do
        IFS=: read -r P W R <<< "$S"
        OMP_NUM_THREADS=1 $E test --workspace="$W" --parameters_file="workspace/parameters/$P.parameters.yaml" \
            --set "test.zoo=[$NAME, $BASE]" --set "test.baselines=[$BASELINES]" --set "test.peers=none" \
            --output_dir="$W/output-$SET"
        cp "$W/output-$SET/results.md" "$D/$R.md"
    done
}
for SET in "${SETS[@]}"; do
    case $SET in  # the models that differ from a zoo model in one thing, beside it
        mixed) beside hrtem-mixed-unet hrtem-unet "bragg, wiener" zoo-check:workspace-zoo-check:mixed-results \
                   zoo-abtem:workspace-zoo-abtem:mixed-abtem-results; continue ;;
        prior) beside hrtem-prior-unet hrtem-unet "bragg, wiener" zoo-check:workspace-zoo-check:prior-results \
                   zoo-abtem:workspace-zoo-abtem:prior-abtem-results; continue ;;
    esac
    S=${RUN[$SET]:?"unknown set $SET (known: ${!RUN[*]})"}
    P=workspace/parameters/${S%%:*}.parameters.yaml W=${S##*:}
    for t in download preprocess test; do
        OMP_NUM_THREADS=1 $E "$t" --workspace="$W" --parameters_file="$P"
    done
    case $SET in
        hrtem) cp "$W/output/results.md" $D/results.md; cp "$W/output/comparison.png" $D/comparison.png ;;
        *) cp "$W/output/results.md" "$D/$SET-results.md"
           [ "$SET" = abtem ] || cp "$W/output/comparison.png" "$D/$SET-comparison.png" ;;
    esac
done
for NAME in $($PY -c "from emdenoise import zoo; print(*zoo.models())"); do
    case $NAME in
        haadf-*|abf-*) RUNS=("test=workspace-zoo-${NAME%%-*}/output/test_metrics.json") ;;
        hrtem-mixed-*|hrtem-prior-*) O=output-$(cut -d- -f2 <<< "$NAME")
            RUNS=("test=workspace-zoo-check/$O/test_metrics.json" "abtem=workspace-zoo-abtem/$O/test_metrics.json") ;;
        *) RUNS=(test=workspace-zoo-check/output/test_metrics.json abtem=workspace-zoo-abtem/output/test_metrics.json) ;;
    esac
    MISSING=0; for R in "${RUNS[@]}"; do [ -f "${R#*=}" ] || MISSING=1; done
    if [ $MISSING = 1 ]; then echo "zoo:$NAME: keeps its card's scores (a run of ${RUNS[*]} is not here)"; continue; fi
    OMP_NUM_THREADS=1 $PY -m emdenoise.zoo.check "$NAME" --card "${RUNS[@]}"
done
