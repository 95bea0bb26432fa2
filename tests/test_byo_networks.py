"""Networks of one's own (docs/networks.md): an import path ``module:factory`` and an installed package's
entry point (group ``organseg.models``) as ``model.name``, through every verb.

The network is the docs' own example (its fenced Python block, written to a module on ``sys.path``), so the
docs and the code cannot drift; a fake distribution (a ``*.dist-info`` folder with ``entry_points.txt`` and
``top_level.txt``) announces it as an entry point and provides a version to record. Everything trains for 2
iterations on a 32x32 phantom.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import one_line_error
from organseg.checkpoint import atomic_torch_save, model_from_checkpoint, read_checkpoint
from organseg.cli.main import main
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.errors import CheckpointError, ConfigError
from organseg.models import check_contract, check_model_args, create_model, list_models, model_defaults
from organseg.study import run_name

DOCS = Path(__file__).resolve().parents[1] / "docs" / "networks.md"
NET = "mynets:build_mynet"  # the docs' example
ENTRY = "byo_tinynet"  # the fake distribution's entry point, to byo_dist_nets:build (the same network)
DIST, VERSION = "byo-dist-nets", "1.2.3"

BAD_NETS = """
import torch
from torch import nn

from mynets import build_mynet

NOT_CALLABLE = 3


def build_raising(num_classes: int = 9, in_chans: int = 1):
    raise ValueError("no weights here")


def build_half(num_classes: int = 9, in_chans: int = 1):
    return nn.Conv2d(in_chans, num_classes, 2, stride=2)  # half the input size


def build_no_module(num_classes: int = 9, in_chans: int = 1):
    return "a network"


def build_without_classes(in_chans: int = 1):
    return nn.Conv2d(in_chans, 3, 1)
"""


def docs_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), re.S)


@pytest.fixture(scope="module")
def user_code(tmp_path_factory) -> Path:
    """``mynets.py`` (the docs' example), ``badnets.py`` and an installed-looking ``byo_dist_nets`` package
    with its dist-info, in a folder on ``sys.path`` for this module's tests."""
    root = tmp_path_factory.mktemp("user_code")
    (root / "mynets.py").write_text(docs_blocks("python")[0])
    (root / "badnets.py").write_text(BAD_NETS)
    (root / "byo_dist_nets").mkdir()
    (root / "byo_dist_nets" / "__init__.py").write_text("from mynets import build_mynet as build\n")
    info = root / f"{DIST.replace('-', '_')}-{VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {VERSION}\n")
    (info / "top_level.txt").write_text("byo_dist_nets\n")
    (info / "entry_points.txt").write_text(
        f"[organseg.models]\n{ENTRY} = byo_dist_nets:build\nbyo_broken = byo_dist_nets:missing\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("byo_phantom")
    write_phantom_set(root / "raw", 3, size=32, num_slices=4, progress=False)
    prepare_synapse(root / "raw", root / "data", train_cases=[1, 2], test_cases=[3], progress=False)
    return root


def tiny_sets(*extra: str) -> list[str]:
    items = [
        "train.img_size=32",
        "train.batch_size=2",
        "train.max_iterations=2",
        "val.every=0",
        "train.progress=false",
        *extra,
    ]
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def runs(user_code, phantom, tmp_path_factory) -> dict[str, Path]:
    """Two bf16 runs of the docs' network (an import path, and the entry point with another seed)."""
    out = tmp_path_factory.mktemp("byo_runs")
    data = phantom / "data"
    for key, name, seed in (("path", NET, 1), ("entry", ENTRY, 2)):
        sets = tiny_sets(
            f"model.name={name}", "model.args.width=4", "train.precision=bf16", f"train.seed={seed}"
        )
        argv = [
            "train",
            "unet_synapse",
            "--data",
            str(data),
            "--out",
            str(out / key),
            "--device",
            "cpu",
            *sets,
        ]
        assert main(argv) == 0
    return {"path": out / "path", "entry": out / "entry"}


# -------------------------------------------------------------------------------------- the registry's view


def test_the_factory_defaults_are_the_configuration_and_model_args_are_checked(user_code):
    assert model_defaults(NET) == {"num_classes": 9, "in_chans": 1, "width": 8}
    assert model_defaults(ENTRY) == model_defaults(NET)
    check_model_args(NET, {"width": 4})
    with pytest.raises(ConfigError, match=r"model\.args\.depth: mynets:build_mynet has no argument 'depth'"):
        check_model_args(NET, {"depth": 3})
    with pytest.raises(ConfigError, match=r"model\.args\.width: expected a value like its default 8"):
        check_model_args(NET, {"width": "wide"})
    assert ENTRY in list_models() and "byo_broken" in list_models()  # listed, not loaded
    assert create_model(NET, num_classes=5, width=4)(torch.rand(2, 1, 16, 16)).shape == (2, 5, 16, 16)


def test_run_names_of_an_import_path_are_folder_names():
    name = run_name(NET, 1234)
    assert name == "mynets-build_mynet__seed1234" and os.sep not in name and ":" not in name


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("nomodule_xyz.nets:build", ["model.name", "cannot import module 'nomodule_xyz.nets'", "No module"]),
        ("badnets:build_missing", ["model.name", "module 'badnets' has no attribute 'build_missing'"]),
        ("badnets:NOT_CALLABLE", ["model.name", "'NOT_CALLABLE' is of type int, not a callable factory"]),
        ("badnets:build_raising", ["model.name=badnets:build_raising", "raised ValueError: no weights here"]),
        (
            "badnets:build_half",
            ["model.name=badnets:build_half", "gave output (1, 3, 16, 16)", "(1, 3, 32, 32)"],
        ),
        ("badnets:build_no_module", ["model.name=badnets:build_no_module", "returned a str, not a torch.nn"]),
        ("badnets:build_without_classes", ["model.name", "takes no num_classes argument"]),
        ("byo_broken", ["model.name", "entry point 'byo_broken'", DIST, "no attribute 'missing'"]),
    ],
)
def test_a_network_that_breaks_the_contract_is_one_line_before_any_run(
    user_code, phantom, tmp_path, capsys, name, needles
):
    argv = ["train", "unet_synapse", "--data", phantom / "data", "--out", tmp_path / "run", "--device", "cpu"]
    one_line_error(capsys, [*argv, *tiny_sets(f"model.name={name}")], *needles)
    assert not (tmp_path / "run").exists()


