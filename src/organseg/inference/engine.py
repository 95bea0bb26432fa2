"""Volume inference: the reference slice loop, and a batched path with the same predictions.

The reference (``test_single_volume`` in TransUNet / Swin-Unet ``utils.py``) treats a (D, H, W) volume slice
by slice: cubic zoom (``order=3``) of the slice to the network size, one forward pass of a 1x1xhxw batch,
``argmax(softmax(logits))``, nearest zoom (``order=0``) back to (H, W).

The batched path does the same arithmetic, reorganised:

* Slices are zoomed by the same 2-D ``scipy.ndimage.zoom`` calls, in worker threads (SciPy releases the GIL),
  so each zoomed slice is bit-identical to the reference one. A single 3-D ``zoom`` with factor 1 along D is
  *not* used: it spline-filters along D too and only undoes that up to float64 rounding (equal after the cast
  to float32 on random tests, but not guaranteed), and it is slower (4x4x4 instead of 4x4 taps).
* The network sees ``batch_size`` slices per forward pass under ``torch.inference_mode`` (optionally under
  bf16/fp16 autocast); the zooms of later slices run while it computes.
* ``argmax(softmax)`` per batch, then the same 2-D nearest zooms back, again in threads.

Batch size changes the float rounding of matrix products: a slice's logits in a batch of 16 differ from its
logits alone by ~1e-6 (measured for both networks on CPU). Where two classes are that close, argmax can flip.
So in fp32 the batched path checks every pixel's margin between its two largest logits, and a slice with a
margin below ``TIE_TOLERANCE`` (relative to the logit size) is run again alone, exactly as the reference
does. Every other pixel's argmax is then the reference's, so fp32 predictions equal the reference loop's.
Trained networks rarely have such near-ties (random networks often do: tests use them on purpose). On CUDA,
fp32 also switches TF32 off for the call (PyTorch's cuDNN default), so "fp32" means fp32 in both paths.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from scipy.ndimage import zoom
from torch import nn

from organseg.device import resolve_device
from organseg.errors import ConfigError
from organseg.imageio.orientation import Reorientation, reorientation, volume_orientation
from organseg.models.layout import is_channels_last, prefers_channels_last, set_channels_last
from organseg.precision import autocast as autocast_context
from organseg.progress import progress_bar

#: A pixel whose two largest logits are closer than this (times max(1, |largest logit|)) is a near-tie; its
#: slice is re-run alone. 40x the largest batch-vs-single difference measured (2.6e-6 at logits ~2.6).
TIE_TOLERANCE = 1e-4


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    return h, w


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device is not None:
        return resolve_device(device)  # the one rule for a user's device string (organseg.device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _true_fp32(device: torch.device):
    """fp32 means fp32 on CUDA too: PyTorch runs cuDNN convolutions in TF32 by default (~1e-3 relative
    error), which would break the equality with the reference loop. Flags are restored afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def _fast_layout(model: nn.Module) -> Iterator[None]:
    """For bf16/fp16 only: a network that prefers channels-last (the U-Net) runs so for the call (oneDNN's
    and cuDNN's reduced-precision convolutions want NHWC; timings in docs/evaluation.md) and gets its own
    layout back after. fp32 keeps the caller's layout, so the fp32 paths stay the reference's arithmetic. The
    networks inside a :class:`SoftmaxAverage` are switched too."""
    switched = [m for m in model.modules() if prefers_channels_last(m) and not is_channels_last(m)]
    for m in switched:
        set_channels_last(m)
    try:
        yield
    finally:
        for m in switched:
            set_channels_last(m, channels_last=False)


#: Mirror test-time augmentation: the slice flips (along H, along W, both) that the reference augmentation
#: (``random_rot_flip``: rot90 by k, then a flip along one axis) shows the networks in training.
MIRROR_FLIPS: tuple[tuple[int, ...], ...] = ((), (-2,), (-1,), (-2, -1))


