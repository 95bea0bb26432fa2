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
* a Swin-Unet encoder pretrained by ``organseg pretrain`` (masked image modelling): a file tagged
  ``{"format": SIMMIM_FORMAT, "model": ...}`` whose weights are in the Microsoft Swin layout, loaded exactly
  as ImageNet Swin weights (encoder, mirrored decoder) but reported as kind ``swin_simmim``.
* ``load_vgg16_bn_imagenet``: torchvision's VGG16-BN (``features.N.*``) into the U-Net encoder
  (``encoder.features.N.*``, same indices), the RGB first conv summed to one input channel.

Files are read with ``torch.load(weights_only=True)`` or safetensors, never by running pickled code. A file
that cannot be read, or holds another architecture, raises :class:`CheckpointError` naming the file and the
first offending keys, and leaves the model untouched. Each loader returns a :class:`LoadReport`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from organseg.errors import CheckpointError
from organseg.formatting import first_names, shape_text
from organseg.models._registry import create_model
from organseg.models.state import describe_mismatch
from organseg.models.swin_unet import SwinTransformerSys

KINDS = ("auto", "swin_unet", "swin_imagenet", "swin_simmim", "vgg16_bn")
#: The format tag of the encoder file ``organseg pretrain`` writes (organseg.training.pretrain).
SIMMIM_FORMAT = "organseg-simmim-encoder/1"
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
            f"{first_names(list(self.ignored_keys))}, {self.left_random} left at initialisation "
            f"{first_names(self.left_random_keys)}"
        )


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` and strips a DataParallel ``module.`` prefix.
    """
    return _read_tagged(Path(path))[0]


def _read_tagged(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """:func:`read_weights` and the file's ``format`` tag (None when it has none)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
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
    tag = obj.get("format") if isinstance(obj, dict) and isinstance(obj.get("format"), str) else None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors (keys {first_names([str(k) for k in obj])})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, tag


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
        "unrecognised weights (neither Swin-Unet, ImageNet Swin nor VGG16-BN); "
        f"first keys {first_names(keys)}"
    )


def _swin_net(model: nn.Module) -> tuple[nn.Module, str]:
    """The SwinTransformerSys inside ``model`` and the prefix its keys carry in ``model.state_dict()``."""
    if isinstance(model, SwinTransformerSys):
        return model, ""
    net = getattr(model, "swin_unet", None)
    if isinstance(net, SwinTransformerSys):
        return net, "swin_unet."
    raise CheckpointError(f"expected a Swin-Unet model, got {type(model).__name__}")


def _mismatch_message(
    path: Path, what: str, missing: list[str], unexpected: list[str], shapes: list[str]
) -> str:
    detail = describe_mismatch(missing, unexpected, shapes, first=first_names)
    return f"{path}: does not fit {what}: {detail}"


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
        f"{prefix + k} file {shape_text(v)} vs model {shape_text(target[k])}"
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


def _load_swin_imagenet_state(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, kind: str | None = None
) -> LoadReport:
    """``kind``: the report's kind (default ``swin_imagenet_<layout>``)."""
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
            f"{first_names([k for k in need if k not in state])}; "
            f"first keys in file {first_names(list(state))}"
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
                file_key, f"shape {shape_text(src)} vs model {prefix + name} {shape_text(target[name])}"
            )
            continue
        load[name] = src
        used.add(file_key)
    # The reference would silently keep a mostly random model; a file whose attention weights fit nowhere
    # is another Swin size (or window layout) and almost certainly a mistake.
    if not any(k.endswith("attn.qkv.weight") for k in load):
        raise CheckpointError(
            f"{path}: no Swin block weights fit this model ({len(mismatched)} shape mismatches "
            f"{first_names([f'{k}: {r}' for k, r in mismatched.items()], 2)}); is it another Swin size?"
        )
    net.load_state_dict(load, strict=False)

    report = LoadReport(str(path), kind or f"swin_imagenet_{layout}")
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
            shapes.append(f"{s} file {shape_text(v)} vs model {k} {list(want)}")
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
    state, tag = _read_tagged(path)
    if kind == "auto" and tag == SIMMIM_FORMAT:
        kind = "swin_simmim"
    elif kind == "auto":
        try:
            kind = detect_kind(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    is_swin = hasattr(model, "swin_unet") or type(model).__name__ == "SwinTransformerSys"
    if (kind == "vgg16_bn") == is_swin:
        raise CheckpointError(f"{path}: holds {kind} weights, which do not fit a {type(model).__name__}")
    if kind == "swin_unet":
        # Fine-tuning from a Swin-Unet trained on other data: as the official load_from, a class head that
        # does not fit (another class count) is dropped and the new one starts from its initialisation.
        head = state.get("swin_unet.output.weight", state.get("output.weight"))
        want = _swin_net(model)[0].state_dict()["output.weight"].shape
        return _load_swin_unet_state(model, state, path, skip_output=head is None or head.shape != want)
    if kind == "swin_imagenet":
        return _load_swin_imagenet_state(model, state, path)
    if kind == "swin_simmim":  # the same layout and rule as ImageNet weights: encoder, mirrored decoder
        return _load_swin_imagenet_state(model, state, path, kind="swin_simmim")
    return _load_vgg_state(model, state, path)


# --------------------------------------------------------------------------------------- official checkpoints


def official_swin_unet_network(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network an official Swin-Unet training checkpoint (``torch.save(model.state_dict())``, with or
    without ``module.``) holds, with its weights loaded, and the constructor arguments that rebuild it;
    :func:`organseg.checkpoint.read_checkpoint` (``official=True``) makes the checkpoint of it.

    The architecture is read off the tensors (embedding width, depths, heads, window, input size from the
    shifted-window mask) and the class count off the head (``output.weight``); the result is checked by a
    strict load. A file with no head cannot be applied (it can still initialise training:
    ``model.pretrained``)."""
    path = Path(path)
    state = read_weights(path)
    try:
        kind = detect_kind(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: not an organseg checkpoint, and {exc}") from None
    if kind != "swin_unet":
        raise CheckpointError(
            f"{path}: holds {kind} weights (a pretrained encoder, not a trained segmentation network); "
            "use it to initialise training with --set model.pretrained=PATH"
        )
    net = {(k[len("swin_unet.") :] if k.startswith("swin_unet.") else k): v for k, v in state.items()}
    if "output.weight" not in net:
        raise CheckpointError(
            f"{path}: Swin-Unet weights without a class head (output.weight): nothing to apply; fine-tune "
            "from them with --set model.pretrained=PATH"
        )
    args = _swin_unet_args(net, path)
    model = create_model("swin_unet", **args)
    _load_swin_unet_state(model, net, path)  # strict: every key and shape must fit
    return model, args


def _swin_unet_args(net: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Constructor arguments of the SwinTransformerSys whose (prefix-free) state dict ``net`` is."""
    try:
        proj = net["patch_embed.proj.weight"]  # (embed_dim, in_chans, patch, patch)
        stages = sorted({int(m[1]) for k in net if (m := re.match(r"layers\.(\d+)\.blocks\.", k))})
        depths = [
            len({m[1] for k in net if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))}) for i in stages
        ]
        tables = [net[f"layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in stages]
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete Swin-Unet weights (no {exc.args[0]})") from None
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    patch = int(proj.shape[2])
    img_size = 224
    mask = net.get("layers.0.blocks.1.attn_mask")  # (windows, ws², ws²) when the first stage is shifted
    if mask is not None:
        img_size = math.isqrt(mask.shape[0]) * window * patch
    return {
        "img_size": img_size,
        "patch_size": patch,
        "in_chans": int(proj.shape[1]),
        "num_classes": int(net["output.weight"].shape[0]),
        "embed_dim": int(proj.shape[0]),
        "depths": depths,
        "num_heads": [int(t.shape[1]) for t in tables],
        "window_size": window,
    }
