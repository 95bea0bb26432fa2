"""The training loop on a tiny network: run folder, records, checkpoints, resume (also after SIGKILL),
time budget, NaN stop, validation split, precision paths and the two real networks."""

from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import organseg.training.data as training_data
import organseg.training.loop as loop
from helpers import SIZE, TINY_NET, state_dict_of, tiny_config, tiny_dataset
from organseg.checkpoint import model_from_checkpoint, read_checkpoint
from organseg.data.augment import resize_slice
from organseg.errors import CheckpointError, ConfigError, DataError, NoRoomError
from organseg.run import TRAIN_FILES
from organseg.training import TrainingDiverged, poly_lr, read_metrics, train
from organseg.training.data import TrainBatches
from organseg.training.distributed import DistEnv
from organseg.training.schedule import make_sgd
from small_disk import small_disk

TESTS = Path(__file__).resolve().parent
# 12 slices at batch 4: 3 iterations per epoch, 3 epochs, 9 iterations.
N_SLICES, IPE, EPOCHS = 12, 3, 3


def test_tiny_pieces_work():
    ds = tiny_dataset(4)
    assert ds.num_classes == 3 and len(ds.train_slices()) == 4 and ds.case_ids("val") == ["val_a", "val_b"]
    from organseg.models import create_model

    out = create_model(TINY_NET, num_classes=3)(torch.zeros(2, 1, SIZE, SIZE))
    assert out.shape == (2, 3, SIZE, SIZE)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "full"
    summary = train(tiny_config(), tiny_dataset(N_SLICES), out)
    return out, summary


def test_run_folder_records_and_checkpoints(uninterrupted):
    out, summary = uninterrupted
    assert summary["stopped"] == "completed" and summary["iterations"] == IPE * EPOCHS

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == {"name": TINY_NET, "args": {}, "pretrained": None}
    assert (
        cfg["train"]["batch_size"] == 4
        and cfg["train"]["seed"] == 1234
        and cfg["train"]["precision"] == "fp32"
    )

    env = json.loads((out / "env.json").read_text())
    assert {"git", "packages", "device", "precision", "torch_threads", "command"} <= set(env)
    assert set(env["git"]) == {"commit", "dirty"} and env["packages"]["torch"] == torch.__version__
    assert env["device"] == "cpu" and env["torch_threads"] == 1

    train_recs = read_metrics(out, "train")
    assert [r["iter"] for r in train_recs] == list(range(1, IPE * EPOCHS + 1))
    assert [r["epoch"] for r in train_recs] == [i // IPE for i in range(IPE * EPOCHS)]
    assert set(train_recs[0]) == {"kind", "iter", "epoch", "loss", "ce", "dice", "lr", "time"}
    for r in train_recs:
        assert r["loss"] == pytest.approx(0.4 * r["ce"] + 0.6 * r["dice"], rel=1e-6)
    # The LR each step used: base for steps 1 and 2, then the poly value set after the previous step.
    total = IPE * EPOCHS
    expected = [0.05] + [poly_lr(0.05, i, total, 0.9) for i in range(total - 1)]
    assert [r["lr"] for r in train_recs] == pytest.approx(expected, rel=1e-12)

    val_recs = read_metrics(out, "val")
    assert [(r["epoch"], r["iter"]) for r in val_recs] == [(e, IPE * (e + 1)) for e in range(EPOCHS)]
    assert set(val_recs[0]["per_class"]) == {"box", "bar"}
    assert val_recs[0]["cases"] == 2  # the two validation volumes, not the test one

    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    # save_interval 1 and 3 epochs: epoch_2 only (past half-way), as the reference cadence.
    assert names == ["best.pt", "epoch_2.pt", "last.pt"]
    last = read_checkpoint(out / "checkpoints" / "last.pt")  # weights_only=True inside
    assert last["iteration"] == total and last["epoch"] == EPOCHS and "optimizer" in last
    assert (
        last["class_names"] == ["background", "box", "bar"]
        and last["config"]["train"]["max_epochs"] == EPOCHS
    )
    best = read_checkpoint(out / "checkpoints" / "best.pt")
    assert best["val"]["mean_dice"] == max(r["mean_dice"] for r in val_recs)
    assert "optimizer" not in best
    model, _ = model_from_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())
    assert json.loads((out / "summary.json").read_text())["iterations"] == total


