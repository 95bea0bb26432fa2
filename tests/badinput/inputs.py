"""Good inputs built once (a phantom raw folder, a prepared Synapse folder, a trained tiny run, tiny ACDC and
nnU-Net folders, tiny checkpoints of both networks) and the helpers a case uses to copy and damage them.

Every case works on its own copy in its own folder, so the cached originals are never touched and a case's
"inputs" are exactly the files its setup left there (hashed before and after the command)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
DICOM = SHARED / "data" / "totalseg" / "example_ct_dicom"

# The tiny U-Net training recipe every train/compare case starts from: 1 iteration of a 1/16-width U-Net on
# 32x32 slices, so that a bad value accepted today still ends in about a second.
TRAIN_SETS = [
    "--set",
    "model.args.width=0.0625",
    "--set",
    "train.img_size=32",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.max_iterations=1",
    "--set",
    "val.every=0",
    "--set",
    "train.progress=false",
]
TINY_SWIN = {"img_size": 32, "embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 2}


@dataclass(frozen=True)
class Base:
    """Paths of the cached good inputs (read-only: cases copy what they use)."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def build_base(root: Path) -> Base:
    """Build every good input under ``root`` (a few seconds); returns its :class:`Base`."""
    import torch

    from organseg.checkpoint import atomic_torch_save, make_checkpoint
    from organseg.cli.main import main
    from organseg.data.classes import SYNAPSE_CLASSES
    from organseg.data.io import atomic_write_h5
    from organseg.data.phantom import write_phantom_set
    from organseg.data.prepare import prepare_synapse
    from organseg.data.preprocess import ct_window_spec
    from organseg.imageio.volumes import Geometry, write_image
    from organseg.models import create_model

    root.mkdir(parents=True, exist_ok=True)
    write_phantom_set(root / "raw", 3, 64, 0, num_slices=4, progress=False)
    prepare_synapse(root / "raw", root / "syn", train_cases=[1, 2], test_cases=[3], progress=False)
    shutil.copy(root / "raw" / "img" / "img0003.nii.gz", root / "scan.nii.gz")
    rc = _quiet(
        main, ["train", "unet_synapse", "--data", str(root / "syn"), "--out", str(root / "run"), *TRAIN_SETS]
    )
    assert rc == 0, "the good tiny training run failed"
    rc = _quiet(main, ["test", str(root / "run"), "--data", str(root / "syn"), "--device", "cpu"])
    assert rc == 0, "the good tiny test run failed"
    shutil.copy(root / "run" / "checkpoints" / "last.pt", root / "unet.pt")

    torch.manual_seed(0)
    swin = create_model("swin_unet", num_classes=len(SYNAPSE_CLASSES), **TINY_SWIN)
    cfg = {"model": {"name": "swin_unet", "args": dict(TINY_SWIN)}, "train": {"img_size": 32}}
    atomic_torch_save(
        make_checkpoint(
            swin,
            model_name="swin_unet",
            model_args={**TINY_SWIN, "num_classes": 9},
            class_names=list(SYNAPSE_CLASSES),
            preprocessing=ct_window_spec(),
            config=cfg,
        ),
        root / "swin.pt",
    )

    # ACDC (SSL4MIS layout): 2 patients of 3 slices, one for training, one for validation.
    rng = np.random.default_rng(0)
    acdc = root / "acdc"
    train_names = []
    for p, split in ((1, "train"), (2, "val")):
        image = rng.random((3, 32, 32)).astype(np.float32)
        label = np.zeros((3, 32, 32), np.uint8)
        label[:, 8:16, 8:16], label[:, 16:24, 8:16], label[:, 8:16, 16:24] = 1, 2, 3
        name = f"patient{p:03d}_frame01"
        atomic_write_h5(acdc / "volumes" / f"{name}.h5", image=image, label=label)
        for k in range(3):
            atomic_write_h5(acdc / "slices" / f"{name}_slice_{k}.h5", image=image[k], label=label[k])
            if split == "train":
                train_names.append(f"{name}_slice_{k}")
    (acdc / "train_slices.list").write_text("".join(f"{n}\n" for n in train_names))
    (acdc / "val.list").write_text("patient002_frame01\n")

    # nnU-Net v2 raw: 2 CT cases with a liver label.
    nn = root / "nnunet"
    for i in range(2):
        image = rng.normal(40, 30, (4, 32, 32)).astype(np.int16)
        label = np.zeros((4, 32, 32), np.uint8)
        label[:, 8:20, 8:20] = 1
        geom = Geometry(spacing=(3.0, 1.0, 1.0))
        write_image(image, geom, nn / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_image(label, geom, nn / "labelsTr" / f"case_{i:03d}.nii.gz")
    (nn / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "liver": 1},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    return Base(root)


# ---------------------------------------------------------------- what a case's setup works with


@dataclass
class Ctx:
    """One case's folder ``t`` and the cached good inputs ``base``."""

    t: Path
    base: Base

    def copy(self, name: str, dest: str | None = None) -> Path:
        """Copy a cached input (file or folder) into the case folder; returns the copy."""
        src, dst = self.base / name, self.t / (dest or name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst

    def dicom(self, dest: str = "dicom") -> Path:
        dst = self.t / dest
        shutil.copytree(DICOM, dst)
        return dst

    def write(self, rel: str, data: bytes | str) -> Path:
        path = self.t / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def mkdir(self, rel: str) -> Path:
        path = self.t / rel
        path.mkdir(parents=True, exist_ok=True)
        return path

    def hold(self, rel: str) -> Path:
        """Another process takes the lock of the folder ``rel`` (organseg.locks; created if missing) and holds
        it while the case runs; returns the folder."""
        path = self.t / rel
        paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path), str(self.t)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        _HOLDERS[:] = [p for p in _HOLDERS if p.poll() is None] + [proc]
        if proc.stdout.readline().strip() != "held":
            raise RuntimeError(f"the helper process could not hold {path}")
        return path


# The helper of Ctx.hold: holds FOLDER's lock until the case folder is gone (the probe removes it after each
# case), the process that started it ends, or 120 s have passed: long enough for a case that fails at once.
_HOLD = """
import os, sys, time
from organseg.locks import folder_lock
folder, case, parent = sys.argv[1], sys.argv[2], os.getppid()
with folder_lock(folder, "train"):
    print("held", flush=True)
    end = time.monotonic() + 120
    while os.path.isdir(case) and os.getppid() == parent and time.monotonic() < end:
        time.sleep(0.2)
"""
_HOLDERS: list[subprocess.Popen] = []  # kept: a Popen collected while its process runs would warn


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


GARBAGE = bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8))


