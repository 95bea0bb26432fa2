"""ONNX export and ONNX Runtime inference: ``organseg export``, :func:`load_onnx`, :class:`OnnxModel`.

Each network is exported once per module (through the CLI) and every test reads that file: the exporter
takes tens of seconds even for a tiny network, most of it fixed cost."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'organseg[onnx]'")
pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'organseg[onnx]'")
onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'organseg[onnx]'")

from helpers import one_line_error  # noqa: E402
from organseg import __version__  # noqa: E402
from organseg.checkpoint import atomic_torch_save, make_checkpoint  # noqa: E402
from organseg.cli.main import main  # noqa: E402
from organseg.data.classes import SYNAPSE_CLASSES  # noqa: E402
from organseg.data.preprocess import ct_window_spec  # noqa: E402
from organseg.errors import CheckpointError, ConfigError, ExtraNotInstalledError  # noqa: E402
from organseg.inference.engine import predict_volume  # noqa: E402
from organseg.inference.onnx import PARITY_TOLERANCE, OnnxModel, is_onnx_path, load_onnx  # noqa: E402
from organseg.inference.targets import checkpoint_patch_size  # noqa: E402
from organseg.models import create_model  # noqa: E402

# Small networks of the two architectures, as the brief of the test suite asks: fast, same graph structure.
NETWORKS = {
    "unet": ({"width": 0.25}, 64),
    "swin_unet": ({"img_size": 32, "embed_dim": 12, "num_heads": [3, 3, 3, 3], "window_size": 2}, 32),
}


def make_checkpoint_file(folder: Path, name: str, file_name: str = "best.pt") -> Path:
    args, size = NETWORKS[name]
    torch.manual_seed(0)
    model_args = {**args, "num_classes": len(SYNAPSE_CLASSES)}
    model = create_model(name, **model_args).eval()
    cfg = {"model": {"name": name, "args": args}, "train": {"img_size": size}}
    ckpt = make_checkpoint(
        model,
        model_name=name,
        model_args=model_args,
        class_names=list(SYNAPSE_CLASSES),
        preprocessing=ct_window_spec(),
        config=cfg,
    )
    path = folder / "checkpoints" / file_name
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def exported(request, tmp_path_factory) -> dict:
    """A run folder with a checkpoint of each network, exported by ``organseg export RUN_DIR`` (which picks
    its best.pt, as ``test`` does) under umask 022."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    ckpt = make_checkpoint_file(folder, name)
    out = folder / "deploy" / f"{name}.onnx"
    saved = os.umask(0o022)
    try:
        assert main(["export", str(folder), "--onnx", str(out)]) == 0
    finally:
        os.umask(saved)
    from organseg.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    return {"name": name, "checkpoint": ckpt, "onnx": out, "model": model, "size": NETWORKS[name][1]}


def test_export_writes_a_plain_readable_file(exported: dict) -> None:
    out: Path = exported["onnx"]
    assert out.is_file() and (out.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    s = exported["size"]
    assert inp.name == "image" and outp.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[0] and dims[1:] == [1, s, s]  # symbolic batch, fixed H, W
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_logits_equal_pytorch(exported: dict, batch: int) -> None:
    """One file serves any batch, and its logits are PyTorch's fp32 eval logits to 1e-4."""
    model, _ = load_onnx(exported["onnx"])
    s = exported["size"]
    x = torch.rand(batch, 1, s, s, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        ref = exported["model"](x)
    got = model(x)
    assert got.shape == ref.shape == (batch, len(SYNAPSE_CLASSES), s, s) and got.dtype == torch.float32
    diff = (got - ref).abs().max().item()
    print(f"{exported['name']} batch {batch}: max |ONNX Runtime - PyTorch| logit = {diff:.3g}")
    assert diff <= PARITY_TOLERANCE
    assert ref.abs().max().item() > 100 * PARITY_TOLERANCE  # logits not all ~0: the bound means something
    with pytest.raises(ValueError, match=f"takes \\(B, 1, {s}, {s}\\)"):
        model(torch.zeros(1, 1, s + 16, s))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "swin_unet"])
