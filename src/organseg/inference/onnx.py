"""ONNX export of an organseg checkpoint, and an ONNX Runtime model the batched inference runs as is.

Deployments often have no PyTorch; an ONNX file and ONNX Runtime are enough there. The file written by
:func:`export_onnx` (``organseg export CKPT --onnx OUT.onnx``) holds:

* one input ``image``: (B, 1, H, W) float32 slices in [0, 1] (the checkpoint's preprocessing applied), B free,
  H x W the network's input size (``config.train.img_size`` of the checkpoint, as ``test``/``predict`` use);
* one output ``logits``: (B, num_classes, H, W) float32, the network's raw scores (argmax gives the labels);
* ``metadata_props``, each value a JSON string (``json.loads`` it): ``organseg_format``
  (``"organseg-onnx/1"``), ``organseg_version``, ``model_name``, ``model_args``, ``class_names``,
  ``preprocessing`` (the spec of :func:`organseg.data.preprocess.apply_preprocessing`), ``orientation`` (the
  patient orientation code of the training slices, see :mod:`~organseg.imageio.orientation`, or null;
  absent when
  the checkpoint predates it), ``model_source`` (a network of one's own only: the checkpoint's record of its
  code), ``input_size`` ([H, W]), ``source_checkpoint`` (file name and sha256),
  ``export_check`` (the largest logit difference between ONNX Runtime and PyTorch measured at export),
  ``torch_version``.

Export path: ``torch.onnx.export`` with the dynamo-based exporter (``torch.export`` + onnxscript), the default
since torch 2.9. Its batch is a symbol, so no Python branch is baked in at the example's batch size; the
TorchScript-based exporter would trace Swin-Unet's ``batch == 1`` mask branch at whatever batch it was given,
and it is deprecated. The graph is captured under ``torch.no_grad``: the function ``predict_volume`` runs
(for Swin-Unet the SDPA path, whose -inf mask gives exact zeros where the reference's -100 gives subnormal
floats, slow on x86 in ONNX Runtime too). Every export is checked: ONNX Runtime and PyTorch fp32 logits of
the same random batch must agree to 1e-4 (relative to the logit size), else nothing is written.

:class:`OnnxModel` wraps an ``onnxruntime.InferenceSession`` in an ``nn.Module`` without parameters, so
:func:`organseg.inference.engine.predict_volume` calls it like the torch network; :func:`load_onnx`
returns it with an info dict shaped like a checkpoint dict (``model_name``, ``class_names``,
``preprocessing``, ``config.train.img_size``), so code that reads those fields reads either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from organseg import __version__
from organseg.checkpoint import (
    checkpoint_orientation_problem,
    is_official_swin_unet,
    model_from_checkpoint,
    read_checkpoint,
)
from organseg.data.preprocess import validate_spec
from organseg.errors import CheckpointError, ConfigError, ExtraNotInstalledError
from organseg.fileio import atomic_write_bytes, check_output_file, file_sha256
from organseg.inference.official import with_reference_defaults
from organseg.inference.targets import checkpoint_patch_size, resolve_target

FORMAT = "organseg-onnx/1"
#: ONNX opset of the exported graph; ONNX Runtime reads it from release 1.17 on.
OPSET = 20
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: The export check's bound on |ONNX Runtime - PyTorch| logits, times max(1, largest |logit|).
PARITY_TOLERANCE = 1e-4
_EXTRA = "pip install 'organseg[onnx]'"
_PROTOBUF_LIMIT = 2**31 - 1  # one serialized ModelProto; beyond it ONNX needs external data files


def _require(*names: str) -> None:
    missing = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExtraNotInstalledError(f"ONNX support needs {', '.join(missing)}, not installed: {_EXTRA}")


def is_onnx_path(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX model: by its suffix, as ``predict`` tells it from a checkpoint."""
    return Path(path).suffix.lower() == ".onnx"


# ----------------------------------------------------------------------------------------------- export


