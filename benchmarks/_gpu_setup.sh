# Sourced by the GPU scripts (gpu_check.sh, gpu_time_to_accuracy.sh): the repository root as the working
# folder, `dry` (1 with --dry-run), `py`, `acdc`, and organseg with its runtime modules importable.
# env: PYTHON (default .venv/bin/python if present, else python3), ACDC_DIR (default ../shared/data/acdc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
py=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
acdc=${ACDC_DIR:-../shared/data/acdc}

# The device machines have no internet: torch (with CUDA) and the scientific stack must already be there;
# organseg itself installs from this checkout without touching the network.
if ! "$py" -c "import organseg.training" 2>/dev/null; then
  "$py" -m pip install --no-deps --no-build-isolation -e . >/dev/null
fi
missing=$("$py" - <<'PY'
import importlib.util as u
print(" ".join(m for m in ("torch", "numpy", "scipy", "h5py", "yaml", "tqdm", "SimpleITK") if u.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  "$py" -m pip install -q $missing || { echo "$(basename "$0"): cannot install: $missing" >&2; exit 2; }
fi
