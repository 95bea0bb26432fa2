"""Helpers shared by the test modules (this module holds no tests). A test module imports them from here
(``from helpers import ...``), never from another test module; fixtures live in conftest.py. The orientation
tests' synthetic scans are in synthetic_scan.py, the DICOM series builder in dicomgen.py and the bad-input
table's inputs in badinput/.

Subprocess scripts (SIGKILL resume, torchrun) import this module too, so everything here is importable without
pytest fixtures.

Sections: the command line; tiny Swin-Unets, volumes and run folders; raw data; label maps for the metric
tests; the tiny training problem; tiny studies; synthetic pretrained-weight files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from organseg.checkpoint import atomic_torch_save, make_checkpoint
from organseg.cli.main import main
from organseg.data.base import ArrayDataset, Volume
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.data.preprocess import ct_window_spec
from organseg.imageio.volumes import Geometry, write_image
from organseg.models import create_model, list_models, register_model
from organseg.models.swin_unet import shifted_window_mask

# ------------------------------------------------------------------------------------------ the command line

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file


def one_line_error(capsys, argv: list, *needles: object) -> str:
    """Run ``organseg *argv`` (items made str), expect exit 2 and one stderr line ``organseg VERB: error:``
    holding every needle; returns that line."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"organseg {argv[0]}: error:"), err
    for n in needles:
        assert str(n) in err, err
    return err


# --------------------------------------------------------------------- tiny Swin-Unets, volumes, run folders

