"""The table of bad inputs, as data. Each :class:`Case` builds its inputs in its own folder (``setup``), runs
``organseg ARGV`` and names what the one-line error must contain (``expect``: the offending file, config key
or option, never wording). The table is generated family by family (one fault x every verb or option it
applies to), so a new fault or verb adds many rows at once.

``{t}`` in ``argv`` is the case's folder. Groups are the classes of issue 10; ``docs/bad_input.md`` lists the
rows by group with the message each gives (``python tests/badinput/probe.py --write-docs``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from badinput.inputs import (
    GARBAGE,
    TRAIN_SETS,
    Ctx,
    edit_checkpoint,
    edit_h5,
    edit_nifti,
    edit_npz,
    flip_tensor_bytes,
    truncate,
)
from synthetic_scan import diagonal_frame

GROUPS = {
    "paths": "Missing, empty, garbage or misplaced files and folders",
    "options": "Command-line option values",
    "config": "Configuration values (--set, YAML files)",
    "raw": "Raw BTCV folders (prepare)",
    "dataset": "Datasets: content, ranges and completeness",
    "scan": "Scans given to predict",
    "dicom": "DICOM series integrity",
    "checkpoint": "Checkpoints that do not fit what they claim",
    "over-input": "Output over (or into) an input",
    "unwritable": "Unwritable output places",
    "device": "Devices this build does not have",
    "resources": "Crashes and memory-impossible requests",
    "busy": "Output folders another organseg process is writing",
    "right-runs": "The right data, the right runs: a run's dataset, checkpoint checksums, results reused",
    "applies": "Options that cannot apply, and what can be checked before the work",
    "disks": "Disks that fill up during a write",
    "networks": "Networks of one's own: import paths, entry points, the contract, checkpoints of them",
    "pretrain": "Pretraining images and recipe (organseg pretrain)",
}


@dataclass(frozen=True)
class Case:
    """One bad input: build it, run ``organseg *argv``, expect a clean one-line error naming ``expect``."""

    id: str
    verb: str
    what: str
    setup: Callable[[Ctx], None]
    argv: tuple[str, ...]
    expect: tuple[str, ...] = ()
    group: str = "paths"
    subprocess: bool = False  # may crash the interpreter (SIGSEGV) or exhaust memory: run it apart
    # CPU seconds (user + system, all threads) the case may use: a measure of the work done, which a busy
    # machine does not stretch as it stretches wall-clock time (see probe.py; every case needs a few at most).
    cpu_limit_s: float = 60.0
    needs_shared: bool = False  # needs ../shared (the real DICOM series)
    mem_gb: float | None = None  # address-space limit of a subprocess case
    allow_new: tuple[str, ...] = field(default=())  # glob patterns (relative to {t}) a case may leave
    # bytes the writes under {t} may use in all, as on a disk that fills up (tests/small_disk.py); in-process
    disk_free: int | None = None


CASES: list[Case] = []


def add(id: str, verb: str, what: str, setup, argv: Sequence[str], expect: Sequence[str] = (), **kw) -> None:
    CASES.append(Case(id, verb, what, setup, tuple(argv), tuple(expect), **kw))


def steps(*fns: Callable[[Ctx], object]) -> Callable[[Ctx], None]:
    """A setup that runs ``fns`` in order."""

    def run(c: Ctx) -> None:
        for fn in fns:
            fn(c)

    return run


def cp(name: str, dest: str | None = None):
    return lambda c: c.copy(name, dest)


def wr(rel: str, data: bytes | str = b""):
    return lambda c: c.write(rel, data)


def md(rel: str):
    return lambda c: c.mkdir(rel)


def rm(rel: str):
    def run(c: Ctx) -> None:
        p = c.t / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    return run


def on(rel: str, fn):
    """Apply ``fn(path)`` to the case file ``rel``."""
    return lambda c: fn(c.t / rel)


def on_glob(pattern: str, fn):
    return lambda c: [fn(p) for p in sorted(c.t.glob(pattern))]


NOTHING = steps()

# ---------------------------------------------------------------- the commands every family starts from

PREDICT = ["predict", "{t}/ckpt.pt", "{t}/scan.nii.gz", "--out", "{t}/out/seg.nii.gz"]
PREDICT_SETUP = steps(cp("unet.pt", "ckpt.pt"), cp("scan.nii.gz"))
TEST = ["test", "{t}/run", "--data", "{t}/syn", "--no-report"]
# The run without the results and report of its own test: whatever a case's test writes is then new.
TEST_SETUP = steps(cp("run"), rm("run/results"), rm("run/report"), rm("run/report.md"), cp("syn"))
TRAIN = ["train", "unet_synapse", "--data", "{t}/syn", "--out", "{t}/run2", *TRAIN_SETS]
TRAIN_SETUP = cp("syn")
PREPARE = ["prepare", "synapse", "--raw", "{t}/raw", "--out", "{t}/prep", "--quiet"]
PREPARE_SETUP = cp("raw")
PHANTOM = ["phantom", "--out", "{t}/ph", "--cases", "1", "--size", "32", "--slices", "4", "--quiet"]
COMPARE = [
    "compare",
    "--data",
    "{t}/syn",
    "--models",
    "unet",
    "--out",
    "{t}/study",
    "--no-report",
    *[
        x
        for item in (
            "model.args.width=0.0625",
            "train.img_size=32",
            "train.batch_size=2",
            "train.max_iterations=1",
            "train.progress=false",
        )
        for x in ("--set", item)
    ],
]
COMPARE_SETUP = cp("syn")
REPORT_SETUP = cp("run")
DEMO = ["demo", "--fast", "--out", "{t}/demo"]


def replace_opt(argv: Sequence[str], opt: str, value: str | None) -> list[str]:
    """``argv`` with option ``opt``'s value replaced (``None``: the option removed), or appended."""
    out = list(argv)
    if opt in out:
        i = out.index(opt)
        del out[i : i + 2]
    if value is not None:
        out += [opt, value]
    return out


# ---------------------------------------------------------------- checkpoints: predict, test, train --resume


def _nan_weights(value: float):
    def fn(ck: dict) -> None:
        key = next(k for k, v in ck["model"].items() if v.dtype.is_floating_point)
        ck["model"][key] = ck["model"][key].clone().fill_(value)

    return fn


def _set(key: str, value):
    def fn(ck: dict) -> None:
        ck[key] = value

    return fn


def _del(key: str):
    return lambda ck: ck.pop(key)


def _del_weight(key: str):
    return lambda ck: ck["model"].pop(key)


def _add_weight(key: str):
    import torch

    return lambda ck: ck["model"].__setitem__(key, torch.zeros(3))


def _save_state_dict(path: Path) -> None:
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=True)
    torch.save(ck["model"], path)


def _make_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


# (slug, what, source checkpoint, damage(path) or None for "absent", expect)
CKPT_FAULTS = [
    ("missing", "checkpoint file does not exist", "unet.pt", "absent", ["ckpt.pt"]),
    ("empty", "empty checkpoint file (0 bytes)", "unet.pt", lambda p: p.write_bytes(b""), ["ckpt.pt"]),
    ("garbage", "checkpoint file of random bytes", "unet.pt", lambda p: p.write_bytes(GARBAGE), ["ckpt.pt"]),
    ("truncated", "checkpoint cut to half its length", "unet.pt", truncate, ["ckpt.pt"]),
    ("text", "a YAML text file named .pt", "unet.pt", lambda p: p.write_text("model: unet\n"), ["ckpt.pt"]),
    ("folder", "a folder where the checkpoint file should be", "unet.pt", _make_dir, ["ckpt.pt"]),
    ("state-dict", "a bare state dict, not an organseg checkpoint", "unet.pt", _save_state_dict, ["ckpt.pt"]),
    (
        "format",
        "format string of another version",
        "unet.pt",
        lambda p: edit_checkpoint(p, _set("format", "organseg-checkpoint/9")),
        ["ckpt.pt"],
    ),
    (
        "nan-weights",
        "NaN weights (U-Net)",
        "unet.pt",
        lambda p: edit_checkpoint(p, _nan_weights(np.nan)),
        ["ckpt.pt"],
    ),
    (
        "inf-weights",
        "inf weights (U-Net)",
        "unet.pt",
        lambda p: edit_checkpoint(p, _nan_weights(np.inf)),
        ["ckpt.pt"],
    ),
    (
        "swin-nan-weights",
        "NaN weights (Swin-Unet)",
        "swin.pt",
        lambda p: edit_checkpoint(p, _nan_weights(np.nan)),
        ["ckpt.pt"],
    ),
    (
        "classes-short",
        "5 class names for a 9-class head",
        "unet.pt",
        lambda p: edit_checkpoint(p, lambda ck: ck.__setitem__("class_names", ck["class_names"][:5])),
        ["ckpt.pt"],
    ),
    (
        "classes-long",
        "12 class names for a 9-class head",
        "unet.pt",
        lambda p: edit_checkpoint(p, lambda ck: ck["class_names"].extend(["x", "y", "z"])),
        ["ckpt.pt"],
    ),
    (
        "classes-empty",
        "no class names",
        "unet.pt",
        lambda p: edit_checkpoint(p, _set("class_names", [])),
        ["ckpt.pt"],
    ),
    (
        "swin-classes-short",
        "4 class names for a 9-class Swin-Unet head",
        "swin.pt",
        lambda p: edit_checkpoint(p, lambda ck: ck.__setitem__("class_names", ck["class_names"][:4])),
        ["ckpt.pt"],
    ),
    (
        "missing-weight",
        "a state dict without decoder.final.weight",
        "unet.pt",
        lambda p: edit_checkpoint(p, _del_weight("decoder.final.weight")),
        ["decoder.final.weight"],
    ),
    (
        "extra-weight",
        "a state dict with an unknown key",
        "unet.pt",
        lambda p: edit_checkpoint(p, _add_weight("bogus.weight")),
        ["bogus.weight"],
    ),
    (
        "other-width",
        "U-Net weights of width 1/16 declared as width 1/8",
        "unet.pt",
        lambda p: edit_checkpoint(p, lambda ck: ck["model_args"].__setitem__("width", 0.125)),
        ["ckpt.pt"],
    ),
    (
        "swin-other-window",
        "Swin-Unet weights of window 2 declared as window 4",
        "swin.pt",
        lambda p: edit_checkpoint(p, lambda ck: ck["model_args"].__setitem__("window_size", 4)),
        ["ckpt.pt"],
    ),
    ("no-model", "no 'model' key", "unet.pt", lambda p: edit_checkpoint(p, _del("model")), ["model"]),
    (
        "model-not-dict",
        "'model' is a string",
        "unet.pt",
        lambda p: edit_checkpoint(p, _set("model", "weights")),
        ["model"],
    ),
    (
        "no-model-name",
        "no 'model_name' key",
        "unet.pt",
        lambda p: edit_checkpoint(p, _del("model_name")),
        ["model_name"],
    ),
    (
        "unknown-model",
        "model_name of a network that does not exist",
        "unet.pt",
        lambda p: edit_checkpoint(p, _set("model_name", "resnet")),
        ["resnet"],
    ),
    (
        "no-class-names",
        "no 'class_names' key",
        "unet.pt",
        lambda p: edit_checkpoint(p, _del("class_names")),
        ["class_names"],
    ),
    (
        "bad-model-args",
        "model_args width is a string",
        "unet.pt",
        lambda p: edit_checkpoint(p, lambda ck: ck["model_args"].__setitem__("width", "wide")),
        ["width"],
    ),
    (
        "unknown-model-arg",
        "model_args with an argument the network does not take",
        "unet.pt",
        lambda p: edit_checkpoint(p, lambda ck: ck["model_args"].__setitem__("depth", 3)),
        ["depth"],
    ),
    (
        "model-args-list",
        "model_args is a list",
        "unet.pt",
        lambda p: edit_checkpoint(p, _set("model_args", [1])),
        ["model_args"],
    ),
    (
        "bad-preprocessing",
        "preprocessing of an unknown kind",
        "unet.pt",
        lambda p: edit_checkpoint(p, _set("preprocessing", {"kind": "bogus"})),
        ["bogus"],
    ),
    (
        "bad-orientation",
        "orientation that is not an orientation code",
        "unet.pt",
        lambda p: edit_checkpoint(p, _set("orientation", "LPX")),
        ["orientation"],
    ),
]


def _ckpt_setup(src: str, damage, dest: str):
    def run(c: Ctx) -> None:
        path = c.copy(src, dest) if src != "run" else c.t / dest
        if damage == "absent":
            path.unlink()
        else:
            damage(path)

    return run


for slug, what, src, damage, expect in CKPT_FAULTS:
    add(
        f"predict-ckpt-{slug}",
        "predict",
        what,
        steps(cp("scan.nii.gz"), _ckpt_setup(src, damage, "ckpt.pt")),
        PREDICT,
        expect,
        group="paths" if slug in ("missing", "empty", "folder") else "checkpoint",
    )
    add(
        f"test-ckpt-{slug}",
        "test",
        what,
        steps(cp("syn"), _ckpt_setup(src, damage, "ckpt.pt")),
        ["test", "{t}/ckpt.pt", "--data", "{t}/syn", "--out", "{t}/res", "--no-report"],
        expect,
        group="paths" if slug in ("missing", "empty", "folder") else "checkpoint",
    )
    if src == "unet.pt" and slug not in ("folder", "missing"):  # a missing last.pt starts afresh
        # The same damage to the last.pt of a run being resumed.
        add(
            f"train-resume-ckpt-{slug}",
            "train",
            f"--resume: {what}",
            steps(cp("syn"), cp("run"), _ckpt_setup("run", damage, "run/checkpoints/last.pt")),
            ["train", "unet_synapse", "--data", "{t}/syn", "--out", "{t}/run", "--resume", *TRAIN_SETS],
            [e.replace("ckpt.pt", "last.pt") for e in expect],
            group="checkpoint",
        )

add(
    "test-run-no-checkpoints",
    "test",
    "run folder whose checkpoints/ is empty",
    steps(TEST_SETUP, lambda c: [p.unlink() for p in (c.t / "run" / "checkpoints").iterdir()]),
    TEST,
    ["checkpoints"],
)
add(
    "predict-run-no-checkpoints",
    "predict",
    "run folder (as CHECKPOINT) with no checkpoints",
    steps(cp("scan.nii.gz"), cp("run"), rm("run/checkpoints")),
    ["predict", "{t}/run", "{t}/scan.nii.gz", "--out", "{t}/out/seg.nii.gz"],
    ["run"],
)
add(
    "test-checkpoint-name-unknown",
    "test",
    "--checkpoint names no file of the run",
    TEST_SETUP,
    [*TEST, "--checkpoint", "epoch_99"],
    ["epoch_99"],
    group="options",
)
add(
    "test-checkpoint-name-path",
    "test",
    "--checkpoint is a path, not a name",
    TEST_SETUP,
    [*TEST, "--checkpoint", "../../unet"],
    ["--checkpoint"],
    group="options",
)
add(
    "train-resume-other-dataset-kind",
    "train",
    "--resume a Synapse run on an ACDC folder",
    steps(cp("acdc"), cp("run")),
    ["train", "unet_synapse", "--data", "{t}/acdc", "--out", "{t}/run", "--resume", *TRAIN_SETS],
    ["last.pt"],
    group="checkpoint",
)


