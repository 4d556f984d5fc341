#!/usr/bin/env bash
# The paper's other three tasks end to end on CPU (docs/results.md, "Deraining, deblurring, dehazing"):
# for each task a dense base and a ClassPruning model with the same CPU budget, evaluation on CBSD68
# with the synthesized degradation at each level (first $LIMIT images) and on the real pairs, and
# restored real images with side-by-side pictures.
#   bash benchmarks/tasks_run.sh [rescan_derain srn_deblur gcanet_dehaze]
set -euo pipefail
DATA=${DATA:-../shared/data}
LIMIT=${LIMIT:-20}
declare -A PAIRS=([rescan_derain]="derain/Rain100H/rainy derain/Rain100H/clean"
                  [srn_deblur]="deblur/GoPro_examples/blur deblur/GoPro_examples/sharp"
                  [gcanet_dehaze]="dehaze/SOTS_outdoor_sample/hazy dehaze/SOTS_outdoor_sample/clear")
for task in "${@:-rescan_derain srn_deblur gcanet_dehaze}"; do
  net=${task%%_*}
  cfg=configs/${task}_cpu.yaml
  read -r deg clean <<<"${PAIRS[$task]}"
  base_steps=$(python -c "import yaml; print(yaml.safe_load(open('$cfg'))['stages']['base']['steps_per_epoch'])")
  /usr/bin/time -f "$task dense: %e s" dynprune train "$cfg" --out-dir "runs/${net}_dense" \
    --set stages.classifier.epochs=0 --set stages.restoration.epochs=0 --set stages.joint.epochs=0 \
    --set stages.base.steps_per_epoch=$((2 * base_steps))
  /usr/bin/time -f "$task ClassPruning: %e s" dynprune train "$cfg" --out-dir "runs/${net}_cp"
  dynprune eval "runs/${net}_cp/last.pt" --dense "runs/${net}_dense/base.pt" --data "$DATA/rgb/CBSD68" --limit "$LIMIT" \
    --pairs "$DATA/$deg" "$DATA/$clean" --out "docs/results/${task}"
  dynprune restore "runs/${net}_cp/last.pt" "$DATA/$deg" "runs/${net}_restored" --clean "$DATA/$clean"
done
