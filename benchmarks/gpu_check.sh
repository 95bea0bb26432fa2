#!/usr/bin/env bash
# GPU check (under 8 minutes): training images/s of both networks x fp32 / bf16 / bf16+compile, then as many
# epochs of ACDC Swin-Unet training (bf16) as fit, with epoch times and validation DSC.
#
#   benchmarks/gpu_check.sh              on a CUDA machine
#   benchmarks/gpu_check.sh --dry-run    the same steps in miniature on the CPU (tiny sizes, seconds each)
#
# env: PYTHON (default .venv/bin/python if present, else python3), ACDC_DIR (default ../shared/data/acdc),
#      TRAIN_MIN (ACDC training minutes, default 3), OUT (default runs/gpu_check)
source "$(dirname "$0")/_gpu_setup.sh" "$@"  # dry, py, acdc; installs what is missing
out=${OUT:-runs/gpu_check}
mkdir -p "$out"
"$py" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda},",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU", flush=True)
PY

if (( dry )); then
  device=cpu; img=32; batch=2; iters=1; repeats=1
  swin='{"embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 2}'
  acdc_sets=(--set model.pretrained=null --set train.img_size=32 --set model.args.embed_dim=12 --set "model.args.num_heads=[1,2,3,4]"
             --set model.args.window_size=2 --set data.max_train_slices=8 --set train.batch_size=4
             --set train.max_iterations=4 --set val.max_cases=1 --set val.every=1 --set train.progress=false)
  precisions=(fp32 bf16)
  compile=()  # torch.compile builds C++ kernels on a CPU: many minutes on a small shared machine
else
  device=cuda; img=224; batch=24; iters=10; repeats=1; swin='{}'
  # From scratch: the device machine has no network for the ImageNet Swin-T file.
  acdc_sets=(--set model.pretrained=null --set train.time_budget_min="${TRAIN_MIN:-3}" --set val.every=1 --set train.progress=false)
  precisions=(fp32 bf16)
  compile=(--compile)
fi

# 2. Throughput table: reference-style loop (fp32, per-sample SciPy augmentation) vs organseg, both networks.
"$py" benchmarks/bench_train.py --device "$device" --img "$img" --batch "$batch" --warmup 2 --iters "$iters" \
  --repeats "$repeats" --ref-workers "$(( dry ? 0 : 8 ))" --precisions "${precisions[@]}" "${compile[@]}" \
  --swin-args "$swin" --json "$out/bench_train.json"

# 3. ACDC Swin-Unet, bf16, as many epochs as fit: one line per epoch (time, img/s) and per validation (DSC).
if [[ -d "$acdc" ]]; then
  rm -rf "$out/acdc_swin_unet"
  "$py" -m organseg train swin_unet_acdc --data "$acdc" --out "$out/acdc_swin_unet" --device "$device" \
    --precision bf16 "${acdc_sets[@]}" | grep -E "^(epoch |val |organseg train: (completed|time_budget))"
else
  echo "gpu_check: $acdc not found (set ACDC_DIR); skipping the ACDC training" >&2
fi
