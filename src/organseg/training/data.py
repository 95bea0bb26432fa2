"""Training batches for one process: the reference per-sample path and the fast batched path.

Every random draw is a pure function of the run seed and the position in training, never of the history:

* the sample order of epoch ``e`` is ``DistributedSampler(seed, epoch=e)`` (one process is ``world_size=1``),
  so a torchrun job sees the same global batches as a single process with the same global batch size;
* ``augment="reference"`` re-seeds Python ``random`` and NumPy per sample from ``(seed, epoch, index)`` before
  calling the reference ``RandomGenerator``, so neither the number of DataLoader workers nor a resume changes
  the augmentation;
* ``augment="batched"`` runs the same augmentation (same SciPy geometry, same zoom, to float rounding) on
  the whole batch with ``BatchAugment``, its choices drawn from a generator seeded by
  ``(seed, epoch, batch, rank)``.

That is what lets ``--resume`` restart from any iteration and end bit-identical to an uninterrupted run,
with nothing but the iteration number in the checkpoint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from organseg.data.augment import BatchAugment, RandomGenerator
from organseg.data.base import SegmentationDataset
from organseg.errors import ConfigError, DataError
from organseg.progress import progress_bar
from organseg.training.distributed import STREAM_BATCH, STREAM_SAMPLE, DistEnv, derive_seed
from organseg.values import available_memory

#: Bytes per pixel of a training slice held in memory: the float32 image and the uint8 label.
BYTES_PER_PIXEL = 5
#: ``data.in_memory: auto`` holds the slices when they take at most this share of the memory available
#: (of the GPU's free memory when they live there); else they are read from disk batch by batch.
MEMORY_SHARE = 0.5


class _SeededSlices(Dataset):
    """Indexed by ``(epoch, i)``: slice ``i`` through the reference ``RandomGenerator``, seeded per sample."""

    def __init__(self, slices: Sequence[tuple[np.ndarray, np.ndarray]], size: int, seed: int) -> None:

        self.slices, self.seed = slices, seed
        self.transform = RandomGenerator((size, size))

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key
        s = derive_seed(self.seed, STREAM_SAMPLE, epoch, i)
        random.seed(s)  # RandomGenerator draws from the global generators, exactly as the reference
        np.random.seed(s % 2**32)
        image, label = self.slices[i]
        return self.transform(image, label)


class _EpochBatches(Sampler):
    """A batch sampler whose batches are set per epoch (works with persistent DataLoader workers)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _as_tensors(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
    """Slices as tensors on ``device``, one stacked tensor when all sizes agree (as Synapse's 512²), a list
    otherwise (as ACDC). Labels as uint8: a quarter of the memory of int64."""
    images, labels = [], []
    for image, label in pairs:
        images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device))
        labels.append(torch.from_numpy(np.ascontiguousarray(label)).to(device=device, dtype=torch.uint8))
    if len({tuple(x.shape) for x in images}) == 1:
        return torch.stack(images), torch.stack(labels)
    return images, labels