def test_a_run_folder_holds_only_what_train_files_lists(uninterrupted):
    # TRAIN_FILES is what train owns in its folder (a dataset kept beside the run is safe) and removes again
    # when a fresh run fails before its first checkpoint: anything else train wrote would escape both.
    out, _ = uninterrupted
    written = {p.name for p in out.iterdir()}
    assert written <= set(TRAIN_FILES) and {"config.yaml", "checkpoints", "metrics.jsonl"} <= written


def test_training_learns_the_tiny_task(uninterrupted):
    recs = read_metrics(uninterrupted[0], "train")
    assert np.mean([r["loss"] for r in recs[-3:]]) < np.mean([r["loss"] for r in recs[:3]])


def test_resume_after_sigkill_mid_epoch_is_bit_identical(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    kill_at = IPE + 2  # the second batch of epoch 2, after epoch 1's last.pt
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from helpers import tiny_config, tiny_dataset
        import organseg.training.loop as loop

        class KillingLoss(loop.DiceCELoss):
            calls = 0
            def components(self, logits, labels):
                KillingLoss.calls += 1
                if KillingLoss.calls == {kill_at}:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().components(logits, labels)

        loop.DiceCELoss = KillingLoss
        loop.train(tiny_config(), tiny_dataset({N_SLICES}), {str(out)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == IPE
    assert max(r["iter"] for r in read_metrics(out, "train")) == kill_at - 1  # records past the checkpoint

    summary = train(tiny_config(), tiny_dataset(N_SLICES), out, resume=True)
    assert summary["iterations"] == IPE * EPOCHS
    ref, got = (
        state_dict_of(uninterrupted[0] / "checkpoints" / "last.pt"),
        state_dict_of(out / "checkpoints" / "last.pt"),
    )
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # The half-done epoch's records were dropped and redone: the log reads like the uninterrupted one.
    assert [r["loss"] for r in read_metrics(out, "train")] == [
        r["loss"] for r in read_metrics(uninterrupted[0], "train")
    ]


def test_time_budget_stops_resumably_mid_epoch(uninterrupted, tmp_path):
    out = tmp_path / "budget"
    summary = train(tiny_config(train={"time_budget_min": 1e-9}), tiny_dataset(N_SLICES), out)
    assert summary["stopped"] == "time_budget" and summary["iterations"] == 1
    assert summary["last_val"] is not None  # a stopped run is still validated
    assert read_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 1
    # The budget is a runtime key: raising it (here: removing it) continues the same run.
    summary = train(tiny_config(), tiny_dataset(N_SLICES), out, resume=True)
    assert summary["stopped"] == "completed" and summary["iterations"] == IPE * EPOCHS
    ref, got = (
        state_dict_of(uninterrupted[0] / "checkpoints" / "last.pt"),
        state_dict_of(out / "checkpoints" / "last.pt"),
    )
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_time_budget_is_asked_after_every_iteration_not_only_logged_ones(tmp_path):
    # log_every 5: no record before the end of the first epoch (iteration 3), yet the run stops after one.
    cfg = tiny_config(train={"time_budget_min": 1e-9, "log_every": 5})
    summary = train(cfg, tiny_dataset(N_SLICES), tmp_path / "budget")
    assert summary["stopped"] == "time_budget" and summary["iterations"] == 1
    assert read_checkpoint(tmp_path / "budget" / "checkpoints" / "last.pt")["iteration"] == 1


def test_existing_run_needs_resume_and_the_same_recipe(uninterrupted, tmp_path):
    out = uninterrupted[0]
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(), tiny_dataset(N_SLICES), out)
    with pytest.raises(ConfigError, match=r"differs from the run being resumed: train.base_lr: 0.05 -> 0.01"):
        train(tiny_config(train={"base_lr": 0.01}), tiny_dataset(N_SLICES), out, resume=True)
    # Resuming a finished run does nothing and says so.
    assert train(tiny_config(), tiny_dataset(N_SLICES), out, resume=True)["iterations"] == IPE * EPOCHS
    # --resume without a checkpoint starts fresh (same command for first start and restarts).
    fresh = train(tiny_config(train={"max_epochs": 1}), tiny_dataset(N_SLICES), tmp_path / "new", resume=True)
    assert fresh["iterations"] == IPE


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    bad_at = IPE + 2

    class NaNLoss(loop.DiceCELoss):
        calls = 0

        def components(self, logits, labels):
            NaNLoss.calls += 1
            total, ce, dice = super().components(logits, labels)
            return (total * math.nan if NaNLoss.calls >= bad_at else total), ce, dice

    monkeypatch.setattr(loop, "DiceCELoss", NaNLoss)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=rf"loss is nan at iteration {bad_at} \(epoch 2\).*last\.pt"):
        train(tiny_config(), tiny_dataset(N_SLICES), out)
    last = read_checkpoint(out / "checkpoints" / "last.pt")
    assert last["iteration"] == IPE
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_the_run_resumes(tmp_path):
    """The disk fills while last.pt of epoch 2 is written: one line naming it, the space it needs and what
    is free; the last.pt of epoch 1 stays whole, no temporary is left, and --resume after freeing space goes
    on."""
    cfg = tiny_config(val={"every": 0}, checkpoint={"save_interval": 100})
    ref = tmp_path / "ref"
    train(cfg, tiny_dataset(N_SLICES), ref)
    size = (ref / "checkpoints" / "last.pt").stat().st_size
    small = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file() and p.parent.name != "checkpoints")
    out = tmp_path / "run"
    with small_disk(tmp_path, small + size + size // 2), pytest.raises(NoRoomError) as err:
        train(cfg, tiny_dataset(N_SLICES), out)  # room for one last.pt, not for its next version beside it
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"{out / 'checkpoints' / 'last.pt'}: disk full (needs ~"
    )
    assert " free on " in message and message.endswith("free some space and resume with --resume")
    assert read_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == IPE
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]
    summary = train(cfg, tiny_dataset(N_SLICES), out, resume=True)
    assert summary["iterations"] == IPE * EPOCHS
    assert read_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == IPE * EPOCHS


