#!/usr/bin/env bash
# Score every zoo model (test.zoo: all) beside the tuned classical rows on the fidelity run's test set (and its MoS2
# generalisation split) and on the abTEM set, then rewrite each model's card scores (docs/results/zoo.md):
#   bash docs/results/zoo-check/run.sh        (from the repository root; needs the [abtem] extra for the abTEM set)
# Outputs go to workspace-zoo-check/ and workspace-zoo-abtem/; the reports are copied here.
set -euo pipefail
D=docs/results/zoo-check; E=.venv/bin/emdenoise
for S in zoo-check:workspace-zoo-check zoo-abtem:workspace-zoo-abtem; do
    P=workspace/parameters/${S%%:*}.parameters.yaml W=${S##*:}
    for t in download preprocess test; do
        OMP_NUM_THREADS=1 $E "$t" --workspace="$W" --parameters_file="$P"
    done
done
cp workspace-zoo-check/output/results.md $D/results.md
cp workspace-zoo-check/output/comparison.png $D/comparison.png
cp workspace-zoo-abtem/output/results.md $D/abtem-results.md
for NAME in $(.venv/bin/python -c "from emdenoise import zoo; print(*zoo.models())"); do
    .venv/bin/python -m emdenoise.zoo.check "$NAME" --card test=workspace-zoo-check/output/test_metrics.json \
        abtem=workspace-zoo-abtem/output/test_metrics.json
done