def _acdc_slices(c: Ctx, n: int) -> None:
    """Grow the tiny ACDC folder to ``n`` training slices (copies of its first one)."""
    root = c.t / "acdc"
    names = (root / "train_slices.list").read_text().split()
    for k in range(len(names), n):
        name = f"patient009_frame01_slice_{k}"
        shutil.copy(root / "slices" / f"{names[0]}.h5", root / "slices" / f"{name}.h5")
        names.append(name)
    (root / "train_slices.list").write_text("".join(f"{x}\n" for x in names))


add(
    "train-resume-other-classes",
    "train",
    "--resume a 9-class Synapse run on a 4-class ACDC folder with as many slices per epoch",
    steps(cp("acdc"), cp("run"), lambda c: _acdc_slices(c, 8)),
    ["train", "unet_synapse", "--data", "{t}/acdc", "--out", "{t}/run", "--resume", *TRAIN_SETS],
    ["last.pt"],
    group="checkpoint",
)
add(
    "train-resume-other-preset",
    "train",
    "--resume a U-Net run with the Swin-Unet preset",
    steps(cp("syn"), cp("run")),
    ["train", "swin_unet_synapse", "--data", "{t}/syn", "--out", "{t}/run", "--resume", *TRAIN_SETS[4:]],
    ["last.pt"],
    group="checkpoint",
)
add(
    "test--checkpoint-on-a-file",
    "test",
    "--checkpoint given with a checkpoint file (it picks one in a run folder)",
    steps(cp("syn"), cp("unet.pt", "ckpt.pt")),
    ["test", "{t}/ckpt.pt", "--data", "{t}/syn", "--checkpoint", "best", "--out", "{t}/res", "--no-report"],
    ["--checkpoint"],
    group="options",
)
add(
    "compare--collect-with-data",
    "compare",
    "--collect with --data (it reads everything from the run folders)",
    cp("syn"),
    ["compare", "--collect", "--data", "{t}/syn", "--out", "{t}/study"],
    ["--data"],
    group="options",
)
add(
    "prepare-split-val-absent",
    "prepare",
    "--val-cases names a case the folder lacks",
    PREPARE_SETUP,
    [*PREPARE, "--test-cases", "3", "--val-cases", "99"],
    ["99"],
    group="options",
)
add(
    "test-ckpt-other-dataset",
    "test",
    "a Synapse checkpoint tested on an ACDC folder",
    steps(TEST_SETUP, cp("acdc")),
    ["test", "{t}/run", "--data", "{t}/acdc", "--split", "val", "--no-report"],
    ["acdc"],
    group="checkpoint",
)

# ---------------------------------------------------------------- predict: the scan


def _write_array(rel: str, arr: np.ndarray):
    def run(c: Ctx) -> None:
        import SimpleITK as sitk

        (c.t / rel).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(c.t / rel))

    return run


def _poke(value: float):
    def fn(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[1, 10, 10] = value
        return a

    return fn


SCAN_FAULTS = [
    ("missing", "the scan does not exist", rm("scan.nii.gz"), ["scan.nii.gz"], "paths"),
    ("empty", "empty scan file (0 bytes)", wr("scan.nii.gz"), ["scan.nii.gz"], "paths"),
    ("garbage", "scan of random bytes", wr("scan.nii.gz", GARBAGE), ["scan.nii.gz"], "paths"),
    (
        "truncated",
        "scan cut to 60 %",
        on("scan.nii.gz", lambda p: truncate(p, 0.6)),
        ["scan.nii.gz"],
        "paths",
    ),
    ("text", "a text file named .nii.gz", wr("scan.nii.gz", "not an image\n"), ["scan.nii.gz"], "paths"),
    (
        "folder-empty",
        "an empty folder as the scan",
        steps(rm("scan.nii.gz"), md("scan.nii.gz")),
        ["scan.nii.gz"],
        "paths",
    ),
    (
        "folder-no-dicom",
        "a folder of non-DICOM files",
        steps(rm("scan.nii.gz"), wr("scan.nii.gz/a.txt", "x"), wr("scan.nii.gz/b.bin", GARBAGE)),
        ["scan.nii.gz"],
        "paths",
    ),
    (
        "2d",
        "a 2-D image",
        steps(rm("scan.nii.gz"), _write_array("scan.nii.gz", np.zeros((32, 32), np.int16))),
        ["scan.nii.gz"],
        "scan",
    ),
    (
        "4d",
        "a 4-D image",
        steps(rm("scan.nii.gz"), _write_array("scan.nii.gz", np.zeros((2, 4, 32, 32), np.int16))),
        ["scan.nii.gz"],
        "scan",
    ),
    (
        "rgb",
        "an RGB (vector-pixel) image",
        steps(rm("scan.nii.gz"), lambda c: _rgb(c.t / "scan.nii.gz")),
        ["scan.nii.gz"],
        "scan",
    ),
    (
        "nan",
        "a CT with a NaN voxel",
        on("scan.nii.gz", lambda p: edit_nifti(p, _poke(np.nan))),
        ["scan.nii.gz"],
        "scan",
    ),
    (
        "inf",
        "a CT with an inf voxel",
        on("scan.nii.gz", lambda p: edit_nifti(p, _poke(np.inf))),
        ["scan.nii.gz"],
        "scan",
    ),
    (
        "png",
        "a PNG picture as the scan",
        steps(rm("scan.nii.gz"), lambda c: _png(c.t / "scan.png")),
        ["scan.png"],
        "scan",
    ),
]


def _rgb(path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 16, 16, 3), np.uint8), isVector=True), str(path))


def _png(path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.uint8)), str(path))


for slug, what, damage, expect, group in SCAN_FAULTS:
    argv = [a.replace("scan.nii.gz", "scan.png") for a in PREDICT] if slug == "png" else PREDICT
    add(f"predict-scan-{slug}", "predict", what, steps(PREDICT_SETUP, damage), argv, expect, group=group)

# ---------------------------------------------------------------- predict: DICOM series (../shared)


def _dicom_files(c: Ctx) -> list[Path]:
    return sorted((c.t / "dicom").iterdir())


def _dicom(fn):
    return lambda c: (c.dicom(), fn(c))


DICOM_FAULTS = [
    ("slice-missing", "one slice in the middle deleted", lambda c: _dicom_files(c)[10].unlink(), ["dicom"]),
    (
        "two-slices-missing",
        "two neighbouring slices deleted",
        lambda c: [p.unlink() for p in _dicom_files(c)[5:7]],
        ["dicom"],
    ),
    ("slice-truncated", "one slice file cut in half", lambda c: truncate(_dicom_files(c)[10]), ["dicom"]),
    (
        "slice-empty",
        "one slice file emptied (0 bytes)",
        lambda c: _dicom_files(c)[10].write_bytes(b""),
        ["dicom"],
    ),
    (
        "non-dicom-file",
        "a non-DICOM file among the slices",
        lambda c: c.write("dicom/notes.txt", "hello\n"),
        ["notes.txt"],
    ),
    (
        "garbage-file",
        "a file of random bytes among the slices",
        lambda c: c.write("dicom/CT.garbage", GARBAGE),
        ["CT.garbage"],
    ),
    (
        "duplicate-slice",
        "one slice copied under another name (duplicate position)",
        lambda c: shutil.copy(_dicom_files(c)[10], c.t / "dicom" / "CT.copy"),
        ["dicom"],
    ),
]
for slug, what, fn, expect in DICOM_FAULTS:
    add(
        f"predict-dicom-{slug}",
        "predict",
        what,
        steps(cp("unet.pt", "ckpt.pt"), _dicom(fn)),
        ["predict", "{t}/ckpt.pt", "{t}/dicom", "--out", "{t}/out/seg.nii.gz"],
        expect,
        group="dicom",
        needs_shared=True,
    )
add(
    "predict-dicom-series-uid-unknown",
    "predict",
    "--series-uid that the folder does not hold",
    steps(cp("unet.pt", "ckpt.pt"), lambda c: c.dicom()),
    ["predict", "{t}/ckpt.pt", "{t}/dicom", "--out", "{t}/out/seg.nii.gz", "--series-uid", "1.2.3"],
    ["1.2.3"],
    group="dicom",
    needs_shared=True,
)


# ---------------------------------------------------------------- predict: DICOM as it arrives (generated)


def _gen_series(dest: str, n: int, description: str = "CT abdomen", tilt: float = 0.0, prefix: str = "IM"):
    """A generated 4-slice 8x8 CT series (tests/dicomgen.py) in the case folder ``dest``."""

    def run(c: Ctx) -> None:
        import dicomgen

        slices = dicomgen.ct_slices(
            series_uid=dicomgen.uid(n), study_uid=dicomgen.uid(100), description=description, tilt_deg=tilt
        )
        dicomgen.write_series(c.t / dest, slices, prefix)

    return run


def _gen_export(dest: str, series: int):
    """A DICOMDIR media export of ``series`` generated series (0: the index alone, no image below it)."""

    def run(c: Ctx) -> None:
        import dicomgen

        made = [
            dicomgen.ct_slices(series_uid=dicomgen.uid(k), study_uid=dicomgen.uid(100), number=k)
            for k in range(1, max(series, 1) + 1)
        ]
        dicomgen.write_dicomdir(c.t / dest, *made)
        if not series:
            for p in sorted((c.t / dest).iterdir()):
                if p.is_dir():
                    shutil.rmtree(p)

    return run


GEN_PREDICT = ["predict", "{t}/ckpt.pt", "{t}/dicom", "--out", "{t}/out/seg.nii.gz"]
EXPORT_PREDICT = ["predict", "{t}/ckpt.pt", "{t}/cd", "--out", "{t}/out"]
CKPT = cp("unet.pt", "ckpt.pt")
TWO_IN_ONE = steps(CKPT, _gen_series("dicom", 1, prefix="A"), _gen_series("dicom", 2, "CT lung", prefix="B"))
SAME_DESCRIPTION = steps(CKPT, _gen_series("dicom", 1, prefix="A"), _gen_series("dicom", 2, prefix="B"))
GENERATED_DICOM = [
    (
        "predict-dicom-gantry-tilt",
        "a gantry-tilted series (15 deg): refused, not stacked as orthogonal",
        steps(CKPT, _gen_series("dicom", 1, tilt=15.0)),
        GEN_PREDICT,
        ["dicom", "15.00 deg"],
    ),
    (
        "predict-dicom-several-series",
        "two series in one folder, none picked",
        TWO_IN_ONE,
        GEN_PREDICT,
        ["dicom", "--series"],
    ),
    (
        "predict-dicom-series-description-twice",
        "--series DESCRIPTION that names two series",
        SAME_DESCRIPTION,
        [*GEN_PREDICT, "--series", "CT abdomen"],
        ["dicom", "CT abdomen"],
    ),
    (
        "predict-dicomdir-without-images",
        "a DICOMDIR media export with no image series below it",
        steps(CKPT, _gen_export("cd", 0)),
        EXPORT_PREDICT,
        ["cd"],
    ),
    (
        "predict-dicomdir-several-series-one-out",
        "a media export of two series, --out naming one label map",
        steps(CKPT, _gen_export("cd", 2)),
        replace_opt(EXPORT_PREDICT, "--out", "{t}/seg.nii.gz"),
        ["--out", "cd"],
    ),
]
for cid, what, setup, argv, expect in GENERATED_DICOM:
    add(cid, "predict", what, setup, argv, expect, group="dicom")


def _onnx(**meta):
    def run(c: Ctx) -> None:
        from badinput.inputs import write_organseg_onnx

        write_organseg_onnx(c.t / "model.onnx", **meta)

    return run


ONNX_PREDICT = ["predict", "{t}/model.onnx", "{t}/scan.nii.gz", "--out", "{t}/o.nii.gz"]
ONNX_FAULTS = [
    ("class-count", "a graph of 4 output channels, metadata naming 9 classes", {"channels": 4}, "9 classes"),
    ("input-size-bad", "metadata input_size that is not [H, W]", {"input_size": [8]}, "input_size"),
    ("input-size-other", "metadata input_size the graph does not take", {"input_size": [16, 16]}, "[16, 16]"),
    ("preprocessing-bad", "metadata preprocessing of an unknown kind", {"preprocessing": {"kind": "x"}}, "x"),
]
for slug, what, meta, needle in ONNX_FAULTS:
    setup = steps(cp("scan.nii.gz"), _onnx(**meta))
    expect = ["model.onnx", needle]
    add(f"predict-onnx-{slug}", "predict", what, setup, ONNX_PREDICT, expect, group="checkpoint")

# ---------------------------------------------------------------- output over input, unwritable outputs

