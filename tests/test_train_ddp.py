"""torchrun: 2 processes (gloo, CPU) against one process with the same global batch.

With per-sample augmentation seeds, a network without batch statistics (GroupNorm, no dropout) and the Dice
sums all-reduced over processes, the 2-process run computes the same function as the single process; only
the order of floating-point sums differs. Stated tolerance: losses to 1e-5 relative, weights to 1e-5 absolute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import state_dict_of, tiny_config, tiny_dataset
from organseg.checkpoint import model_from_checkpoint
from organseg.training import read_metrics, train

TESTS = Path(__file__).resolve().parent


def _config() -> dict:
    # reference augmentation: seeded per sample, so both runs augment every slice identically.
    return tiny_config(
        model={"args": {"dropout": 0.0}},
        train={"max_epochs": 2, "batch_size": 4, "augment": "reference"},
        val={"every": 1},
    )


def _torchrun(script: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*cmd, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = tmp_path / "single"
    train(_config(), tiny_dataset(12), single)

    ddp = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(TESTS)!r})
            from helpers import tiny_dataset
            from organseg.training import train
            summary = train({_config()!r}, tiny_dataset(12), {str(ddp)!r})
            print("RANK_SUMMARY", summary["iterations"], summary["last_val"]["mean_dice"])
            """
        )
    )
    proc = _torchrun(script)
    assert proc.stdout.count("RANK_SUMMARY 6 ") == 2  # both ranks finish, same iteration count

    a, b = read_metrics(single, "train"), read_metrics(ddp, "train")
    assert [r["iter"] for r in b] == [r["iter"] for r in a] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "ce", "dice"):
            assert y[key] == pytest.approx(x[key], rel=1e-5), (x["iter"], key)
        assert y["lr"] == x["lr"]
    va, vb = read_metrics(single, "val"), read_metrics(ddp, "val")
    assert [r["cases"] for r in vb] == [2, 2]  # the cases were shared out and gathered back
    assert vb[-1]["mean_dice"] == pytest.approx(va[-1]["mean_dice"], abs=1e-6)

    # Rank 0 alone wrote the checkpoint; it loads in a single process and matches the single-process weights.
    model, ckpt = model_from_checkpoint(ddp / "checkpoints" / "last.pt")
    assert ckpt["iteration"] == 6 and not any(k.startswith("module.") for k in ckpt["model"])
    ref = state_dict_of(single / "checkpoints" / "last.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=1e-5, rtol=0)
    env_json = (ddp / "env.json").read_text()
    assert '"world_size": 2' in env_json


def test_one_rank_out_of_time_stops_every_rank_at_the_same_iteration(tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_budget.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            sys.path.insert(0, {str(TESTS)!r})
            from helpers import tiny_config, tiny_dataset
            from organseg.training import train
            from organseg.training.budget import TimeBudget
            if os.environ["RANK"] == "0":  # rank 0's clock never runs out; rank 1's does after one iteration
                TimeBudget.exhausted = lambda self, train_seconds: False
            summary = train(tiny_config(train={{"time_budget_min": 1e-9}}), tiny_dataset(12), {str(out)!r})
            print("RANK_SUMMARY", summary["iterations"], summary["stopped"])
            """
        )
    )
    proc = _torchrun(script)  # a rank left waiting for the other would time out here
    assert proc.stdout.count("RANK_SUMMARY 1 time_budget") == 2
