"""Allocator tuning: applied on glibc, off on request, and it removes the page faults of reallocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from organseg.runtime import tune_malloc

_GLIBC = sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

# A 64 MB tensor allocated and freed 20 times, as activations are in every training iteration.
_CHILD = """
import json, resource, sys, torch
from organseg.runtime import tune_malloc
applied = tune_malloc()
for _ in range(3):  # the heap grows to its working size: not counted
    torch.ones(16 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 << 20).sum()
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(env_value: str) -> dict:
    env = {**os.environ, "ORGANSEG_MALLOC_TUNING": env_value}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _GLIBC, reason="malloc tuning applies to glibc on Linux only")
def test_tuned_malloc_reuses_memory_instead_of_faulting_it_in_again():
    plain, tuned = _faults("0"), _faults("1")
    assert not plain["applied"] and tuned["applied"]
    pages = 20 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert plain["faults"] > 0.9 * pages  # every reallocation faults its pages in again
    # Measured 5-20 %: now and then glibc places the block past a small allocation and faults it in anew.
    assert tuned["faults"] < 0.5 * pages


def test_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("ORGANSEG_MALLOC_TUNING", "0")
    assert tune_malloc() is False