OVER = [
    (
        "predict",
        "out-is-scan",
        "--out is the input scan",
        PREDICT_SETUP,
        replace_opt(PREDICT, "--out", "{t}/scan.nii.gz"),
        ["scan.nii.gz"],
    ),
    (
        "predict",
        "out-in-dicom",
        "--out inside the input DICOM folder",
        steps(cp("unet.pt", "ckpt.pt"), lambda c: c.dicom()),
        ["predict", "{t}/ckpt.pt", "{t}/dicom", "--out", "{t}/dicom/seg.nii.gz"],
        ["dicom"],
    ),
    (
        "predict",
        "sidecar-is-checkpoint",
        "--out's JSON sidecar (OUT.json) is the checkpoint file",
        steps(cp("unet.pt", "seg.json"), cp("scan.nii.gz")),
        ["predict", "{t}/seg.json", "{t}/scan.nii.gz", "--out", "{t}/seg.nii.gz"],
        ["seg.json"],
    ),
    (
        "predict",
        "overlay-is-scan",
        "--overlay is the input scan",
        PREDICT_SETUP,
        [*PREDICT, "--overlay", "{t}/scan.nii.gz"],
        ["scan.nii.gz"],
    ),
    (
        "predict",
        "overlay-is-checkpoint",
        "--overlay is the checkpoint (named .png)",
        steps(cp("unet.pt", "ckpt.png"), cp("scan.nii.gz")),
        [
            "predict",
            "{t}/ckpt.png",
            "{t}/scan.nii.gz",
            "--out",
            "{t}/out/seg.nii.gz",
            "--overlay",
            "{t}/ckpt.png",
        ],
        ["ckpt.png"],
    ),
    ("test", "out-is-data", "--out is the dataset folder", TEST_SETUP, [*TEST, "--out", "{t}/syn"], ["syn"]),
    (
        "test",
        "out-in-data",
        "--out inside the dataset folder",
        TEST_SETUP,
        [*TEST, "--out", "{t}/syn/test_vol_h5"],
        ["syn"],
    ),
    (
        "test",
        "out-is-checkpoint",
        "--out is the checkpoint file",
        TEST_SETUP,
        [*TEST, "--out", "{t}/run/checkpoints/last.pt"],
        ["last.pt"],
    ),
    (
        "train",
        "out-is-data",
        "--out is the dataset folder",
        TRAIN_SETUP,
        replace_opt(TRAIN, "--out", "{t}/syn"),
        ["syn"],
    ),
    (
        "train",
        "out-in-data",
        "--out inside the dataset folder",
        TRAIN_SETUP,
        replace_opt(TRAIN, "--out", "{t}/syn/train_npz"),
        ["syn"],
    ),
    (
        "compare",
        "out-is-data",
        "--out is the dataset folder",
        COMPARE_SETUP,
        replace_opt(COMPARE, "--out", "{t}/syn"),
        ["syn"],
    ),
    (
        "compare",
        "out-in-data",
        "--out inside the dataset folder",
        COMPARE_SETUP,
        replace_opt(COMPARE, "--out", "{t}/syn/study"),
        ["syn"],
    ),
    (
        "prepare",
        "out-is-raw",
        "--out is --raw",
        PREPARE_SETUP,
        replace_opt(PREPARE, "--out", "{t}/raw"),
        ["raw"],
    ),
    (
        "prepare",
        "out-in-raw",
        "--out inside --raw",
        PREPARE_SETUP,
        replace_opt(PREPARE, "--out", "{t}/raw/img"),
        ["raw"],
    ),
    (
        "phantom",
        "out-is-raw-folder",
        "--out is a folder that already holds phantom cases (another seed)",
        cp("raw", "ph"),
        [*PHANTOM, "--seed", "5"],
        ["ph"],
    ),
    (
        "phantom",
        "out-not-empty",
        "--out is a folder holding other files",
        wr("ph/notes.txt", "keep me\n"),
        PHANTOM,
        ["ph"],
    ),
]
for verb, slug, what, setup, argv, expect in OVER:
    add(f"{verb}-{slug}", verb, what, setup, argv, expect, group="over-input", needs_shared="dicom" in slug)

A_FILE = wr("blocker", "a regular file\n")
UNWRITABLE = [
    (
        "predict",
        "out-parent-file",
        "--out's parent is a regular file",
        steps(PREDICT_SETUP, A_FILE),
        replace_opt(PREDICT, "--out", "{t}/blocker/seg.nii.gz"),
        ["blocker"],
    ),
    (
        "predict",
        "out-is-folder",
        "--out is an existing folder",
        steps(PREDICT_SETUP, md("out/seg.nii.gz")),
        PREDICT,
        ["seg.nii.gz"],
    ),
    (
        "predict",
        "sidecar-is-folder",
        "--out's JSON sidecar path is a folder (label map written, JSON not)",
        steps(PREDICT_SETUP, md("out/seg.json")),
        PREDICT,
        ["seg.json"],
    ),
    (
        "predict",
        "overlay-parent-file",
        "--overlay's parent is a regular file",
        steps(PREDICT_SETUP, A_FILE),
        [*PREDICT, "--overlay", "{t}/blocker/o.png"],
        ["blocker"],
    ),
    (
        "test",
        "out-parent-file",
        "--out's parent is a regular file",
        steps(TEST_SETUP, A_FILE),
        [*TEST, "--out", "{t}/blocker/res"],
        ["blocker"],
    ),
    (
        "test",
        "results-is-file",
        "the run's results/ is a regular file",
        steps(TEST_SETUP, wr("run/results", "x")),
        TEST,
        ["results"],
    ),
    (
        "train",
        "out-is-file",
        "--out is a regular file",
        steps(TRAIN_SETUP, A_FILE),
        replace_opt(TRAIN, "--out", "{t}/blocker"),
        ["blocker"],
    ),
    (
        "train",
        "out-parent-file",
        "--out's parent is a regular file",
        steps(TRAIN_SETUP, A_FILE),
        replace_opt(TRAIN, "--out", "{t}/blocker/run"),
        ["blocker"],
    ),
    (
        "prepare",
        "out-is-file",
        "--out is a regular file",
        steps(PREPARE_SETUP, A_FILE),
        replace_opt(PREPARE, "--out", "{t}/blocker"),
        ["blocker"],
    ),
    (
        "prepare",
        "out-parent-file",
        "--out's parent is a regular file",
        steps(PREPARE_SETUP, A_FILE),
        replace_opt(PREPARE, "--out", "{t}/blocker/prep"),
        ["blocker"],
    ),
    (
        "phantom",
        "out-is-file",
        "--out is a regular file",
        A_FILE,
        replace_opt(PHANTOM, "--out", "{t}/blocker"),
        ["blocker"],
    ),
    (
        "phantom",
        "out-parent-file",
        "--out's parent is a regular file",
        A_FILE,
        replace_opt(PHANTOM, "--out", "{t}/blocker/ph"),
        ["blocker"],
    ),
    (
        "report",
        "report-dir-is-file",
        "the run's report/ is a regular file",
        steps(REPORT_SETUP, rm("run/report"), wr("run/report", "x")),
        ["report", "{t}/run"],
        ["report"],
    ),
    (
        "report",
        "report-md-is-folder",
        "the run's report.md is a folder",
        steps(REPORT_SETUP, rm("run/report.md"), md("run/report.md")),
        ["report", "{t}/run"],
        ["report.md"],
    ),
    (
        "compare",
        "out-is-file",
        "--out is a regular file",
        steps(COMPARE_SETUP, A_FILE),
        replace_opt(COMPARE, "--out", "{t}/blocker"),
        ["blocker"],
    ),
    (
        "compare",
        "out-parent-file",
        "--out's parent is a regular file",
        steps(COMPARE_SETUP, A_FILE),
        replace_opt(COMPARE, "--out", "{t}/blocker/study"),
        ["blocker"],
    ),
    (
        "demo",
        "out-is-file",
        "--out is a regular file",
        A_FILE,
        replace_opt(DEMO, "--out", "{t}/blocker"),
        ["blocker"],
    ),
    (
        "demo",
        "out-parent-file",
        "--out's parent is a regular file",
        A_FILE,
        replace_opt(DEMO, "--out", "{t}/blocker/demo"),
        ["blocker"],
    ),
]
for verb, slug, what, setup, argv, expect in UNWRITABLE:
    add(f"{verb}-{slug}", verb, what, setup, argv, expect, group="unwritable")
# The results are complete before the report is written: they may stay, the report must fail cleanly.
add(
    "test-report-is-folder",
    "test",
    "the run's report.md is a folder",
    steps(TEST_SETUP, md("run/report.md")),
    TEST[:-1],
    ["report.md"],
    group="unwritable",
    allow_new=("run/results/*/*",),
)

# ---------------------------------------------------------------- devices

DEVICE_CMDS = [
    ("predict", PREDICT_SETUP, PREDICT),
    ("test", TEST_SETUP, TEST),
    ("train", TRAIN_SETUP, TRAIN),
    ("compare", COMPARE_SETUP, COMPARE),
    ("demo", NOTHING, DEMO),
]
for verb, setup, argv in DEVICE_CMDS:
    for dev in ("cuda", "gpu", "cuda:7"):
        if verb in ("compare", "demo") and dev == "cuda:7":
            continue
        add(
            f"{verb}-device-{dev.replace(':', '')}",
            verb,
            f"--device {dev} on a build without CUDA",
            setup,
            [*argv, "--device", dev],
            [dev],
            group="device",
        )
for value in ("cuda", "gpu"):
    add(
        f"train-set-device-{value}",
        "train",
        f"--set train.device={value} on a build without CUDA",
        TRAIN_SETUP,
        [*TRAIN, "--set", f"train.device={value}"],
        ["train.device" if value == "gpu" else "cuda"],
        group="device",
    )

# ---------------------------------------------------------------- integer options of every verb

INT_OPTS = [
    # verb, option, setup, base argv, bad values (each a string as typed)
    ("predict", "--batch-size", PREDICT_SETUP, PREDICT, ["-1", "0", "1.5", "x"]),
    ("test", "--batch-size", TEST_SETUP, TEST, ["-1", "0", "1.5", "x"]),
    ("test", "--max-cases", TEST_SETUP, TEST, ["-1", "0", "1.5", "x"]),
    ("phantom", "--cases", NOTHING, PHANTOM, ["-1", "0", "1.5", "x"]),
    ("phantom", "--size", NOTHING, PHANTOM, ["-1", "0", "31", "1.5", "x"]),
    ("phantom", "--slices", NOTHING, PHANTOM, ["-1", "0", "3", "x"]),
    ("phantom", "--seed", NOTHING, PHANTOM, ["-1", "x"]),
    ("prepare", "--split-seed", PREPARE_SETUP, PREPARE, ["x", "1.5"]),
    ("compare", "--jobs", COMPARE_SETUP, COMPARE, ["-1", "0", "x"]),
    ("compare", "--seeds", COMPARE_SETUP, COMPARE, ["x", "1.5", "true"]),
    ("info", "--img-size", NOTHING, ["info", "--models", "unet"], ["-16", "0", "100", "x"]),
    ("prepare", "--workers", PREPARE_SETUP, PREPARE, ["-1", "0", "1.5", "x", "100000"]),
]
for verb, opt, setup, argv, values in INT_OPTS:
    for v in values:
        slug = {"-1": "neg1", "-16": "neg16", "1.5": "frac", "x": "text", "1,,2": "empty-item"}.get(v, v)
        add(
            f"{verb}{opt}-{slug}",
            verb,
            f"{opt} {v}",
            setup,
            replace_opt(argv, opt, v),
            [f"{opt}|{opt[2:].replace('-', '_')}"],  # the option, or its name as a key
            group="options",
        )

FLOAT_OPTS = [
    ("prepare", "--test-fraction", PREPARE_SETUP, PREPARE, ["-0.1", "1", "1.5", "nan", "x"]),
]
for verb, opt, setup, argv, values in FLOAT_OPTS:
    for v in values:
        add(
            f"{verb}{opt}-{v.replace('-', 'neg').replace('.', 'p')}",
            verb,
            f"{opt} {v}",
            setup,
            replace_opt(argv, opt, v),
            [f"{opt}|{opt[2:].replace('-', '_')}"],  # the option, or its name as a key
            group="options",
        )
for lo, hi, slug in (
    ("275", "-125", "reversed"),
    ("100", "100", "empty"),
    ("nan", "275", "nan"),
    ("-125", "inf", "inf"),
):
    add(
        f"prepare--window-{slug}",
        "prepare",
        f"--window {lo} {hi}",
        PREPARE_SETUP,
        [*PREPARE, "--window", lo, hi],
        ["window"],
        group="options",
    )
add(
    "compare--checkpoint-unknown",
    "compare",
    "--collect --checkpoint of no known form",
    cp("run", "study/runs/unet__seed1234"),
    ["compare", "--collect", "--out", "{t}/study", "--checkpoint", "final"],
    ["final"],
    group="options",
)
add(
    "compare--models-unknown",
    "compare",
    "--models names no network",
    COMPARE_SETUP,
    replace_opt(COMPARE, "--models", "resnet"),
    ["resnet"],
    group="options",
)
add(
    "info--models-unknown",
    "info",
    "--models names no network",
    NOTHING,
    ["info", "--models", "resnet"],
    ["resnet"],
    group="options",
)
add(
    "compare--preset-unknown",
    "compare",
    "--preset names no preset",
    COMPARE_SETUP,
    [*COMPARE, "--preset", "nope_{model}"],
    ["nope_unet"],
    group="options",
)
add(
    "compare--models-no-reference-preset",
    "compare",
    "--models with a network that has only a fast preset, and no --preset",
    COMPARE_SETUP,
    [*replace_opt(COMPARE, "--models", None), "--models", "unet", "nnunet_2d"],
    ["nnunet_2d_synapse_fast"],
    group="options",
)
add(
    "compare--preset-missing-yaml",
    "compare",
    "--preset is a YAML file that does not exist",
    COMPARE_SETUP,
    [*COMPARE, "--preset", "{t}/missing.yaml"],
    ["missing.yaml"],
    group="options",
)
add(
    "compare--collect-empty",
    "compare",
    "--collect on a study folder with no runs",
    md("study"),
    ["compare", "--collect", "--out", "{t}/study"],
    ["study"],
    group="paths",
)
add(
    "compare--collect-garbage-run",
    "compare",
    "--collect on a run folder whose summary.json is garbage",
    steps(
        cp("run", "study/runs/unet__seed1234"),
        wr("study/runs/unet__seed1234/results/test_last/summary.json", GARBAGE),
    ),
    ["compare", "--collect", "--out", "{t}/study"],
    ["summary.json"],
    group="paths",
)
add(
    "compare--collect-not-a-run",
    "compare",
    "--collect given a file as a run folder",
    wr("notes.txt", "x"),
    ["compare", "--collect", "{t}/notes.txt", "--out", "{t}/study"],
    ["notes.txt"],
    group="paths",
)

# The SLURM launcher (compare --launcher slurm): every fault below stops before anything is submitted, on a
# login node as well (submitit missing is tested in tests/test_study_launcher.py: CI has the extra).
SLURM = [*COMPARE, "--launcher", "slurm", "--slurm-partition", "gpu"]
LAUNCHER_CASES = [
    (
        "compare--launcher-slurm-no-partition",
        "--launcher slurm without --slurm-partition",
        [*COMPARE, "--launcher", "slurm"],
        ["--slurm-partition"],
    ),
    (
        "compare--slurm-partition-without-slurm",
        "--slurm-partition without --launcher slurm",
        [*COMPARE, "--slurm-partition", "gpu"],
        ["--slurm-partition"],
    ),
    (
        "compare--launcher-slurm-with-jobs",
        "--launcher slurm with --jobs 2",
        [*SLURM, "--jobs", "2"],
        ["--jobs"],
    ),
    (
        "compare--slurm-extra-no-value",
        "--slurm-extra without =VALUE",
        [*SLURM, "--slurm-extra", "mail-type"],
        ["--slurm-extra"],
    ),
    (
        "compare--launcher-unknown",
        "--launcher names no launcher",
        [*COMPARE, "--launcher", "pbs"],
        ["--launcher"],
    ),
]
for id_, what, argv, expect in LAUNCHER_CASES:
    add(id_, "compare", what, COMPARE_SETUP, argv, expect, group="options")
