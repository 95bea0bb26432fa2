"""Parameter and FLOP counts of the registered networks, beside the published reference figures.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs
(convolutions, matmuls, attention); element-wise ops, norms, softmax and resampling are not counted, as
in thop / ptflops. GMACs are therefore half the GFLOPs. The Swin-Unet "6.16 G" of third-party tables is a
MAC count.

By default the count runs on the ``meta`` device: shapes only, no arithmetic, so ``organseg info`` is instant
even for the 86-GFLOP U-Net. It falls back to a real CPU pass for a model that cannot run on ``meta``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from organseg.models._registry import create_model, has_model, model_source, takes_image_size

# Published / reference figures per 224x224 single-channel image, 9 classes.
# params: the golden state-dict key lists (shared/golden/*_state_dict_keys.tsv).
# gflops: the project's reference numbers (2 FLOPs per multiply-add): U-Net 86.1, Swin-Unet 12.2
#   (= 2 x 6.1 GMAC; the spec's analytic count is 6.11 GMAC, thop-style tables say 6.16).
REFERENCE: dict[str, dict[str, float]] = {
    "unet": {"params": 24_898_953, "gflops": 86.1},
    "swin_unet": {"params": 27_168_900, "gflops": 12.2},
}


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    # PyTorch's counter knows the CUDA fused-attention kernels but not the CPU one, which would make
    # "sdpa" Swin-Unet look 0.43 GFLOPs cheaper than the identical "reference" path on CPU.
    ops = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        ops[cpu_flash] = _sdpa_cpu_flops
    return ops


def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model(inputs)`` (no grad), multiply-add counted as 2.

    Runs where ``model`` and ``inputs`` live; pass ``meta`` tensors for a count without arithmetic.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with torch.no_grad(), counter:
        model(inputs)
    return int(counter.get_total_flops())


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _input_channels(model: nn.Module) -> int:
    # Swin-Unet also takes a 1-channel slice and repeats it for free (expand), so the count is the same.
    return int(getattr(model, "in_chans", 1))


def count_model_flops(model: nn.Module, img_size: int = 224, batch: int = 1, on_meta: bool = True) -> int:
    """FLOPs of one forward pass at ``batch`` x C x ``img_size``², counted on a meta copy when possible."""
    if on_meta:
        try:
            meta = copy.deepcopy(model).to("meta").eval()
            x = torch.zeros(batch, _input_channels(model), img_size, img_size, device="meta")
            return count_flops(meta, x)
        except (NotImplementedError, RuntimeError):
            pass  # an op without a meta kernel, or data-dependent code: count for real below
    was_training = model.training
    device = next(model.parameters()).device
    try:
        x = torch.zeros(batch, _input_channels(model), img_size, img_size, device=device)
        return count_flops(model.eval(), x)
    finally:
        model.train(was_training)


def describe(model: nn.Module) -> str:
    """A one-line architecture summary from the model's constructor configuration."""
    own = getattr(model, "describe", None)
    if callable(own):  # a network of the field words its own (nnU-Net: the plan it derived)
        return str(own())
    cfg: dict[str, Any] = dict(getattr(model, "config", {}))
    if "embed_dim" in cfg:  # Swin-Unet
        return (
            f"embed {cfg['embed_dim']}, depths {list(cfg['depths'])}, heads {list(cfg['num_heads'])}, "
            f"window {cfg['window_size']}, patch {cfg['patch_size']}, img {cfg['img_size']}, "
            f"in {cfg['in_chans']} (1 repeated), classes {cfg['num_classes']}"
        )
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "out_channels"):  # U-Net
        enc = list(encoder.out_channels)
        dec = list(reversed(enc[:-1]))
        return (
            f"VGG16-BN encoder {'-'.join(map(str, enc))}, bilinear decoder {'-'.join(map(str, dec))}, "
            f"in {cfg.get('in_chans', '?')}, classes {cfg.get('num_classes', '?')}"
        )
    return ", ".join(f"{k} {v}" for k, v in cfg.items())


def _origin(name: str, description: str) -> str:
    """``description``, after where a network of one's own comes from (its import path and package)."""
    source = model_source(name)
    if source is None:
        return description
    package = (
        f"{source['distribution']} {source['version'] or ''}".strip() if source["distribution"] else "local"
    )
    return ", ".join(x for x in (f"{source['path']} ({package})", description) if x)


def model_profile(name: str, img_size: int = 224, **overrides: Any) -> dict[str, Any]:
    """Build registered network ``name`` and return its size, cost and configuration as plain data."""
    if has_model(name) and takes_image_size(name):
        overrides.setdefault("img_size", img_size)  # a network built for one input size (Swin-Unet)
    model = create_model(name, **overrides)
    flops = count_model_flops(model, img_size)
    ref = REFERENCE.get(name, {})
    paper_setting = img_size == 224 and not (set(overrides) - {"img_size"})
    return {
        "name": name,
        "params": count_parameters(model),
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "img_size": img_size,
        "ref_params": int(ref["params"]) if ref and paper_setting else None,
        "ref_gflops": ref.get("gflops") if paper_setting else None,
        "description": _origin(name, describe(model)),
        "config": dict(getattr(model, "config", {})),
    }
