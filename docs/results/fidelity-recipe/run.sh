#!/usr/bin/env bash
# The fidelity run with the zoo's training recipe (docs/results/fidelity.md):
#   bash docs/results/fidelity-recipe/run.sh train [NAME ...]   train the named architectures (default: all six), one
#                                                               after the other; a second call, started once the
#                                                               first has made the data, uses the other core
#   bash docs/results/fidelity-recipe/run.sh more [NAME ...]    the second leg: continue each from its first leg's
#                                                               model, so that it has had about an hour of one core
#   bash docs/results/fidelity-recipe/run.sh test [SET ...]     score them beside the zoo and the classical rows
#   bash docs/results/fidelity-recipe/run.sh report             copy the reports and draw the learning curves here
# Each architecture gets about an hour of one core in two legs (`train`: about 25 minutes, the first fidelity run
# with the recipe; `more`: the rest): the crop side, epochs and warm-up below are sized to its speed (bf16 on a
# 2-core AMD EPYC with AVX512-BF16); everything else is fidelity-recipe.parameters.yaml. Each leg trains into its
# own folder under W/runs or W/more (so that two can train at once); `test` gathers them in W/models and scores
# them with the zoo's HRTEM models on the fidelity run's test set and MoS2 split (zoo-check.parameters.yaml) and on
# the abTEM set (zoo-abtem.parameters.yaml), outputs in workspace-zoo-check/output-recipe and
# workspace-zoo-abtem/output-recipe.
set -euo pipefail
cd "$(dirname "$0")/../../.."
E=.venv/bin/emdenoise W=workspace-zoo/fidelity P=workspace/parameters/fidelity-recipe.parameters.yaml
# name: crop side, epochs, warm-up steps, training pairs used (0: all 3,840; 240 steps an epoch at batch 16); then
# the second leg (`more`): the epochs and warm-up steps of a second warm-up + cosine schedule started from the first
# leg's model (train.init_from), same crops, so that the two legs together come to about an hour of one core
declare -A PLAN=(
    [sciml_ae]="128 12 300 0 18 100"
    [mscnn]="64 4 240 0 5 100"
    [dncnn]="64 4 240 0 4 100"
    [cafcn]="64 4 240 0 2 100"
    [msdnet]="64 3 180 0 4 100"
    [rednet]="64 2 100 3200 3 100"
)
ALL=(sciml_ae mscnn dncnn cafcn msdnet rednet)
# one leg of NAME's training: `leg runs NAME` (the first, into W/runs/NAME) or `leg more NAME` (the second, from
# the first's model, into W/more/NAME)
leg() {
    local dir=$1 name=$2 plan crop epochs warmup pairs more_epochs more_warmup from=()
    plan=${PLAN[$name]:?"unknown architecture $name (known: ${!PLAN[*]})"}
    read -r crop epochs warmup pairs more_epochs more_warmup <<<"$plan"
    if [ "$dir" = more ]; then
        epochs=$more_epochs warmup=$more_warmup
        from=(--set train.init_from="$W/runs/$name/$name/em_denoise_model.h5")
    fi
    OMP_NUM_THREADS=1 $E train --workspace=$W --parameters_file=$P --model_dir="$W/$dir/$name" \
        --output_dir="$W/$dir/$name/output" --log_dir="$W/$dir/$name/logs" --set train.model="$name" \
        --set train.patch_size="$crop" --set train.epochs="$epochs" --set train.warmup_steps="$warmup" \
        --set train.max_train_images="$pairs" "${from[@]}"
}
task=${1:?"usage: run.sh train [NAME ...] | run.sh more [NAME ...] | run.sh test [SET ...] | run.sh report"}
shift
case $task in
train)
    NAMES=("$@")
    [ ${#NAMES[@]} -gt 0 ] || NAMES=("${ALL[@]}")
    # the data once: a second call while the first trains must not write the folder it reads
    [ -e "$W/data/processed/dataset_card.json" ] ||
        for t in download preprocess; do OMP_NUM_THREADS=1 $E "$t" --workspace=$W --parameters_file=$P; done
    for NAME in "${NAMES[@]}"; do leg runs "$NAME"; done
    ;;
more)
    NAMES=("$@")
    [ ${#NAMES[@]} -gt 0 ] || NAMES=("${ALL[@]}")
    for NAME in "${NAMES[@]}"; do leg more "$NAME"; done
    ;;
test)
    # SET: zoo-check (the fidelity test set and its MoS2 split) or zoo-abtem (the abTEM set: the [abtem] extra);
    # both by default, one after the other; two calls, one SET each, use both cores
    SETS=("$@")
    [ ${#SETS[@]} -gt 0 ] || SETS=(zoo-check zoo-abtem)
    mkdir -p "$W/models"
    # each architecture's second leg where it has one, else its first; -u: a second call (the other SET) does not
    # rewrite the files the first one is reading
    for NAME in "${!PLAN[@]}"; do
        R=$W/more/$NAME/$NAME
        [ -e "$R/em_denoise_model.h5" ] || R=$W/runs/$NAME/$NAME
        cp -ru "$R" "$W/models/"
    done
    for S in "${SETS[@]}"; do
        C=workspace/parameters/$S.parameters.yaml Z=workspace-$S
        [ -e "$Z/data/processed/dataset_card.json" ] ||
            for t in download preprocess; do OMP_NUM_THREADS=1 $E "$t" --workspace="$Z" --parameters_file="$C"; done
        OMP_NUM_THREADS=1 $E test --workspace="$Z" --parameters_file="$C" --model_dir=$W/models \
            --output_dir="$Z/output-recipe" --set test.models=all \
            --set "test.zoo=[hrtem-prior-unet, hrtem-unet, hrtem-ffdnet]"
    done
    ;;
report)
    # the reports, train records (both legs) and learning curves of all nine (the zoo's three from
    # docs/results/zoo-check/train)
    D=docs/results/fidelity-recipe
    mkdir -p $D/train
    for S in zoo-check zoo-abtem; do
        cp workspace-$S/output-recipe/results.md $D/$S-results.md
        cp workspace-$S/output-recipe/test_metrics.json $D/$S-test_metrics.json
    done
    cp workspace-zoo-check/output-recipe/comparison.png $D/comparison.png
    CURVES=()
    for NAME in "${!PLAN[@]}"; do
        cp "$W/runs/$NAME/output/train_metrics.json" "$D/train/$NAME-train_metrics.json"
        cp "$W/more/$NAME/output/train_metrics.json" "$D/train/$NAME-more-train_metrics.json"
        CURVES+=("$D/train/$NAME-train_metrics.json+$D/train/$NAME-more-train_metrics.json")
    done
    .venv/bin/python -m emdenoise.report.learning_curves $D/learning-curves.png "${CURVES[@]}" \
        zoo=docs/results/zoo-check/train/hrtem-unet-train_metrics.json \
        zoo=docs/results/zoo-check/train/hrtem-ffdnet-v2-train_metrics.json \
        "zoo, Wiener input=docs/results/zoo-check/train/hrtem-prior-unet-train_metrics.json"
    ;;
*) echo "run.sh: unknown step $task (expected train, more, test or report)" >&2; exit 2 ;;
esac