add(
    "compare--launcher-slurm-with-collect",
    "compare",
    "--launcher slurm with --collect (it only aggregates)",
    cp("run", "study/runs/unet__seed1234"),
    ["compare", "--collect", "--out", "{t}/study", "--launcher", "slurm", "--slurm-partition", "gpu"],
    ["--collect"],
    group="options",
)
for opt, values in (
    ("--gpus-per-run", ["-1", "65", "x"]),
    ("--slurm-time", ["0", "x"]),
    ("--slurm-mem-gb", ["0", "x"]),
    ("--slurm-max-parallel", ["0"]),
    ("--slurm-retries", ["-1"]),
):
    for v in values:
        slug = {"-1": "neg1", "x": "text"}.get(v, v)
        add(
            f"compare{opt}-{slug}",
            "compare",
            f"{opt} {v}",
            COMPARE_SETUP,
            [*SLURM, opt, v],
            [opt],
            group="options",
        )

# ---------------------------------------------------------------- configuration: --set KEY=VALUE on train

INT_KEYS = {
    # key: bad values (0 or null are fine for some keys)
    "train.img_size": ["true", "-1", "0", "1.5", "abc", "[32]", "{a: 1}", "null"],
    "train.batch_size": ["true", "false", "-1", "0", "1.5", "abc", "[2]", "null"],
    "train.max_epochs": ["true", "-1", "0", "1.5", "abc", "null"],
    "train.max_iterations": ["true", "-1", "0", "1.5", "abc", "[1]"],
    "train.reference_batch": ["true", "-1", "0", "2.5", "abc"],
    "train.log_every": ["true", "-1", "0", "1.5", "abc"],
    "train.seed": ["true", "1.5", "abc", "[1]"],
    "train.num_workers": ["true", "-1", "1.5", "abc"],
    "train.threads": ["true", "-1", "0", "1.5", "abc"],
    "train.warmup_iterations": ["true", "-1", "1.5", "abc"],
    "train.fitted_iterations": ["true", "-1", "0", "1.5", "abc"],
    "val.every": ["true", "-1", "1.5", "abc"],
    "val.batch_size": ["true", "-1", "0", "1.5", "abc"],
    "val.max_cases": ["true", "-1", "0", "1.5", "abc"],
    "data.max_train_slices": ["true", "-1", "0", "1.5", "abc"],
    "data.fold": ["true", "-1", "1.5", "abc", "5"],
    "data.folds": ["true", "1", "0", "1.5", "abc", "null"],
    "data.fold_seed": ["true", "-1", "abc"],
    "checkpoint.save_interval": ["true", "-1", "0", "1.5", "abc"],
}
FLOAT_KEYS = {
    "train.base_lr": ["true", "-0.01", "0", "abc", "[0.1]", ".nan", ".inf"],
    "train.momentum": ["true", "-0.9", "abc", ".nan"],
    "train.weight_decay": ["true", "-1e-4", "abc", ".nan"],
    "train.poly_power": ["true", "-1", "abc", ".nan"],
    "train.ce_weight": ["true", "-0.4", "abc", ".nan"],
    "train.dice_weight": ["true", "-0.6", "abc", ".nan"],
    "train.time_budget_min": ["true", "-5", "0", "abc", ".nan"],
}
CHOICE_KEYS = {
    "train.precision": ["fp64", "true", "16"],
    "train.augment": ["heavy", "true"],
    "train.lr_scaling": ["sqrt", "1"],
    "train.optimizer": ["adam", "true"],
    "train.schedule": ["step", "1"],
    "train.channels_last": ["maybe", "2"],
    "train.deterministic": ["maybe", "2"],
    "data.in_memory": ["maybe", "2"],
    "train.progress": ["maybe", "2"],
    "model.name": ["1", "null"],
    "model.args": ["5", "unet"],
    "model.pretrained": ["123"],
}


def _vslug(v: str) -> str:
    table = {
        "-1": "neg",
        ".nan": "nan",
        ".inf": "inf",
        "1.5": "frac",
        "2.5": "frac",
        "abc": "text",
        "{a: 1}": "mapping",
        "true": "bool",
        "false": "bool-false",
        "null": "null",
        "{t}/missing.pth": "missing",
    }
    if v in table:
        return table[v]
    if v.startswith("["):
        return "list"
    if v.startswith("-"):
        return "neg" + v[1:].replace(".", "p")
    return v.replace(".", "p")


for table in (INT_KEYS, FLOAT_KEYS, CHOICE_KEYS):
    for key, values in table.items():
        for v in values:
            add(
                f"train-set-{key}-{_vslug(v)}",
                "train",
                f"--set {key}={v}",
                TRAIN_SETUP,
                [*TRAIN, "--set", f"{key}={v}"],
                [key],
                group="config",
            )

# The value is the problem here, and naming it (or the argument) is enough.
for key, values, named in (
    ("model.name", ["resnet"], "resnet"),
    ("model.args.width", ["0", "-1", "100", "abc", "true"], "width"),
    ("model.pretrained", ["{t}/missing.pth"], "missing.pth"),
):
    for v in values:
        add(
            f"train-set-{key}-{_vslug(v)}",
            "train",
            f"--set {key}={v}",
            TRAIN_SETUP,
            [*TRAIN, "--set", f"{key}={v}"],
            [named],
            group="config",
        )
# torch.compile of a truthy non-bool would start compiling for minutes: a subprocess with a short limit.
for v in ("maybe", "2"):
    add(
        f"train-set-train.compile-{v}",
        "train",
        f"--set train.compile={v}",
        TRAIN_SETUP,
        [*TRAIN, "--set", f"train.compile={v}"],
        ["train.compile"],
        group="config",
        subprocess=True,
        cpu_limit_s=30,
    )

STRUCT = [
    ("unknown-key", "a key that does not exist", "train.lr=0.01", ["train.lr"]),
    ("unknown-section", "a section that does not exist", "optimizer.lr=0.01", ["optimizer"]),
    ("typo-section", "a misspelt section", "trian.batch_size=2", ["trian"]),
    ("section-as-value", "a whole section set to a number", "train=1", ["train"]),
    ("section-as-string", "a whole section set to a string", "model=unet", ["model"]),
    ("section-as-list", "a whole section set to a list", "val=[]", ["val"]),
    ("scalar-as-section", "a number key used as a section", "train.batch_size.x=1", ["train.batch_size"]),
    ("no-equals", "no '=' in the item", "train.batch_size", ["train.batch_size"]),
    ("empty-key", "an empty key", "=1", ["--set"]),
    ("empty-value", "an empty value (YAML null)", "train.batch_size=", ["train.batch_size"]),
    ("bad-yaml", "a value that is not YAML", "train.batch_size=[2", ["train.batch_size"]),
    (
        "num-classes",
        "model.args.num_classes, which comes from the data",
        "model.args.num_classes=3",
        ["num_classes"],
    ),
    ("unknown-model-arg", "a constructor argument the U-Net does not take", "model.args.depth=3", ["depth"]),
]
for slug, what, item, expect in STRUCT:
    add(
        f"train-set-{slug}",
        "train",
        f"--set {item}: {what}",
        TRAIN_SETUP,
        [*TRAIN, "--set", item],
        expect,
        group="config",
    )
for slug, item, expect in (
    ("unknown-key", "train.lr=0.01,0.05", ["train.lr"]),
    ("bool-batch", "train.batch_size=true,2", ["train.batch_size"]),
    ("neg-lr", "train.base_lr=-1,0.01", ["train.base_lr"]),
    ("empty-value", "train.base_lr=", ["train.base_lr"]),
):
    add(
        f"compare-set-{slug}",
        "compare",
        f"--set {item}",
        COMPARE_SETUP,
        [*COMPARE, "--set", item],
        expect,
        group="config",
    )

# U-Net / Swin-Unet input sizes
SWIN_TRAIN = [
    "train",
    "swin_unet_synapse",
    "--data",
    "{t}/syn",
    "--out",
    "{t}/run2",
    *[
        x
        for item in (
            "model.args.embed_dim=12",
            "model.args.num_heads=[1,2,3,4]",
            "train.batch_size=2",
            "train.max_iterations=1",
            "val.every=0",
            "train.progress=false",
        )
        for x in ("--set", item)
    ],
]
for model, size in (("unet", "100"), ("unet", "40"), ("swin_unet", "100")):
    argv = [*(SWIN_TRAIN if model == "swin_unet" else TRAIN), "--set", f"train.img_size={size}"]
    add(
        f"train-{model}-img-size-{size}",
        "train",
        f"{model} with train.img_size={size}",
        TRAIN_SETUP,
        argv,
        ["img_size"],
        group="config",
    )

# YAML configuration files
YAML_FAULTS = [
    ("missing", "the YAML file does not exist", NOTHING, ["cfg.yaml"]),
    ("empty", "an empty YAML file", wr("cfg.yaml"), ["cfg.yaml"]),
    ("garbage", "random bytes", wr("cfg.yaml", GARBAGE), ["cfg.yaml"]),
    ("invalid", "YAML that does not parse", wr("cfg.yaml", "model:\n  name: [unet\n"), ["cfg.yaml"]),
    ("list", "a YAML list, not a mapping", wr("cfg.yaml", "- model\n- train\n"), ["cfg.yaml"]),
    (
        "unknown-section",
        "an unknown section",
        wr("cfg.yaml", "model: {name: unet}\noptim: {lr: 1}\n"),
        ["optim"],
    ),
    (
        "unknown-key",
        "an unknown key",
        wr("cfg.yaml", "model: {name: unet}\ntrain: {learning_rate: 1}\n"),
        ["learning_rate"],
    ),
    (
        "wrong-type",
        "momentum is a string",
        wr("cfg.yaml", "model: {name: unet}\ntrain: {momentum: high}\n"),
        ["momentum"],
    ),
    ("section-scalar", "train is a number", wr("cfg.yaml", "model: {name: unet}\ntrain: 3\n"), ["train"]),
    ("folder", "a folder named cfg.yaml", md("cfg.yaml"), ["cfg.yaml"]),
]
for slug, what, setup, expect in YAML_FAULTS:
    argv = ["train", "{t}/cfg.yaml", "--data", "{t}/syn", "--out", "{t}/run2", *TRAIN_SETS]
    add(f"train-yaml-{slug}", "train", what, steps(TRAIN_SETUP, setup), argv, expect, group="config")
add(
    "train-preset-unknown",
    "train",
    "a preset name that does not exist",
    TRAIN_SETUP,
    [a.replace("unet_synapse", "unet_synapse_v2") for a in TRAIN],
    ["unet_synapse_v2"],
    group="config",
)

# ---------------------------------------------------------------- dataset folders given to train / test


def _kill_after_case1(c: Ctx) -> None:
    """prepare killed after writing case 1 (of 2 train + 1 test): no lists, no sidecar."""
    s = c.t / "syn"
    for p in [
        *s.glob("train_npz/case0002_*"),
        *s.glob("test_vol_h5/*"),
        s / ".organseg_prepare/case0002.json",
        s / ".organseg_prepare/case0003.json",
        s / "organseg_synapse.json",
        s / "SYNTHETIC.txt",
    ]:
        p.unlink()
    shutil.rmtree(s / "lists_Synapse")


def _kill_mid_case2(c: Ctx) -> None:
    """prepare killed in the middle of case 2's slices."""
    _kill_after_case1(c)
    syn = c.t / "syn"
    shutil.copy(c.base / "syn" / "train_npz" / "case0002_slice000.npz", syn / "train_npz")
    shutil.copy(c.base / "syn" / "train_npz" / "case0002_slice001.npz", syn / "train_npz")


def _kill_before_sidecar(c: Ctx) -> None:
    """prepare killed after the lists, before the sidecar (its last write)."""
    (c.t / "syn" / "organseg_synapse.json").unlink()


def _all_npz(fn):
    return on_glob("syn/train_npz/*.npz", lambda p: edit_npz(p, fn))


def _first_npz(fn):
    return lambda c: edit_npz(sorted((c.t / "syn" / "train_npz").glob("*.npz"))[0], fn)


def _h5(rel: str, fn):
    return on(rel, lambda p: edit_h5(p, fn))


def _scale(f: float):
    return lambda i, lab: (i * f, lab)


def _nan(i, lab):
    i = i.astype(np.float32).copy()
    i[..., 3, 3] = np.nan
    return i, lab


def _label_id(v: int):
    def fn(i, lab):
        lab = lab.copy()
        lab[..., 1, 1] = v
        return i, lab

    return fn


def _crop_label(i, lab):
    return i, lab[..., :-2, :]


SYN_DATA = [
    # (slug, what, damage, expect, also test?)
    ("hu-image", "training slices in HU (not scaled to [0, 1])", _all_npz(_scale(400.0)), ["train_npz"]),
    ("nan-image", "NaN voxels in every training slice", _all_npz(_nan), ["train_npz"]),
    ("label-id-20", "label id 20 in a 9-class dataset, every slice", _all_npz(_label_id(20)), ["train_npz"]),
    (
        "label-negative",
        "label -1 (int16 labels), every slice",
        _all_npz(lambda i, lab: (i, np.where(lab == 0, -1, lab).astype(np.int16))),
        ["train_npz"],
    ),
    (
        "label-float",
        "non-integer label values, every slice",
        _all_npz(lambda i, lab: (i, lab.astype(np.float32) + 0.5)),
        ["train_npz"],
    ),
    (
        "shape-mismatch",
        "image and label of different shapes, every slice",
        _all_npz(_crop_label),
        ["train_npz"],
    ),
    (
        "image-3d-slice",
        "a 3-D array in a 2-D slice file, every slice",
        _all_npz(lambda i, lab: (np.stack([i, i]), lab)),
        ["train_npz"],
    ),
    (
        "truncated-slices",
        "every training slice cut in half",
        on_glob("syn/train_npz/*.npz", truncate),
        ["train_npz"],
    ),
    (
        "empty-slices",
        "every training slice emptied",
        on_glob("syn/train_npz/*.npz", lambda p: p.write_bytes(b"")),
        ["train_npz"],
    ),
    (
        "listed-slice-missing",
        "train.txt lists a slice that has no file",
        lambda c: (c.t / "syn/train_npz/case0002_slice003.npz").unlink(),
        ["case0002_slice003"],
    ),
    (
        "list-duplicates",
        "train.txt lists every slice twice",
        on("syn/lists_Synapse/train.txt", lambda p: p.write_text(p.read_text() * 2)),
        ["train.txt"],
    ),
    ("list-empty", "an empty train.txt", wr("syn/lists_Synapse/train.txt", ""), ["train.txt"]),
    ("list-garbage", "train.txt of random bytes", wr("syn/lists_Synapse/train.txt", GARBAGE), ["train.txt"]),
    (
        "killed-after-case1",
        "prepare killed after its first case (no lists, no sidecar)",
        _kill_after_case1,
        ["syn"],
    ),
    ("killed-mid-case2", "prepare killed in the middle of case 2's slices", _kill_mid_case2, ["syn"]),
    (
        "killed-before-sidecar",
        "prepare killed after the lists, before its last write (the sidecar)",
        _kill_before_sidecar,
        ["syn"],
    ),
    (
        "sidecar-garbage",
        "organseg_synapse.json of random bytes",
        wr("syn/organseg_synapse.json", GARBAGE),
        ["organseg_synapse.json"],
    ),
]
for slug, what, damage, expect in SYN_DATA:
    add(f"train-synapse-{slug}", "train", what, steps(TRAIN_SETUP, damage), TRAIN, expect, group="dataset")