class _Recorder:
    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        pass


def test_tensorboard_mirrors_the_records_when_installed(tmp_path, monkeypatch):
    import organseg.training.runlog as runlog

    rec = _Recorder()
    monkeypatch.setattr(runlog, "_summary_writer", lambda log_dir: rec)
    train(tiny_config(train={"max_epochs": 1}), tiny_dataset(N_SLICES), tmp_path / "tb")
    tags = {t for t, _, _ in rec.scalars}
    assert {"train/loss", "train/ce", "train/dice", "train/lr", "val/mean_dice", "val_dice/box"} <= tags
    losses = [v for t, v, _ in rec.scalars if t == "train/loss"]
    assert losses == [r["loss"] for r in read_metrics(tmp_path / "tb", "train")]


class _Guarded(type(tiny_dataset(1))):
    """Fails the test if training touches the test split."""

    def case_ids(self, split):
        # The run's dataset record lists the test cases' names (organseg.data.identity), never their volumes.
        caller = sys._getframe(1).f_globals.get("__name__")
        assert split != "test" or caller == "organseg.data.identity", "train read the test split"
        return super().case_ids(split)

    def volume(self, case_id):
        assert not case_id.startswith("test"), "train loaded a test volume"
        return super().volume(case_id)


def test_validation_never_reads_test_volumes(tmp_path):
    ds = tiny_dataset(N_SLICES)
    ds.__class__ = _Guarded
    summary = train(tiny_config(train={"max_epochs": 1}), ds, tmp_path / "guard")
    assert summary["last_val"]["cases"] == 2


