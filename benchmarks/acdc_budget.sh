#!/usr/bin/env bash
# Train one network on ACDC for a fixed time budget (the issue's real-data check), bf16, 224², then validate.
# From scratch (model.pretrained=null), also for Swin-Unet, whose preset starts from ImageNet Swin-T: pass
# --set model.pretrained=imagenet among the extra arguments to start from it.
#
#   benchmarks/acdc_budget.sh NETWORK [BUDGET_MIN] [OUT_DIR] [extra organseg train args...]
#     NETWORK     swin_unet | unet            (presets swin_unet_acdc / unet_acdc)
#     BUDGET_MIN  training minutes, default 30 (the final validation, 1-4 min on a CPU, comes on top)
#     OUT_DIR     default runs/acdc_NETWORK_BUDGETmin
#   env: ACDC_DIR (default ../shared/data/acdc), IMG_PER_S (measured training images/s, see below),
#        ORGANSEG (default .venv/bin/organseg)
#
# The poly LR needs a horizon, so the script sets train.max_iterations to what the budget holds at IMG_PER_S
# (defaults: benchmarks/bench_train.py bf16 rates on the 2-core development CPU; measure yours with
# `python benchmarks/bench_train.py --networks NETWORK --batch 8`) and the LR decays to ~0 at the end.
# train.time_budget_min stops the run anyway (checkpointed and validated) if the machine is slower. The run is
# resumable: the same command continues it (--resume starts fresh when there is no checkpoint yet).
# Results: OUT_DIR/summary.json ("last_val": mean and per-class DSC / HD95) and OUT_DIR/metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

net=${1:?usage: benchmarks/acdc_budget.sh swin_unet|unet [BUDGET_MIN] [OUT_DIR] [extra args]}
budget=${2:-30}
out=${3:-runs/acdc_${net}_${budget}min}
shift $(( $# < 3 ? $# : 3 ))
case "$net" in
  swin_unet) batch=24; rate=${IMG_PER_S:-1.2} ;;
  unet) batch=16; rate=${IMG_PER_S:-0.7} ;;
  *) echo "acdc_budget.sh: NETWORK must be swin_unet or unet, got '$net'" >&2; exit 2 ;;
esac
# A --set train.batch_size=N among the extra arguments changes the batch the horizon is computed for.
for arg in "$@"; do
  [[ "$arg" == train.batch_size=* ]] && batch=${arg#train.batch_size=}
done
iters=$(awk -v b="$budget" -v r="$rate" -v n="$batch" 'BEGIN { i = int(b * 60 * r / n); print (i < 1 ? 1 : i) }')
echo "acdc_budget: $net, $budget min at ~$rate img/s -> $iters iterations of batch $batch" >&2

exec "${ORGANSEG:-.venv/bin/organseg}" train "${net}_acdc" --data "${ACDC_DIR:-../shared/data/acdc}" --out "$out" \
  --resume --precision bf16 --set model.pretrained=null \
  --set train.max_iterations="$iters" --set train.time_budget_min="$budget" --set val.every=0 "$@"