TEST_DATA = [
    (
        "hu-volume",
        "the test volume in HU (not [0, 1])",
        _h5("syn/test_vol_h5/case0003.npy.h5", _scale(400.0)),
        ["case0003"],
    ),
    (
        "nan-volume",
        "a NaN voxel in the test volume",
        _h5("syn/test_vol_h5/case0003.npy.h5", _nan),
        ["case0003"],
    ),
    (
        "label-id-20",
        "label id 20 in the test volume",
        _h5("syn/test_vol_h5/case0003.npy.h5", _label_id(20)),
        ["case0003"],
    ),
    (
        "shape-mismatch",
        "test volume image and label of different shapes",
        _h5("syn/test_vol_h5/case0003.npy.h5", _crop_label),
        ["case0003"],
    ),
    (
        "truncated-volume",
        "the test volume cut in half",
        on("syn/test_vol_h5/case0003.npy.h5", truncate),
        ["case0003"],
    ),
    (
        "volume-missing",
        "test_vol.txt lists a volume that has no file",
        rm("syn/test_vol_h5/case0003.npy.h5"),
        ["case0003"],
    ),
    ("killed-after-case1", "prepare killed after its first case", _kill_after_case1, ["syn"]),
    (
        "killed-before-sidecar",
        "prepare killed before its last write (the sidecar)",
        _kill_before_sidecar,
        ["syn"],
    ),
]
for slug, what, damage, expect in TEST_DATA:
    add(f"test-synapse-{slug}", "test", what, steps(TEST_SETUP, damage), TEST, expect, group="dataset")
add(
    "test-split-val-absent",
    "test",
    "--split val on a dataset without a validation split",
    TEST_SETUP,
    [*TEST, "--split", "val"],
    ["val"],
    group="options",
)

DATA_PATHS = [
    ("missing", "--data does not exist", NOTHING, ["syn"]),
    ("file", "--data is a regular file", wr("syn", "x"), ["syn"]),
    ("empty", "--data is an empty folder", md("syn"), ["syn"]),
    ("raw-btcv", "--data is a raw BTCV folder (not prepared)", cp("raw", "syn"), ["syn"]),
    ("unknown-layout", "--data holds unrelated files", wr("syn/notes.txt", "x"), ["syn"]),
]
for slug, what, setup, expect in DATA_PATHS:
    add(f"train-data-{slug}", "train", what, setup, TRAIN, expect, group="paths")
    add(f"test-data-{slug}", "test", what, steps(cp("run"), setup), TEST, expect, group="paths")
    add(f"compare-data-{slug}", "compare", what, setup, COMPARE, expect, group="paths")

ACDC_TRAIN = ["train", "unet_acdc", "--data", "{t}/acdc", "--out", "{t}/run2", *TRAIN_SETS]
S1 = "acdc/slices/patient001_frame01_slice_"
ACDC_FAULTS = [
    (
        "listed-slice-missing",
        "train_slices.list names a slice that has no file",
        rm(f"{S1}2.h5"),
        ["patient001_frame01_slice_2"],
    ),
    (
        "val-volume-missing",
        "val.list names a volume that has no file",
        rm("acdc/volumes/patient002_frame01.h5"),
        ["patient002_frame01"],
    ),
    ("truncated-slices", "every slice cut in half", on_glob("acdc/slices/*.h5", truncate), ["slices"]),
    (
        "image-out-of-range",
        "slices scaled to [0, 300] (not min-max [0, 1])",
        on_glob("acdc/slices/*.h5", lambda p: edit_h5(p, _scale(300.0))),
        ["slices"],
    ),
    (
        "label-id-7",
        "label id 7 in a 4-class dataset",
        on_glob("acdc/slices/*.h5", lambda p: edit_h5(p, _label_id(7))),
        ["slices"],
    ),
    (
        "val-test-overlap",
        "a case in both val.list and test.list",
        wr("acdc/test.list", "patient002_frame01\n"),
        ["patient002_frame01"],
    ),
    (
        "patient-on-two-sides",
        "one patient's frame 1 in train_slices.list, its frame 2 in val.list (a per-patient leak)",
        steps(
            lambda c: shutil.copy(
                c.t / "acdc/volumes/patient002_frame01.h5", c.t / "acdc/volumes/patient001_frame02.h5"
            ),
            wr("acdc/val.list", "patient001_frame02\n"),
        ),
        ["patient001", "train_slices.list", "val.list"],
    ),
    ("list-empty", "an empty train_slices.list", wr("acdc/train_slices.list", ""), ["train_slices.list"]),
]
for slug, what, damage, expect in ACDC_FAULTS:
    add(f"train-acdc-{slug}", "train", what, steps(cp("acdc"), damage), ACDC_TRAIN, expect, group="dataset")

NN_TRAIN = ["train", "unet_synapse", "--data", "{t}/nnunet", "--out", "{t}/run2", *TRAIN_SETS]


def _ds_json(**change):
    def run(c: Ctx) -> None:
        p = c.t / "nnunet" / "dataset.json"
        meta = json.loads(p.read_text())
        meta.update(change)
        for k, v in change.items():
            if v is None:
                meta.pop(k)
        p.write_text(json.dumps(meta))

    return run


NN_FAULTS = [
    (
        "file-ending-mismatch",
        "file_ending .nii while the files are .nii.gz",
        _ds_json(file_ending=".nii"),
        ["file_ending"],
    ),
    (
        "label-id-outside",
        "a label id that dataset.json does not list",
        on("nnunet/labelsTr/case_001.nii.gz", lambda p: edit_nifti(p, lambda a: np.where(a == 1, 5, a))),
        ["case_001"],
    ),
    (
        "num-training-mismatch",
        "numTraining does not match labelsTr",
        _ds_json(numTraining=7),
        ["numTraining"],
    ),
    ("json-garbage", "dataset.json of random bytes", wr("nnunet/dataset.json", GARBAGE), ["dataset.json"]),
    (
        "json-missing-keys",
        "dataset.json without labels and file_ending",
        _ds_json(labels=None, file_ending=None),
        ["dataset.json"],
    ),
    ("labels-list", "labels is a list", _ds_json(labels=["background", "liver"]), ["labels"]),
    (
        "image-without-label",
        "an image in imagesTr without its label",
        rm("nnunet/labelsTr/case_001.nii.gz"),
        ["case_001"],
    ),
    (
        "nan-image",
        "a NaN voxel in an image",
        on("nnunet/imagesTr/case_000_0000.nii.gz", lambda p: edit_nifti(p, _poke(np.nan))),
        ["case_000"],
    ),
    (
        "geometry-mismatch",
        "a label with another shape than its image",
        on(
            "nnunet/labelsTr/case_000.nii.gz",
            lambda p: edit_nifti(p, lambda a: a[:, :-2, :], keep_geometry=False),
        ),
        ["case_000"],
    ),
]
for slug, what, damage, expect in NN_FAULTS:
    add(f"train-nnunet-{slug}", "train", what, steps(cp("nnunet"), damage), NN_TRAIN, expect, group="dataset")

# ---------------------------------------------------------------- prepare: raw BTCV folders

RAW_IMG, RAW_LAB = "raw/img/img0002.nii.gz", "raw/label/label0002.nii.gz"
RAW_FAULTS = [
    ("missing", "--raw does not exist", rm("raw"), ["raw"], "paths"),
    ("file", "--raw is a regular file", steps(rm("raw"), wr("raw", "x")), ["raw"], "paths"),
    ("empty", "--raw is an empty folder", steps(rm("raw"), md("raw")), ["raw"], "paths"),
    (
        "unrelated",
        "--raw holds unrelated files",
        steps(rm("raw"), wr("raw/notes.txt", "x")),
        ["raw"],
        "paths",
    ),
    ("label-missing", "an image without its label", rm(RAW_LAB), ["img0002|label0002"], "raw"),
    ("image-missing", "a label without its image", rm(RAW_IMG), ["label0002|img0002"], "raw"),
    ("image-empty", "an empty image file", wr(RAW_IMG), ["img0002"], "raw"),
    ("image-garbage", "an image file of random bytes", wr(RAW_IMG, GARBAGE), ["img0002"], "raw"),
    ("image-truncated", "an image cut to 60 %", on(RAW_IMG, lambda p: truncate(p, 0.6)), ["img0002"], "raw"),
    ("label-truncated", "a label cut to 60 %", on(RAW_LAB, lambda p: truncate(p, 0.6)), ["label0002"], "raw"),
    ("image-folder", "a folder named like an image", steps(rm(RAW_IMG), md(RAW_IMG)), ["img0002"], "raw"),
    (
        "shape-mismatch",
        "a label with another shape",
        on(RAW_LAB, lambda p: edit_nifti(p, lambda a: a[:, :-2, :], keep_geometry=False)),
        ["label0002"],
        "raw",
    ),
    (
        "geometry-mismatch",
        "a label with another origin",
        lambda c: _shift_origin(c.t / RAW_LAB),
        ["label0002"],
        "raw",
    ),
    (
        "label-id-14",
        "label id 14 (BTCV has 0..13)",
        on(RAW_LAB, lambda p: edit_nifti(p, lambda a: np.where(a == 1, 14, a).astype(a.dtype))),
        ["label0002"],
        "raw",
    ),
    (
        "label-float",
        "non-integer label values",
        on(RAW_LAB, lambda p: edit_nifti(p, lambda a: a.astype(np.float32) + 0.5)),
        ["label0002"],
        "raw",
    ),
    ("image-nan", "a NaN voxel", on(RAW_IMG, lambda p: edit_nifti(p, _poke(np.nan))), ["img0002"], "raw"),
    ("image-inf", "an inf voxel", on(RAW_IMG, lambda p: edit_nifti(p, _poke(np.inf))), ["img0002"], "raw"),
    (
        "image-2d",
        "a 2-D image",
        on(RAW_IMG, lambda p: edit_nifti(p, lambda a: a[0], keep_geometry=False)),
        ["img0002"],
        "raw",
    ),
    ("image-rgb", "an RGB image", lambda c: _rgb(c.t / RAW_IMG), ["img0002"], "raw"),
    (
        "duplicate-id",
        "two images with the same case id",
        lambda c: shutil.copy(c.t / RAW_IMG, c.t / "raw/img/img002.nii.gz"),
        ["img002"],
        "raw",
    ),
]


