"""What the benchmark scripts share: running one measurement in a fresh interpreter, the synthetic CT they
measure on, and a description of the machine (a shared machine's load makes every number slower).

The scripts are run as ``python benchmarks/bench_X.py``, so this folder is on ``sys.path`` and they import
``_common`` and ``_reference`` directly. Nothing here times anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organseg.data.classes import BTCV_TO_SYNAPSE, remap_labels
from organseg.data.phantom import make_phantom_case
from organseg.data.preprocess import apply_preprocessing, ct_window_spec
from organseg.device import cpu_info

#: The instruction-set flags that decide bf16 speed on a CPU (AMX, AVX-512 BF16), as /proc/cpuinfo names them.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def run_child(
    script: str | Path, flag: str, spec: dict, *, argv: Sequence[str] = (), failed: str | None = None
) -> dict:
    """Run ``script`` in a fresh interpreter as ``script *argv flag JSON(spec)`` and return the JSON object it
    printed last on stdout.

    A fresh process per measurement keeps one measurement's allocator state, kernel caches and peak resident
    memory out of the next (in one process, later training runs were up to 20% slower than the first). When
    the child fails: with ``failed``, its stderr is shown and the benchmark stops with that message; without,
    ``{"error": <its last line of output>}`` is returned, so that a sweep can report the case and go on.
    """
    cmd = [sys.executable, str(Path(script).resolve()), *argv, flag, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        if failed is not None:
            sys.stderr.write(proc.stderr)
            raise SystemExit(failed)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def phantom_ct(num_slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A synthetic abdominal CT (``organseg.data.phantom``) as the networks see it: the Synapse CT window in
    [0, 1] (float32, (D, H, W)), the label map in the 9 Synapse classes, and the spacing (z, y, x) mm."""
    hu, btcv, spacing = make_phantom_case(seed, size=size, num_slices=num_slices)
    return apply_preprocessing(hu, ct_window_spec()), remap_labels(btcv, BTCV_TO_SYNAPSE), spacing


def cpu_description() -> dict:
    """Model name, logical cores and the bf16-relevant instruction-set flags of this machine's CPU."""
    name, flags = cpu_info()
    return {"model": name, "cores": os.cpu_count(), "flags": [f for f in BF16_FLAGS if f in flags]}