class SoftmaxAverage(nn.Module):
    """Several networks and/or mirrored inputs as one network: the mean of the members' softmax.

    ``forward`` returns the log of the averaged probabilities, so anything that takes ``argmax(softmax(out))``
    of a network's logits (the reference rule, :func:`predict_volume`) gets the argmax of the average. Every
    member sees every flip in ``flips`` (each output flipped back before averaging), so an ensemble of n
    networks with mirror TTA is 4n forward passes. The members must agree on the class count."""

    def __init__(self, members: Sequence[nn.Module], flips: Sequence[tuple[int, ...]] = ((),)) -> None:
        super().__init__()
        if not members:
            raise ValueError("SoftmaxAverage needs at least one network")
        self.members = nn.ModuleList(members)
        self.flips = tuple(tuple(f) for f in flips) or ((),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for net in self.members:
            for dims in self.flips:
                logits = net(x.flip(dims) if dims else x).float()
                if total is not None and logits.shape[1] != total.shape[1]:
                    raise ValueError(
                        f"ensemble members disagree on the class count: {total.shape[1]} vs {logits.shape[1]}"
                    )
                p = torch.softmax(logits, dim=1)
                p = p.flip(dims) if dims else p
                total = p if total is None else total + p
        assert total is not None
        return torch.log(total / (len(self.members) * len(self.flips)))


def averaged(models: Sequence[nn.Module], tta: bool = False) -> nn.Module:
    """The one network :func:`predict_volume` should run: a single model as it is (the reference arithmetic),
    or the softmax average of several and/or of the mirror flips (``tta``)."""
    if len(models) == 1 and not tta:
        return models[0]
    return SoftmaxAverage(models, MIRROR_FLIPS if tta else ((),))


def _check_volume(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got an array of shape {image.shape}")
    if 0 in image.shape:
        raise ValueError(f"empty volume of shape {image.shape}")
    if image.dtype.kind not in "fiub":
        raise ValueError(f"volume of dtype {image.dtype} is not numeric")
    return image


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int64


def _zoom_to(slc: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    # The reference's factors, written the same way: the output shape follows round(n * factor).
    h, w = slc.shape
    if (h, w) == size:
        return slc
    return zoom(slc, (size[0] / h, size[1] / w), order=order)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    if logits.ndim != 4 or logits.shape[0] != x.shape[0] or logits.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"the model maps input {tuple(x.shape)} to {tuple(logits.shape)}; expected (B, C, H, W) logits "
            "at the input's size"
        )
    return logits.float()


def _labels(logits: torch.Tensor) -> torch.Tensor:
    # softmax before argmax as in the reference: after rounding, two logits can tie as probabilities.
    # argmax over the class axis of NCHW reads with a stride of H*W, much slower on a CPU than over the last
    # axis of a channels-last copy, which gives the same indices (the first maximum).
    return torch.softmax(logits, dim=1).movedim(1, -1).contiguous().argmax(dim=-1)


def _near_tie(logits: torch.Tensor) -> torch.Tensor:
    """(B,) bool: slices with a pixel whose two largest logits are within the tie tolerance."""
    if logits.shape[1] < 2:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    top = torch.topk(logits, 2, dim=1).values
    margin = top[:, 0] - top[:, 1]
    return (margin < TIE_TOLERANCE * top[:, 0].abs().clamp_min(1.0)).flatten(1).any(dim=1)


def _reference_loop(
    model: nn.Module, image: np.ndarray, size: tuple[int, int], device: torch.device, precision: str
) -> np.ndarray:
    """``test_single_volume`` as written: one slice at a time."""
    pred = np.zeros(image.shape, dtype=np.int64)
    num_classes = 1
    for ind in range(image.shape[0]):
        slc = _zoom_to(image[ind], size, order=3)
        x = torch.from_numpy(np.ascontiguousarray(slc)).unsqueeze(0).unsqueeze(0).float().to(device)
        with torch.no_grad(), autocast_context(precision, device):
            logits = _logits(model, x)
        num_classes = logits.shape[1]
        pred[ind] = _zoom_to(_labels(logits).squeeze(0).cpu().numpy(), image.shape[1:], order=0)
    return pred.astype(_label_dtype(num_classes), copy=False)


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    patch_size: int | Sequence[int] = (224, 224),
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    reference_loop: bool = False,
    progress: bool = False,
    stats: dict | None = None,
    tie_check: bool = True,
) -> np.ndarray:
    """Label map (D, H, W) of a (D, H, W) image in [0, 1], predicted slice by slice along axis 0.

    ``patch_size`` is the network input (h, w) (an int means square); ``device`` defaults to the model's.
    ``reference_loop=True`` runs the reference per-slice loop; otherwise slices are batched, with the same
    predictions in fp32 (see the module docstring). The result is uint8 for up to 256 classes, else int64.
    The model runs in eval mode and is left in the mode it had. ``stats``, when given, receives
    ``{"slices": D, "rerun_slices": n}`` (slices re-run alone because of near-ties). ``tie_check=False`` skips
    those re-runs: faster for a network with many near-ties (untrained ones), but a near-tie pixel may then
    differ from the reference loop.
    """
    image = _check_volume(image)
    size = _pair(patch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    device = _device_of(model, device)
    autocast = autocast_context(precision, device)  # validates precision before any work
    was_training = model.training
    model.eval()
    strict = _true_fp32(device) if precision == "fp32" else _fast_layout(model)
    try:
        with strict:
            if reference_loop:
                if stats is not None:
                    stats.update(slices=image.shape[0], rerun_slices=0)
                return _reference_loop(model, image, size, device, precision)
            tie_check = tie_check and precision == "fp32"
            return _batched(model, image, size, batch_size, device, autocast, tie_check, progress, stats)
    finally:
        model.train(was_training)


def _batched(
    model: nn.Module,
    image: np.ndarray,
    size: tuple[int, int],
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
    tie_check: bool,
    progress: bool,
    stats: dict | None,
) -> np.ndarray:
    depth = image.shape[0]
    out_hw = image.shape[1:]
    pred: np.ndarray | None = None
    pending: list[Future] = []
    reruns = 0

    def write_back(labels: np.ndarray, start: int) -> None:
        for k, lab in enumerate(labels):
            pred[start + k] = _zoom_to(lab, out_hw, order=0)

    # On a GPU the zooms (CPU threads) overlap the forward passes. On a CPU both compete for the same cores
    # (and oversubscribed OpenMP threads slow torch down a lot), so there each stage runs on its own.
    overlap = device.type != "cpu"
    with ThreadPoolExecutor(_workers()) as pool:
        # Executor.map submits every slice at once, so zooming runs ahead of the forward passes.
        zoomed: Iterator[np.ndarray] = pool.map(lambda s: _zoom_to(s, size, order=3), image)
        if not overlap:
            zoomed = iter(list(zoomed))
        done: list[tuple[np.ndarray, int]] = []
        bar = progress_bar(total=depth, desc="slices", unit="slice", disable=not progress, leave=False)
        with torch.inference_mode(), autocast:
            for start in range(0, depth, batch_size):
                n = min(batch_size, depth - start)
                batch = np.stack([next(zoomed) for _ in range(n)])
                x = torch.from_numpy(batch).float().unsqueeze(1).to(device, non_blocking=True)
                logits = _logits(model, x)
                labels = _labels(logits)
                if tie_check and n > 1:
                    for k in torch.nonzero(_near_tie(logits)).flatten().tolist():
                        labels[k] = _labels(_logits(model, x[k : k + 1]))[0]  # alone, as the reference
                        reruns += 1
                if pred is None:  # the class count is known after the first pass
                    pred = np.empty(image.shape, dtype=_label_dtype(logits.shape[1]))
                labels_np = labels.to(torch.uint8 if pred.dtype == np.uint8 else torch.int64).cpu().numpy()
                if overlap:
                    pending.append(pool.submit(write_back, labels_np, start))
                else:
                    done.append((labels_np, start))
                bar.update(n)
        bar.close()
        pending += [pool.submit(write_back, labels_np, start) for labels_np, start in done]
        for f in pending:
            f.result()  # re-raises a worker's exception here
    if stats is not None:
        stats.update(slices=depth, rerun_slices=reruns)
    assert pred is not None
    return pred


def volume_turn(meta: dict, orientation: str | None, source: str = "volume") -> Reorientation | None:
    """The turn that brings an evaluation volume (its ``meta``, see
    :func:`~organseg.imageio.orientation.volume_orientation`) to the network's ``orientation``; None when
    either is unknown: the array then goes in as stored, as before checkpoints recorded an orientation."""
    code = volume_orientation(meta, source)
    if code is None or orientation is None:
        return None
    return reorientation(code, orientation)


def predict_turned(
    model: nn.Module, image: np.ndarray, turn: Reorientation | None, *args, **kwargs
) -> np.ndarray:
    """:func:`predict_volume` of ``image`` turned by ``turn`` (exact permutation and flips), with the label
    map turned back to ``image``'s own voxel order; ``turn=None`` is :func:`predict_volume` itself. Other
    arguments go to :func:`predict_volume`."""
    if turn is None or turn.identity:
        return predict_volume(model, image, *args, **kwargs)
    pred = predict_volume(model, np.ascontiguousarray(turn.apply(image)), *args, **kwargs)
    return np.ascontiguousarray(turn.undo(pred))