def _shift_origin(path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    img.SetOrigin(tuple(o + 10.0 for o in img.GetOrigin()))
    sitk.WriteImage(img, str(path))


for slug, what, damage, expect, group in RAW_FAULTS:
    add(f"prepare-raw-{slug}", "prepare", what, steps(PREPARE_SETUP, damage), PREPARE, expect, group=group)

SPLITS = [
    ("test-case-absent", "--test-cases names a case the folder lacks", ["--test-cases", "3", "38"], ["38"]),
    (
        "train-test-overlap",
        "a case both in --train-cases and --test-cases",
        ["--train-cases", "1", "2", "--test-cases", "2", "3"],
        ["2"],
    ),
    (
        "val-not-train",
        "--val-cases names a test case",
        ["--test-cases", "3", "--val-cases", "3"],
        ["--val-cases"],
    ),
    ("case-id-text", "a case id that is not a number", ["--test-cases", "abc"], ["abc"]),
    ("case-id-negative", "a negative case id", ["--test-cases", "-3"], ["-3"]),
]
for slug, what, extra, expect in SPLITS:
    add(f"prepare-split-{slug}", "prepare", what, PREPARE_SETUP, [*PREPARE, *extra], expect, group="options")

# ---------------------------------------------------------------- report: run folders

REPORT_FAULTS = [
    ("missing", "the run folder does not exist", NOTHING, ["run"], "paths"),
    ("file", "a regular file as the run folder", wr("run", "x"), ["run"], "paths"),
    ("empty", "an empty folder", md("run"), ["run"], "paths"),
    (
        "metrics-garbage-line",
        "metrics.jsonl with a line that is not JSON",
        steps(REPORT_SETUP, on("run/metrics.jsonl", lambda p: p.write_text(p.read_text() + "{oops\n"))),
        ["metrics.jsonl"],
        "dataset",
    ),
    (
        "metrics-binary",
        "metrics.jsonl of random bytes",
        steps(REPORT_SETUP, wr("run/metrics.jsonl", GARBAGE)),
        ["metrics.jsonl"],
        "dataset",
    ),
    (
        "summary-garbage",
        "results summary.json of random bytes",
        steps(REPORT_SETUP, wr("run/results/test_last/summary.json", GARBAGE)),
        ["summary.json"],
        "dataset",
    ),
    (
        "summary-truncated",
        "results summary.json cut in half",
        steps(REPORT_SETUP, on("run/results/test_last/summary.json", truncate)),
        ["summary.json"],
        "dataset",
    ),
    (
        "summary-list",
        "results summary.json holds a list",
        steps(REPORT_SETUP, wr("run/results/test_last/summary.json", "[1, 2]")),
        ["summary.json"],
        "dataset",
    ),
    (
        "summary-missing-keys",
        "results summary.json is an empty object",
        steps(REPORT_SETUP, wr("run/results/test_last/summary.json", "{}")),
        ["summary.json"],
        "dataset",
    ),
    (
        "overlays-truncated",
        "overlay_slices.npz cut in half",
        steps(REPORT_SETUP, on("run/results/test_last/overlay_slices.npz", truncate)),
        ["overlay_slices.npz"],
        "dataset",
    ),
]
for slug, what, setup, expect, group in REPORT_FAULTS:
    add(f"report-{slug}", "report", what, setup, ["report", "{t}/run"], expect, group=group)

# ---------------------------------------------------------------- crashes and memory

add(
    "train-set-train.threads-huge",
    "train",
    "--set train.threads=100000 (SIGSEGV today)",
    TRAIN_SETUP,
    [*TRAIN, "--set", "train.threads=100000"],
    ["train.threads"],
    group="resources",
    subprocess=True,
)
add(
    "phantom--size-20000",
    "phantom",
    "--size 20000 (memory-impossible)",
    NOTHING,
    ["phantom", "--out", "{t}/ph", "--cases", "1", "--size", "20000", "--quiet"],
    ["--size"],
    group="resources",
    subprocess=True,
    mem_gb=6.0,
)


# ---------------------------------------------------------------- this wave's new options: many inputs,
# ensembles, official checkpoints, output formats, export, published weights


def _official(headless: bool = False, imagenet: bool = False):
    """An official-trainer style .pth (bare state dict, DataParallel names) made from the tiny Swin-Unet."""

    def run(c: Ctx) -> None:
        import torch

        state = torch.load(c.base / "swin.pt", weights_only=True)["model"]
        if headless:
            state = {k: v for k, v in state.items() if ".output." not in k}
        if imagenet:  # ImageNet classifier keys: a pretrained encoder, not a segmentation network
            state = {k[len("swin_unet.") :]: v for k, v in state.items() if k.startswith("swin_unet.layers.")}
            state["patch_embed.proj.weight"] = torch.zeros(12, 3, 4, 4)
            state = {"model": state}
        else:
            state = {"module." + k: v for k, v in state.items()}
        torch.save(state, c.t / "official.pth")

    return run


TWO_SCANS = steps(PREDICT_SETUP, md("b"), cp("scan.nii.gz", "b/scan.nii.gz"))
for cid, what, setup, argv, expect, group in [
    (
        "predict-many-out-is-file",
        "two inputs, --out names one label map",
        TWO_SCANS,
        ["predict", "{t}/ckpt.pt", "{t}/scan.nii.gz", "{t}/b/scan.nii.gz", "--out", "{t}/seg.nii.gz"],
        ["--out", "2 inputs"],
        "options",
    ),
    (
        "predict-many-same-name",
        "two inputs with the same file name",
        TWO_SCANS,
        ["predict", "{t}/ckpt.pt", "{t}/scan.nii.gz", "{t}/b/scan.nii.gz", "--out", "{t}/o"],
        ["scan"],
        "options",
    ),
    (
        "predict-glob-matches-nothing",
        "an input pattern that matches no file",
        PREDICT_SETUP,
        ["predict", "{t}/ckpt.pt", "{t}/none*.nii.gz", "--out", "{t}/o"],
        ["none*.nii.gz"],
        "paths",
    ),
    (
        "predict-many-out-in-input-folder",
        "a folder of scans, --out inside it",
        TWO_SCANS,
        ["predict", "{t}/ckpt.pt", "{t}/b", "--out", "{t}/b/out"],
        ["INPUT"],
        "over-input",
    ),
    (
        "predict-ensemble-missing",
        "--ensemble names a missing checkpoint",
        PREDICT_SETUP,
        [*PREDICT, "--ensemble", "{t}/missing.pt"],
        ["missing.pt"],
        "paths",
    ),
    (
        "predict-ensemble-twice",
        "--ensemble repeats the checkpoint",
        PREDICT_SETUP,
        [*PREDICT, "--ensemble", "{t}/ckpt.pt"],
        ["ckpt.pt", "twice"],
        "options",
    ),
    (
        "predict-ensemble-is-a-scan",
        "--ensemble names a scan",
        PREDICT_SETUP,
        [*PREDICT, "--ensemble", "{t}/scan.nii.gz"],
        ["scan.nii.gz"],
        "checkpoint",
    ),
    (
        "predict-ensemble-other-preprocessing",
        "members that map intensities differently",
        steps(
            PREDICT_SETUP,
            cp("swin.pt"),
            on("swin.pt", lambda p: edit_checkpoint(p, _set("preprocessing", {"kind": "minmax"}))),
        ),
        [*PREDICT, "--ensemble", "{t}/swin.pt"],
        ["swin.pt"],
        "checkpoint",
    ),
    (
        "predict-models-without-study",
        "--models with a checkpoint file",
        PREDICT_SETUP,
        [*PREDICT, "--models", "unet"],
        ["--models"],
        "options",
    ),
    (
        "predict-format-dicom-seg-of-nifti",
        "--format dicom-seg for a NIfTI input",
        PREDICT_SETUP,
        replace_opt(PREDICT, "--format", "dicom-seg"),
        ["dicom-seg", "scan.nii.gz"],
        "scan",
    ),
    (
        "predict-format-unknown",
        "--format png",
        PREDICT_SETUP,
        replace_opt(PREDICT, "--format", "png"),
        ["--format"],
        "options",
    ),
    (
        "predict-out-dcm-is-input",
        "the DICOM-SEG would land on the input",
        steps(PREDICT_SETUP, cp("scan.nii.gz", "seg.dcm")),
        ["predict", "{t}/ckpt.pt", "{t}/seg.dcm", "--out", "{t}/seg.nii.gz", "--format", "both"],
        ["seg.dcm"],
        "over-input",
    ),
    (
        "predict-official-headless",
        "an official Swin-Unet .pth without its class head",
        steps(cp("scan.nii.gz"), _official(headless=True)),
        ["predict", "{t}/official.pth", "{t}/scan.nii.gz", "--out", "{t}/o.nii.gz"],
        ["official.pth"],
        "checkpoint",
    ),
    (
        "predict-official-imagenet",
        "ImageNet Swin weights given as the network to apply",
        steps(cp("scan.nii.gz"), _official(imagenet=True)),
        ["predict", "{t}/official.pth", "{t}/scan.nii.gz", "--out", "{t}/o.nii.gz"],
        ["official.pth"],
        "checkpoint",
    ),
    (
        "predict-onnx-missing",
        "an ONNX model that is not there",
        PREDICT_SETUP,
        ["predict", "{t}/model.onnx", "{t}/scan.nii.gz", "--out", "{t}/o.nii.gz"],
        ["model.onnx"],
        "paths",
    ),
    (
        "predict-onnx-garbage",
        "a .onnx file of garbage",
        steps(PREDICT_SETUP, wr("model.onnx", b"\x00garbage")),
        ["predict", "{t}/model.onnx", "{t}/scan.nii.gz", "--out", "{t}/o.nii.gz"],
        ["model.onnx"],
        "checkpoint",
    ),
    (
        "test-ensemble-missing",
        "--ensemble names a missing checkpoint",
        TEST_SETUP,
        [*TEST, "--ensemble", "{t}/missing.pt"],
        ["missing.pt"],
        "paths",
    ),
    (
        "test-ensemble-twice",
        "--ensemble repeats the run",
        TEST_SETUP,
        [*TEST, "--ensemble", "{t}/run"],
        ["twice"],
        "options",
    ),
    (
        "test-models-without-study",
        "--models with a run folder",
        TEST_SETUP,
        [*TEST, "--models", "unet"],
        ["--models"],
        "options",
    ),
    (
        "export-checkpoint-missing",
        "export of a missing checkpoint",
        NOTHING,
        ["export", "{t}/missing.pt", "--onnx", "{t}/m.onnx"],
        ["missing.pt"],
        "paths",
    ),
    (
        "export-onnx-suffix",
        "--onnx without the .onnx suffix",
        cp("unet.pt", "ckpt.pt"),
        ["export", "{t}/ckpt.pt", "--onnx", "{t}/m.bin"],
        ["--onnx"],
        "options",
    ),
    (
        "export-onnx-under-a-file",
        "--onnx under a regular file",
        steps(cp("unet.pt", "ckpt.pt"), wr("blocker", "x")),
        ["export", "{t}/ckpt.pt", "--onnx", "{t}/blocker/m.onnx"],
        ["blocker"],
        "unwritable",
    ),
    (
        "train-pretrained-imagenet-unfit",
        "model.pretrained=imagenet for a reduced U-Net",
        TRAIN_SETUP,
        [*TRAIN, "--set", "model.pretrained=imagenet"],
        ["model.pretrained"],
        "config",
    ),
    (
        "train-pretrained-missing-file",
        "model.pretrained names a missing file",
        TRAIN_SETUP,
        [*TRAIN, "--set", "model.pretrained={t}/nope.pth"],
        ["nope.pth"],
        "config",
    ),
    (
        "train-set-model.args-unknown",
        "--set model.args.bogus=1",
        TRAIN_SETUP,
        [*TRAIN, "--set", "model.args.bogus=1"],
        ["model.args.bogus"],
        "config",
    ),
    (
        "train-set-model.args.width-list",
        "--set model.args.width=[1]",
        TRAIN_SETUP,
        [*TRAIN, "--set", "model.args.width=[0.5]"],
        ["model.args.width"],
        "config",
    ),
    (
        "train-set-data.train_fraction-0",
        "--set data.train_fraction=0",
        TRAIN_SETUP,
        [*TRAIN, "--set", "data.train_fraction=0"],
        ["data.train_fraction"],
        "config",
    ),
    (
        "train-set-data.train_fraction-1.5",
        "--set data.train_fraction=1.5",
        TRAIN_SETUP,
        [*TRAIN, "--set", "data.train_fraction=1.5"],
        ["data.train_fraction"],
        "config",
    ),
    (
        "train-set-data.subset_seed-neg",
        "--set data.subset_seed=-1",
        TRAIN_SETUP,
        [*TRAIN, "--set", "data.subset_seed=-1"],
        ["data.subset_seed"],
        "config",
    ),
    (
        "train-set-train.budget_images-0",
        "--set train.budget_images=0",
        TRAIN_SETUP,
        [*TRAIN, "--set", "train.budget_images=0"],
        ["train.budget_images"],
        "config",
    ),
    (
        "train-set-budget-and-iterations",
        "train.budget_images with train.max_iterations",
        TRAIN_SETUP,
        [*TRAIN, "--set", "train.budget_images=100"],
        ["train.budget_images"],
        "config",
    ),
    (
        "train-set-fitted-and-iterations",
        "train.fitted_iterations with train.max_iterations",
        TRAIN_SETUP,
        [*TRAIN, "--set", "train.fitted_iterations=100"],
        ["train.fitted_iterations"],
        "config",
    ),
    (
        "train-set-data.subjects-bad-regex",
        "--set data.subjects='(' (not a regex nor a .json)",
        TRAIN_SETUP,
        [*TRAIN, "--set", "data.subjects=("],
        ["data.subjects"],
        "config",
    ),
    (
        "train-set-data.subjects-no-match",
        "--set data.subjects=^(sub-\\d+) matches no case",
        TRAIN_SETUP,
        [*TRAIN, "--set", "data.subjects=^(sub-\\d+)"],
        ["data.subjects"],
        "config",
    ),
    (
        "train-set-data.subjects-missing-json",
        "--set data.subjects names a missing .json",
        TRAIN_SETUP,
        [*TRAIN, "--set", "data.subjects={t}/nope.json"],
        ["data.subjects", "nope.json"],
        "config",
    ),
    (
        "train-set-data.subjects-json-gap",
        "data.subjects .json that leaves a case out",
        steps(TRAIN_SETUP, wr("subjects.json", '{"case0001": "P1"}')),
        [*TRAIN, "--set", "data.subjects={t}/subjects.json"],
        ["subjects.json"],
        "config",
    ),
    (
        "train-set-data.folds-too-many",
        "--set data.fold=0 data.folds=50: more folds than training subjects",
        TRAIN_SETUP,
        [*TRAIN, "--set", "data.fold=0", "--set", "data.folds=50"],
        ["data.folds"],
        "config",
    ),
    (
        "compare-folds-split-test",
        "compare --folds 2 --split test (a fold tests its held-out subjects)",
        COMPARE_SETUP,
        [*COMPARE, "--folds", "2", "--split", "test"],
        ["--folds", "--split"],
        "options",
    ),
    (
        "compare-folds-best",
        "compare --folds 2 --checkpoint best (chosen on the held-out fold)",
        COMPARE_SETUP,
        [*COMPARE, "--folds", "2", "--checkpoint", "best"],
        ["--folds", "best"],
        "options",
    ),
    (
        "compare-folds-one",
        "compare --folds 1",
        COMPARE_SETUP,
        [*COMPARE, "--folds", "1"],
        ["--folds"],
        "options",
    ),
    (
        "compare-folds-text",
        "compare --folds abc",
        COMPARE_SETUP,
        [*COMPARE, "--folds", "abc"],
        ["--folds"],
        "options",
    ),
    (
        "compare-set-data.fold-swept",
        "compare --set data.fold=0,1 (folds are --folds)",
        COMPARE_SETUP,
        [*COMPARE, "--set", "data.fold=0,1"],
        ["--folds"],
        "options",
    ),
    (
        "compare-collect-folds",
        "compare --collect --folds 2",
        COMPARE_SETUP,
        ["compare", "--collect", "--out", "{t}/study", "--folds", "2"],
        ["--folds"],
        "options",
    ),
    (
        "info-subjects-without-data",
        "info --subjects without --data",
        lambda c: None,
        ["info", "--subjects", "^(p\\d+)"],
        ["--subjects", "--data"],
        "options",
    ),
    (
        "info-data-missing",
        "info --data on a missing folder",
        lambda c: None,
        ["info", "--data", "{t}/nope"],
        ["nope"],
        "paths",
    ),
]:
    add(cid, argv[0], what, setup, argv, expect, group=group)


# ---------------------------------------------------------------- orientation (issue 22): scans that no axis
# permutation turns to the network's orientation, checkpoints that disagree on it


def _redirect(rel: str, direction: np.ndarray, out: str | None = None):
    """Give the scan ``rel`` another direction matrix (same voxels), written to ``out`` (default: itself)."""

    def run(c: Ctx) -> None:
        import SimpleITK as sitk

        source = sitk.ReadImage(str(c.t / rel))
        image = sitk.GetImageFromArray(sitk.GetArrayFromImage(source))  # voxels and grid, no NIfTI fields
        image.CopyInformation(source)
        image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
        sitk.WriteImage(image, str(c.t / (out or rel)))
        if out:
            (c.t / rel).unlink()

    return run


_SHEAR = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
ORIENTED = on("ckpt.pt", lambda p: edit_checkpoint(p, _set("orientation", "LPS")))
for cid, what, setup, argv, expect, group in [
    (
        "predict-scan-oblique-45",
        "a scan whose voxel axes are 45 degrees or more from every patient axis",
        steps(PREDICT_SETUP, ORIENTED, _redirect("scan.nii.gz", diagonal_frame())),
        PREDICT,
        ["scan.nii.gz"],
        "scan",
    ),
    (
        "predict-scan-sheared",
        "a scan with a sheared (not orthonormal) direction matrix (.mha)",
        steps(PREDICT_SETUP, ORIENTED, _redirect("scan.nii.gz", _SHEAR, "scan.mha")),
        [a.replace("scan.nii.gz", "scan.mha") for a in PREDICT],
        ["scan.mha"],
        "scan",
    ),
    (
        "predict-ensemble-other-orientation",
        "members trained on slices in other orientations",
        steps(
            PREDICT_SETUP,
            ORIENTED,
            cp("swin.pt"),
            on("swin.pt", lambda p: edit_checkpoint(p, _set("orientation", "RAS"))),
        ),
        [*PREDICT, "--ensemble", "{t}/swin.pt"],
        ["swin.pt"],
        "checkpoint",
    ),
]:
    add(cid, argv[0], what, setup, argv, expect, group=group)


# ---------------------------------------------------------------- one writer per folder (issue 27): another
# process holds the folder (Ctx.hold) while the case runs


def held(rel: str):
    return lambda c: c.hold(rel)


BUSY = ["in use by another organseg process", "pid"]
for cid, what, setup, argv, expect in [
    (
        "train-busy-new-out",
        "train into a new --out another process is writing",
        steps(TRAIN_SETUP, held("run2")),
        TRAIN,
        ["run2"],
    ),
    (
        "train-busy-resume",
        "train --resume of a run that is still training",
        steps(cp("syn"), cp("run"), held("run")),
        ["train", "unet_synapse", "--data", "{t}/syn", "--out", "{t}/run", "--resume", *TRAIN_SETS],
        ["run"],
    ),
    (
        "compare-busy-study",
        "compare on a study folder another compare is writing",
        steps(COMPARE_SETUP, held("study")),
        COMPARE,
        ["study"],
    ),
    (
        "compare-busy-collect",
        "compare --collect into a study folder another compare is writing",
        steps(cp("run", "study/runs/unet__seed1234"), held("study")),
        ["compare", "--collect", "--out", "{t}/study"],
        ["study"],
    ),
    (
        "test-busy-results",
        "test into a run's results folder another test is writing",
        steps(TEST_SETUP, held("run/results/test_last")),
        TEST,
        ["results/test_last"],
    ),
    (
        "test-busy-out",
        "test --out into a folder another process is writing",
        steps(TEST_SETUP, held("res")),
        [*TEST, "--out", "{t}/res"],
        ["res"],
    ),
    (
        "predict-busy-out",
        "predict into an --out folder another predict is writing",
        steps(PREDICT_SETUP, held("segs")),
        ["predict", "{t}/ckpt.pt", "{t}/scan.nii.gz", "--out", "{t}/segs"],
        ["segs"],
    ),
]:
    add(cid, argv[0], what, setup, argv, [*expect, *BUSY], group="busy")


# ---------------------------------------------------------------- the right data, the right runs (issue 27):
# a run records its dataset (where and what: organseg.data.identity), checkpoints carry a checksum, results
# are reused only when they are the test of the checkpoint as it is, on the whole split


def _record(fn):
    """Change the dataset record of the run's last.pt with ``fn(record, ctx)``."""

    def run(c: Ctx) -> None:
        edit_checkpoint(c.t / "run/checkpoints/last.pt", lambda ck: fn(ck["dataset"], c))

    return run


def _other_test_cases(record: dict, c: Ctx) -> None:
    """The run's dataset folder is {t}/syn, whose test cases have changed since (as the record says)."""
    record["resolved"] = str(c.t / "syn")
    record["fingerprint"]["splits"]["test"] = {"cases": 2, "sha256": "0123456789abcdef"}
    record["fingerprint"]["digest"] = "0123456789abcdef"


def _old_relative_run(c: Ctx) -> None:
    """A run written before the record: data.root relative, no starting folder in env.json."""

    def fn(ck: dict) -> None:
        ck.pop("dataset")
        ck["config"]["data"]["root"] = "../syn"

    edit_checkpoint(c.t / "run/checkpoints/last.pt", fn)
    env = c.t / "run/env.json"
    env.write_text(json.dumps({k: v for k, v in json.loads(env.read_text()).items() if k != "cwd"}))


def _summary_edit(rel: str, **values):
    def run(c: Ctx) -> None:
        path = c.t / rel
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}))

    return run