def test_paper_size_networks_export_with_parity(tmp_path: Path, name: str) -> None:
    """The paper configurations (about 7 s and 13 s each on a quiet 2-core machine): logits within 1e-4,
    absolute and relative to the largest logit (random U-Net logits are only ~0.15), at batch 1 and 3."""
    from organseg.inference.onnx import export_onnx

    torch.manual_seed(0)
    model = create_model(name).eval()
    ckpt = make_checkpoint(
        model,
        model_name=name,
        class_names=list(SYNAPSE_CLASSES),
        preprocessing=ct_window_spec(),
        config={"train": {"img_size": 224}},
    )
    atomic_torch_save(ckpt, tmp_path / "best.pt")
    info = export_onnx(tmp_path / "best.pt", tmp_path / f"{name}.onnx")
    onnx_model, _ = load_onnx(tmp_path / f"{name}.onnx")
    assert info["input_size"] == [224, 224]
    for batch in (1, 3):
        x = torch.rand(batch, 1, 224, 224, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            ref = model(x)
        diff = (onnx_model(x) - ref).abs().max().item()
        print(f"{name} paper size, batch {batch}: max |ONNX Runtime - PyTorch| logit = {diff:.3g}")
        assert diff <= PARITY_TOLERANCE * min(1.0, ref.abs().max().item())


def test_metadata_round_trip(exported: dict) -> None:
    model, info = load_onnx(exported["onnx"])
    ckpt_path: Path = exported["checkpoint"]
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert isinstance(model, OnnxModel) and next(model.parameters(), None) is None
    for key in ("model_name", "model_args", "class_names", "preprocessing"):
        assert info[key] == ckpt[key], key
    s = exported["size"]
    assert info["input_size"] == [s, s] and checkpoint_patch_size(info) == (s, s)
    assert info["organseg_version"] == __version__
    src = info["source_checkpoint"]
    assert src["sha256"] == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    # the file name and hash identify the checkpoint; no local path travels with the model
    assert src == {"name": "best.pt", "sha256": src["sha256"]}
    assert str(ckpt_path.parent) not in exported["onnx"].read_bytes().decode("latin-1")
    assert 0 <= info["export_check"]["max_abs_logit_diff"] <= PARITY_TOLERANCE
    # Without organseg: every metadata value is a JSON string in the file's metadata_props.
    props = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert json.loads(props["class_names"]) == list(SYNAPSE_CLASSES)
    assert json.loads(props["preprocessing"]) == {"kind": "ct_window", "window": [-125.0, 275.0]}
    assert json.loads(props["model_name"]) == exported["name"]


def test_predict_volume_argmax_equal_on_real_ct(exported: dict, totalseg_dir: Path) -> None:
    """The batched inference of ``predict`` gives the same label map with ONNX Runtime as with PyTorch on a
    real CT (windowed as the checkpoint says, slices zoomed to the network size and back)."""
    from organseg.data.preprocess import apply_preprocessing
    from organseg.imageio.volumes import read_image

    raw, _ = read_image(totalseg_dir / "example_ct_sm.nii.gz")
    _, info = load_onnx(exported["onnx"])
    image = apply_preprocessing(raw[5:25], info["preprocessing"], source="example_ct_sm")
    onnx_model, _ = load_onnx(exported["onnx"])
    size = checkpoint_patch_size(info)
    torch_stats: dict = {}
    onnx_stats: dict = {}
    ref = predict_volume(exported["model"], image, size, batch_size=8, stats=torch_stats)
    got = predict_volume(onnx_model, image, size, batch_size=8, stats=onnx_stats)
    assert got.shape == ref.shape == image.shape and got.dtype == ref.dtype
    agree = float((got == ref).mean())
    print(
        f"{exported['name']}: argmax agreement {agree:.6f} over {ref.size} voxels, "
        f"{len(np.unique(ref))} classes present, re-run slices torch {torch_stats} onnx {onnx_stats}"
    )
    assert len(np.unique(ref)) > 1  # a constant map would agree trivially
    np.testing.assert_array_equal(got, ref)


def test_onnx_model_in_predict_volume_keeps_mode(exported: dict) -> None:
    model, _ = load_onnx(exported["onnx"])
    model.train()
    pred = predict_volume(model, np.zeros((2, 40, 40), np.float32), exported["size"], batch_size=2)
    assert pred.shape == (2, 40, 40) and model.training  # left in the mode it had, as for torch models
    with pytest.raises(ConfigError, match="fp32 only"):
        predict_volume(model, np.zeros((2, 40, 40), np.float32), exported["size"], precision="bf16")


# ---------------------------------------------------------------------------------------------- errors


def test_export_bad_inputs(tmp_path: Path, capsys) -> None:
    """Each refusal is one line, exit 2, before the (slow) export, and leaves nothing behind."""
    ckpt = make_checkpoint_file(tmp_path / "run", "unet")
    before = ckpt.read_bytes()
    one_line_error(
        capsys, ["export", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "m.onnx")], "missing.pt"
    )
    one_line_error(capsys, ["export", str(ckpt), "--onnx", str(ckpt)], ".onnx")  # over the checkpoint
    as_onnx = tmp_path / "weights.onnx"
    as_onnx.write_bytes(before)  # a checkpoint whose name ends in .onnx
    one_line_error(capsys, ["export", str(as_onnx), "--onnx", str(as_onnx)], "is the checkpoint")
    assert ckpt.read_bytes() == before and as_onnx.read_bytes() == before
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    one_line_error(
        capsys, ["export", str(ckpt), "--onnx", str(blocker / "sub" / "m.onnx")], str(blocker), "not a folder"
    )
    (tmp_path / "folder.onnx").mkdir()
    one_line_error(capsys, ["export", str(ckpt), "--onnx", str(tmp_path / "folder.onnx")], "folder")
    one_line_error(
        capsys,
        ["export", str(tmp_path / "run"), "--checkpoint", "epoch_7", "--onnx", str(tmp_path / "m.onnx")],
        "epoch_7.pt",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder.onnx", "run", "weights.onnx"]


def test_export_without_the_extra_names_it(tmp_path: Path, capsys, monkeypatch) -> None:
    ckpt = make_checkpoint_file(tmp_path, "unet")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    one_line_error(
        capsys,
        ["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")],
        "onnxscript",
        "pip install 'organseg[onnx]'",
    )
    assert not (tmp_path / "m.onnx").exists()