def _epoch_batches(ds, **train_cfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = loop.resolve_config(tiny_config(train=train_cfg))
    return list(TrainBatches(ds, cfg, DistEnv()).epoch(0))


def test_reference_augmentation_does_not_depend_on_workers():
    ds = tiny_dataset(8, sizes=((SIZE, SIZE), (40, 36)))  # mixed sizes, as ACDC
    a = _epoch_batches(ds, augment="reference", num_workers=0)
    b = _epoch_batches(ds, augment="reference", num_workers=2)
    assert len(a) == 2 and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    assert a[0][0].shape == (4, 1, SIZE, SIZE) and a[0][1].dtype == torch.int64


def test_unaugmented_batches_are_the_reference_resize():
    ds = tiny_dataset(8, sizes=((SIZE, SIZE), (40, 36)))
    cfg = loop.resolve_config(tiny_config(train={"augment": "none"}))
    batches = TrainBatches(ds, cfg, DistEnv())
    batches.sampler.set_epoch(0)
    order = list(batches.sampler)
    images = torch.cat([b[0] for b in batches.epoch(0)])
    labels = torch.cat([b[1] for b in batches.epoch(0)])
    for pos, i in enumerate(order):
        img, lab = resize_slice(*ds.train_slices()[i], (SIZE, SIZE))
        torch.testing.assert_close(images[pos, 0], torch.from_numpy(img), atol=1e-5, rtol=0)
        assert torch.equal(labels[pos], torch.from_numpy(lab))


def test_batched_augmentation_differs_per_epoch_and_is_repeatable():
    ds = tiny_dataset(8)
    cfg = loop.resolve_config(tiny_config())
    batches = TrainBatches(ds, cfg, DistEnv())
    e0, e0_again, e1 = list(batches.epoch(0)), list(batches.epoch(0)), list(batches.epoch(1))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(e0, e0_again, strict=True))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(e0, e1, strict=True))
    # Resuming at batch 1 gives exactly batch 1 of the full epoch.
    assert torch.equal(next(iter(batches.epoch(0, start=1)))[0], e0[1][0])


def test_bf16_channels_last_path_tracks_the_fp32_path(tmp_path):
    cfg = {"max_epochs": 1, "augment": "none"}
    plain = train(tiny_config(train=cfg), tiny_dataset(N_SLICES), tmp_path / "fp32")
    fast = train(
        tiny_config(train={**cfg, "precision": "bf16", "channels_last": True}),
        tiny_dataset(N_SLICES),
        tmp_path / "bf16",
    )
    assert fast["iterations"] == plain["iterations"]
    a, b = read_metrics(tmp_path / "fp32", "train"), read_metrics(tmp_path / "bf16", "train")
    assert a[0]["loss"] != b[0]["loss"]  # bf16 really ran
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=2e-2)
    assert json.loads((tmp_path / "bf16" / "env.json").read_text())["channels_last"] is True


def test_fp16_on_cpu_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train(tiny_config(train={"precision": "fp16"}), tiny_dataset(4), tmp_path / "fp16")


def test_global_batch_must_split_over_processes(tmp_path):
    cfg = loop.resolve_config(tiny_config(train={"batch_size": 5}))
    with pytest.raises(ConfigError, match="must divide evenly over 2 processes"):
        TrainBatches(tiny_dataset(4), cfg, DistEnv(rank=0, world_size=2))