TINY_SWIN = {"img_size": 64, "embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 4}


def tiny_swin(num_classes: int = 4, seed: int = 0) -> nn.Module:
    """A tiny Swin-Unet (:data:`TINY_SWIN`, 64x64 input) with seed-``seed`` random weights, in eval mode."""
    torch.manual_seed(seed)
    return create_model("swin_unet", num_classes=num_classes, **TINY_SWIN).eval()


def make_volume(shape=(5, 50, 37), seed: int = 0) -> np.ndarray:
    """A smooth image in [0, 1] with structure at several scales."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    img = 0.5 + 0.25 * np.sin(9 * y + 3 * z) * np.cos(7 * x) + 0.1 * rng.standard_normal(shape)
    return np.clip(img, 0, 1).astype(np.float32)


def make_run(root: Path, class_names, preprocessing: dict, data_root: str | None = None) -> Path:
    """A run folder as ``organseg train`` leaves it: config, best/last checkpoints, metrics log."""
    model = tiny_swin(len(class_names))
    args = {**TINY_SWIN, "num_classes": len(class_names)}
    cfg = {
        "model": {"name": "swin_unet", "args": dict(TINY_SWIN)},
        "data": {"root": data_root},
        "train": {"img_size": 64, "batch_size": 4, "base_lr": 0.05, "max_epochs": 2},
    }
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    for name in ("best", "last"):
        ckpt = make_checkpoint(
            model,
            model_name="swin_unet",
            model_args=args,
            class_names=class_names,
            preprocessing=preprocessing,
            config=cfg,
        )
        atomic_torch_save(ckpt, root / "checkpoints" / f"{name}.pt")
    records = [
        {
            "kind": "train",
            "iter": i,
            "epoch": i // 5,
            "loss": 1.0 / (i + 1),
            "ce": 0.6 / (i + 1),
            "dice": 0.4 / (i + 1),
            "lr": 0.05 * (1 - i / 10) ** 0.9,
        }
        for i in range(10)
    ]
    records += [
        {
            "kind": "val",
            "epoch": e,
            "iter": 5 * e + 4,
            "mean_dice": 0.3 + 0.1 * e,
            "mean_hd95": 9.0,
            "per_class": {
                n: {"dice": 0.2 + 0.1 * e + 0.05 * k, "hd95": 9.0} for k, n in enumerate(class_names[1:])
            },
        }
        for e in range(2)
    ]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


# -------------------------------------------------------------------------------------------------- raw data


def tiny_case(seed: int, shape=(5, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume (HU int16) with a few BTCV organs as boxes."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 20, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[:, 2:8, 2:8] = 6  # liver
    label[:, 10:14, 12:18] = 1  # spleen
    label[1:4, 16:20, 3:6] = 8  # aorta
    label[2:4, 18:22, 12:15] = 9  # IVC: dropped to background by the Synapse map
    image[label == 8] = 180
    image[0, 0, 0] = -1000
    return image, label


def write_tiny_raw(raw: Path, ids, shape=(5, 24, 20), spacing=(3.0, 0.8, 0.8)) -> None:
    """A raw BTCV folder (img/imgNNNN.nii.gz, label/labelNNNN.nii.gz) of :func:`tiny_case` volumes."""
    geom = Geometry(spacing=spacing)
    for i in ids:
        image, label = tiny_case(i, shape)
        write_image(image, geom, raw / "img" / f"img{i:04d}.nii.gz")
        write_image(label, geom, raw / "label" / f"label{i:04d}.nii.gz")


# --------------------------------------------------------------------------- label maps for the metric tests


def random_blobs(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int, n_blobs: int):
    """Overlapping ellipsoids of random classes, plus a few stray voxels: shapes with holes, touching
    borders, several components."""
    lab = np.zeros(shape, dtype=np.uint8)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(n_blobs):
        c = rng.integers(1, num_classes)
        center = [rng.uniform(-2, s + 2) for s in shape]
        radii = [rng.uniform(1, max(2, s / 3)) for s in shape]
        dist = sum(((g - c0) / r) ** 2 for g, c0, r in zip(grids, center, radii, strict=True))
        lab[dist < 1] = c
    for _ in range(rng.integers(0, 4)):
        lab[tuple(rng.integers(0, s) for s in shape)] = rng.integers(1, num_classes)
    return lab


def _cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = 1
    return m


def edge_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (prediction, truth) pairs of one class that metric code gets wrong first: single voxels,
    borders, hollow shapes, far-apart objects, a one-slice plate."""
    shape = (9, 20, 24)
    z, y, x = np.ogrid[:9, :20, :24]
    ball = ((z - 4) / 4.0) ** 2 + ((y - 10) / 8.0) ** 2 + ((x - 12) / 9.0) ** 2
    hollow = ((ball < 1) & (ball > 0.35)).astype(np.uint8)
    single = np.zeros(shape, np.uint8)
    single[4, 10, 12] = 1
    corner = np.zeros(shape, np.uint8)
    corner[0, 0, 0] = 1
    full = np.ones(shape, np.uint8)
    return {
        "single voxel vs single voxel elsewhere": (single, np.roll(single, 5, axis=2)),
        "single voxel vs same voxel": (single, single.copy()),
        "single voxel in a corner vs ball": (corner, (ball < 1).astype(np.uint8)),
        "touching every border": (full, _cube(shape, (0, 0, 0), (9, 20, 12))),
        "cube on the border": (_cube(shape, (0, 0, 0), (5, 8, 8)), _cube(shape, (1, 2, 0), (9, 9, 9))),
        "hollow shell vs filled ball": (hollow, (ball < 1).astype(np.uint8)),
        "hollow shell vs itself shifted": (hollow, np.roll(hollow, 2, axis=1)),
        "far apart": (_cube(shape, (0, 0, 0), (2, 2, 2)), _cube(shape, (7, 17, 20), (9, 20, 24))),
        "one-slice-thick plate": (_cube(shape, (4, 2, 2), (5, 18, 22)), _cube(shape, (3, 3, 3), (6, 17, 21))),
    }


# --------------------------------------------------------------------------------- the tiny training problem

TINY_NET = "tiny_train_test_net"
SIZE = 32


class TinySegNet(nn.Module):
    """Two 3x3 convs with GroupNorm (no batch statistics, so a 2-process run can match one process exactly)
    and dropout (so the tests see whether the random stream is reproduced)."""

    def __init__(self, num_classes: int = 3, in_chans: int = 1, width: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "in_chans": in_chans, "width": width, "dropout": dropout}
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1),
            nn.GroupNorm(2, width),
            nn.ReLU(),
            nn.Dropout2d(dropout),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


if TINY_NET not in list_models():

    @register_model(TINY_NET)
    def tiny_train_test_net(num_classes: int = 3, in_chans: int = 1, width: int = 8, dropout: float = 0.1):
        return TinySegNet(num_classes, in_chans, width, dropout)