def test_load_onnx_errors(tmp_path: Path, exported: dict, monkeypatch) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match="notes.onnx: not a readable ONNX model") as e:
        load_onnx(text)
    assert "\n" not in str(e.value)
    data = exported["onnx"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.onnx: not a readable ONNX model, or truncated"):
        load_onnx(cut)
    # A valid ONNX model not written by organseg export.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "plain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    plain = tmp_path / "plain.onnx"
    plain_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain.write_bytes(plain_model.SerializeToString())
    with pytest.raises(CheckpointError, match="plain.onnx: an ONNX model without organseg metadata"):
        load_onnx(plain)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(Exception, match=r"onnxruntime, not installed: pip install 'organseg\[onnx\]'"):
        load_onnx(exported["onnx"])


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"channels": 4}, "outputs 4 class channels but its metadata names 9 classes"),
        ({"class_names": ["background", "liver"]}, "outputs 9 class channels but its metadata names 2"),
        ({"input_size": [8]}, "metadata 'input_size' is [8]; expected [H, W]"),
        ({"input_size": "64x64"}, "metadata 'input_size' is '64x64'"),
        ({"input_size": [16, 16]}, "the graph takes 'image' of shape ['batch', 1, 8, 8]"),
        ({"preprocessing": {"kind": "magic"}}, "'preprocessing': unknown preprocessing kind 'magic'"),
        ({"preprocessing": {"kind": "ct_window"}}, "'preprocessing': preprocessing 'ct_window' needs"),
        ({"preprocessing": None}, "organseg metadata without 'preprocessing'"),
        ({"class_names": "liver"}, "metadata 'class_names' is 'liver'"),
    ],
)
def test_graph_is_checked_against_its_metadata(tmp_path: Path, edit: dict, needle: str) -> None:
    from badinput.inputs import write_organseg_onnx

    path = write_organseg_onnx(tmp_path / "bad.onnx", **edit)
    with pytest.raises(CheckpointError) as e:
        load_onnx(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message


def test_a_graph_that_fits_its_metadata_loads(tmp_path: Path) -> None:
    from badinput.inputs import write_organseg_onnx

    model, info = load_onnx(write_organseg_onnx(tmp_path / "ok.onnx"))
    assert model.num_classes == 9 and info["config"]["train"]["img_size"] == [8, 8]
    assert tuple(model(torch.zeros(2, 1, 8, 8)).shape) == (2, 9, 8, 8)


def test_is_onnx_path() -> None:
    assert is_onnx_path("a/b/model.onnx") and is_onnx_path("M.ONNX")
    assert not is_onnx_path("run/checkpoints/best.pt") and not is_onnx_path("run.onnx.d/best.pt")


def test_export_takes_an_official_checkpoint_as_predict_does(tmp_path: Path, capsys) -> None:
    args, _ = NETWORKS["swin_unet"]
    torch.manual_seed(0)
    official = tmp_path / "epoch_149.pth"
    net = create_model("swin_unet", num_classes=len(SYNAPSE_CLASSES), **args).eval()
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, official)  # as the official trainer
    out = tmp_path / "official.onnx"
    assert main(["export", str(official), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "official Swin-Unet checkpoint, 9 classes" in printed and "reference CT window" in printed
    _, info = load_onnx(out)
    assert info["class_names"] == list(SYNAPSE_CLASSES) and info["preprocessing"]["kind"] == "ct_window"
    assert info["source_checkpoint"]["name"] == "epoch_149.pth"


def test_a_killed_exports_temporaries_are_swept_by_the_next_export(tmp_path: Path) -> None:
    """The export writes through organseg.fileio: a temporary that names its process, removed by the next
    export of the same file once that process is gone (a live one's stays), as every other writer's is; the
    temporaries of earlier versions' exporter (no pid in the name) go once an hour old."""
    import subprocess
    import time

    from organseg import fileio

    ckpt = make_checkpoint_file(tmp_path, "unet")
    out = tmp_path / "deploy" / "m.onnx"
    out.parent.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - fileio.STALE_GRACE_S - 5
    ancient = time.time() - fileio.LEGACY_STALE_S - 5
    left = {
        f".m.onnx.{dead.pid}.k3j_9x.tmp": (old, False),  # a killed export's: swept
        f".m.onnx.{os.getpid()}.a1b2c3.tmp": (old, True),  # a live writer's: kept, however old
        ".m.onnx.q8w7e6.tmp": (ancient, False),  # an earlier exporter's, hours old: swept
        ".m.onnx.z1x2c3.tmp": (time.time(), True),  # an earlier exporter's, maybe still running: kept
        f".other.onnx.{dead.pid}.k3j_9x.tmp": (old, True),  # another target's: not this write's business
    }
    for name, (mtime, _) in left.items():
        (out.parent / name).write_bytes(b"half a model")
        os.utime(out.parent / name, (mtime, mtime))
    assert main(["export", str(ckpt), "--onnx", str(out)]) == 0
    kept = sorted(p.name for p in out.parent.iterdir())
    assert kept == sorted(["m.onnx", *(n for n, (_, keep) in left.items() if keep)])


def test_a_missing_onnxruntime_is_one_error_naming_the_extra(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError, as when not installed
    needs = r"onnxruntime, not installed: pip install 'organseg\[onnx\]'"
    with pytest.raises(ExtraNotInstalledError, match=needs):
        load_onnx(model)
    assert issubclass(ExtraNotInstalledError, ConfigError)  # the CLI's one-line error family