def _load_all(
    slices: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device, show: bool
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
    """Every training slice in memory at its own size (:func:`_as_tensors`). Slices of one size go straight
    into one preallocated tensor: stacking a list of them held twice their size at the peak."""
    bar = progress_bar(range(len(slices)), desc="loading training slices", disable=not show, leave=False)
    first = np.shape(slices[0][0]) if len(slices) else ()
    images = torch.empty((len(slices), *first), dtype=torch.float32, device=device)
    labels = torch.empty((len(slices), *first), dtype=torch.uint8, device=device)
    for i in bar:
        image, label = slices[i]
        if np.shape(image) != first:  # mixed sizes (as ACDC): a list, as _as_tensors gives
            bar.close()
            return _as_tensors([slices[k] for k in range(len(slices))], device)
        images[i] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        labels[i] = torch.from_numpy(np.ascontiguousarray(label)).to(torch.uint8)
    return images, labels


def slices_bytes(slices: Sequence[tuple[np.ndarray, np.ndarray]]) -> int:
    """About how many bytes the training slices take in memory (:data:`BYTES_PER_PIXEL`), from the first
    slice's size (one file read): Synapse's 2211 slices of 512² take 2.9 GB, 1,000 CT volumes of 200 slices
    about 260 GB."""
    image, _ = slices[0]
    return len(slices) * int(np.prod(np.shape(image))) * BYTES_PER_PIXEL


def hold_in_memory(setting: str | bool, slices: Sequence, device: torch.device) -> bool:
    """``data.in_memory``: True / False as given; "auto" holds the slices when they take at most
    :data:`MEMORY_SHARE` of the memory available (the GPU's free memory on a GPU), or when that is unknown."""
    if setting is not True and setting is not False:
        if device.type == "cuda":
            have: int | None = torch.cuda.mem_get_info(device)[0]
        else:
            have = available_memory()
        return have is None or slices_bytes(slices) <= MEMORY_SHARE * have
    return setting


def train_subset(slice_cases: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[str]]:
    """The training slices of a seeded subset of the cases: ``ceil(fraction x cases)`` whole cases (never some
    slices of one patient), the first ones of one seeded permutation of the sorted case ids, so a smaller
    fraction keeps a subset of every larger one, whatever the network or ``train.seed``. Returns (slice
    indices, kept case ids)."""
    cases = sorted(set(slice_cases))
    order = np.random.default_rng(seed).permutation(len(cases))
    n = max(1, math.ceil(fraction * len(cases) - 1e-9))
    kept = sorted(cases[i] for i in order[:n])
    keep = set(kept)
    return [i for i, c in enumerate(slice_cases) if c in keep], kept


class TrainBatches:
    """One epoch of this process's ``(images (b,1,S,S) float32, labels (b,S,S) int64)`` on its device."""

    def __init__(self, dataset: SegmentationDataset, cfg: dict, env: DistEnv) -> None:
        t = cfg["train"]
        slices = dataset.train_slices()
        self.cases: list[str] | None = None
        fraction = cfg["data"].get("train_fraction")
        if fraction is not None and fraction < 1:
            subjects = dataset.train_slice_subjects()
            keep, self.cases = train_subset(subjects, fraction, cfg["data"]["subset_seed"])
            slices = Subset(slices, keep)  # type: ignore[arg-type]
        limit = cfg["data"]["max_train_slices"]
        if limit is not None and limit < len(slices):
            slices = [slices[i] for i in range(limit)]
        if len(slices) == 0:
            where = f" ({dataset.train_source} lists none)" if dataset.train_source else ""
            raise DataError(f"{dataset.name}: the dataset has no training slices{where}")
        if dataset.num_classes > 256:
            raise DataError(f"{dataset.name}: {dataset.num_classes} classes; at most 256 are supported")
        if t["batch_size"] % env.world_size:
            raise ConfigError(
                f"train.batch_size={t['batch_size']} is the global batch and must divide evenly over "
                f"{env.world_size} processes"
            )
        self.env, self.seed, self.mode = env, t["seed"], t["augment"]
        self.batch = t["batch_size"] // env.world_size
        self.num_slices = len(slices)
        # drop_last=False as the reference: the last batch of an epoch is smaller.
        self.sampler = DistributedSampler(
            range(len(slices)), num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=self.seed
        )
        pin = env.device.type == "cuda"
        if self.mode == "reference":
            self._batches = _EpochBatches()
            workers = t["num_workers"]
            self._loader = DataLoader(
                _SeededSlices(slices, t["img_size"], self.seed),
                batch_sampler=self._batches,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=workers > 0,
            )
        else:
            # With data.in_memory the slices live in memory (Synapse: 2211 x 512² = 2.9 GB with uint8 labels;
            # on a GPU they live there), so a batch is one gather. Without (a dataset larger than memory:
            # 1,000 CT volumes are about 260 GB) each batch's slices are read from disk, the next batch's
            # while this one trains; the batches are the same. BatchAugment then does the reference's geometry
            # and its zoom to img_size on the whole batch, on the training device.
            self.in_memory = hold_in_memory(cfg["data"]["in_memory"], slices, env.device)
            if self.in_memory:
                self.images, self.labels = _load_all(slices, env.device, show=env.is_main and t["progress"])
            else:
                self._slices = slices
                self._reader = ThreadPoolExecutor(1, thread_name_prefix="organseg-slices")
            self._augment = BatchAugment((t["img_size"], t["img_size"]))

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch)

    def _read(self, indices: list[int]) -> Future:
        """The slices of one batch, read from disk in the reader thread (file reads release the GIL)."""
        return self._reader.submit(lambda: _as_tensors([self._slices[i] for i in indices], self.env.device))

    @property
    def images_per_iteration(self) -> int:
        """The configured global batch; an epoch's last batch (or the only one, when the batch is larger than
        the dataset) holds fewer: see :meth:`images_seen`."""
        return self.batch * self.env.world_size

    def images_seen(self, iterations: int) -> int:
        """Images all processes have trained on in the first ``iterations`` iterations: the last batch of each
        epoch is short (drop_last=False), and the sampler pads every process to the same count."""
        per_rank = len(self.sampler)
        epochs, rest = divmod(iterations, len(self))
        return (epochs * per_rank + min(rest * self.batch, per_rank)) * self.env.world_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start..`` of epoch ``epoch`` (``start`` > 0 when resuming mid-epoch)."""
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        batches = [order[i : i + self.batch] for i in range(0, len(order), self.batch)]
        dev = self.env.device
        if self.mode == "reference":
            self._batches.batches = [[(epoch, i) for i in b] for b in batches[start:]]
            for images, labels in self._loader:
                yield images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True).long()
            return
        ahead: Future | None = None
        for k in range(start, len(batches)):
            if not self.in_memory:
                if ahead is None:
                    ahead = self._read(batches[k])
                images, labels = ahead.result()
                ahead = self._read(batches[k + 1]) if k + 1 < len(batches) else None
            elif isinstance(self.images, torch.Tensor):
                idx = torch.tensor(batches[k], device=dev)
                images, labels = self.images[idx], self.labels[idx]
            else:
                images, labels = [self.images[i] for i in batches[k]], [self.labels[i] for i in batches[k]]
            if self.mode == "batched":
                gen = torch.Generator(dev).manual_seed(
                    derive_seed(self.seed, STREAM_BATCH, epoch, k, self.env.rank)
                )
                params = self._augment.sample_params(len(images), gen)
            else:  # "none": the reference resize only
                params = dict.fromkeys(
                    ("branch", "k", "axis", "angle"), torch.zeros(len(images), dtype=torch.long)
                )
            yield self._augment.apply(images, labels, params)