def make_slice(rng: np.random.Generator, h: int = SIZE, w: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with two bright rectangles labelled 1 and 2."""
    label = np.zeros((h, w), np.int64)
    r, c = rng.integers(2, h // 2), rng.integers(2, w // 2)
    label[r : r + h // 4, c : c + w // 4] = 1
    label[h // 2 + 2 : h - 3, w // 2 : w - 4] = 2
    image = (0.2 * rng.random((h, w)) + 0.35 * label).astype(np.float32)
    return image.clip(0, 1), label


def tiny_dataset(
    n_slices: int = 16, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((SIZE, SIZE),)
) -> ArrayDataset:
    """Training slices (sizes cycled), two validation volumes, one *test* volume."""
    rng = np.random.default_rng(seed)
    slices = [make_slice(rng, *sizes[i % len(sizes)]) for i in range(n_slices)]

    def volume(case_id: str, depth: int) -> Volume:
        pairs = [make_slice(rng) for _ in range(depth)]
        return Volume(case_id, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))

    volumes = {"val": [volume("val_a", 3), volume("val_b", 2)], "test": [volume("test_a", 2)]}
    return ArrayDataset(slices, volumes, class_names=["background", "box", "bar"], name="tiny")


BASE_CONFIG = {
    "model": {"name": TINY_NET, "args": {}},
    "train": {
        "img_size": SIZE,
        "batch_size": 4,
        "base_lr": 0.05,
        "max_epochs": 3,
        "augment": "batched",
        "progress": False,
        "threads": 1,
    },
    "val": {"every": 1, "batch_size": 4},
    "checkpoint": {"save_interval": 1},
}


def tiny_config(**sections: dict) -> dict:
    """BASE_CONFIG with ``section={key: value}`` updates."""
    cfg = copy.deepcopy(BASE_CONFIG)
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def state_dict_of(path) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file."""
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------- tiny studies

TINY_ARGS = {
    "unet": {"width": 0.125},
    "swin_unet": {"embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 2},
}
FRACTIONS = ["0.5", "1"]


def write_presets(folder: Path, *, max_iterations: int = 2, val_every: int = 0) -> str:
    """``tiny_unet.yaml`` and ``tiny_swin_unet.yaml`` (:data:`TINY_ARGS`, 32x32 input) in ``folder``; returns
    the ``--preset`` template that names them."""
    for model, args in TINY_ARGS.items():
        cfg = {
            "model": {"name": model, "args": args},
            "train": {
                "img_size": 32,
                "batch_size": 4,
                "max_iterations": max_iterations,
                "augment": "none",
                "progress": False,
                "threads": 1,
                "lr_scaling": "none",
            },
            "val": {"every": val_every},
        }
        (folder / f"tiny_{model}.yaml").write_text(yaml.safe_dump(cfg))
    return str(folder / "tiny_{model}.yaml")


def fraction_phantom(root: Path) -> Path:
    """4 phantom cases: 1 and 2 train (4 slices each), 3 validates, 4 tests."""
    write_phantom_set(root / "raw", 4, size=32, num_slices=4, progress=False)
    prepare_synapse(
        root / "raw", root / "data", train_cases=[1, 2, 3], val_cases=[3], test_cases=[4], progress=False
    )
    return root / "data"


def fraction_argv(data: Path, preset: str, out: Path, models=("unet", "swin_unet")) -> list[str]:
    """``compare`` sweeping ``data.train_fraction`` over :data:`FRACTIONS`, one seed, on the CPU."""
    return [
        "compare",
        "--data",
        str(data),
        "--models",
        *models,
        "--seeds",
        "1",
        "--set",
        f"data.train_fraction={','.join(FRACTIONS)}",
        "--preset",
        preset,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-report",
    ]


# ------------------------------------------------------------------------- synthetic pretrained-weight files

TINY_SWIN_WIDTHS = {"embed_dim": 12, "num_heads": (1, 2, 3, 4)}  # a tiny Swin-Unet at the default 224 input
SWIN_T = {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)}


def rel_index(ws: int) -> torch.Tensor:
    """Swin's relative_position_index for window ``ws``."""
    # written out independently of the model code: (dy + ws-1) * (2ws-1) + (dx + ws-1)
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :] + ws - 1) * (2 * ws - 1) + (xs[:, None] - xs[None, :] + ws - 1)


