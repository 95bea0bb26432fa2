"""Training augmentation: the reference ``RandomGenerator`` and a batched torch path with the same behaviour.

Reference (reference_protocol.md §3.3): with p = 0.5 ``rot90`` by k in {0..3} then a flip on a random axis;
else with p = 0.5 a rotation by an integer angle in [-20, 19] with nearest-neighbour on image *and* label;
then ``scipy.ndimage.zoom`` to the output size, order 3 (image) / order 0 (label), whenever the shape differs.

:class:`RandomGenerator` calls the same SciPy functions and draws from Python ``random`` / ``np.random`` in
the same order, so with the same seeds it makes the same choices and the same pixels.

:class:`BatchAugment` does the same work on whole batches in torch (CPU or GPU). Given the same choices it
gives the same result to float32 rounding, not merely the same distribution:

- rot90/flip are ``torch.rot90`` / ``torch.flip`` (exact);
- the rotation is a gather with SciPy's own coordinate formula (``cosdg``/``sindg``, centre offset, nearest
  rounding, out-of-range -> 0), computed in float64 (exact);
- the order-3 zoom is separable and linear, so it is two matrix products ``Zh @ X @ Zw.T`` with matrices
  made by SciPy's ``zoom`` of an identity (same spline prefilter, same boundary handling, and the same quirk
  that a 512 -> 224 zoom returns 0 on its last row and column); the order-0 label zoom is the matching
  row/column gather.

Its random choices come from a ``torch.Generator`` (same distribution as the reference, different stream).

Slices of different sizes (ACDC): pass lists instead of a stacked tensor; samples are grouped by input size
(and by choice), each group goes through the same batched ops, and every output has the common output size.
The :func:`collate_slices` collate returns a stacked tensor when sizes agree and lists otherwise, so a
DataLoader with ``collate_fn=collate_slices`` feeds :class:`BatchAugment` directly, in the worker or on the
GPU.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage, special
from torch.utils.data import Dataset

NONE, ROT_FLIP, ROTATE = 0, 1, 2
Pair = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------------------- reference path
def random_rot_flip(image: np.ndarray, label: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference ``random_rot_flip`` with its draws passed in."""
    image, label = np.rot90(image, k), np.rot90(label, k)
    return np.flip(image, axis=axis).copy(), np.flip(label, axis=axis).copy()


