"""Values entering through the command line (issue 10): every numeric option is checked by the same rules as
the configuration, ``--device`` follows one rule in every verb, and every verb that loads a checkpoint
validates it first. Each bad value ends in one line and exit code 2, with nothing written."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import organseg.device as device_mod
from organseg import checkpoint as ck
from organseg.cli.main import build_parser, main
from organseg.device import resolve_device
from organseg.errors import ConfigError
from organseg.values import max_threads

PREPARE = "prepare synapse --raw R --out O"


def _argparse_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # -1 silently dropped the last case; 0 said the split had no cases.
        ("test RUN --max-cases -1", "organseg test: error: argument --max-cases: expected an integer"),
        ("test RUN --max-cases 0", "argument --max-cases: expected an integer >= 1, got '0'"),
        ("test RUN --max-cases 1.5", "argument --max-cases: expected an integer >= 1, got '1.5'"),
        ("test RUN --batch-size 0", "argument --batch-size: expected an integer >= 1, got '0'"),
        ("predict C I --out o.nii.gz --batch-size -3", "--batch-size: expected an integer >= 1, got '-3'"),
        ("compare --out O --jobs 0", "argument --jobs: expected an integer in [1, "),
        ("compare --out O --jobs 100000", f"--jobs: expected an integer in [1, {max_threads()}] (4 x"),
        ("phantom --out O --cases 0", "argument --cases: expected an integer >= 1, got '0'"),
        ("phantom --out O --cases 2 --size 20000", "argument --size: expected an integer in [32, 2048]"),
        ("phantom --out O --cases 2 --size 16", "argument --size: expected an integer in [32, 2048]"),
        ("phantom --out O --cases 2 --slices 2", "argument --slices: expected an integer in [4, 2000]"),
        ("phantom --out O --cases 2 --seed -1", "argument --seed: expected an integer in [0, "),
        (f"{PREPARE} --test-fraction 1.5", "--test-fraction: expected a number in [0, 1), got '1.5'"),
        (f"{PREPARE} --test-fraction nan", "--test-fraction: expected a number in [0, 1), got 'nan'"),
        (f"{PREPARE} --split-seed x", "argument --split-seed: expected an integer in [0, "),
        (f"{PREPARE} --window -125 inf", "argument --window: expected a number, got 'inf'"),
        ("info --img-size -16", "argument --img-size: expected an integer in [16, 4096], got '-16'"),
    ],
)
def test_numeric_options_are_checked_with_the_key_named(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in _argparse_error(capsys, argv.split())
    assert list(tmp_path.iterdir()) == []


def test_seeds_of_a_study_are_checked_before_any_data_are_read(tmp_path, capsys):
    argv = [
        "compare",
        "--out",
        str(tmp_path / "o"),
        "--data",
        str(tmp_path / "nowhere"),
        "--models",
        "unet",
        "--seeds",
        "1,-2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("organseg compare: error: --seeds: expected an integer in [0, ")
    assert "got '-2'" in err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ devices


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "tpu", "", "CPU"])
def test_malformed_device_names_the_choices(bad):
    with pytest.raises(ConfigError, match=rf"--device '{bad}': expected auto, cpu, cuda or cuda:N"):
        resolve_device(bad)


def test_cpu_and_auto(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(" cpu ")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)


def test_cuda_on_a_cpu_build_says_so(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda", source="train.device")
    assert str(err.value) == (
        f"train.device 'cuda': cuda requested but this torch build has no CUDA (torch {torch.__version__}); "
        "use cpu or auto"
    )


def test_cuda_build_without_a_gpu_and_too_few_gpus(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="has CUDA 12.4 but sees no GPU"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)  # torchrun: the local rank's GPU
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="--device 'cuda:2': there is no GPU 2; this machine shows 2 GPU"):
        resolve_device("cuda:2")


def test_one_rule_in_every_verb():
    import organseg.evaluation.tester as testing
    import organseg.prediction.predict as predict
    import organseg.study.demo as demo
    import organseg.study.runner as compare
    import organseg.training.distributed as distributed

    for module in (compare, predict, testing, distributed):
        assert module.resolve_device is device_mod.resolve_device, module.__name__
    assert "organseg.device import resolve_device" in Path(demo.__file__).read_text()


def _tiny_checkpoint(path: Path, **fields) -> Path:
    from organseg.models import create_model

    net = create_model("unet", num_classes=3, width=0.125)
    ckpt = ck.make_checkpoint(
        net,
        model_name="unet",
        model_args={"num_classes": 3, "width": 0.125},
        class_names=["background", "a", "b"],
        preprocessing={"kind": "minmax"},
        config={"train": {"img_size": 32}},
    )
    ckpt.update(fields)
    torch.save(ckpt, path)
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("verb", ["test", "predict"])
def test_cuda_on_a_machine_without_it_is_one_line_in_test_and_predict(tmp_path, capsys, verb):
    ckpt = _tiny_checkpoint(tmp_path / "c.pt")
    out = tmp_path / "out"
    if verb == "test":
        argv = [verb, str(ckpt), "--data", str(tmp_path / "nowhere"), "--out", str(out), "--device", "cuda"]
    else:
        argv = [verb, str(ckpt), str(tmp_path / "s.nii"), "--out", str(out / "s.nii.gz"), "--device", "cuda"]
    assert main(argv) == 2  # an AssertionError traceback before
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"organseg {verb}: error: --device 'cuda': ") and len(err.splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------------------- checkpoints in every verb


@pytest.mark.parametrize("verb", ["test", "predict"])
def test_nan_or_mislabelled_checkpoints_stop_test_and_predict(tmp_path, capsys, verb):
    nan = _tiny_checkpoint(tmp_path / "nan.pt")
    state = torch.load(nan, weights_only=True)
    state["model"]["decoder.final.weight"].fill_(float("nan"))
    torch.save(state, nan)
    heads = _tiny_checkpoint(tmp_path / "heads.pt", class_names=["background", "a", "b", "c", "d"])
    for ckpt, message in (
        (nan, "weights with NaN or infinite values: decoder.final.weight"),
        (
            heads,
            "5 class names ['background', 'a', 'b', 'c', 'd'] but the network's output layer has 3 channels",
        ),
    ):
        out = tmp_path / "out"
        if verb == "test":
            argv = ["test", str(ckpt), "--data", str(tmp_path / "nowhere"), "--out", str(out)]
        else:
            argv = ["predict", str(ckpt), str(tmp_path / "scan.nii.gz"), "--out", str(out / "s.nii.gz")]
        assert main(argv) == 2  # predicted garbage with exit 0 before
        err = capsys.readouterr().err.strip()
        assert err == f"organseg {verb}: error: {ckpt}: {message}"
        assert not out.exists()


def test_verbs_are_listed_in_the_order_a_user_walks(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    verbs = ["demo", "info", "phantom", "prepare", "pretrain", "train", "test", "predict", "export", "report"]
    where = [text.index(f"\n    {v} ") for v in verbs]
    assert where == sorted(where)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["test", "--help"], ["predict", "--help"]])
def test_help_loads_only_the_named_verbs_dependencies(argv):
    """``organseg --help`` lists every verb from its HELP line; a verb's own options are built only when it
    is named, so help answers at once instead of after torch's seconds of import (train's presets list
    needs the model registry; test's and predict's options need nothing heavy)."""
    code = (
        "import sys\nfrom organseg.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
        "    pass\nprint(sorted(m for m in ('torch', 'numpy', 'SimpleITK') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_verb_is_built_in_full_when_named():
    parser = build_parser("phantom")
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "--size" in verbs["phantom"].format_help() and "--out" not in verbs["train"].format_help()
    full = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "--out" in full["train"].format_help()