RESUME = ["train", "unet_synapse", "--data", "{t}/syn", "--out", "{t}/run", "--resume", *TRAIN_SETS]
COLLECTED = "study/runs/unet__seed1234"
for cid, verb, what, setup, argv, expect in [
    (
        "test-run-data-changed",
        "test",
        "test a run without --data: its recorded dataset folder now lists other test cases",
        steps(cp("run"), cp("syn"), _record(_other_test_cases)),
        ["test", "{t}/run", "--checkpoint", "last", "--no-report"],
        ["last.pt", "syn", "other test cases"],
    ),
    (
        "test-run-relative-root-unrecorded",
        "test",
        "test without --data a run of an older organseg whose data.root is relative (../syn)",
        steps(cp("run"), _old_relative_run),
        ["test", "{t}/run", "--checkpoint", "last", "--no-report"],
        ["data.root", "../syn", "ambiguous", "--data"],
    ),
    (
        "train-resume-data-changed",
        "train",
        "train --resume on a dataset whose test cases are not the run's",
        steps(cp("run"), cp("syn"), _record(_other_test_cases)),
        RESUME,
        ["last.pt", "syn", "other test cases"],
    ),
    (
        "test-checkpoint-flipped-bytes",
        "test",
        "last.pt with 256 flipped bytes in a tensor (torch.load reads it without a word)",
        steps(TEST_SETUP, on("run/checkpoints/last.pt", flip_tensor_bytes)),
        [*TEST, "--checkpoint", "last"],
        ["last.pt", "checksum mismatch"],
    ),
    (
        "train-resume-flipped-bytes",
        "train",
        "train --resume of a last.pt with 256 flipped bytes in a tensor",
        steps(cp("run"), cp("syn"), on("run/checkpoints/last.pt", flip_tensor_bytes)),
        RESUME,
        ["last.pt", "checksum mismatch"],
    ),
    (
        "compare-collect-results-of-older-checkpoint",
        "compare",
        "compare --collect of a run trained on (last.pt rewritten) since it was tested",
        steps(
            cp("run", COLLECTED),
            on(f"{COLLECTED}/checkpoints/last.pt", lambda p: edit_checkpoint(p, _set("iteration", 2))),
        ),
        ["compare", "--collect", "--out", "{t}/study"],
        ["test_last", "another last.pt"],
    ),
    (
        "compare-collect-results-of-max-cases",
        "compare",
        "compare --collect of a run tested with --max-cases (a part of the split)",
        steps(
            cp("run", COLLECTED), _summary_edit(f"{COLLECTED}/results/test_last/summary.json", max_cases=1)
        ),
        ["compare", "--collect", "--out", "{t}/study"],
        ["test_last", "--max-cases 1"],
    ),
    (
        "compare-collect-out-is-run",
        "compare",
        "compare --collect RUN --out RUN: the comparison into the run folder it collects",
        cp("run"),
        ["compare", "--collect", "{t}/run", "--out", "{t}/run"],
        ["--out", "run"],
    ),
    (
        "compare-collect-out-in-run",
        "compare",
        "compare --collect RUN --out RUN/cmp: the comparison inside the run folder it collects",
        cp("run"),
        ["compare", "--collect", "{t}/run", "--out", "{t}/run/cmp"],
        ["--out", "run/cmp", "inside"],
    ),
]:
    add(cid, verb, what, setup, argv, expect, group="right-runs")

# ---------------------------------------------------------------- nothing ignored, checks before the work
# (issue 27): an option that cannot apply is refused, a missing extra found before any case, every output
# place first


def _hide(module: str):
    """Shadow an installed optional package with a module that fails to import, as if the extra were missing:
    a subprocess case runs ``python -m organseg`` in the case folder, which comes first on ``sys.path``."""
    return wr(f"{module}.py", f"raise ImportError('{module} hidden by the bad-input probe')\n")


def _loop(rel: str):
    return lambda c: (c.t / rel).symlink_to(rel)


HIDDEN = {"subprocess": True, "allow_new": ("__pycache__/*",)}  # the shadow module's bytecode may stay
for cid, what, setup, argv, expect, kw in [
    (
        "predict-overlay-file-of-many-cases",
        "--overlay x.png with two inputs written into a folder (each case has its own NAME.png)",
        steps(PREDICT_SETUP, cp("scan.nii.gz", "other.nii.gz")),
        [
            "predict",
            "{t}/ckpt.pt",
            "{t}/scan.nii.gz",
            "{t}/other.nii.gz",
            "--out",
            "{t}/o",
            "--overlay",
            "x.png",
        ],
        ["--overlay", "x.png"],
        {},
    ),
    (
        "predict-series-of-nifti",
        "--series-uid given for a NIfTI input (it picks a series of a DICOM folder)",
        PREDICT_SETUP,
        [*PREDICT, "--series-uid", "1.2.3"],
        ["--series", "scan.nii.gz"],
        {},
    ),
    (
        "predict-out-dcm-format-nifti",
        "--out x.dcm with --format nifti (a .dcm is the DICOM-SEG, which nifti does not write)",
        PREDICT_SETUP,
        replace_opt(PREDICT, "--out", "{t}/out/x.dcm"),
        ["--out", "x.dcm", "--format nifti"],
        {},
    ),
    (
        "predict-dicom-seg-without-extra",
        "--format dicom-seg of two series without highdicom installed: found before any case is predicted",
        steps(CKPT, _gen_series("d1", 1), _gen_series("d2", 2), _hide("highdicom")),
        ["predict", "{t}/ckpt.pt", "{t}/d1", "{t}/d2", "--out", "{t}/out", "--format", "dicom-seg"],
        ["--format dicom-seg", "pip install 'organseg[dicom]'"],
        HIDDEN,
    ),
    (
        "predict-onnx-without-extra",
        "an .onnx model without onnxruntime installed",
        steps(cp("scan.nii.gz"), _onnx(), _hide("onnxruntime")),
        ONNX_PREDICT,
        ["onnxruntime", "pip install 'organseg[onnx]'"],
        HIDDEN,
    ),
    (
        "export-without-extra",
        "export without onnxscript installed: found before the checkpoint is read",
        steps(cp("unet.pt", "ckpt.pt"), _hide("onnxscript")),
        ["export", "{t}/ckpt.pt", "--onnx", "{t}/m.onnx"],
        ["onnxscript", "pip install 'organseg[onnx]'"],
        HIDDEN,
    ),
    (
        "export-official-headless",
        "export of an official Swin-Unet .pth without its class head (export reads it as predict does)",
        _official(headless=True),
        ["export", "{t}/official.pth", "--onnx", "{t}/m.onnx"],
        ["official.pth"],
        {},
    ),
    (
        "export-official-imagenet",
        "export of ImageNet encoder weights given as an official Swin-Unet checkpoint",
        _official(imagenet=True),
        ["export", "{t}/official.pth", "--onnx", "{t}/m.onnx"],
        ["official.pth"],
        {},
    ),
    (
        "test-ensemble-member-results-unwritable",
        "test --ensemble whose second member's results folder cannot be written: found before the first "
        "member is tested",
        steps(TEST_SETUP, cp("run", "run2"), rm("run2/results"), wr("run2/results", "a file")),
        [*TEST, "--ensemble", "{t}/run2"],
        ["run2/results"],
        {},
    ),
    (
        "compare-checkpoint-best-without-val",
        "compare --checkpoint best on a dataset without validation cases (no best.pt is ever written)",
        COMPARE_SETUP,
        [*COMPARE, "--checkpoint", "best"],
        ["--checkpoint best", "syn", "validation"],
        {},
    ),
    (
        "predict-out-symlink-loop",
        "--out through a symbolic link that points at itself",
        steps(PREDICT_SETUP, _loop("loop")),
        replace_opt(PREDICT, "--out", "{t}/loop/seg.nii.gz"),
        ["loop/seg.nii.gz", "symbolic link"],
        {},
    ),
    (
        "predict-input-symlink-loop",
        "an input through a symbolic link that points at itself",
        steps(cp("unet.pt", "ckpt.pt"), _loop("loop")),
        ["predict", "{t}/ckpt.pt", "{t}/loop/scan.nii.gz", "--out", "{t}/out/seg.nii.gz"],
        ["loop/scan.nii.gz", "symbolic link"],
        {},
    ),
    (
        "predict-out-name-too-long",
        "--out whose file name is longer than the file system allows: the message names it, not a temporary",
        PREDICT_SETUP,
        replace_opt(PREDICT, "--out", "{t}/out/" + "s" * 250 + ".nii.gz"),
        ["s" * 40, "too long"],
        {},
    ),
]:
    add(cid, argv[0], what, setup, argv, expect, group="applies", **kw)


# ---------------------------------------------------------------- disks that fill up during a write
# Simulated in this process (tests/small_disk.py: a part written, then ENOSPC): the message names the file,
# the space it needs and what is free, and the previous file stays whole. A compare stopped by a signal and
# the sweep of a killed export's temporary are no faults of the input (and exit 0 or sweep a file): they are
# tested in tests/test_compare.py and tests/test_onnx.py.
DISK = "disk full"
for cid, what, setup, argv, free, expect, allow in [
    (
        "train-disk-full-first-checkpoint",
        "train on a disk without room for the first checkpoint (the fresh run folder is removed)",
        TRAIN_SETUP,
        TRAIN,
        100_000,
        ["checkpoints/last.pt", "needs ~", "run the command again"],
        (),
    ),
    (
        "train-disk-full-later-checkpoint",
        "train on a disk with room for one last.pt but not the next (last.pt stays, the run resumes)",
        TRAIN_SETUP,
        [*TRAIN, "--set", "train.max_iterations=5"],  # two epochs of 4 iterations: two last.pt
        1_200_000,
        ["checkpoints/last.pt", "needs ~", "resume with --resume"],
        ("run2/*",),
    ),
    (
        "test-disk-full",
        "test on a disk that fills up at the first case's viewer page",
        TEST_SETUP,
        TEST,
        2_000,
        ["viewer/case", "free on"],
        (),
    ),
    (
        "predict-disk-full",
        "predict on a disk that fills up at the label map's sidecar",
        PREDICT_SETUP,
        PREDICT,
        0,
        ["seg.nii.gz"],
        (),
    ),
    (
        "export-disk-full",
        "export to a disk without room for the ONNX file",
        cp("unet.pt", "ckpt.pt"),
        ["export", "{t}/ckpt.pt", "--onnx", "{t}/m.onnx"],
        10_000,
        ["m.onnx", "needs ~"],
        (),
    ),
]:
    add(cid, argv[0], what, setup, argv, [*expect, DISK], group="disks", disk_free=free, allow_new=allow)

