"""Loading published weights into organseg networks (reference protocol §1.6).

Three kinds of file, one function each, plus :func:`load_pretrained` that tells them apart:

* ``load_swin_unet_checkpoint``: an official Swin-Unet training checkpoint
  (``torch.save(model.state_dict())``, keys ``swin_unet.*``, ``module.swin_unet.*`` after DataParallel,
  or wrapped under ``"model"`` / ``"state_dict"``). Strict: every key and shape must fit.
* ``load_swin_imagenet``: an ImageNet Swin-T classifier into the encoder *and* the mirrored decoder, as the
  reference ``SwinUnet.load_from``: every ``layers.i.*`` is also copied to ``layers_up.(n-1-i).*``, then keys
  the model lacks or whose shape differs are dropped. Two layouts are understood: Microsoft's release
  (``{"model": ...}``, ``layers.i.downsample`` ends stage i, ``head.*``, index and mask buffers included) and
  timm >= 0.9 (``layers.{i+1}.downsample`` starts the next stage, ``head.fc.*``, no index/mask buffers),
  from ``.pth`` or ``.safetensors``. timm files are renamed to the Microsoft layout first.
* ``load_vgg16_bn_imagenet``: torchvision's VGG16-BN (``features.N.*``) into the U-Net encoder
  (``encoder.features.N.*``, same indices), the RGB first conv summed to one input channel.

Files are read with ``torch.load(weights_only=True)`` or safetensors, never by running pickled code. A file
that cannot be read, or holds another architecture, raises :class:`CheckpointError` naming the file and the
first offending keys, and leaves the model untouched. Each loader returns a :class:`LoadReport`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from organseg.errors import CheckpointError

KINDS = ("auto", "swin_unet", "swin_imagenet", "vgg16_bn")
# Buffers derived from the architecture: never "left random", whether or not a file supplies them.
_COMPUTED = ("relative_position_index", "attn_mask", "num_batches_tracked")


@dataclass
class LoadReport:
    """What a loader did: ``loaded`` / ``ignored`` / ``left_random`` are counts, ``*_keys`` the names.

    ``ignored_keys`` maps each file key that was not used to the reason; ``left_random_keys`` are model
    entries that kept their initialisation; ``kept_computed_keys`` are architecture-derived buffers
    (window index, shift mask, BatchNorm counter) the file did not supply.
    """

    path: str
    kind: str
    loaded_keys: list[str] = field(default_factory=list)
    ignored_keys: dict[str, str] = field(default_factory=dict)
    left_random_keys: list[str] = field(default_factory=list)
    kept_computed_keys: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        return len(self.loaded_keys)

    @property
    def ignored(self) -> int:
        return len(self.ignored_keys)

    @property
    def left_random(self) -> int:
        return len(self.left_random_keys)

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON logs."""
        return {
            "path": self.path,
            "kind": self.kind,
            "loaded": self.loaded,
            "ignored": self.ignored,
            "left_random": self.left_random,
            "ignored_keys": dict(self.ignored_keys),
            "left_random_keys": list(self.left_random_keys),
            "kept_computed_keys": list(self.kept_computed_keys),
        }

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.kind} weights, {self.loaded} tensors loaded, {self.ignored} ignored "
            f"{_first(list(self.ignored_keys))}, {self.left_random} left at initialisation "
            f"{_first(self.left_random_keys)}"
        )