def random_rotate(image: np.ndarray, label: np.ndarray, angle: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference ``random_rotate`` with its draw passed in (order 0 on image and label, no reshape)."""
    return (
        ndimage.rotate(image, angle, order=0, reshape=False),
        ndimage.rotate(label, angle, order=0, reshape=False),
    )


def resize_slice(
    image: np.ndarray, label: np.ndarray | None, size: Sequence[int] = (224, 224)
) -> tuple[np.ndarray, np.ndarray | None]:
    """Deterministic resize (no augmentation) exactly as the reference: zoom order 3 image / order 0 label,
    skipped when the shape already matches. Returns (image float32 (h, w), label int64 (h, w) or None)."""
    h, w = int(size[0]), int(size[1])
    x, y = image.shape
    if (x, y) != (h, w):
        image = ndimage.zoom(image, (h / x, w / y), order=3)
        if label is not None:
            label = ndimage.zoom(label, (h / x, w / y), order=0)
    image = np.asarray(image, dtype=np.float32)
    return image, (None if label is None else np.asarray(label).astype(np.int64))


def reference_transform(
    image: np.ndarray,
    label: np.ndarray,
    branch: int,
    k: int = 0,
    axis: int = 0,
    angle: int = 0,
    output_size: Sequence[int] = (224, 224),
) -> tuple[np.ndarray, np.ndarray]:
    """The reference pipeline with explicit choices (branch NONE / ROT_FLIP / ROTATE); numpy in and out."""
    if branch == ROT_FLIP:
        image, label = random_rot_flip(image, label, k, axis)
    elif branch == ROTATE:
        image, label = random_rotate(image, label, angle)
    return resize_slice(image, label, output_size)  # type: ignore[return-value]


class RandomGenerator:
    """The reference training transform: ``(image (H, W) float32, label (H, W) int) ->
    (image tensor (1, h, w) float32, label tensor (h, w) int64)``.

    Draw order, as the reference: ``random.random()`` (> 0.5: rot/flip with ``np.random.randint(0, 4)`` then
    ``np.random.randint(0, 2)``); else ``random.random()`` again (> 0.5: rotate by
    ``np.random.randint(-20, 20)``).
    """

    def __init__(self, output_size: Sequence[int] = (224, 224)) -> None:
        self.output_size = (int(output_size[0]), int(output_size[1]))

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        branch, k, axis, angle = NONE, 0, 0, 0
        if random.random() > 0.5:
            branch, k = ROT_FLIP, np.random.randint(0, 4)
            axis = np.random.randint(0, 2)
        elif random.random() > 0.5:
            branch, angle = ROTATE, np.random.randint(-20, 20)
        image, label = reference_transform(image, label, branch, k, axis, angle, self.output_size)
        return torch.from_numpy(image).unsqueeze(0), torch.from_numpy(label)

    def __repr__(self) -> str:
        return f"RandomGenerator(output_size={self.output_size})"


# ------------------------------------------------------------------------------------ batched torch path
@lru_cache(maxsize=64)
def _zoom_matrices(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order-3 matrix (n_out, n_in), order-0 source index (n_out,), order-0 validity (n_out,)) of SciPy's
    zoom along one axis, obtained by zooming an identity (so every SciPy convention is inherited, quirks
    included)."""
    eye = np.eye(n_in, dtype=np.float64)
    cubic = ndimage.zoom(eye, (n_out / n_in, 1.0), order=3)
    # The spline prefilter decays geometrically (0.268^k): far entries reach float32 subnormals, which x86
    # CPUs multiply in slow microcode. Below 1e-12 they cannot change a float32 result: make them exact zeros.
    cubic[np.abs(cubic) < 1e-12] = 0.0
    nearest = ndimage.zoom(eye, (n_out / n_in, 1.0), order=0)
    return cubic, nearest.argmax(axis=1), nearest.max(axis=1) > 0.5


def _rotation_index(
    h: int, w: int, angles: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat source indices (G, h*w) and validity of ``scipy.ndimage.rotate(order=0, reshape=False)``."""
    c = torch.tensor([special.cosdg(a) for a in angles], dtype=torch.float64, device=device)[:, None, None]
    s = torch.tensor([special.sindg(a) for a in angles], dtype=torch.float64, device=device)[:, None, None]
    ch, cw = (h - 1) / 2.0, (w - 1) / 2.0
    # SciPy: input = M @ output + offset, M = [[c, s], [-s, c]], offset = centre - M @ centre.
    off_r = ch - (c * ch + s * cw)
    off_c = cw - (-s * ch + c * cw)
    r = torch.arange(h, dtype=torch.float64, device=device)[None, :, None]
    q = torch.arange(w, dtype=torch.float64, device=device)[None, None, :]
    # Row and column terms are computed on their own axis and meet in one broadcast add per coordinate.
    ri = (c * r + off_r) + s * q
    ci = (-s * r + off_c) + c * q
    valid = (ri >= 0) & (ri <= h - 1) & (ci >= 0) & (ci <= w - 1)
    rr = torch.floor(ri + 0.5).clamp_(0, h - 1).long()
    cc = torch.floor(ci + 0.5).clamp_(0, w - 1).long()
    return (rr * w + cc).reshape(len(angles), -1), valid.reshape(len(angles), -1)


class BatchAugment:
    """The reference augmentation on whole batches in torch (see module docstring).

    ``__call__(images, labels, generator)``: ``images`` (B, 1, H, W) or (B, H, W) float, ``labels`` (B, H, W)
    int, or lists of per-sample tensors/arrays of any sizes; returns (images (B, 1, h, w) float32, labels
    (B, h, w) int64) on the input's device. ``p_rot_flip`` / ``p_rotate`` / ``max_angle`` default to the
    reference.
    """

    def __init__(
        self,
        output_size: Sequence[int] = (224, 224),
        *,
        p_rot_flip: float = 0.5,
        p_rotate: float = 0.5,
        max_angle: int = 20,
    ) -> None:
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.p_rot_flip = float(p_rot_flip)
        self.p_rotate = float(p_rotate)
        self.max_angle = int(max_angle)
        self._mats: dict = {}

    def __repr__(self) -> str:
        return (
            f"BatchAugment(output_size={self.output_size}, p_rot_flip={self.p_rot_flip}, "
            f"p_rotate={self.p_rotate}, max_angle={self.max_angle})"
        )

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample choices (CPU int64): ``branch`` (0 none, 1 rot/flip, 2 rotate), ``k``, ``axis``,
        ``angle``."""
        device = generator.device if generator is not None else torch.device("cpu")
        u1 = torch.rand(n, generator=generator, device=device)
        u2 = torch.rand(n, generator=generator, device=device)
        k = torch.randint(0, 4, (n,), generator=generator, device=device)
        axis = torch.randint(0, 2, (n,), generator=generator, device=device)
        angle = torch.randint(-self.max_angle, self.max_angle, (n,), generator=generator, device=device)
        # Reference: `random.random() > 0.5` picks rot/flip, else a second draw `> 0.5` picks rotate.
        branch = torch.where(
            u1 > 1 - self.p_rot_flip, ROT_FLIP, torch.where(u2 > 1 - self.p_rotate, ROTATE, NONE)
        )
        return {"branch": branch.cpu(), "k": k.cpu(), "axis": axis.cpu(), "angle": angle.cpu()}

    def __call__(self, images, labels, generator: torch.Generator | None = None) -> Pair:
        n = len(images)
        return self.apply(images, labels, self.sample_params(n, generator))

    # ------------------------------------------------------------------------------------------- internals
    def _matrices(self, n_in: int, n_out: int, device: torch.device, dtype: torch.dtype):
        key = (n_in, n_out, str(device), dtype)
        if key not in self._mats:
            cubic, idx, valid = _zoom_matrices(n_in, n_out)
            self._mats[key] = (
                torch.as_tensor(cubic, dtype=dtype, device=device),
                torch.as_tensor(idx, dtype=torch.long, device=device),
                torch.as_tensor(valid, dtype=torch.bool, device=device),
            )
        return self._mats[key]

    def _resize(self, x: torch.Tensor, y: torch.Tensor) -> Pair:
        h, w = self.output_size
        g, hin, win = x.shape
        if (hin, win) == (h, w):
            return x, y
        zh, ih, vh = self._matrices(hin, h, x.device, x.dtype)
        zw, iw, vw = self._matrices(win, w, x.device, x.dtype)
        # Two plain 2-D GEMMs over the whole group (faster than g batched products): columns, then rows.
        t = torch.matmul(x.reshape(g * hin, win), zw.T)  # (g*H, w)
        t = t.reshape(g, hin, w).transpose(0, 1).reshape(hin, g * w)
        x = torch.matmul(zh, t).reshape(h, g, w).transpose(0, 1)
        y = y[:, ih][:, :, iw] * (vh[:, None] & vw[None, :]).to(y.dtype)
        return x, y

    def _geometry(
        self, x: torch.Tensor, y: torch.Tensor, branch: int, k: int, axis: int, angles: list[int]
    ) -> Pair:
        if branch == ROT_FLIP:
            x = torch.flip(torch.rot90(x, k, dims=(-2, -1)), dims=(x.dim() - 2 + axis,))
            y = torch.flip(torch.rot90(y, k, dims=(-2, -1)), dims=(y.dim() - 2 + axis,))
        elif branch == ROTATE:
            g, h, w = x.shape
            idx, valid = _rotation_index(h, w, angles, x.device)
            x = (x.reshape(g, -1).gather(1, idx) * valid).reshape(g, h, w)
            y = (y.reshape(g, -1).gather(1, idx) * valid).reshape(g, h, w)
        return x, y

    def apply(self, images, labels, params: dict[str, torch.Tensor]) -> Pair:
        """Apply explicit per-sample choices (as returned by :meth:`sample_params`)."""
        xs, ys = _as_batch(images, torch.float32), _as_batch(labels, None)
        n = len(xs)
        if len(ys) != n:
            raise ValueError(f"{n} images but {len(ys)} labels")
        if n == 0:
            raise ValueError("empty batch")
        device = xs[0].device
        branch, k, axis, angle = (params[key].tolist() for key in ("branch", "k", "axis", "angle"))
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            if xs[i].shape != ys[i].shape:
                raise ValueError(
                    f"sample {i}: image shape {tuple(xs[i].shape)} and label shape {tuple(ys[i].shape)}"
                )
            b = branch[i]
            key = (tuple(xs[i].shape), b, k[i] if b == ROT_FLIP else 0, axis[i] if b == ROT_FLIP else 0)
            groups.setdefault(key, []).append(i)

        # Stage 1, per choice: rot90/flip or rotation at the input size. Stage 2, per resulting size (one
        # group for square inputs): the zoom, so the big products run once over as many samples as possible.
        by_size: dict[tuple[int, int], list[tuple[list[int], torch.Tensor, torch.Tensor]]] = {}
        for (_, b, kk, ax), idx in groups.items():
            x, y = _take(xs, idx), _take(ys, idx)
            x, y = self._geometry(x, y, b, kk, ax, [angle[i] for i in idx])
            by_size.setdefault(tuple(x.shape[-2:]), []).append((idx, x, y))
        h, w = self.output_size
        out_x = torch.empty((n, 1, h, w), dtype=torch.float32, device=device)
        out_y = torch.empty((n, h, w), dtype=torch.int64, device=device)
        for parts in by_size.values():
            idx = [i for p in parts for i in p[0]]
            x = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            y = torch.cat([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
            x, y = self._resize(x, y)
            where = torch.as_tensor(idx, device=device)
            out_x[where, 0] = x
            out_y[where] = y.long()
        return out_x, out_y


def _take(batch: torch.Tensor | list[torch.Tensor], idx: list[int]) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch.index_select(0, torch.as_tensor(idx, device=batch.device))
    return torch.stack([batch[i] for i in idx])


def _as_batch(batch, dtype: torch.dtype | None) -> torch.Tensor | list[torch.Tensor]:
    """A (B, H, W) tensor (from (B, 1, H, W) / (B, H, W)), or a list of (H, W) tensors from a sequence of
    (1, H, W) / (H, W) tensors or arrays. ``dtype`` None keeps an integer label type (uint8 stays small)."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4:
            if batch.shape[1] != 1:
                raise ValueError(f"expected one channel, got images of shape {tuple(batch.shape)}")
            batch = batch[:, 0]
        if batch.dim() != 3:
            raise ValueError(f"expected (B, 1, H, W) or (B, H, W), got shape {tuple(batch.shape)}")
        return batch.to(dtype) if dtype is not None else _int_labels(batch)
    out = []
    for item in batch:
        t = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
        t = t.to(dtype) if dtype is not None else _int_labels(t)
        if t.dim() == 3 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 2:
            raise ValueError(f"expected 2-D slices, got shape {tuple(t.shape)}")
        out.append(t)
    return out


def _int_labels(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64) else t.long()


# --------------------------------------------------------------------------------------- DataLoader glue
class SliceDataset(Dataset):
    """Wraps ``dataset.train_slices()`` for a DataLoader; with a ``transform`` (e.g. :class:`RandomGenerator`)
    items are its tensors, without one they are the raw slice as tensors (image (1, H, W), label (H, W))."""

    def __init__(self, slices: Sequence[tuple[np.ndarray, np.ndarray]], transform=None) -> None:
        self.slices = slices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> Pair:
        image, label = self.slices[i]
        if self.transform is not None:
            return self.transform(image, label)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0), torch.from_numpy(
            np.ascontiguousarray(label, dtype=np.int64)
        )


def collate_slices(batch: Sequence[Pair]):
    """Stack (image (1, H, W), label (H, W)) items when all sizes agree; else return two lists (for
    :class:`BatchAugment`, which accepts both)."""
    images = [b[0] for b in batch]
    labels = [b[1] for b in batch]
    if len({tuple(t.shape) for t in images}) == 1:
        return torch.stack(images), torch.stack(labels)
    return images, labels


class AugmentCollate:
    """``collate_fn`` that runs :class:`BatchAugment` inside DataLoader workers (CPU path). Each worker seeds
    its own generator from torch's per-worker seed, so runs are repeatable for a fixed DataLoader
    generator."""

    def __init__(self, output_size: Sequence[int] = (224, 224), **kwargs) -> None:
        self.augment = BatchAugment(output_size, **kwargs)
        self._generator: torch.Generator | None = None

    def __call__(self, batch: Sequence[Pair]) -> Pair:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        images, labels = collate_slices(batch)
        return self.augment(images, labels, self._generator)