def ms_swin_state(
    embed_dim: int = 96,
    depths: tuple[int, ...] = (2, 2, 6, 2),
    num_heads: tuple[int, ...] = (3, 6, 12, 24),
    window: int = 7,
    img: int = 224,
    classes: int = 1000,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A Microsoft-release Swin classifier state dict (``swin_tiny_..._224.pth["model"]`` layout)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sd = {
        "patch_embed.proj.weight": rnd(embed_dim, 3, 4, 4),
        "patch_embed.proj.bias": rnd(embed_dim),
        "patch_embed.norm.weight": rnd(embed_dim),
        "patch_embed.norm.bias": rnd(embed_dim),
    }
    res = img // 4
    for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        c, r = embed_dim * 2**i, res // 2**i
        ws = min(window, r)
        for b in range(depth):
            p = f"layers.{i}.blocks.{b}."
            if b % 2 and r > window:
                sd[p + "attn_mask"] = shifted_window_mask((r, r), ws, ws // 2)
            sd[p + "norm1.weight"], sd[p + "norm1.bias"] = rnd(c), rnd(c)
            sd[p + "attn.relative_position_bias_table"] = rnd((2 * ws - 1) ** 2, heads)
            sd[p + "attn.relative_position_index"] = rel_index(ws)
            sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = rnd(3 * c, c), rnd(3 * c)
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = rnd(c, c), rnd(c)
            sd[p + "norm2.weight"], sd[p + "norm2.bias"] = rnd(c), rnd(c)
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rnd(4 * c, c), rnd(4 * c)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rnd(c, 4 * c), rnd(c)
        if i < len(depths) - 1:
            sd[f"layers.{i}.downsample.reduction.weight"] = rnd(2 * c, 4 * c)
            sd[f"layers.{i}.downsample.norm.weight"] = rnd(4 * c)
            sd[f"layers.{i}.downsample.norm.bias"] = rnd(4 * c)
    c = embed_dim * 2 ** (len(depths) - 1)
    sd["norm.weight"], sd["norm.bias"] = rnd(c), rnd(c)
    sd["head.weight"], sd["head.bias"] = rnd(classes, c), rnd(classes)
    return sd


VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn_state(num_batches_tracked: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision ``vgg16_bn`` layout (features.N.*); the classifier keeps its names but tiny shapes."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    idx, c_in = 0, 3
    for v in VGG16_CONVS:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, c_in, 3, 3, generator=g)
        sd[f"features.{idx}.bias"] = torch.randn(v, generator=g)
        bn = f"features.{idx + 1}."
        sd[bn + "weight"], sd[bn + "bias"] = torch.rand(v, generator=g), torch.randn(v, generator=g)
        sd[bn + "running_mean"], sd[bn + "running_var"] = (
            torch.randn(v, generator=g),
            torch.rand(v, generator=g) + 0.5,
        )
        if num_batches_tracked:
            sd[bn + "num_batches_tracked"] = torch.tensor(1234)
        idx, c_in = idx + 3, v
    for j in (0, 3, 6):  # real keys, small stand-in shapes (ignored by the loader anyway)
        sd[f"classifier.{j}.weight"], sd[f"classifier.{j}.bias"] = (
            torch.randn(4, 4, generator=g),
            torch.randn(4),
        )
    return sd


# ------------------------------------------------------------ a tiny Swin-Unet run, CT scans for predict/test


TINY_SWIN_CFG = {"model": {"name": "swin_unet", "args": dict(TINY_SWIN)}, "train": {"img_size": 64}}


def tiny_swin_net(seed: int) -> torch.nn.Module:
    """The tiny Swin-Unet with seeded weights and a head that spreads its logits (varied labels)."""
    torch.manual_seed(seed)
    net = create_model("swin_unet", num_classes=9, **TINY_SWIN).eval()
    with torch.no_grad():  # a random head with spread logits: varied labels, so comparisons mean something
        net.swin_unet.output.weight.normal_(0, 2.0)
    return net


def tiny_swin_checkpoint(path: Path, seed: int) -> Path:
    """A self-describing checkpoint of :func:`tiny_swin_net` (Synapse classes, CT window) at ``path``."""
    ckpt = make_checkpoint(
        tiny_swin_net(seed),
        model_name="swin_unet",
        model_args={**TINY_SWIN, "num_classes": 9},
        class_names=list(SYNAPSE_CLASSES),
        preprocessing=ct_window_spec(),
        config=TINY_SWIN_CFG,
    )
    atomic_torch_save(ckpt, path)
    return path


def tiny_swin_run(root: Path, seed: int) -> Path:
    """A run folder as train leaves it (config + best.pt)."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(TINY_SWIN_CFG))
    tiny_swin_checkpoint(root / "checkpoints" / "best.pt", seed)
    return root


def noise_ct_scan(path: Path, seed: int, shape=(3, 40, 36)) -> Path:
    """A random CT volume in HU with anisotropic spacing, written at ``path``."""
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-200, 300, shape).astype(np.float32)
    write_image(hu, Geometry(spacing=(2.5, 0.8, 0.8), origin=(1.0, 2.0, 3.0)), path)
    return path


def two_ct_volumes():
    """Two CT-windowed test volumes with two organs each, as a Synapse-classed dataset."""
    rng = np.random.default_rng(0)
    vols = []
    for i in range(2):
        image = rng.uniform(0, 1, (3, 40, 36)).astype(np.float32)
        label = np.zeros(image.shape, np.int64)
        label[:, 10:25, 8:20] = 5
        label[1:, 26:34, 20:30] = 1
        vols.append(Volume(f"c{i}", image, label, spacing=(2.5, 0.8, 0.8)))
    return ArrayDataset([], {"test": vols}, class_names=SYNAPSE_CLASSES)
