"""``organseg train`` on the command line: a real ACDC smoke run and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch

from organseg.checkpoint import read_checkpoint
from organseg.cli.main import main

# A Swin-Unet small enough for seconds on a CPU, 8 real ACDC slices, 2 validation volumes.
TINY_ACDC = [
    "--precision",
    "bf16",
    "--set",
    "train.img_size=32",
    "--set",
    "model.args.embed_dim=12",
    "--set",
    "model.args.num_heads=[1,2,3,4]",
    "--set",
    "model.args.window_size=2",
    "--set",
    "data.max_train_slices=8",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.max_epochs=1",
    "--set",
    "val.max_cases=2",
    "--set",
    "train.progress=false",
    "--set",
    "model.pretrained=null",
]


def test_train_on_real_acdc_from_the_command_line(acdc_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "swin_unet_acdc", "--data", str(acdc_dir), "--out", str(out), *TINY_ACDC])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "model:\n  name: swin_unet" in printed  # the resolved configuration is printed at start
    assert "organseg train: completed after 2 iterations" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_val"]["cases"] == 2 and set(summary["last_val"]["per_class"]) == {"RV", "Myo", "LV"}
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["class_names"] == ["background", "RV", "Myo", "LV"]
    assert ckpt["preprocessing"] == {"kind": "minmax"} and ckpt["config"]["train"]["precision"] == "bf16"
    assert ckpt["config"]["data"]["root"] == str(acdc_dir)
    # Same command with --resume: the run is complete, nothing to do, exit 0.
    assert (
        main(["train", "swin_unet_acdc", "--data", str(acdc_dir), "--out", str(out), "--resume", *TINY_ACDC])
        == 0
    )
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown preset 'nope'"),
        (["unet_acdc", "--set", "train.lr=1"], "unknown configuration key 'train.lr'"),
        (["unet_acdc", "--set", "train.batch_size=-2"], "train.batch_size: expected an integer >= 1, got -2"),
        (["unet_acdc", "--set", "train.batch_size=true"], "expected an integer >= 1, got true (bool)"),
        (["unet_acdc", "--set", "train.threads=100000"], "train.threads: expected an integer in [1, "),
        (["unet_acdc", "--device", "gpu"], "train.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        # The U-Net's four poolings: checked before the data are read or the run folder exists.
        (
            ["unet_acdc", "--set", "train.img_size=100", "--data", "anywhere"],
            "train.img_size=100: unet takes inputs whose side is a multiple of 16; "
            "nearest sizes that fit: 96 or 112",
        ),
        (
            ["swin_unet_acdc", "--set", "train.img_size=100", "--data", "anywhere"],
            "train.img_size=100: swin_unet does not take 100x100 inputs",
        ),
        (
            ["swin_unet_acdc", "--set", "model.args.img_size=448", "--data", "anywhere"],
            "model.args.img_size=448 but train.img_size=224",
        ),
        (["unet_acdc", "--set", "model.name=vnet", "--data", "anywhere"], "model.name: unknown model 'vnet'"),
        (["unet_acdc"], "no training data"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    rc = main(["train", *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, capsys):
    assert main(["train", "unet_acdc", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("organseg train: error: train.device 'cuda': ") and len(err.splitlines()) == 1
    assert ("this torch build has no CUDA" in err) == (torch.version.cuda is None)


def test_missing_data_folder_names_the_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", "unet_acdc", "--data", str(missing), "--out", str(tmp_path / "run")]) == 2
    assert str(missing) in capsys.readouterr().err
