#!/usr/bin/env bash
# The paper's other three tasks end to end on CPU (docs/results.md, "Deraining, deblurring, dehazing").
# Per task, with the same CPU budget for the dense model and the ClassPruning model:
#   1. dense pretraining (the config's base stage), optionally from an earlier run (INIT_<net>);
#   2a. the dense base trained on for CONT more steps at the fine-tune LR;
#   2b. ClassPruning stages 1-3 from the same start (2a and 2b run side by side, one thread each);
# then evaluation on CBSD68 with the synthesized degradation at each level (all 68 images, or the first
# $LIMIT, which also caps the real pairs) and on the real pairs, and restored real images with side-by-side pictures.
#   bash benchmarks/tasks_run.sh [rescan_derain srn_deblur gcanet_dehaze]
set -euo pipefail
DATA=${DATA:-../shared/data}
LIMIT=${LIMIT:-}   # empty: all 68 CBSD68 images and all real pairs
CONT=${CONT:-450}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
declare -A PAIRS=([rescan_derain]="derain/Rain100H/rainy derain/Rain100H/clean"
                  [srn_deblur]="deblur/GoPro_examples/blur deblur/GoPro_examples/sharp"
                  [gcanet_dehaze]="dehaze/SOTS_outdoor_sample/hazy dehaze/SOTS_outdoor_sample/clear")
ONLY_BASE="--set stages.classifier.epochs=0 --set stages.restoration.epochs=0 --set stages.joint.epochs=0"
for task in "${@:-rescan_derain srn_deblur gcanet_dehaze}"; do
  net=${task%%_*}
  cfg=configs/${task}_cpu.yaml
  init_var=INIT_${net}
  init=${!init_var:-}
  read -r deg clean <<<"${PAIRS[$task]}"
  /usr/bin/time -f "$task base: %e s" dynprune train "$cfg" --resume --out-dir "runs/${net}_base" $ONLY_BASE \
    ${init:+--set init_from=$init}
  /usr/bin/time -f "$task dense: %e s" dynprune train "$cfg" --resume --out-dir "runs/${net}_dense" $ONLY_BASE \
    --set init_from="runs/${net}_base/last.pt" --set stages.base.steps_per_epoch="$CONT" \
    --set stages.base.lr_start=2.0e-4 --set stages.base.lr_end=1.0e-6 &
  dense_pid=$!
  /usr/bin/time -f "$task ClassPruning: %e s" dynprune train "$cfg" --resume --out-dir "runs/${net}_cp" \
    --set init_from="runs/${net}_base/last.pt" --set stages.base.epochs=0 &
  cp_pid=$!
  wait "$dense_pid"; wait "$cp_pid"   # set -e stops the script if either run failed
  dynprune eval "runs/${net}_cp/last.pt" --dense "runs/${net}_dense/base.pt" --data "$DATA/rgb/CBSD68" \
    ${LIMIT:+--limit "$LIMIT"} --pairs "$DATA/$deg" "$DATA/$clean" --out "docs/results/${task}"
  python benchmarks/tasks_table.py "docs/results/${task}/report.json"   # the docs/results.md table and means
  dynprune restore "runs/${net}_cp/last.pt" "$DATA/$deg" "runs/${net}_restored" --clean "$DATA/$clean"
  # the first side-by-side picture (degraded | routed output | clean), 1536 px wide, into docs/
  python - "runs/${net}_restored/side_by_side" "docs/results/${task}/side_by_side.jpg" <<'PY'
import sys
from pathlib import Path
from PIL import Image
src = sorted(Path(sys.argv[1]).glob("*.png"))[0]
im = Image.open(src).convert("RGB")
im.thumbnail((1536, 1536), Image.LANCZOS)
im.save(sys.argv[2], quality=88)
print(f"{src.name} -> {sys.argv[2]}")
PY
done
