#!/usr/bin/env bash
# Score the zoo models beside the tuned classical rows on the fidelity run's test set (and its MoS2
# generalisation split), on the abTEM set and on the HAADF and ABF STEM sets, then rewrite each model's card scores
# (docs/results/zoo.md): each HRTEM model's from the HRTEM sets, each STEM model's from its own mode's set.
#   bash docs/results/zoo-check/run.sh [SET ...]   (from the repository root; SET: hrtem, abtem, haadf, abf, mixed;
#                                                   default all five; abtem needs the [abtem] extra, haadf and abf
#                                                   the [peer] extra for the peer's STEM rows; mixed scores
#                                                   zoo:hrtem-mixed-unet on the hrtem and abtem sets, after them)
# Outputs go to workspace-zoo-check/, workspace-zoo-abtem/, workspace-zoo-haadf/, workspace-zoo-abf/; the reports
# are copied here. A set not named keeps its last run's test_metrics.json for the cards.
set -euo pipefail
D=docs/results/zoo-check; E=.venv/bin/emdenoise; PY=.venv/bin/python
declare -A RUN=([hrtem]=zoo-check:workspace-zoo-check [abtem]=zoo-abtem:workspace-zoo-abtem
                [haadf]=zoo-check-haadf:workspace-zoo-haadf [abf]=zoo-check-abf:workspace-zoo-abf)
SETS=("$@"); [ ${#SETS[@]} -gt 0 ] || SETS=(hrtem abtem haadf abf mixed)
for SET in "${SETS[@]}"; do
    if [ "$SET" = mixed ]; then  # the mixed-material HRTEM model beside hrtem-unet and the two strongest filters
        for S in zoo-check:workspace-zoo-check:mixed-results zoo-abtem:workspace-zoo-abtem:mixed-abtem-results; do
            IFS=: read -r P W R <<< "$S"
            OMP_NUM_THREADS=1 $E test --workspace="$W" --parameters_file="workspace/parameters/$P.parameters.yaml" \
                --set "test.zoo=[hrtem-mixed-unet, hrtem-unet]" --set "test.baselines=[bragg, wiener]" \
                --output_dir="$W/output-mixed"
            cp "$W/output-mixed/results.md" "$D/$R.md"
        done
        continue
    fi
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
        hrtem-mixed-*) RUNS=(test=workspace-zoo-check/output-mixed/test_metrics.json
                             abtem=workspace-zoo-abtem/output-mixed/test_metrics.json) ;;
        *) RUNS=(test=workspace-zoo-check/output/test_metrics.json abtem=workspace-zoo-abtem/output/test_metrics.json) ;;
    esac
    $PY -m emdenoise.zoo.check "$NAME" --card "${RUNS[@]}"
done
