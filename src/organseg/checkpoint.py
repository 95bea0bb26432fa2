"""Checkpoint files: one self-describing format for training, testing and prediction.

A checkpoint is a dict saved with ``torch.save`` and read with ``weights_only=True``::

    format        "organseg-checkpoint/1"
    model         state dict (reference key names)
    model_name    registry name, e.g. "swin_unet", or a network of one's own: an import path
                  ("mypkg.nets:build_mynet") or an installed package's entry-point name (docs/networks.md)
    model_source  only for a network of one's own: {"path": "module:factory", "entry_point": name or None,
                  "distribution": the package providing the module or None (a local module), "version"}
    model_args    constructor overrides used to build it (plain data)
    class_names   list of class names, index 0 background
    preprocessing plain dict describing how raw intensities were mapped to [0, 1] (see organseg.data)
    orientation   patient orientation code of the training arrays ("LPS", see organseg.imageio.orientation),
                  or None when the training data had none; absent in checkpoints written before it existed
    config        the resolved run configuration (plain data), may be {}
    dataset       where the training data were and what they were (organseg.data.identity), when written
                  by ``train``; absent in checkpoints written before it existed
    ...           training state (optimizer, scheduler, RNG, epoch, iteration) when written by ``train``
    checksum      {"sha256": hex}: the digest of everything above (:func:`payload_digest`), added by
                  :func:`atomic_torch_save` and verified by :func:`read_checkpoint`

Everything is written atomically through :mod:`organseg.fileio`.

Why a checksum inside the dict, over the loaded values, rather than a digest of the file's bytes beside it: it
travels with the file (a checkpoint copied to another machine or renamed keeps it; a ``last.pt.sha256`` beside
it would be left behind), and ``torch.load`` does not check the zip's CRCs, so bytes flipped in a tensor's
data load as other numbers without a word. Hashing the loaded tensors' bytes in the dict's own order catches
exactly that; damage to the pickled structure mostly fails to load at all, and what loads differently
(a changed number) changes the digest too. Checkpoints written before the field still load, unchecked.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from organseg.data.preprocess import validate_spec
from organseg.errors import CheckpointError, OrgansegError
from organseg.fileio import WholeWrites, atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401 (earlier home)
from organseg.imageio.orientation import code_problem
from organseg.models import (
    create_model,
    head_key,
    input_size_problem,
    is_builtin,
    missing_module,
    model_name_problem,
    model_source,
)
from organseg.models.pretrained import official_swin_unet_network
from organseg.models.state import describe_mismatch
from organseg.models.state import first_keys as _first

FORMAT = "organseg-checkpoint/1"
#: The key of the checksum record (``{"sha256": hex digest of the rest}``) in a checkpoint file.
CHECKSUM = "checksum"
#: ``source.kind`` of a checkpoint made from an official Swin-Unet training file (see :func:`read_checkpoint`)
OFFICIAL_SWIN_UNET = "official_swin_unet"


def _feed(digest: Any, obj: Any) -> None:
    """Add ``obj`` to ``digest`` in a canonical form: the type of every value, tensors by dtype, shape and
    raw bytes, containers in their own order (a dict saved and loaded keeps its key order)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
        for value in obj:
            _feed(digest, value)
    else:  # str, numbers, None, torch.Size / dtype: their repr is exact (floats round-trip)
        digest.update(f"{type(obj).__name__}={obj!r};".encode())


