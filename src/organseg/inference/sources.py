"""What ``test`` and ``predict`` apply: one network, or the softmax average of several, from any source.

A source is a checkpoint file (organseg's, or one written by the official Swin-Unet trainer), an ONNX model
from ``organseg export``, a run folder (its best checkpoint, else last), or an ``organseg compare`` study
folder (every run in ``runs/``, optionally only some networks). Several sources are averaged in softmax
space (:class:`~organseg.inference.engine.SoftmaxAverage`); the members must agree on the classes, the
intensity preprocessing and the input size, since one image goes through all of them.

An official Swin-Unet checkpoint records neither its class names nor how intensities were mapped. ``test``
takes both from the dataset; ``predict`` uses the reference defaults (9 classes: the Synapse classes and CT
window [-125, 275] HU; 4 classes: ACDC, per-image min-max) and says so in its output. Its orientation is
taken as the TransUNet Synapse files' (9 classes) or none (ACDC), as for organseg's readers of those files.

Orientation (:func:`network_orientation`): members that record one must agree on it; a member without one
(trained on data with no orientation, or written before checkpoints recorded it) follows the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from organseg.checkpoint import (
    PREDATES_ORIENTATION,
    checkpoint_orientation,
    is_official_swin_unet,
    model_from_checkpoint,
    read_checkpoint,
)
from organseg.data.classes import check_same_classes
from organseg.errors import CheckpointError, ConfigError
from organseg.inference.engine import averaged
from organseg.inference.official import (  # noqa: F401 (reference_defaults: re-exported, predict's import)
    class_count,
    official_orientation,
    reference_defaults,
)
from organseg.inference.onnx import is_onnx_path, load_onnx
from organseg.inference.targets import RunTarget, checkpoint_patch_size, resolve_target
from organseg.run import STUDY_RUNS, RunDir


@dataclass
class Member:
    """One network to apply: where it came from, the network, and its checkpoint fields."""

    target: RunTarget
    model: nn.Module
    ckpt: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return str(self.target.checkpoint_path)

    @property
    def official(self) -> bool:
        return is_official_swin_unet(self.ckpt)


def expand_source(
    spec: str | Path, *, checkpoint: str | None = None, models: Sequence[str] | None = None
) -> list[RunTarget]:
    """The checkpoint(s) a source names; a study folder stands for its runs (``models`` filters them)."""
    path = Path(spec)
    runs = path / STUDY_RUNS
    if path.is_dir() and not RunDir(path).checkpoints_dir.is_dir() and runs.is_dir():
        found = []
        for run in sorted(p for p in runs.iterdir() if RunDir(p).checkpoints_dir.is_dir()):
            if models and RunDir(run).model_name not in models:
                continue
            found.append(resolve_target(run, checkpoint))
        if not found:
            which = f" of network(s) {', '.join(models)}" if models else ""
            raise CheckpointError(f"{path}: a study folder with no finished run{which} in {runs}")
        return found
    if models:
        raise ConfigError(f"--models filters the runs of a study folder; {path} is not one")
    return [resolve_target(path, checkpoint)]


def load_member(target: RunTarget, device: torch.device) -> Member:
    """Build one source's network on ``device`` (an ONNX model runs on the CPU through ONNX Runtime)."""
    path = target.checkpoint_path
    if is_onnx_path(path):
        model, info = load_onnx(path)
        return Member(target, model, info)
    ckpt = read_checkpoint(path, official=True)
    model, ckpt = model_from_checkpoint(ckpt, source=path)
    member = Member(target, model.to(device), ckpt)
    if member.official:
        n = class_count(ckpt)
        orientation = official_orientation(n)
        member.ckpt = {**ckpt, "orientation": orientation}
        said = f"{orientation}, as the TransUNet Synapse files" if orientation else "none"
        member.notes.append(
            f"{path}: official Swin-Unet checkpoint, {n} classes from its head; orientation {said}"
        )
    return member


def load_members(
    sources: Sequence[str | Path],
    device: torch.device,
    *,
    checkpoint: str | None = None,
    models: Sequence[str] | None = None,
) -> list[Member]:
    """Every network the sources name, checked to agree (classes, preprocessing, input size)."""
    targets = [t for spec in sources for t in expand_source(spec, checkpoint=checkpoint, models=models)]
    seen: set[Path] = set()
    members = []
    for t in targets:
        key = t.checkpoint_path.resolve()
        if key in seen:
            raise ConfigError(f"{t.checkpoint_path}: named twice among the ensemble members")
        seen.add(key)
        members.append(load_member(t, device))
    first = members[0]
    for m in members[1:]:
        _check_agree(first, m)
    return members


def _check_agree(a: Member, b: Member) -> None:
    what = f"ensemble members {a.source} and {b.source}"
    if class_count(a.ckpt) != class_count(b.ckpt):
        raise ConfigError(f"{what} predict {class_count(a.ckpt)} and {class_count(b.ckpt)} classes")
    check_same_classes(
        b.ckpt.get("class_names"),
        a.ckpt.get("class_names"),
        source=b.source,
        names_are="this ensemble member was trained on classes",
        expected_are=f"ensemble member {a.source} on",
        error=ConfigError,
    )
    pa, pb = a.ckpt.get("preprocessing") or {}, b.ckpt.get("preprocessing") or {}
    if pa and pb and pa != pb:
        raise ConfigError(f"{what} map intensities differently: {pa} vs {pb}")
    oa, ob = _code(a.ckpt), _code(b.ckpt)
    if oa and ob and oa != ob:
        raise ConfigError(
            f"{what} were trained on slices in other orientations: {oa} vs {ob} (one scan is turned to one "
            "orientation for all members)"
        )
    sa, sb = checkpoint_patch_size(a.ckpt), checkpoint_patch_size(b.ckpt)
    if sa != sb:
        raise ConfigError(f"{what} take inputs of {sa} and {sb} pixels")


def _code(ckpt: dict[str, Any]) -> str | None:
    code = checkpoint_orientation(ckpt)
    return None if code == PREDATES_ORIENTATION else code


def network_orientation(
    ckpts: Sequence[dict[str, Any]], sources: Sequence[str]
) -> tuple[str | None, list[str]]:
    """The orientation code scans are turned to for these networks (checked by :func:`load_members` to
    agree), and the notes that say what happens: None (scans go in as stored, slices along the axial axis)
    when no network records one, with a note per network without one saying why."""
    codes = [_code(c) for c in ckpts]
    code = next((c for c in codes if c), None)
    notes = []
    for ckpt, source, own in zip(ckpts, sources, codes, strict=True):
        if own:
            continue
        why = (
            "predates orientation records"
            if checkpoint_orientation(ckpt) == PREDATES_ORIENTATION
            else "was trained on data without a patient orientation"
        )
        if code:
            notes.append(f"{source} {why}: scans are turned to {code}, the other members' orientation")
        else:
            notes.append(
                f"{source} {why}: scans go in their stored voxel order (slices along the axial axis), "
                "as before"
            )
    return code, notes


def combined(members: Sequence[Member], tta: bool = False) -> nn.Module:
    """The one network to run: a single member as it is, else the softmax average (and/or mirror TTA)."""
    return averaged([m.model for m in members], tta=tta)
