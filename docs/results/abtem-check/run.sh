#!/usr/bin/env bash
# Train on the synthetic generator, test on an abTEM set (docs/results/abtem-check.md): run from the repository
# root with the [abtem] extra installed; everything goes to ./abtem-check-work.
set -euo pipefail
D=docs/results/abtem-check; W=abtem-check-work; E=.venv/bin/emdenoise
export EMDENOISE_PROGRESS=0
$E download --workspace $W --parameters_file $D/abtem.parameters.yaml --raw_data_dir $W/ab/raw
$E preprocess --workspace $W --parameters_file $D/abtem.parameters.yaml --raw_data_dir $W/ab/raw --data_dir $W/ab/processed
for task in download preprocess train test; do  # the training side: the quickstart
  $E $task --workspace $W --parameters_file workspace/parameters/quickstart.parameters.yaml
done
$E test --workspace $W --parameters_file $D/abtem.parameters.yaml --data_dir $W/ab/processed --model_dir $W/models \
  --output_dir $W/ab/output
.venv/bin/python $D/flat.py $W/ab/processed $W/ab/output/per_image.csv
.venv/bin/python $D/flat.py $W/data/processed $W/output/per_image.csv