def payload_digest(ckpt: dict[str, Any]) -> str:
    """The SHA-256 of a checkpoint dict's contents, its :data:`CHECKSUM` record aside (64 hex digits)."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in ckpt.items() if k != CHECKSUM})
    return digest.hexdigest()


def _verify_checksum(obj: dict[str, Any], path: Path) -> dict[str, Any]:
    """``obj`` without its checksum record, after checking it; CheckpointError on a mismatch. A checkpoint
    written before checksums (no record) is returned as it is."""
    record = obj.pop(CHECKSUM, None)
    if record is None:
        return obj
    expected = record.get("sha256") if isinstance(record, dict) else None
    actual = payload_digest(obj)
    if expected != actual:
        raise CheckpointError(
            f"{path}: checksum mismatch (the file changed after it was written): its contents hash to "
            f"sha256 {actual[:12]}..., it was written as {str(expected)[:12]}...; the disk or a copy damaged "
            "it: use another checkpoint of the run (epoch_N.pt, best.pt) or train again"
        )
    return obj


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`organseg.fileio.atomic_write` (temporary file, mode, clean-up). An
    organseg checkpoint dict gets its :data:`CHECKSUM` record here, over what is written."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = {k: v for k, v in obj.items() if k != CHECKSUM}
        obj[CHECKSUM] = {"sha256": payload_digest(obj)}

    def write(tmp: Path) -> None:
        # Through a file object that keeps the OSError torch's writer swallows (see WholeWrites): a full disk
        # then ends in one line naming the checkpoint and the space it needs (atomic_write), not in torch's
        # multi-line RuntimeError about an "unexpected pos".
        with open(tmp, "wb") as fh:
            out = WholeWrites(fh)
            try:
                torch.save(obj, out)
            except RuntimeError:
                if out.error is not None:  # what torch's writer swallowed: ENOSPC, a stop signal
                    raise out.error from None
                raise
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write, size_hint=_tensor_bytes(obj))


def _tensor_bytes(obj: Any) -> int:
    """About the size of ``torch.save(obj)``: its tensors' bytes (the rest is small)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, official: bool = False
) -> dict:
    """Load an organseg checkpoint safely; a missing, corrupt or foreign file raises CheckpointError.

    ``official=True`` (``test`` and ``predict``) also accepts a checkpoint written by the official Swin-Unet
    trainer (``torch.save(model.state_dict())``): it comes back in the same form, with empty ``class_names``
    and ``preprocessing`` (the file does not record them) and ``source.kind == "official_swin_unet"``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / non-torch files
        if not zipfile.is_zipfile(path):  # torch.save (>= 1.6) writes a zip archive: say so, not unpickling
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; this file is not one, "
                "or is truncated)"
            ) from None
        # torch's unpickling errors run over many lines; the first one says what is wrong.
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {first})") from None
    if official and isinstance(obj, dict) and "format" not in obj:
        return official_swin_unet_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an organseg checkpoint (expected a dict with format={FORMAT!r}); "
            "official Swin-Unet or ImageNet weights are loaded with organseg.models.pretrained"
        )
    return _verify_checksum(obj, path)


def make_checkpoint(
    model: nn.Module,
    *,
    model_name: str,
    model_args: dict | None = None,
    class_names: list[str] | tuple[str, ...] = (),
    preprocessing: dict | None = None,
    orientation: str | None = None,
    config: dict | None = None,
    **extra: Any,
) -> dict:
    """The dict :func:`read_checkpoint` returns; ``extra`` carries training state. ``orientation`` is always
    written (None: the training data had no patient orientation), so that a checkpoint without the key is
    known to predate it."""
    module = model.module if hasattr(model, "module") else model  # DDP / DataParallel
    module = getattr(module, "_orig_mod", module)  # torch.compile
    source = model_source(model_name)
    return {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "model_name": model_name,
        "model_args": dict(model_args or {}),
        "class_names": list(class_names),
        "preprocessing": dict(preprocessing or {}),
        "orientation": orientation,
        "config": dict(config or {}),
        **({"model_source": source} if source is not None else {}),
        **extra,
    }


def official_swin_unet_checkpoint(path: str | Path) -> dict[str, Any]:
    """An official Swin-Unet training checkpoint (``torch.save(model.state_dict())``, with or without
    ``module.``) as an organseg checkpoint dict, so ``test`` and ``predict`` can apply it directly: the
    network and its arguments as :func:`organseg.models.pretrained.official_swin_unet_network` reads them off
    the tensors, ``source.kind`` :data:`OFFICIAL_SWIN_UNET`. ``class_names`` and ``preprocessing`` are left
    empty: the file does not say them, so the caller supplies the dataset's (``test``) or the reference
    defaults (``predict``) and says so."""
    path = Path(path)
    model, args = official_swin_unet_network(path)
    ckpt = make_checkpoint(
        model, model_name="swin_unet", model_args=args, source={"kind": OFFICIAL_SWIN_UNET, "path": str(path)}
    )
    # The file does not record the orientation of its training data: absent, as in a checkpoint written
    # before the field, not None ("the data had none"), so that predict says which it is.
    del ckpt["orientation"]
    return ckpt


def is_official_swin_unet(ckpt: dict[str, Any]) -> bool:
    """Whether ``ckpt`` was made from an official Swin-Unet file (no class names nor preprocessing)."""
    return (ckpt.get("source") or {}).get("kind") == OFFICIAL_SWIN_UNET


def check_state_dict(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Raise CheckpointError naming the missing and unexpected keys and every shape mismatch (both shapes)
    between ``state`` and ``model`` instead of torch's KeyError / size-mismatch traceback."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source}: the weights do not fit the network: "
            + describe_mismatch(missing, unexpected, mismatched, "shapes differ (checkpoint vs network)")
        )


#: What :func:`checkpoint_orientation` says of a checkpoint without the field (written before it existed).
PREDATES_ORIENTATION = "predates"


def checkpoint_orientation(ckpt: dict) -> str | None:
    """The orientation code a checkpoint (or an ONNX model's info dict) records; None when its training data
    had none; :data:`PREDATES_ORIENTATION` when it was written before checkpoints recorded one."""
    if "orientation" not in ckpt:
        return PREDATES_ORIENTATION
    return ckpt["orientation"]


def checkpoint_orientation_problem(ckpt: dict) -> str | None:
    """Why a checkpoint's ``orientation`` field is unusable (None when it is fine: absent, None or a code)."""
    value = ckpt.get("orientation")
    if value is None:
        return None
    problem = code_problem(value)
    return f"field 'orientation': {problem}" if problem else None


def validate_checkpoint(ckpt: dict, source: str | Path = "checkpoint") -> nn.Module:
    """Check everything a verb relies on and return the network with the weights loaded (eval mode).

    The one check of every verb that loads a checkpoint (train --resume, test, predict, compare): the fields
    have the documented types; the model name is registered; the class names match the output layer; every
    weight is finite (a NaN checkpoint predicts garbage without a word); the weights fit the network the
    checkpoint describes key by key and shape by shape. Raises CheckpointError naming ``source``.
    """
    src = str(source)
    optional = {"model_args": {}, "class_names": [], "preprocessing": {}, "config": {}}  # absent: empty
    for key, kind in (
        ("model", dict),
        ("model_name", str),
        ("model_args", dict),
        ("class_names", list),
        ("preprocessing", dict),
        ("config", dict),
    ):
        value = ckpt.get(key, optional.get(key))
        if not isinstance(value, kind):
            raise CheckpointError(
                f"{src}: field {key!r} should be a {kind.__name__}, got "
                + ("nothing (missing)" if value is None else type(value).__name__)
            )
    name, weights, names = ckpt["model_name"], ckpt["model"], ckpt.get("class_names", [])
    name_problem = model_name_problem(name)
    if name_problem:
        # a network of one's own whose module is gone: what to install says more than why the import failed
        raise CheckpointError(f"{src}: {missing_module(ckpt.get('model_source')) or name_problem}")
    not_tensors = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{src}: model entries that are not tensors: {_first(not_tensors)}")
    if not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{src}: class_names must be strings, got {names!r}")
    # only an official Swin-Unet file lacks them (the dataset supplies them)
    if not names and not is_official_swin_unet(ckpt):
        raise CheckpointError(f"{src}: no class_names: an organseg checkpoint names its classes")
    orientation_problem = checkpoint_orientation_problem(ckpt)
    if orientation_problem:
        raise CheckpointError(f"{src}: {orientation_problem}")
    if ckpt.get("preprocessing"):
        try:
            validate_spec(ckpt["preprocessing"])
        except OrgansegError as exc:
            raise CheckpointError(f"{src}: {exc}") from None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{src}: weights with NaN or infinite values: {_first(bad)}")
    args = ckpt.get("model_args", {})
    head = head_key(name)
    classes = weights[head].shape[0] if head is not None and head in weights else args.get("num_classes")
    if names and classes is not None and len(names) != classes:
        raise CheckpointError(
            f"{src}: {len(names)} class names {names} but the network's output layer has {classes} channels"
        )
    # The input size test/predict feed (config train.img_size) must be one the network takes.
    train_cfg = ckpt.get("config", {}).get("train")
    side = train_cfg.get("img_size") if isinstance(train_cfg, dict) else None
    if isinstance(side, int) and not isinstance(side, bool):
        built = args.get("img_size", side)
        problem = input_size_problem(name, side, args) or (
            None if built in (side, [side, side], (side, side)) else f"is built for img_size {built}"
        )
        if problem:
            raise CheckpointError(f"{src}: its config says train.img_size={side}, but {name} {problem}")
    # A factory of one's own may raise anything; organseg's own raise these or have a fault worth a traceback.
    failures = (TypeError, ValueError, AssertionError, OrgansegError) if is_builtin(name) else Exception
    try:
        model = create_model(name, **args)
    except failures as exc:
        raise CheckpointError(f"{src}: cannot build {name} with model_args {args}: {exc}") from None
    check_state_dict(model, weights, src)
    model.load_state_dict(weights)
    return model.eval()


def model_from_checkpoint(
    ckpt: dict | str | Path, map_location: str | torch.device = "cpu", source: str | Path | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the network a checkpoint describes and load its weights strictly, after
    :func:`validate_checkpoint`. ``source`` names the file in messages (default: the path given).

    Returns (model in eval mode, checkpoint dict)."""
    if not isinstance(ckpt, dict):
        source = source or ckpt
        ckpt = read_checkpoint(ckpt, map_location)
    return validate_checkpoint(ckpt, source or "checkpoint"), ckpt
