"""Published weight files: where they are published, the cache folder, a checked download.

``model.pretrained: imagenet`` names the ImageNet file of the network's family (Microsoft's Swin-T release for
Swin-Unet, torchvision's VGG16-BN for the U-Net). :func:`resolve_pretrained` turns it into a local path: the
cache folder first, else a download from the published address that is checked (length, SHA-256 prefix where
the publisher gives one, the expected keys and shapes) before it is renamed into place. Offline, one line says
which file to fetch from where and where to put it. Loading the file is :mod:`organseg.models.pretrained`'s.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from organseg import __version__
from organseg.errors import CheckpointError
from organseg.fileio import atomic_write
from organseg.formatting import first_names, shape_text
from organseg.models.pretrained import read_weights
from organseg.progress import progress_bar

# ------------------------------------------------------------------------------------------- published files


@dataclass(frozen=True)
class PublishedWeights:
    """An ImageNet weight file at a published address, and what a complete copy of it holds.

    ``expect`` maps a few key names to their shapes: enough to tell the file from another size or layout
    (a Swin-S, a timm re-save, a truncated download that still unpickles). ``sha256_prefix`` is checked where
    the publisher put one in the file name (torchvision's convention)."""

    filename: str
    url: str
    kind: str
    what: str
    expect: dict[str, tuple[int, ...]]
    model_prefix: str  # where the file's keys sit in the organseg network's state dict
    sha256_prefix: str | None = None


# The addresses the official recipes name: Swin-Unet's README points at Microsoft's Swin-T ImageNet-1k
# release (swin_tiny_patch4_window7_224.pth); the U-Net encoder is torchvision's VGG16-BN.
IMAGENET_WEIGHTS: dict[str, PublishedWeights] = {
    "swin_unet": PublishedWeights(
        filename="swin_tiny_patch4_window7_224.pth",
        url="https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth",
        kind="swin_imagenet",
        what="ImageNet-1k Swin-T, Microsoft release",
        expect={
            "patch_embed.proj.weight": (96, 3, 4, 4),
            "layers.0.downsample.reduction.weight": (192, 384),
            "layers.2.blocks.5.attn.qkv.weight": (1152, 384),
            "layers.3.blocks.1.attn.relative_position_bias_table": (169, 24),
            "head.weight": (1000, 768),
        },
        model_prefix="swin_unet.",
    ),
    "unet": PublishedWeights(
        filename="vgg16_bn-6c64b313.pth",
        url="https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
        kind="vgg16_bn",
        what="ImageNet VGG16-BN, torchvision",
        expect={
            "features.3.weight": (64, 64, 3, 3),
            "features.40.weight": (512, 512, 3, 3),
            "features.41.running_var": (512,),
            "classifier.6.weight": (1000, 4096),
        },
        model_prefix="encoder.",
        sha256_prefix="6c64b313",
    ),
}

IMAGENET = "imagenet"  # the value of model.pretrained that names the published file of the model's family


def cache_dir() -> Path:
    """Where published weights are looked for and downloaded to: ``$ORGANSEG_CACHE`` when set, else torch
    hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch/hub/checkpoints`` by default),
    so a file torch hub or timm already fetched is found."""
    env = os.environ.get("ORGANSEG_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_pretrained(
    spec: str | Path | None, model_name: str, model: nn.Module | None = None, *, progress: bool = True
) -> Path | None:
    """The weight file ``model.pretrained`` stands for: ``None`` (from scratch), a path, or ``"imagenet"``.

    ``imagenet`` is looked up in :func:`cache_dir`; when absent it is downloaded from its published address
    (with a progress bar) and checked (complete, the expected keys and shapes) before it is put in place.
    When it cannot be downloaded (offline, refused), CheckpointError says which file to fetch from where and
    where to put it. With ``model`` given, a network the file cannot fit (another width, window or head
    count) is refused before anything is downloaded."""
    if spec is None or str(spec) == "":
        return None
    if str(spec).lower() != IMAGENET:
        return Path(spec)
    pub = IMAGENET_WEIGHTS.get(model_name)
    if pub is None:
        raise CheckpointError(
            f"model.pretrained: no published ImageNet weights for {model_name!r} "
            f"(known: {sorted(IMAGENET_WEIGHTS)}); give a file path instead"
        )
    if model is not None:
        target = model.state_dict()
        wrong = [
            f"{pub.model_prefix + k} {shape_text(target[pub.model_prefix + k])} vs {list(shape)}"
            for k, shape in pub.expect.items()
            if pub.model_prefix + k in target and tuple(target[pub.model_prefix + k].shape) != shape
        ]
        if wrong:
            raise CheckpointError(
                f"model.pretrained=imagenet: the {pub.what} weights do not fit this {model_name} "
                f"(model.args change its size: {first_names(wrong, 2)}); train from scratch with "
                "--set model.pretrained=null"
            )
    folder = cache_dir()
    path = folder / pub.filename
    if path.is_file():
        return path
    download_weights(pub, path, progress=progress)
    return path


def download_weights(pub: PublishedWeights, dest: Path, *, progress: bool = True) -> None:
    """Fetch ``pub.url`` to ``dest`` through a temporary file; only a checked, complete file is renamed."""

    def offline(reason: str) -> CheckpointError:
        return CheckpointError(
            f"model.pretrained=imagenet: {pub.filename} ({pub.what}) is not in {dest.parent} and cannot be "
            f"downloaded ({reason}); fetch {pub.url} and put it in {dest.parent} (or set ORGANSEG_CACHE to "
            "the folder that holds it), or train from scratch with --set model.pretrained=null"
        )

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise offline(f"cannot create the folder: {exc.strerror or exc}") from None
    request = urllib.request.Request(pub.url, headers={"User-Agent": f"organseg/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", None) or exc).strip()
        raise offline(reason.splitlines()[0] if reason else type(exc).__name__) from None

    def fetch(tmp: Path) -> None:
        # Streamed into organseg's temporary (umask modes, stale-temporary sweep); only a file that passes
        # every check below is renamed into the cache.
        digest, written = hashlib.sha256(), 0
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = progress_bar(
            total=total, unit="B", desc=pub.filename, disable=not progress, unit_scale=True, unit_divisor=1024
        )
        try:
            with response, open(tmp, "wb") as fh, bar:
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as exc:
            raise offline(f"interrupted after {written} bytes: {exc}") from None
        if total is not None and written != total:
            raise CheckpointError(
                f"{pub.url}: download incomplete ({written} of {total} bytes); run the command again"
            )
        if pub.sha256_prefix and not digest.hexdigest().startswith(pub.sha256_prefix):
            raise CheckpointError(
                f"{pub.url}: SHA-256 {digest.hexdigest()[:16]}... does not start with {pub.sha256_prefix} "
                "(the prefix in the published file name): corrupt or replaced download"
            )
        check_published_layout(read_weights(tmp), pub, source=pub.url)

    atomic_write(dest, fetch)


def check_published_layout(state: dict[str, torch.Tensor], pub: PublishedWeights, *, source: str) -> None:
    """CheckpointError unless ``state`` holds the keys and shapes of ``pub`` (not another size or layout)."""
    wrong = [
        f"{k}: {'missing' if k not in state else shape_text(state[k])} (expected {list(shape)})"
        for k, shape in pub.expect.items()
        if k not in state or tuple(state[k].shape) != shape
    ]
    if wrong:
        raise CheckpointError(f"{source}: is not the {pub.what} file: {first_names(wrong, 3)}")