# compare with several networks: which are compared (--baseline, --pairs), checked before anything trains, and
# against the networks a --collect finds.
COLLECT_ONE = ["compare", "--collect", "--out", "{t}/study"]
for cid, what, setup, argv, expect in [
    (
        "compare--baseline-unknown",
        "--baseline names a network not in --models",
        COMPARE_SETUP,
        [*COMPARE, "--baseline", "swin_unet"],
        ["--baseline", "swin_unet"],
    ),
    (
        "compare--pairs-unknown",
        "--pairs of no known kind",
        COMPARE_SETUP,
        [*COMPARE, "--pairs", "some"],
        ["--pairs"],
    ),
    (
        "compare--pairs-all-one-network",
        "--pairs all with a single network",
        COMPARE_SETUP,
        [*COMPARE, "--pairs", "all"],
        ["--pairs", "unet"],
    ),
    (
        "compare--collect-baseline-unknown",
        "--collect --baseline names a network none of the runs is",
        cp("run", "study/runs/unet__seed1234"),
        [*COLLECT_ONE, "--baseline", "swin_unet"],
        ["--baseline", "swin_unet"],
    ),
    (
        "compare--collect-baseline-one-network",
        "--collect --baseline with runs of a single network",
        cp("run", "study/runs/unet__seed1234"),
        [*COLLECT_ONE, "--baseline", "unet"],
        ["--baseline", "unet"],
    ),
]:
    add(cid, "compare", what, setup, argv, expect, group="options")


# ---------------------------------------------------------------- networks of one's own (docs/networks.md)
# A subprocess runs in the case folder ({t}), which `python -m` puts on sys.path: the user's modules and a
# fake distribution's dist-info written there are importable and announced, for that process alone.

BYO_NETS = """
from torch import nn

NOT_CALLABLE = 3


class Net(nn.Module):
    def __init__(self, num_classes, in_chans, stride):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, num_classes, stride, stride=stride)

    def forward(self, x):
        return self.conv(x)


def build(num_classes: int = 9, in_chans: int = 1, stride: int = 1):
    return Net(num_classes, in_chans, stride)


def build_half(num_classes: int = 9, in_chans: int = 1):
    return Net(num_classes, in_chans, 2)


def build_raising(num_classes: int = 9, in_chans: int = 1):
    raise RuntimeError("the factory needs a GPU")
"""
BYO_DIST = "byonets_dist-0.3.dist-info"
BYO_SETUP = steps(
    TRAIN_SETUP,
    wr("byonets.py", BYO_NETS),
    wr(f"{BYO_DIST}/METADATA", "Metadata-Version: 2.1\nName: byonets-dist\nVersion: 0.3\n"),
    wr(f"{BYO_DIST}/top_level.txt", "byonets\n"),
    wr(
        f"{BYO_DIST}/entry_points.txt",
        "[organseg.models]\nbyo_good = byonets:build\nbyo_gone = byonets:gone\n",
    ),
)
# TRAIN without its U-Net width (a key these networks do not take)
BYO_SETS = [
    x
    for pair in zip(TRAIN_SETS[::2], TRAIN_SETS[1::2], strict=True)
    if "model.args" not in pair[1]
    for x in pair
]
BYO_TRAIN = ["train", "unet_synapse", "--data", "{t}/syn", "--out", "{t}/run2", *BYO_SETS]
for slug, what, name, extra, expect in (
    (
        "unimportable",
        "a module that cannot be imported",
        "nomodule_byo.nets:build",
        [],
        ["nomodule_byo.nets"],
    ),
    ("no-attribute", "a module without the factory named", "byonets:build_other", [], ["build_other"]),
    ("not-callable", "an attribute that is no callable", "byonets:NOT_CALLABLE", [], ["NOT_CALLABLE"]),
    (
        "factory-raises",
        "a factory that raises",
        "byonets:build_raising",
        [],
        ["build_raising", "RuntimeError"],
    ),
    ("wrong-shape", "a network whose output is half the input", "byonets:build_half", [], ["(1, 3, 16, 16)"]),
    (
        "unknown-arg",
        "a model.args key the factory lacks",
        "byonets:build",
        ["model.args.depth=3"],
        ["model.args.depth"],
    ),
    (
        "bad-arg-type",
        "a model.args value unlike the default",
        "byonets:build",
        ["model.args.stride=x"],
        ["model.args.stride"],
    ),
    (
        "entry-point-fails",
        "an installed entry point whose factory is gone",
        "byo_gone",
        [],
        ["byo_gone", "byonets-dist"],
    ),
):
    argv = [*BYO_TRAIN, "--set", f"model.name={name}", *[x for e in extra for x in ("--set", e)]]
    add(
        f"train-byo-{slug}",
        "train",
        what,
        BYO_SETUP,
        argv,
        ["model.", *expect],
        group="networks",
        subprocess=True,
    )
add(
    "compare-byo-unimportable",
    "compare",
    "compare --models: an import path that cannot be imported",
    COMPARE_SETUP,
    [*replace_opt(COMPARE, "--models", "nomodule_byo.nets:build"), "--preset", "unet_synapse"],
    ["--models", "nomodule_byo.nets"],
    group="networks",
)
add(
    "compare-byo-no-preset",
    "compare",
    "compare --models: a network of one's own without --preset",
    BYO_SETUP,
    replace_opt(COMPARE, "--models", "byonets:build"),
    ["--preset", "byonets:build"],
    group="networks",
    subprocess=True,
)
add(
    "info-byo-wrong-shape",
    "info",
    "info --models: a network whose output is half the input",
    BYO_SETUP,
    ["info", "--models", "byonets:build_half", "--img-size", "32"],
    ["--models", "(1, 3, 16, 16)"],
    group="networks",
    subprocess=True,
)
for slug, dist, expect in (("package", "gone-nets", "gone-nets==0.4"), ("local", None, "PYTHONPATH")):
    record = {"path": "gone_nets:build", "entry_point": None, "distribution": dist, "version": dist and "0.4"}

    def _gone(ck: dict, record: dict = record) -> None:
        ck["model_name"], ck["model_source"] = record["path"], record

    add(
        f"predict-byo-module-gone-{slug}",
        "predict",
        f"a checkpoint of a network whose module is gone ({slug} module)",
        steps(PREDICT_SETUP, on("ckpt.pt", lambda p, fn=_gone: edit_checkpoint(p, fn))),
        PREDICT,
        ["ckpt.pt", "gone_nets", expect],
        group="networks",
    )


# ---------------------------------------------------------------- pretrain (issue 26): images it must not
# read (held-out splits, label maps, nothing at all) and recipes it cannot run
PRETRAIN_SETS = [
    "--set",
    "model.args.embed_dim=12",
    "--set",
    "model.args.num_heads=[1,2,3,4]",
    "--set",
    "model.args.window_size=2",
    "--set",
    "train.img_size=32",
    "--set",
    "pretrain.mask_patch_size=8",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.max_iterations=1",
    "--set",
    "train.progress=false",
]
PRETRAIN_OUT = ["--out", "{t}/pre", *PRETRAIN_SETS]
SYN_DATA = ["pretrain", "--data", "{t}/syn", *PRETRAIN_OUT]
for cid, what, setup, argv, expect in [
    (
        "pretrain-no-images",
        "pretrain with neither --data nor --volumes",
        NOTHING,
        ["pretrain", *PRETRAIN_OUT],
        ["--data"],
    ),
    (
        "pretrain-data-empty",
        "pretrain --data names an empty folder",
        md("e"),
        ["pretrain", "--data", "{t}/e", *PRETRAIN_OUT],
        ["e", "empty"],
    ),
    (
        "pretrain-volumes-empty",
        "pretrain --volumes names a folder without volumes",
        wr("v/notes.txt", "x"),
        ["pretrain", "--volumes", "{t}/v", "--intensity", "ct", *PRETRAIN_OUT],
        ["v", "no volumes"],
    ),
    (
        "pretrain-volumes-labels-only",
        "pretrain --volumes names a folder of label maps (BTCV label/)",
        cp("raw/label", "labels"),
        ["pretrain", "--volumes", "{t}/labels", "--intensity", "ct", *PRETRAIN_OUT],
        ["label0001", "label map"],
    ),
    (
        "pretrain-volumes-no-intensity",
        "pretrain --volumes without --intensity",
        cp("raw/img", "scans"),
        ["pretrain", "--volumes", "{t}/scans", *PRETRAIN_OUT],
        ["--intensity"],
    ),
    (
        "pretrain-volumes-in-dataset",
        "pretrain --volumes names an nnU-Net dataset's imagesTr (held-out cases are the dataset's to say)",
        cp("nnunet"),
        ["pretrain", "--volumes", "{t}/nnunet/imagesTr", "--intensity", "ct", *PRETRAIN_OUT],
        ["imagesTr", "nnunet"],
    ),
    (
        "pretrain-split-test",
        "pretrain data.sources names a dataset's test split",
        cp("syn"),
        ["pretrain", *PRETRAIN_OUT, "--set", "data.sources=[{path: {t}/syn, split: test}]"],
        ["data.sources[0]", "test"],
    ),
    (
        "pretrain-source-unknown-key",
        "pretrain data.sources item with an unknown key",
        cp("syn"),
        ["pretrain", *PRETRAIN_OUT, "--set", "data.sources=[{path: {t}/syn, labels: true}]"],
        ["data.sources[0]", "labels"],
    ),
    (
        "pretrain-unet",
        "pretrain model.name=unet (no masked image modelling for a CNN)",
        cp("syn"),
        [*SYN_DATA, "--set", "model.name=unet"],
        ["model.name", "unet"],
    ),
    (
        "pretrain-unknown-model",
        "pretrain model.name of no network",
        cp("syn"),
        [*SYN_DATA, "--set", "model.name=vit"],
        ["vit"],
    ),
    (
        "pretrain-unknown-key",
        "pretrain with a key pretraining does not have",
        cp("syn"),
        [*SYN_DATA, "--set", "train.ce_weight=1"],
        ["train.ce_weight"],
    ),
    (
        "pretrain-mask-ratio",
        "pretrain.mask_ratio=1 (nothing visible)",
        cp("syn"),
        [*SYN_DATA, "--set", "pretrain.mask_ratio=1"],
        ["pretrain.mask_ratio"],
    ),
    (
        "pretrain-mask-patch",
        "pretrain.mask_patch_size not a multiple of the patch size",
        cp("syn"),
        [*SYN_DATA, "--set", "pretrain.mask_patch_size=6"],
        ["pretrain.mask_patch_size"],
    ),
    (
        "pretrain-unknown-preset",
        "pretrain names a preset that does not exist",
        cp("syn"),
        ["pretrain", "nosuch", "--data", "{t}/syn", *PRETRAIN_OUT],
        ["nosuch"],
    ),
    (
        "pretrain-window-without-ct",
        "pretrain --window with --intensity mri",
        cp("raw/img", "scans"),
        ["pretrain", "--volumes", "{t}/scans", "--intensity", "mri", "--window", "0", "1", *PRETRAIN_OUT],
        ["--window"],
    ),
]:
    add(cid, "pretrain", what, setup, argv, expect, group="pretrain")

# ---------------------------------------------------------------- networks of the field (optional extras)
# A network whose library is not installed is named with the extra that brings it, before any work (the input
# size check asks for the library); its input-size rule is nnU-Net's plan.
FIELD = [*TRAIN, "--set", "model.args={}"]
for cid, what, setup, argv, expect, kw in [
    (
        "train-nnunet_2d-without-extra",
        "model.name=nnunet_2d without dynamic-network-architectures installed",
        steps(TRAIN_SETUP, _hide("dynamic_network_architectures")),
        [*FIELD, "--set", "model.name=nnunet_2d"],
        ["nnunet_2d", "pip install 'organseg[nnunet]'"],
        HIDDEN,
    ),
    (
        "train-monai_swin_unetr-without-extra",
        "model.name=monai_swin_unetr without monai installed",
        steps(TRAIN_SETUP, _hide("monai")),
        [*FIELD, "--set", "model.name=monai_swin_unetr"],
        ["monai_swin_unetr", "pip install 'organseg[monai]'"],
        HIDDEN,
    ),
    (
        "info-nnunet_2d-without-extra",
        "info --models nnunet_2d without dynamic-network-architectures installed",
        _hide("dynamic_network_architectures"),
        ["info", "--models", "nnunet_2d"],
        ["nnunet_2d", "pip install 'organseg[nnunet]'"],
        HIDDEN,
    ),
    (
        "train-nnunet_2d-img-size-208",
        "nnunet_2d with train.img_size=208 (nnU-Net's plan pools it 5 times: not a multiple of 32)",
        TRAIN_SETUP,
        [*FIELD, "--set", "model.name=nnunet_2d", "--set", "train.img_size=208"],
        ["train.img_size=208", "nnunet_2d", "192 or 224"],
        {},
    ),
]:
    add(cid, argv[0], what, setup, argv, expect, group="config", **kw)


# ---------------------------------------------------------------- --precision of test and predict (issue 24)

for verb, setup, argv in (("test", TEST_SETUP, TEST), ("predict", PREDICT_SETUP, PREDICT)):
    for value, slug, expect in (
        ("fp64", "unknown", ["--precision", "fp64"]),
        ("AUTO", "case", ["--precision", "AUTO"]),
        ("fp16", "fp16-cpu", ["--precision fp16", "CUDA"]),
    ):
        add(
            f"{verb}--precision-{slug}",
            verb,
            f"--precision {value}" + (" on a CPU" if value == "fp16" else ""),
            setup,
            [*argv, "--precision", value, "--device", "cpu"],
            expect,
            group="options",
        )
add(
    "predict--precision-bf16-onnx",
    "predict",
    "--precision bf16 with an ONNX model (fp32 only)",
    steps(cp("scan.nii.gz"), _onnx()),
    [*ONNX_PREDICT, "--precision", "bf16"],
    ["--precision bf16", "ONNX"],
    group="options",
)


def by_id() -> dict[str, Case]:
    ids = [c.id for c in CASES]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"duplicate case ids: {dup}"
    return {c.id: c for c in CASES}