def _check_output(out: Path, source: Path) -> None:
    if not is_onnx_path(out):
        raise ConfigError(f"--onnx {out}: expected a file name ending in .onnx")
    if out.is_dir():
        raise ConfigError(f"--onnx {out}: is a folder; give the .onnx file to write")
    if (out.exists() and out.samefile(source)) or out.resolve() == source.resolve():
        raise ConfigError(f"--onnx {out}: is the checkpoint being exported; choose another file")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it skips and emits deprecation chatter from its
    dependencies, none of it about this model; errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _torch_supports_export() -> bool:
    major, minor = (int("".join(c for c in p if c.isdigit()) or 0) for p in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6)


def _export_proto(model: nn.Module, example: torch.Tensor, opset: int):
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types, with long reports
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"ONNX export of the network failed ({type(exc).__name__}: {first})") from None
    return program.model_proto


def _session(model: bytes | str, threads: int | None = None, providers: Sequence[str] | None = None):
    import onnxruntime as ort  # noqa: PLC0415 (the optional organseg[onnx] extra)

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model, options, providers=list(providers or ["CPUExecutionProvider"]))


def parity_input(batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """The export check's input: uniform [0, 1) slices, as preprocessed images are."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *size, generator=g)


def max_logit_difference(model: nn.Module, session, x: torch.Tensor) -> tuple[float, float]:
    """(max |ONNX Runtime - PyTorch| logit, max |PyTorch logit|) on ``x``, PyTorch in fp32 eval mode under
    ``inference_mode`` as ``predict_volume`` runs it."""
    with torch.inference_mode():
        ref = model(x).float().numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != ref.shape:
        raise CheckpointError(
            f"the exported graph maps {tuple(x.shape)} to {got.shape}, PyTorch to {ref.shape}"
        )
    return float(np.abs(got - ref).max()), float(np.abs(ref).max())


def export_onnx(
    target: str | Path,
    out: str | Path,
    *,
    checkpoint: str | None = None,
    opset: int = OPSET,
    check_batch: int = 2,
) -> dict[str, Any]:
    """Export the network of ``target`` (a checkpoint file, or a run folder: its best, else last checkpoint,
    or ``checkpoint``) to ``out`` (.onnx), with the metadata above. The export is checked against PyTorch on a
    random batch of ``check_batch`` slices before anything is written. Returns the metadata (decoded) plus
    ``path`` and ``bytes``."""
    _require("onnx", "onnxscript", "onnxruntime")
    if not _torch_supports_export():
        raise ConfigError(
            f"ONNX export needs torch >= 2.6 (its dynamo-based exporter); found {torch.__version__}"
        )
    source = resolve_target(target, checkpoint).checkpoint_path
    out = Path(out)
    _check_output(out, source)
    ckpt = read_checkpoint(source, official=True)  # as test and predict take it
    notes = []
    if is_official_swin_unet(ckpt):
        ckpt, note = with_reference_defaults(ckpt, source)
        notes.append(note)
    # An unwritable place fails now, not after a minute of exporting. The file is written like every other
    # (organseg.fileio): a temporary that names this process, swept by the next export of the same file once
    # its writer is gone (a killed export cannot remove it), the mode open() gives, a full disk in one line.
    check_output_file(out, what="--onnx")
    model, ckpt = model_from_checkpoint(ckpt)
    model = model.float().eval()
    size = checkpoint_patch_size(ckpt)
    proto, diff, scale = _checked_export(model, size, opset, check_batch, source)
    meta = _export_metadata(ckpt, source, size, check_batch, diff, scale)
    _stamp(proto, meta, size)
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    return {**meta, "path": str(out), "bytes": len(data), "notes": notes}


def _checked_export(model: nn.Module, size: tuple[int, int], opset: int, check_batch: int, source: Path):
    """(ONNX proto, max logit difference, max logit) of ``model``, refused when the graph does not
    reproduce PyTorch's logits on a random batch: a wrong file is worse than none."""
    example = parity_input(2, size, seed=1)
    try:
        with torch.inference_mode():
            model(example)
    except ValueError as exc:  # e.g. a U-Net trained at a size not divisible by 16
        raise CheckpointError(
            f"{source}: the network does not take {size[0]}x{size[1]} slices ({exc})"
        ) from None
    proto = _export_proto(model, example, opset)
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise CheckpointError(f"{source}: the network is over 2 GB, beyond one ONNX file")
    x = parity_input(check_batch, size)
    diff, scale = max_logit_difference(model, _session(proto.SerializeToString()), x)
    if not diff <= PARITY_TOLERANCE * max(1.0, scale):
        raise CheckpointError(
            f"{source}: the exported graph differs from the PyTorch network by {diff:.3g} in the logits "
            f"(tolerance {PARITY_TOLERANCE * max(1.0, scale):.3g}); not written"
        )
    return proto, diff, scale


def _export_metadata(
    ckpt: dict[str, Any], source: Path, size: tuple[int, int], check_batch: int, diff: float, scale: float
) -> dict[str, Any]:
    """What the .onnx file carries so that ``organseg predict`` can run it without the checkpoint."""
    return {
        "organseg_format": FORMAT,
        "organseg_version": __version__,
        "model_name": ckpt.get("model_name"),
        "model_args": ckpt.get("model_args") or {},
        # A network of one's own: where its code came from (import path, package and version), as the
        # checkpoint records it. The graph runs without it; whoever receives the file learns what it is.
        **({"model_source": ckpt["model_source"]} if ckpt.get("model_source") is not None else {}),
        "class_names": list(ckpt.get("class_names") or []),
        "preprocessing": ckpt.get("preprocessing") or {"kind": "none"},
        # absent, not null, for a checkpoint that predates orientation records: predict then says so
        **({"orientation": ckpt["orientation"]} if "orientation" in ckpt else {}),
        "input_size": list(size),
        # The file name and hash identify the checkpoint; its absolute path would only tell where it lay on
        # the exporting machine (a user name, a project folder) to whoever receives the model.
        "source_checkpoint": {"name": source.name, "sha256": file_sha256(source)},
        "export_check": {
            "input": f"uniform [0, 1), batch {check_batch}, seed 0",
            "max_abs_logit_diff": diff,
            "max_abs_logit": scale,
        },
        "torch_version": torch.__version__,
    }


def _stamp(proto: Any, meta: dict[str, Any], size: tuple[int, int]) -> None:
    """Write ``meta`` (JSON values) into the proto's metadata and describe the input and output."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    h, w = size
    proto.doc_string = (
        f"organseg {meta['model_name']}: input {INPUT_NAME} (B, 1, {h}, {w}) float32 in [0, 1] after "
        f"the preprocessing in the metadata; output {OUTPUT_NAME} (B, classes, {h}, {w}) float32"
    )


# ----------------------------------------------------------------------------------------------- runtime


class OnnxModel(nn.Module):
    """An ONNX Runtime session that ``predict_volume`` calls like the torch network: ``model(x)`` takes a
    (B, 1, H, W) float tensor and returns (B, C, H, W) float32 logits on ``x``'s device. It has no
    parameters (so ``predict_volume`` picks the CPU, where the session's inputs live); ``train`` and
    ``eval`` change nothing. Reduced precision is not available: the graph is fp32, and a call under
    autocast raises ConfigError rather than run fp32 under a bf16 label."""

    def __init__(self, session, input_size: tuple[int, int], num_classes: int, source: str = "") -> None:
        super().__init__()
        self.session = session
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_classes = int(num_classes)
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != self.input_size:
            h, w = self.input_size
            name = self.source or "ONNX model"
            raise ValueError(f"{name} takes (B, 1, {h}, {w}) slices, got {tuple(x.shape)}")
        if any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")):
            # Autocast cannot reach into the session: running fp32 under a bf16 request would mislabel it.
            raise ConfigError(
                f"{self.source or 'an ONNX model'} runs in fp32 only; bf16/fp16 need the PyTorch checkpoint"
            )
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: arr})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        h, w = self.input_size
        return f"source={self.source!r}, input=(B, 1, {h}, {w}), classes={self.num_classes}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _check_metadata(path: Path, meta: dict[str, Any]) -> tuple[int, int]:
    """The input size (H, W) after checking every metadata entry ``predict`` relies on; CheckpointError
    naming the file and the entry otherwise (a bad entry used to surface as a traceback, or as a message
    that did not say which file it came from)."""
    for key in ("model_name", "class_names", "preprocessing", "input_size"):
        if key not in meta:
            raise CheckpointError(f"{path}: organseg metadata without {key!r}")
    if not isinstance(meta["model_name"], str) or not meta["model_name"]:
        raise CheckpointError(f"{path}: metadata 'model_name' is {meta['model_name']!r}; expected a name")
    names = meta["class_names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise CheckpointError(
            f"{path}: metadata 'class_names' is {names!r}; expected a list of names, background first"
        )
    size = meta["input_size"]
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise CheckpointError(
            f"{path}: metadata 'input_size' is {size!r}; expected [H, W], two positive integers"
        )
    try:
        validate_spec(meta["preprocessing"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: metadata 'preprocessing': {exc}") from None
    return int(size[0]), int(size[1])


def _check_graph(path: Path, session: Any, size: tuple[int, int], class_names: list[str]) -> int:
    """The graph's class count, after checking the graph against its metadata: one input ``image`` of
    (B, 1, H, W), H x W the metadata's ``input_size`` where the graph fixes them, an output ``logits`` with
    one channel per class name. A graph whose class axis is a symbol is run once on a zero slice to count.
    CheckpointError naming the file otherwise: a wrong count would label every organ with another's name."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    logits = next((o for o in outputs if o.name == OUTPUT_NAME), None)
    if [i.name for i in inputs] != [INPUT_NAME] or logits is None:
        raise CheckpointError(f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}")
    shape = list(inputs[0].shape)
    fixed = [v if isinstance(v, int) else None for v in shape]
    expected = (None, 1, size[0], size[1])
    if len(shape) != 4 or any(f is not None and f != e for f, e in zip(fixed[1:], expected[1:], strict=True)):
        raise CheckpointError(
            f"{path}: the graph takes {INPUT_NAME!r} of shape {shape}, but the metadata's input_size is "
            f"{list(size)}: expected (B, 1, {size[0]}, {size[1]})"
        )
    channels = logits.shape[1] if len(logits.shape) == 4 else None
    if not isinstance(channels, int):
        try:
            x = np.zeros((1, 1, *size), np.float32)
            channels = int(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].shape[1])
        except Exception as exc:  # ONNX Runtime raises its own types
            raise CheckpointError(
                f"{path}: the graph does not run on a (1, 1, {size[0]}, {size[1]}) slice "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None
    if channels != len(class_names):
        raise CheckpointError(
            f"{path}: the graph outputs {channels} class channels but its metadata names {len(class_names)} "
            f"classes ({', '.join(class_names)}): every label would get another's name"
        )
    return channels


def load_onnx(
    path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None
) -> tuple[OnnxModel, dict[str, Any]]:
    """Open an ONNX file written by :func:`export_onnx`. Returns (model, info); info has a checkpoint dict's
    fields (``format``, ``model_name``, ``model_args``, ``class_names``, ``preprocessing``,
    ``config.train.img_size``) plus the rest of the metadata and ``onnx_path``. A missing, foreign or
    damaged file raises CheckpointError; a missing onnxruntime names the extra to install."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model file not found")
    _require("onnxruntime")
    try:
        session = _session(str(path), threads, providers)
    except Exception as exc:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
        raise CheckpointError(
            f"{path}: not a readable ONNX model, or truncated ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    props = session.get_modelmeta().custom_metadata_map
    if "organseg_format" not in props:
        raise CheckpointError(
            f"{path}: an ONNX model without organseg metadata (export it with 'organseg export CKPT --onnx')"
        )
    meta: dict[str, Any] = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: metadata {key!r} is not JSON ({value[:40]!r})") from None
    if meta["organseg_format"] != FORMAT:
        found = meta["organseg_format"]
        raise CheckpointError(f"{path}: organseg ONNX format {found!r}, expected {FORMAT!r}")
    size = _check_metadata(path, meta)
    problem = checkpoint_orientation_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: metadata {problem}")
    num_classes = _check_graph(path, session, size, meta["class_names"])
    model = OnnxModel(session, size, num_classes, source=str(path))
    info = {
        **meta,
        "format": FORMAT,
        "model_args": meta.get("model_args") or {},
        "class_names": list(meta["class_names"]),
        "config": {"train": {"img_size": list(size)}},
        "onnx_path": str(path),
    }
    return model, info