def _first(names: list[str], n: int = 4) -> str:
    if not names:
        return "[]"
    return "[" + ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "") + "]"


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` and strips a DataParallel ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...: truncated or not safetensors
            raise CheckpointError(
                f"{path}: cannot read safetensors file ({type(exc).__name__}: {exc})"
            ) from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, foreign pickle, non-tensor objects refused by weights_only
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{path}: cannot read weight file ({type(exc).__name__}: {msg})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors (keys {_first([str(k) for k in obj])})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------------------------- detection


def detect_kind(state: dict[str, torch.Tensor]) -> str:
    """ "swin_unet", "swin_imagenet" or "vgg16_bn" from the key names; CheckpointError for anything else."""
    keys = list(state)
    if any(k.startswith("swin_unet.") or k.startswith("layers_up.") for k in keys):
        return "swin_unet"
    if "patch_embed.proj.weight" in state and any(re.match(r"layers\.\d+\.blocks\.\d+\.", k) for k in keys):
        return "swin_imagenet"
    if "features.0.weight" in state and "features.1.running_var" in state:
        return "vgg16_bn"
    raise CheckpointError(
        f"unrecognised weights (neither Swin-Unet, ImageNet Swin nor VGG16-BN); first keys {_first(keys)}"
    )


def _swin_net(model: nn.Module) -> tuple[nn.Module, str]:
    """The SwinTransformerSys inside ``model`` and the prefix its keys carry in ``model.state_dict()``."""
    from organseg.models.swin_unet import SwinTransformerSys

    if isinstance(model, SwinTransformerSys):
        return model, ""
    net = getattr(model, "swin_unet", None)
    if isinstance(net, SwinTransformerSys):
        return net, "swin_unet."
    raise CheckpointError(f"expected a Swin-Unet model, got {type(model).__name__}")


def _mismatch_message(
    path: Path, what: str, missing: list[str], unexpected: list[str], shapes: list[str]
) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {_first(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches {_first(shapes, 3)}")
    return f"{path}: does not fit {what}: " + "; ".join(parts)


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


# --------------------------------------------------------------------------------------------- Swin-Unet


def load_swin_unet_checkpoint(model: nn.Module, path: str | Path, *, skip_output: bool = False) -> LoadReport:
    """Strictly load an official Swin-Unet checkpoint into a Swin-Unet model.

    ``skip_output`` drops ``output.*`` (the class head) as the reference ``load_from`` does for Swin-Unet
    files, so weights trained for another number of classes initialise everything else.
    """
    path = Path(path)
    return _load_swin_unet_state(model, read_weights(path), path, skip_output)


def _load_swin_unet_state(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, skip_output: bool = False
) -> LoadReport:
    net, prefix = _swin_net(model)
    target = net.state_dict()
    # Accept both the wrapper's names (swin_unet.*) and the bare network's.
    state = {(k[len("swin_unet.") :] if k.startswith("swin_unet.") else k): v for k, v in state.items()}
    report = LoadReport(str(path), "swin_unet")
    if skip_output:
        for k in [k for k in state if k.startswith("output.")]:
            report.ignored_keys[prefix + k] = "output head skipped"
            del state[k]
    expected = [k for k in target if not (skip_output and k.startswith("output."))]
    missing = [prefix + k for k in expected if k not in state]
    unexpected = [prefix + k for k in state if k not in target]
    shapes = [
        f"{prefix + k} file {_shape(v)} vs model {_shape(target[k])}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(_mismatch_message(path, "this Swin-Unet", missing, unexpected, shapes))
    net.load_state_dict(state, strict=not skip_output)
    report.loaded_keys = [prefix + k for k in expected]
    report.left_random_keys = [prefix + k for k in target if k not in state]
    return report


# --------------------------------------------------------------------------------------------- ImageNet Swin


def swin_layout(state: dict[str, torch.Tensor]) -> str:
    """ "ms" (Microsoft release) or "timm" (timm >= 0.9) from where the patch-merging layers sit."""
    stages = {int(m[1]) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    down = {int(m[1]) for k in state if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}
    if down:
        # MS: stages 0..n-2 end with a merge; timm: stages 1..n-1 start with one.
        if 0 in down:
            return "ms"
        if max(down) == max(stages):
            return "timm"
    if any(k.startswith("head.fc.") for k in state) or not any("relative_position_index" in k for k in state):
        return "timm"
    return "ms"


def timm_to_ms(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Map each Microsoft-layout name to the timm file name it comes from."""
    names = {}
    for k in state:
        ms = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k)
        ms = re.sub(r"^head\.fc\.", "head.", ms)
        names[ms] = k
    return names


def load_swin_imagenet(model: nn.Module, path: str | Path) -> LoadReport:
    """ImageNet Swin classifier weights into the Swin-Unet encoder and mirrored decoder (``load_from``)."""
    path = Path(path)
    return _load_swin_imagenet_state(model, read_weights(path), path)


def _load_swin_imagenet_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> LoadReport:
    net, prefix = _swin_net(model)
    if any(k.startswith("swin_unet.") or k.startswith("layers_up.") for k in state):
        raise CheckpointError(
            f"{path}: is a Swin-Unet checkpoint, not ImageNet Swin weights; load it with "
            "load_swin_unet_checkpoint (or load_pretrained)"
        )
    need = ["patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight"]
    if any(k not in state for k in need):
        raise CheckpointError(
            f"{path}: not a Swin classification checkpoint: missing keys "
            f"{_first([k for k in need if k not in state])}; "
            f"first keys in file {_first(list(state))}"
        )
    layout = swin_layout(state)
    origin = timm_to_ms(state) if layout == "timm" else {k: k for k in state}

    # The reference copies every stage i to decoder stage 3-i (n-1-i in general); a target takes the
    # encoder name first, the mirror otherwise (names never collide).
    n = net.num_layers
    candidates: dict[str, str] = {}  # model key (no prefix) -> file key
    for ms_name, file_key in origin.items():
        candidates[ms_name] = file_key
        m = re.match(r"layers\.(\d+)\.(.*)", ms_name)
        if m and int(m[1]) <= n - 1:
            candidates.setdefault(f"layers_up.{n - 1 - int(m[1])}.{m[2]}", file_key)

    target = net.state_dict()
    load: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    mismatched: dict[str, str] = {}
    for name, file_key in candidates.items():
        if name not in target:
            continue
        src = state[file_key]
        if src.shape != target[name].shape:
            # As the reference: a differently shaped tensor (other window size, width, classes) is dropped.
            mismatched.setdefault(
                file_key, f"shape {_shape(src)} vs model {prefix + name} {_shape(target[name])}"
            )
            continue
        load[name] = src
        used.add(file_key)
    # The reference would silently keep a mostly random model; a file whose attention weights fit nowhere
    # is another Swin size (or window layout) and almost certainly a mistake.
    if not any(k.endswith("attn.qkv.weight") for k in load):
        raise CheckpointError(
            f"{path}: no Swin block weights fit this model ({len(mismatched)} shape mismatches "
            f"{_first([f'{k}: {r}' for k, r in mismatched.items()], 2)}); is it another Swin size?"
        )
    net.load_state_dict(load, strict=False)

    report = LoadReport(str(path), f"swin_imagenet_{layout}")
    report.loaded_keys = [prefix + k for k in target if k in load]
    report.ignored_keys = {k: mismatched.get(k, "not in model") for k in state if k not in used}
    for k in target:
        if k not in load:
            (report.kept_computed_keys if k.endswith(_COMPUTED) else report.left_random_keys).append(
                prefix + k
            )
    return report


# --------------------------------------------------------------------------------------------- VGG16-BN


def load_vgg16_bn_imagenet(unet: nn.Module, path: str | Path) -> LoadReport:
    """torchvision VGG16-BN ImageNet weights into the U-Net encoder (``encoder.features.N`` = ``features.N``).

    The first convolution's RGB kernels are summed over the input channels when the U-Net takes fewer:
    a grey image repeated to RGB then gives the same response as the grey image through the summed kernel.
    """
    path = Path(path)
    return _load_vgg_state(unet, read_weights(path), path)


def _load_vgg_state(unet: nn.Module, state: dict[str, torch.Tensor], path: Path) -> LoadReport:
    target = unet.state_dict()
    enc = [k for k in target if k.startswith("encoder.features.")]
    if not enc:
        raise CheckpointError(
            f"expected a U-Net with encoder.features.* (VGG16-BN encoder), got {type(unet).__name__}"
        )
    src_name = {k: k[len("encoder.") :] for k in enc}
    missing = [src_name[k] for k in enc if src_name[k] not in state and not k.endswith("num_batches_tracked")]
    shapes = []
    load: dict[str, torch.Tensor] = {}
    for k in enc:
        s = src_name[k]
        if s not in state:
            continue
        v = state[s]
        want = target[k].shape
        if (
            v.shape != want
            and v.ndim == 4
            and v.shape[0] == want[0]
            and v.shape[2:] == want[2:]
            and want[1] == 1
        ):
            v = v.sum(dim=1, keepdim=True)  # RGB -> grey, see the docstring
        if v.shape != want:
            shapes.append(f"{s} file {_shape(v)} vs model {k} {list(want)}")
            continue
        load[k] = v.to(target[k].dtype)
    if missing or shapes:
        raise CheckpointError(_mismatch_message(path, "the U-Net's VGG16-BN encoder", missing, [], shapes))
    unet.load_state_dict(load, strict=False)

    report = LoadReport(str(path), "vgg16_bn")
    used = {src_name[k] for k in load}
    report.loaded_keys = [k for k in target if k in load]
    report.ignored_keys = {k: "not in model" for k in state if k not in used}
    for k in target:
        if k not in load:
            (report.kept_computed_keys if k.endswith(_COMPUTED) else report.left_random_keys).append(k)
    return report


# --------------------------------------------------------------------------------------------- dispatch


def load_pretrained(model: nn.Module, path: str | Path, kind: str = "auto") -> LoadReport:
    """Load any supported weight file into ``model``; ``kind="auto"`` detects it from the key names."""
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown weight kind {kind!r}; expected one of {KINDS}")
    path = Path(path)
    state = read_weights(path)
    if kind == "auto":
        try:
            kind = detect_kind(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    is_swin = hasattr(model, "swin_unet") or type(model).__name__ == "SwinTransformerSys"
    if (kind == "vgg16_bn") == is_swin:
        raise CheckpointError(f"{path}: holds {kind} weights, which do not fit a {type(model).__name__}")
    if kind == "swin_unet":
        return _load_swin_unet_state(model, state, path)
    if kind == "swin_imagenet":
        return _load_swin_imagenet_state(model, state, path)
    return _load_vgg_state(model, state, path)


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
            f"{pub.model_prefix + k} {_shape(target[pub.model_prefix + k])} vs {list(shape)}"
            for k, shape in pub.expect.items()
            if pub.model_prefix + k in target and tuple(target[pub.model_prefix + k].shape) != shape
        ]
        if wrong:
            raise CheckpointError(
                f"model.pretrained=imagenet: the {pub.what} weights do not fit this {model_name} "
                f"(model.args change its size: {_first(wrong, 2)}); train from scratch with "
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
    import hashlib
    import tempfile
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    from organseg import __version__

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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    written = 0
    try:
        with response, os.fdopen(fd, "wb") as fh:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=pub.filename,
                disable=not progress,
            )  # fmt: skip
            with bar:
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise offline(f"interrupted after {written} bytes: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_published_layout(state: dict[str, torch.Tensor], pub: PublishedWeights, *, source: str) -> None:
    """CheckpointError unless ``state`` holds the keys and shapes of ``pub`` (not another size or layout)."""
    wrong = [
        f"{k}: {'missing' if k not in state else _shape(state[k])} (expected {list(shape)})"
        for k, shape in pub.expect.items()
        if k not in state or tuple(state[k].shape) != shape
    ]
    if wrong:
        raise CheckpointError(f"{source}: is not the {pub.what} file: {_first(wrong, 3)}")


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once (no thread here writes files meanwhile).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