def test_an_unknown_model_arg_and_a_size_the_network_refuses_are_config_errors(
    user_code, phantom, tmp_path, capsys
):
    argv = ["train", "unet_synapse", "--data", phantom / "data", "--out", tmp_path / "run", "--device", "cpu"]
    one_line_error(capsys, [*argv, *tiny_sets(f"model.name={NET}", "model.args.depth=3")], "model.args.depth")
    sets = tiny_sets(f"model.name={NET}", "train.img_size=33")
    one_line_error(capsys, [*argv, *sets], "train.img_size=33", "takes even sizes only", "32 or 34")


def test_the_contract_check_leaves_the_random_stream_alone(user_code):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_contract(NET, {"width": 5}, 32)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------- the verbs


def test_train_records_where_the_network_comes_from_in_bf16_and_channels_last(runs):
    path = read_checkpoint(runs["path"] / "checkpoints" / "last.pt")
    assert path["model_name"] == NET and path["model_args"] == {"width": 4, "num_classes": 9}
    assert path["model_source"] == {"path": NET, "entry_point": None, "distribution": None, "version": None}
    entry = read_checkpoint(runs["entry"] / "checkpoints" / "last.pt")
    assert entry["model_name"] == ENTRY
    assert entry["model_source"] == {
        "path": "byo_dist_nets:build",
        "entry_point": ENTRY,
        "distribution": DIST,
        "version": VERSION,
    }
    env = json.loads((runs["path"] / "env.json").read_text())
    assert env["channels_last"] is True  # the docs' network prefers it
    assert env["precision"] == "bf16"
    model, _ = model_from_checkpoint(runs["entry"] / "checkpoints" / "last.pt")
    assert type(model).__name__ == "MyNet"