@pytest.mark.parametrize(
    ("name", "args"),
    [("unet", {}), ("swin_unet", {"embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 2})],
)
def test_the_real_networks_train_and_reload(tmp_path, name, args):
    cfg = tiny_config(
        model={"name": name, "args": args}, train={"max_epochs": 1, "batch_size": 4}, val={"every": 0}
    )
    summary = train(cfg, tiny_dataset(8), tmp_path / name)
    assert summary["iterations"] == 2 and math.isfinite(read_metrics(tmp_path / name, "train")[-1]["loss"])
    model, ckpt = model_from_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
    if name == "swin_unet":
        assert ckpt["model_args"]["img_size"] == SIZE  # filled from train.img_size
    assert model(torch.zeros(1, 1, SIZE, SIZE)).shape == (1, 3, SIZE, SIZE)


def test_max_iterations_sets_the_horizon_mid_epoch(tmp_path):
    out = tmp_path / "iters"
    summary = train(tiny_config(train={"max_iterations": 4}), tiny_dataset(N_SLICES), out)
    assert summary["iterations"] == 4 and summary["max_iterations"] == 4
    recs = read_metrics(out, "train")
    assert [r["lr"] for r in recs] == pytest.approx([0.05] + [poly_lr(0.05, i, 4, 0.9) for i in range(3)])
    assert [r["iter"] for r in read_metrics(out, "val")] == [3, 4]  # end of epoch 1, and the final one
    assert read_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 4


def test_pretrained_weights_are_loaded_at_a_fresh_start(tmp_path):
    from organseg.models import create_model

    args = dict(img_size=32, patch_size=2, embed_dim=12, num_heads=(1, 2, 3, 4), window_size=2, num_classes=3)
    torch.manual_seed(99)
    source = create_model("swin_unet", **args)
    weights = tmp_path / "official_style.pth"
    torch.save(source.state_dict(), weights)  # the official trainer's checkpoint format
    cfg = tiny_config(
        model={
            "name": "swin_unet",
            "args": {k: v for k, v in args.items() if k != "num_classes"},
            "pretrained": str(weights),
        },
        train={"max_iterations": 1, "base_lr": 1e-12, "augment": "none"},
        val={"every": 0},
    )
    summary = train(cfg, tiny_dataset(4), tmp_path / "run")
    trained = state_dict_of(tmp_path / "run" / "checkpoints" / "last.pt")
    for key, value in source.state_dict().items():
        assert torch.allclose(trained[key], value, atol=1e-6), key
    assert summary["iterations"] == 1


def test_fused_sgd_is_the_reference_sgd_update():
    """make_sgd (fused where available) gives the loop implementation's weights and momentum, step by step."""
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    fast = copy.deepcopy(ref)
    opts = [
        torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
        make_sgd(fast.parameters(), 0.05, 0.9, 1e-4),
    ]
    assert opts[1].defaults.get("fused") is True  # this torch (2.13) has the CPU kernel: the test covers it
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for step in range(5):
        for net, opt in zip((ref, fast), opts, strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            for g in opt.param_groups:
                g["lr"] = poly_lr(0.05, step + 1, 10)
    for a, b in zip(ref.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)
    moms = [[s["momentum_buffer"] for s in o.state.values()] for o in opts]
    for a, b in zip(*moms, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)


# ------------------------------------------------------------------ bad values and resumes (issue 10)


def test_epoch_log_counts_the_images_used_not_the_batch_size(tmp_path, capsys):
    # 3 slices at batch 8: one iteration of 3 images per epoch (the batch setting said 8).
    summary = train(
        tiny_config(train={"batch_size": 8, "max_epochs": 2}, val={"every": 0}),
        tiny_dataset(3),
        tmp_path / "big_batch",
    )
    out = capsys.readouterr().out
    assert "epoch 1/2: 3 images in " in out and "epoch 2/2: 3 images in " in out
    assert summary["iterations"] == 2


def test_images_seen_counts_short_last_batches_over_processes():
    cfg = loop.resolve_config(tiny_config(train={"batch_size": 4}))
    one = TrainBatches(tiny_dataset(5), cfg, DistEnv())  # batches of 4 and 1
    assert len(one) == 2 and [one.images_seen(i) for i in range(5)] == [0, 4, 5, 9, 10]
    # Two processes, 2 slices each per step; the sampler pads 5 slices to 3 per process (6 in all).
    two = TrainBatches(tiny_dataset(5), cfg, DistEnv(rank=0, world_size=2))
    assert len(two) == 2 and [two.images_seen(i) for i in range(4)] == [0, 4, 6, 10]


def test_resume_on_a_dataset_of_other_classes_says_so(uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[0], out)
    other = tiny_dataset(N_SLICES)
    other.class_names = ("background", "RV", "Myo", "LV")
    with pytest.raises(DataError) as err:
        train(tiny_config(), other, out, resume=True)
    msg = str(err.value)
    assert "the run was trained on 3 classes ['background', 'box', 'bar']" in msg
    assert "has 4 ['background', 'RV', 'Myo', 'LV']" in msg and "\n" not in msg


def test_resume_refuses_a_damaged_or_inference_only_last_checkpoint(uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[0], out)
    last = out / "checkpoints" / "last.pt"
    state = read_checkpoint(last)
    key = next(iter(state["model"]))
    state["model"][key].view(-1)[0] = float("nan")
    torch.save(state, last)
    with pytest.raises(CheckpointError, match=rf"last.pt: weights with NaN or infinite values: {key}"):
        train(tiny_config(), tiny_dataset(N_SLICES), out, resume=True)
    shutil.copy(out / "checkpoints" / "best.pt", last)  # weights only, no optimizer state
    with pytest.raises(CheckpointError, match="no training state to resume"):
        train(tiny_config(), tiny_dataset(N_SLICES), out, resume=True)


def test_unet_size_is_checked_before_the_run_folder_exists(tmp_path):
    cfg = tiny_config(model={"name": "unet", "args": {"width": 0.125}}, train={"img_size": 40})
    with pytest.raises(ConfigError) as err:
        train(cfg, tiny_dataset(4), tmp_path / "run")
    assert str(err.value) == (
        "train.img_size=40: unet takes inputs whose side is a multiple of 16; nearest sizes that fit: "
        "32 or 48"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("augment", ["batched", "none"])
@pytest.mark.parametrize("sizes", [((SIZE, SIZE),), ((SIZE, SIZE), (40, 36))])
def test_batches_read_from_disk_are_the_batches_held_in_memory(augment, sizes):
    """data.in_memory: false reads each batch's slices when it is needed (a dataset larger than memory);
    the batches, a resumed epoch's too, are the ones the slices held in memory give."""
    ds = tiny_dataset(10, sizes=sizes)
    held = TrainBatches(ds, loop.resolve_config(tiny_config(train={"augment": augment})), DistEnv())
    cfg = loop.resolve_config(tiny_config(train={"augment": augment}, data={"in_memory": False}))
    read = TrainBatches(ds, cfg, DistEnv())
    assert held.in_memory and not read.in_memory and not hasattr(read, "images")
    for epoch, start in ((0, 0), (1, 0), (1, 2)):
        a, b = list(held.epoch(epoch, start)), list(read.epoch(epoch, start))
        assert len(a) == len(b) == 3 - start
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_in_memory_auto_holds_only_what_fits(monkeypatch):
    ds = tiny_dataset(10)
    need = training_data.slices_bytes(ds.train_slices())
    assert need == 10 * SIZE * SIZE * training_data.BYTES_PER_PIXEL
    cpu = torch.device("cpu")
    monkeypatch.setattr(training_data, "available_memory", lambda: 2 * need)
    assert training_data.hold_in_memory("auto", ds.train_slices(), cpu)
    monkeypatch.setattr(training_data, "available_memory", lambda: 2 * need - 1)
    assert not training_data.hold_in_memory("auto", ds.train_slices(), cpu)
    assert training_data.hold_in_memory(True, ds.train_slices(), cpu)
    monkeypatch.setattr(training_data, "available_memory", lambda: None)
    assert training_data.hold_in_memory("auto", ds.train_slices(), cpu)