def edit_npz(path: Path, fn) -> None:
    """Rewrite a Synapse training slice with ``fn(image, label) -> (image, label)``."""
    with np.load(path) as z:
        image, label = z["image"], z["label"]
    image, label = fn(image, label)
    with open(path, "wb") as fh:
        np.savez(fh, image=image, label=label)


def edit_h5(path: Path, fn) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        image, label = f["image"][()], f["label"][()]
    image, label = fn(image, label)
    path.unlink()
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image, label


def edit_nifti(path: Path, fn, *, keep_geometry: bool = True) -> None:
    """Rewrite a NIfTI file with ``fn(array) -> array`` (same geometry when the shape allows)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = fn(sitk.GetArrayFromImage(img))
    out = sitk.GetImageFromArray(arr)
    if keep_geometry and out.GetDimension() == img.GetDimension():
        out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


def edit_checkpoint(path: Path, fn) -> None:
    """Load a checkpoint dict, change it with ``fn(ckpt)`` (in place), save it back (without its checksum:
    the cases test what the checks after it say of the content)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt.pop("checksum", None)  # edited by hand, as another writer would: no organseg checksum to match
    fn(ckpt)
    torch.save(ckpt, path)


def flip_tensor_bytes(path: Path, count: int = 256) -> None:
    """Flip ``count`` bytes inside the largest tensor's data of a ``torch.save`` file: damage that
    ``torch.load`` reads back as other numbers without a word (it does not check the zip's CRCs)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    head = info.header_offset
    start = head + 30 + int.from_bytes(raw[head + 26 : head + 28], "little")
    start += int.from_bytes(raw[head + 28 : head + 30], "little")
    for k in range(min(count, info.file_size)):
        raw[start + k] ^= 0xFF
    path.write_bytes(bytes(raw))


def write_organseg_onnx(path: Path, *, channels: int = 9, size: int = 8, **meta) -> Path:
    """A tiny ONNX model with organseg's metadata, built by hand (no export): a 1x1 convolution from the
    (B, 1, size, size) input ``image`` to ``channels`` output ``logits``. ``meta`` overrides or adds metadata
    entries (values are JSON-encoded; ``None`` drops the entry), to build graphs that disagree with it."""
    from onnx import TensorProto, helper, numpy_helper

    from organseg.data.classes import SYNAPSE_CLASSES

    ramp = np.linspace(-1, 1, channels, dtype=np.float32).reshape(channels, 1, 1, 1)
    weight = numpy_helper.from_array(ramp, "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])],
        "organseg-test",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", channels, size, size])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entries = {
        "organseg_format": "organseg-onnx/1",
        "model_name": "unet",
        "class_names": list(SYNAPSE_CLASSES),
        "preprocessing": {"kind": "ct_window", "window": [-125.0, 275.0]},
        "input_size": [size, size],
        **meta,
    }
    for key, value in entries.items():
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