def test_test_and_predict_with_an_ensemble_and_tta(runs, phantom, tmp_path):
    data = phantom / "data"
    assert main(["test", str(runs["path"]), "--data", str(data), "--device", "cpu", "--no-report"]) == 0
    summary = json.loads(next((runs["path"] / "results").glob("*/summary.json")).read_text())
    assert summary["cases"] == 1
    scan = sorted((phantom / "raw" / "img").glob("*.nii.gz"))[0]
    out = tmp_path / "seg.nii.gz"
    ckpts = [str(runs[k] / "checkpoints" / "last.pt") for k in ("path", "entry")]
    argv = [
        "predict",
        ckpts[0],
        str(scan),
        "--out",
        str(out),
        "--ensemble",
        ckpts[1],
        "--tta",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert out.is_file()


def test_info_counts_parameters_and_flops(user_code, capsys):
    assert main(["info", "--models", NET, ENTRY, "--img-size", "32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    width, classes = 8, 9
    params = (9 * width + width) + 2 * width + (9 * width * width + width) + (width * classes + classes)
    assert [r["params"] for r in rows] == [params, params]
    assert rows[0]["gflops"] > 0 and rows[0]["description"].startswith(f"{NET} (local)")
    assert rows[1]["description"].startswith(f"byo_dist_nets:build ({DIST} {VERSION})")


def test_export_to_onnx(runs, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'organseg[onnx]'")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'organseg[onnx]'")
    out = tmp_path / "mynet.onnx"
    ckpt = runs["path"] / "checkpoints" / "last.pt"
    assert main(["export", str(ckpt), "--onnx", str(out)]) == 0
    from organseg.checkpoint import read_checkpoint
    from organseg.inference.onnx import load_onnx

    _, info = load_onnx(out)
    source = read_checkpoint(ckpt)["model_source"]
    assert source["path"] and info["model_source"] == source  # where the network's code came from


def test_compare_trains_and_tests_networks_of_ones_own(user_code, phantom, tmp_path):
    preset = tmp_path / "recipe.yaml"
    preset.write_text("model:\n  name: unet\n  args: {}\ntrain:\n  lr_scaling: none\n")
    out = tmp_path / "study"
    argv = ["compare", "--data", str(phantom / "data"), "--models", NET, ENTRY, "--preset", str(preset)]
    argv += ["--out", str(out), "--device", "cpu", "--no-report", *tiny_sets()]
    assert main(argv) == 0
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == [f"{ENTRY}__seed1234", "mynets-build_mynet__seed1234"]
    comparison = json.loads((out / "comparison.json").read_text())
    assert {g["model"] for g in comparison["groups"]} == {NET, ENTRY}


def test_compare_without_a_preset_names_the_option(user_code, phantom, tmp_path, capsys):
    argv = [
        "compare",
        "--data",
        phantom / "data",
        "--models",
        NET,
        "--out",
        tmp_path / "study",
        "--device",
        "cpu",
    ]
    one_line_error(capsys, argv, "--preset", NET)


def test_two_processes_train_a_network_of_ones_own(user_code, tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    tests = Path(__file__).resolve().parent
    cfg = {
        "model": {"name": NET, "args": {"width": 4}},
        "train": {"img_size": 32, "batch_size": 4, "max_iterations": 2, "progress": False, "threads": 1},
        "val": {"every": 0},
    }
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path[:0] = [{str(user_code)!r}, {str(tests)!r}]
            from helpers import tiny_dataset
            from organseg.training import train
            summary = train({cfg!r}, tiny_dataset(8), {str(out)!r})
            print("RANK_DONE", summary["iterations"])
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("RANK_DONE 2") == 2
    assert json.loads((out / "env.json").read_text())["world_size"] == 2
    assert read_checkpoint(out / "checkpoints" / "last.pt")["model_name"] == NET


# ------------------------------------------------------------------------------------- a module that is gone


@pytest.mark.parametrize(
    ("source", "needles"),
    [
        (
            {"path": "gone_nets:build", "entry_point": None, "distribution": "gone-nets", "version": "0.4"},
            ["gone_nets", "gone-nets==0.4", "pip install"],
        ),
        (
            {"path": "gone_nets:build", "entry_point": None, "distribution": None, "version": None},
            ["gone_nets", "local module", "PYTHONPATH"],
        ),
    ],
)
def test_a_checkpoint_whose_module_is_gone_names_the_module_and_the_package(
    runs, phantom, tmp_path, capsys, source, needles
):
    ckpt = read_checkpoint(runs["path"] / "checkpoints" / "last.pt")
    ckpt["model_name"], ckpt["model_source"] = "gone_nets:build", source
    path = tmp_path / "gone.pt"
    atomic_torch_save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(path)
    assert len(str(err.value).splitlines()) == 1
    for needle in needles:
        assert needle in str(err.value)
    scan = sorted((phantom / "raw" / "img").glob("*.nii.gz"))[0]
    one_line_error(capsys, ["predict", path, scan, "--out", tmp_path / "seg.nii.gz"], "gone_nets", needles[1])


def test_the_docs_command_line_names_the_docs_network():
    bash = "\n".join(docs_blocks("bash"))
    assert f"--set model.name={NET}" in bash and f"--models {NET} unet" in bash
