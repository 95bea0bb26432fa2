"""Process set-up: device, torchrun/DistributedDataParallel, seeds and determinism switches.

``torchrun --nproc_per_node N -m organseg train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; this module
turns them into a process group (NCCL on CUDA, gloo on CPU) and a device. Without them everything is a
single process and no process group exists.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from organseg.device import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when we created the process group (and so must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Read torchrun's environment; start the process group when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # Under torchrun each process takes the GPU of its local rank.
    device = resolve_device(device_pref, local_rank=local_rank, source="train.device")
    if world <= 1:
        return DistEnv(device=device)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        owns_group=owns,
    )


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every process (picklable data, tensors included)."""
    if not env.distributed:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Average a small tensor over processes (logging values), a no-op in a single process."""
    if env.distributed:
        x = x.clone()
        dist.all_reduce(x)
        x /= env.world_size
    return x


def sum_over_ranks_fn(env: DistEnv) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A differentiable all-reduce for the Dice sums, so that the Dice term of the loss is batch-global over
    the *global* batch: exactly what the reference computes on one device (or after DataParallel's gather)."""
    if not env.distributed:
        return None
    # Only DDP runs need it, and builds of torch without distributed support lack the module.
    from torch.distributed.nn.functional import all_reduce  # noqa: PLC0415

    # Every rank then holds the same Dice loss; the backward all-reduce sums world_size identical
    # gradients and DDP divides by world_size again, so each sample's gradient is exactly the global one.
    return all_reduce


# The first part after the run seed names the stream, so that no two uses ever share a seed.
STREAM_SAMPLE, STREAM_BATCH, STREAM_MODEL = 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, iteration, rank, sample ...), stable across runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """cuDNN flags as the reference's ``--deterministic 1`` when on; strict torch algorithms as well.

    On CPU the kernels are deterministic for a fixed thread count either way.
    """
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a few ops (e.g. some upsampling backward) have no deterministic CUDA kernel. Only call it
    # when something changes: the call imports torch._dynamo (seconds).
    if on != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(on, warn_only=True)
