#!/usr/bin/env bash
# The GPU question of the time-to-accuracy work (docs/training.md): does a fast preset reach the reference
# preset's 150-epoch ACDC validation DSC in at most a third of the epochs? Per network: the reference preset
# for its 150 epochs, then the fast preset for FAST_EPOCHS (default 50, its cosine fitted to them), both
# from scratch in bf16 and validated every few epochs; then `time_to_accuracy.py epochs` prints both curves
# and the first epoch at which the fast run reaches the reference run's last DSC.
#
#   benchmarks/gpu_time_to_accuracy.sh              on a CUDA machine (Swin-Unet: about 8 minutes on an H200)
#   NETWORKS=unet benchmarks/gpu_time_to_accuracy.sh   the U-Net (its reference run alone is longer)
#   benchmarks/gpu_time_to_accuracy.sh --dry-run    the same steps in miniature on the CPU (seconds)
#
# env: PYTHON (default .venv/bin/python if present, else python3), ACDC_DIR (default ../shared/data/acdc),
#      NETWORKS (default swin_unet), FAST_EPOCHS (default 50), VAL_EVERY (default 5), OUT (default
#      runs/gpu_tta). A run folder that is already there is resumed, so a call cut by a time limit continues.
source "$(dirname "$0")/_gpu_setup.sh" "$@"  # dry, py, acdc; installs what is missing
out=${OUT:-runs/gpu_tta}
fast_epochs=${FAST_EPOCHS:-50}
every=${VAL_EVERY:-5}
mkdir -p "$out"
[[ -d "$acdc" ]] || { echo "gpu_time_to_accuracy: $acdc not found (set ACDC_DIR)" >&2; exit 2; }

# From scratch: the device machines have no network for the ImageNet weights, and the fast presets are from
# scratch too, so the two recipes start from the same place.
common=(--precision bf16 --set model.pretrained=null --set train.progress=false --set "val.every=$every")
if (( dry )); then
  device=cpu
  ref_epochs=(--set train.max_epochs=3)
  fast_epochs=1
  common+=(--set train.img_size=32 --set data.max_train_slices=8 --set val.max_cases=1 --set val.every=1)
  swin_small=(--set model.args.embed_dim=12 --set "model.args.num_heads=[1,2,3,4]" --set model.args.window_size=2)
  unet_small=(--set model.args.width=0.25)
else
  device=cuda; ref_epochs=(); swin_small=(); unet_small=()
fi

for net in ${NETWORKS:-swin_unet}; do
  small=()
  [[ $net == swin_unet ]] && small=("${swin_small[@]}")
  [[ $net == unet ]] && small=("${unet_small[@]}")
  for recipe in reference fast; do
    preset=${net}_acdc; extra=("${ref_epochs[@]}")
    if [[ $recipe == fast ]]; then preset=${net}_acdc_fast; extra=(--set "train.max_epochs=$fast_epochs"); fi
    run="$out/${net}_$recipe"
    echo "== $net, $preset, $run" >&2
    SECONDS=0
    mkdir -p "$run"
    "$py" -m organseg train "$preset" --data "$acdc" --out "$run" --device "$device" --resume \
      "${common[@]}" "${small[@]}" "${extra[@]}" >> "$run.log" 2>&1 || { tail -n 5 "$run.log" >&2; exit 1; }
    grep -E "^(val |organseg train: [a-z])" "$run.log" | grep -v "^organseg train: /" | tail -n 40
    echo "== $net $recipe: ${SECONDS} s" >&2
  done
  "$py" benchmarks/time_to_accuracy.py epochs "$out/${net}_reference" "$out/${net}_fast"
done
