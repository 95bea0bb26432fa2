"""``organseg pretrain``: the Swin-Unet encoder pretrained by masked image modelling (SimMIM, Xie et al.,
CVPR 2022) on images only, into a weight file that ``model.pretrained: PATH`` loads like ImageNet weights.

The recipe (docs/training.md, "Self-supervised pretraining"): random 32 x 32 patches of each slice (60 %)
are replaced, after the patch embedding, by a learned mask token; the encoder (patch embedding, the stages,
the last norm) runs unchanged on the result; a linear head (a 1x1 convolution to stride² values per position
of the stride-32 feature map, then a pixel shuffle) predicts the pixels; the loss is the mean absolute error
over the masked pixels only. AdamW, linear warm-up over the first 10 % of the run, cosine decay, gradients
clipped at norm 5. The supervised network is not touched: the wrapper reaches the encoder's modules
(``patch_embed``, ``layers``, ``norm``) and calls them itself.

The run is an organseg run: the :class:`~organseg.training.loop.Trainer`'s loop (bf16, ``time_budget_min``,
bit-for-bit resume, progress bar, run folder with config, env, metrics.jsonl), with :class:`Pretrainer`
overriding its seams. It adds ``pretrained.pt`` (the encoder, written at every epoch's end) and two pictures.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from organseg.checkpoint import atomic_torch_save
from organseg.data.base import SegmentationDataset
from organseg.data.unlabeled import PretrainImages
from organseg.errors import ConfigError, NoRoomError
from organseg.fileio import check_output, check_output_dir
from organseg.formatting import pyplot, save_figure
from organseg.models import check_model_name, create_model
from organseg.models.pretrained import SIMMIM_FORMAT
from organseg.run import TRAIN_FILES, RunDir
from organseg.training.config import SCHEMA, check_network, load_config, merge_config, presets_dir
from organseg.training.distributed import derive_seed
from organseg.training.loop import Trainer, resume_state, run_checkpoint, run_session
from organseg.training.schedule import make_optimizer, scheduled_lr
from organseg.values import Rule, check_value

#: What ``organseg pretrain`` writes in its run folder besides what train writes.
ENCODER_FILE = "pretrained.pt"
LOSS_FIGURE = "pretrain_loss.png"
RECONSTRUCTION_FIGURE = "pretrain_reconstructions.png"
PRETRAIN_FILES = (*TRAIN_FILES, ENCODER_FILE, LOSS_FIGURE, RECONSTRUCTION_FIGURE)

#: The Swin-Unet parts that pretraining leaves out (prefixes in SwinTransformerSys).
_DECODER = ("layers_up.", "concat_back_dim.", "norm_up.", "up.", "output.")
STREAM_MASK = 11  # derive_seed stream of the masks (organseg.training.distributed uses 1..3)

# SimMIM's Swin recipe (Xie et al. 2022, section 4.1 and their Swin configurations): mask patches 32, ratio
# 0.6, AdamW with weight decay 0.05, 10 warm-up epochs of 100 (10 %), cosine decay, gradient clip 5. The base
# learning rate (8e-4 at batch 2048 there) is scaled to a CPU batch in docs/training.md.
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "model": {"name": "swin_unet", "args": {}},
    "data": {
        "sources": [],  # folders: prepared datasets (training split) or NIfTI / DICOM volumes (unlabeled.py)
        "max_train_slices": None,
        "in_memory": "auto",  # as train's: unlabeled sets are often larger than memory (training.data)
        "subjects": None,
        "fold": None,  # a cross-validation fold whose held-out subjects stay unseen
        "folds": 5,
        "fold_seed": 12345,
    },
    "train": {
        "img_size": 224,
        "batch_size": 16,
        "base_lr": 1e-4,
        "weight_decay": 0.05,
        "max_epochs": 100,
        "max_iterations": None,
        "seed": 1234,
        "deterministic": False,
        "precision": "fp32",
        "compile": False,
        "augment": "batched",
        "num_workers": 0,
        "device": "auto",
        "threads": None,
        "time_budget_min": None,
        "fitted_iterations": None,
        "log_every": 1,
        "progress": True,
    },
    "pretrain": {
        "mask_patch_size": 32,
        "mask_ratio": 0.6,
        "warmup_fraction": 0.1,
        "clip_grad": 5.0,
    },
}

PRETRAIN_SCHEMA: dict[str, Rule] = {
    **{k: r for k, r in SCHEMA.items() if k.split(".")[1] in PRETRAIN_DEFAULTS.get(k.split(".")[0], {})},
    "pretrain.mask_patch_size": Rule("int", lo=1, hi=4096, why="pixels, a multiple of the patch size"),
    "pretrain.mask_ratio": Rule("float", lo=0, hi=1, lo_open=True, hi_open=True, why="of the mask patches"),
    "pretrain.warmup_fraction": Rule("float", lo=0, hi=1, hi_open=True, why="of the run's iterations"),
    "pretrain.clip_grad": Rule("float", lo=0, lo_open=True, optional=True, why="gradient norm; null: none"),
}

# What the training loop reads and pretraining fixes (written to config.yaml with the rest).
_FIXED: dict[str, dict[str, Any]] = {
    "model": {"pretrained": None},
    "data": {"root": None, "train_fraction": None, "subset_seed": 0},
    "train": {
        "optimizer": "adamw",
        "schedule": "cosine",
        "lr_scaling": "none",
        "warmup_iterations": 0,  # pretrain.warmup_fraction instead (Pretrainer.lr_at)
        "channels_last": False,
        "budget_images": None,
        "reference_batch": 24,
    },
    "val": {"every": 0, "batch_size": 1, "max_cases": None},
    "checkpoint": {"save_interval": 10**9},
}

UNET_REFUSAL = (
    "model.name unet: masked image modelling is implemented for the Swin-Unet encoder only. A convolutional "
    "encoder sees the masked patches' borders through every overlapping kernel and needs sparse convolutions "
    "to pretrain this way (SparK, Tian et al. 2023), which organseg does not have; pretrain swin_unet, or "
    "start the U-Net from ImageNet (model.pretrained: imagenet)"
)


def resolve_pretrain_config(cfg: dict | None) -> dict:
    """Merge with :data:`PRETRAIN_DEFAULTS` (unknown keys refused, as train's), check every value, the
    network (Swin-Unet, its input size) and the mask geometry; add what pretraining fixes (:data:`_FIXED`)."""
    given = copy.deepcopy(cfg or {})
    for section, keys in _FIXED.items():  # a config.yaml of a pretraining run reads back as itself
        if isinstance(given.get(section), dict):
            for key, value in keys.items():
                if key in given[section] and given[section][key] == value:
                    del given[section][key]
            if section in ("val", "checkpoint") and not given[section]:
                del given[section]
    out = merge_config(PRETRAIN_DEFAULTS, given)
    for name, rule in PRETRAIN_SCHEMA.items():
        section, key = name.split(".")
        out[section][key] = check_value(name, out[section][key], rule)
    if not isinstance(out["data"]["sources"], list):
        raise ConfigError("data.sources must be a list of folders (or mappings with 'path')")
    if out["data"]["fold"] is not None and out["data"]["fold"] >= out["data"]["folds"]:
        raise ConfigError(f"data.fold={out['data']['fold']} must be in 0..{out['data']['folds'] - 1}")
    name = out["model"]["name"]
    check_model_name(name)
    if name == "unet":
        raise ConfigError(UNET_REFUSAL)
    if name != "swin_unet":
        raise ConfigError(f"model.name {name}: organseg pretrain pretrains swin_unet only")
    if "num_classes" in out["model"]["args"]:
        raise ConfigError("model.args.num_classes: pretraining has no classes; remove it")
    for section, keys in _FIXED.items():
        out.setdefault(section, {}).update(copy.deepcopy(keys))
    check_network(out)
    _check_mask_geometry(out)
    return out


def _check_mask_geometry(cfg: dict) -> None:
    side, mask = cfg["train"]["img_size"], cfg["pretrain"]["mask_patch_size"]
    patch = int(cfg["model"]["args"].get("patch_size", 4))
    if mask % patch:
        raise ConfigError(
            f"pretrain.mask_patch_size={mask} must be a multiple of the network's patch size {patch} "
            "(masks replace whole patch tokens)"
        )
    if side % mask:
        raise ConfigError(
            f"pretrain.mask_patch_size={mask} must divide train.img_size={side} (a whole grid of mask "
            "patches)"
        )


# ------------------------------------------------------------------------------------------- the method


def mask_count(cells: int, ratio: float) -> int:
    """How many of ``cells`` mask patches are masked: SimMIM's ``ceil(cells x ratio)``."""
    return min(cells, math.ceil(cells * ratio - 1e-9))


def random_masks(
    batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(batch, gh, gw) bool masks, True where a mask patch is hidden: exactly :func:`mask_count` cells each,
    chosen uniformly from ``generator``."""
    cells = grid[0] * grid[1]
    order = torch.rand(batch, cells, generator=generator).argsort(dim=1)
    masks = torch.zeros(batch, cells, dtype=torch.bool)
    masks.scatter_(1, order[:, : mask_count(cells, ratio)], True)
    return masks.view(batch, *grid)


def upsample_mask(masks: torch.Tensor, factor: int) -> torch.Tensor:
    """Each cell of (B, h, w) as a ``factor`` x ``factor`` block: (B, h * factor, w * factor)."""
    return masks.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def masked_l1(reconstruction: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels only (SimMIM's loss); ``pixel_mask`` (B, H, W) bool."""
    weight = pixel_mask.unsqueeze(1).to(reconstruction.dtype)
    error = (reconstruction - target).abs() * weight
    return error.sum() / (weight.sum() * reconstruction.shape[1] + 1e-5)


class SimMIM(nn.Module):
    """A Swin-Unet's encoder with a mask token after the patch embedding and SimMIM's linear prediction head.

    ``swin_unet`` is the supervised network's ``SwinTransformerSys`` (its keys are ``swin_unet.*``, as in a
    Swin-Unet checkpoint); its decoder is carried along untrained. The target is the grey slice: the
    network's 3 input channels are copies of it, so the head predicts one value per pixel."""

    prefers_channels_last = False

    def __init__(self, network: nn.Module, mask_patch_size: int) -> None:
        super().__init__()
        net = network.swin_unet
        self.swin_unet = net
        self.in_chans = net.patch_embed.proj.in_channels
        self.patch_size = net.patch_embed.proj.kernel_size[0]
        self.stride = self.patch_size * 2 ** (net.num_layers - 1)
        self.mask_patch_size = mask_patch_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, net.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Conv2d(net.num_features, self.stride**2, kernel_size=1)
        # The decoder and the class head take no part: frozen, so that no optimizer state is kept for them
        # and DistributedDataParallel does not wait for their gradients.
        for name, p in net.named_parameters():
            if name.startswith(_DECODER):
                p.requires_grad_(False)

    def mask_grid(self) -> tuple[int, int]:
        h, w = self.swin_unet.patch_embed.img_size
        return h // self.mask_patch_size, w // self.mask_patch_size

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``images`` (B, 1, H, W), ``masks`` (B, gh, gw) -> the reconstruction (B, 1, H, W)."""
        net = self.swin_unet
        x = images.expand(-1, self.in_chans, -1, -1) if images.shape[1] == 1 else images
        tokens = net.patch_embed(x)
        hidden = upsample_mask(masks, self.mask_patch_size // self.patch_size).flatten(1).unsqueeze(-1)
        w = hidden.to(tokens.dtype)
        tokens = tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w
        if net.ape:
            tokens = tokens + net.absolute_pos_embed
        tokens = net.pos_drop(tokens)
        for layer in net.layers:
            tokens = layer(tokens)
        z = net.norm(tokens)
        h, wd = (r // 2 ** (net.num_layers - 1) for r in net.patches_resolution)
        z = z.transpose(1, 2).reshape(z.shape[0], -1, h, wd)
        return F.pixel_shuffle(self.head(z), self.stride)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder in the Microsoft Swin layout (``patch_embed.*``, ``layers.i.*``, ``norm.*``): what
        :func:`organseg.models.pretrained.load_pretrained` copies into encoder and mirrored decoder."""
        keep = ("patch_embed.", "layers.", "norm.", "absolute_pos_embed")
        return {
            k: v.detach().cpu().clone()
            for k, v in self.swin_unet.state_dict().items()
            if k.startswith(keep) and not k.startswith("norm_up.")
        }


_NO_DECAY = ("relative_position_bias_table", "mask_token", "absolute_pos_embed")


def _decay_groups(model: SimMIM, weight_decay: float) -> list[dict[str, Any]]:
    """SimMIM's parameter groups: no weight decay for biases, norms, the bias tables and the mask token."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # the decoder (SimMIM.__init__)
        skip = p.ndim < 2 or name.endswith(_NO_DECAY)
        (plain if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class Pretrainer(Trainer):
    """The Trainer's loop with SimMIM's objective: :meth:`build_model` wraps the Swin-Unet, :meth:`step` masks
    and reconstructs, :meth:`save` writes ``last.pt`` (for resume) and the encoder file, nothing validates."""

    verb = "pretrain"
    log_fields = ("loss",)

    def build_model(self) -> nn.Module:
        network = create_model(self.cfg["model"]["name"], **self.model_args)
        return SimMIM(network, self.cfg["pretrain"]["mask_patch_size"])

    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = _decay_groups(self.model, self.train_cfg["weight_decay"])
        return make_optimizer(groups, self.train_cfg, self.lr_at(0))

    def lr_at(self, step: int) -> float:
        warm = math.ceil(self.cfg["pretrain"]["warmup_fraction"] * self.max_iterations)
        t = {**self.train_cfg, "warmup_iterations": warm}
        return scheduled_lr(t, self.base_lr, step, self.max_iterations)

    def build_loss(self) -> nn.Module:
        return nn.Identity()  # the loss is masked_l1, in step()

    def masks(self, batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(
            derive_seed(self.train_cfg["seed"], STREAM_MASK, self.iteration, self.env.rank)
        )
        return random_masks(batch, self.model.mask_grid(), self.cfg["pretrain"]["mask_ratio"], gen)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        masks = self.masks(images.shape[0]).to(images.device)
        amp = self.amp_dtype
        with torch.autocast(self.env.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            reconstruction = self.wrapped(images, masks)
        loss = masked_l1(reconstruction.float(), images, upsample_mask(masks, self.model.mask_patch_size))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = self.cfg["pretrain"]["clip_grad"]
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return (loss.detach(),)

    def validate(self, epoch: int) -> dict[str, Any] | None:
        return None  # nothing to validate: the loss curve and the reconstruction picture show progress

    def _load_weights(self, state: dict | None) -> dict[str, Any] | None:
        """A resumed run's network and SimMIM's own parameters (kept apart in last.pt, so that the checkpoint
        is a Swin-Unet checkpoint every verb can check); nothing at a fresh start."""
        if state is None:
            return None
        if state["iterations_per_epoch"] != self.iterations_per_epoch:
            raise ConfigError(
                f"{self.last_path}: {state['iterations_per_epoch']} iterations per epoch there, "
                f"{self.iterations_per_epoch} now (other pretraining images?)"
            )
        self.model.load_state_dict({**state["model"], **state["simmim"]})
        return None

    def save(self, name: str, full: bool, **extra: Any) -> None:
        if not (self.main and full):
            return  # no best.pt (no validation) and no epoch_N.pt: last.pt and the encoder file
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        ckpt = run_checkpoint(self.model, self.cfg, self.model_args, self.dataset, dataset=self.data_record)
        ckpt["model"] = {k: v for k, v in state.items() if k.startswith("swin_unet.")}
        own = {k: v for k, v in state.items() if not k.startswith("swin_unet.")}
        ckpt.update(
            simmim=own,
            iteration=self.iteration,
            epoch=self.iteration // self.iterations_per_epoch,
            iterations_per_epoch=self.iterations_per_epoch,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            best_dice=self.best_dice,
            train_seconds=self.train_seconds,
        )
        encoder = {
            "format": SIMMIM_FORMAT,
            "model": self.model.encoder_state(),
            "pretraining": self.record(),
        }
        try:
            atomic_torch_save(ckpt, self.run.checkpoint(name))
            atomic_torch_save(encoder, self.run.path / ENCODER_FILE)
        except NoRoomError as exc:
            if self.run.checkpoint("last.pt").is_file():
                raise exc.with_hint("free some space and resume with --resume") from None
            raise

    def record(self) -> dict[str, Any]:
        """What the encoder file says about how it was made (plain data)."""
        sources = self.dataset.records() if isinstance(self.dataset, PretrainImages) else []
        return {
            "method": "simmim",
            "model_name": self.cfg["model"]["name"],
            "model_args": {k: v for k, v in self.model_args.items() if k != "num_classes"},
            "iterations": self.iteration,
            "train_seconds": round(self.train_seconds, 1),
            "sources": sources,
            "pretrain": dict(self.cfg["pretrain"]),
        }

    def fit(self) -> dict[str, Any]:
        if self.main and isinstance(self.dataset, PretrainImages):
            for rec in self.dataset.records():
                print(
                    f"pretraining source {rec['path']}: {rec['kind']}, {rec['slices']} slices of "
                    f"{rec['cases']} case(s), intensities {rec['intensity']}",
                    flush=True,
                )
        summary = super().fit()
        if self.main:
            self._record_sources()
            draw_loss(self.run, self.run.path / LOSS_FIGURE)
            self.draw_reconstructions(self.run.path / RECONSTRUCTION_FIGURE)
            summary["encoder"] = str(self.run.path / ENCODER_FILE)
            summary.pop("best_mean_dice", None)
            summary.pop("last_val", None)
            self.run.write_summary(summary)
        return summary

    def _record_sources(self) -> None:
        env = self.run.env()
        info = dict(env.raw) if env is not None else {}
        info["pretraining"] = self.record()
        self.run.write_env(info)

    @torch.no_grad()
    def draw_reconstructions(self, path: Path, n: int = 4) -> None:
        """Masked inputs beside their reconstructions and the originals, for the first ``n`` slices (a fixed
        mask seed: pictures of two runs compare)."""
        slices = self.dataset.train_slices()
        n = min(n, len(slices))
        side = self.train_cfg["img_size"]
        resized = [
            F.interpolate(torch.from_numpy(slices[i][0])[None, None], (side, side), mode="bilinear")
            for i in range(n)
        ]
        images = torch.cat(resized).to(self.env.device)
        gen = torch.Generator().manual_seed(self.train_cfg["seed"])
        masks = random_masks(n, self.model.mask_grid(), self.cfg["pretrain"]["mask_ratio"], gen).to(
            images.device
        )
        was = self.model.training
        self.model.eval()
        recon = self.model(images, masks).float().clamp(0, 1)
        self.model.train(was)
        pixel = upsample_mask(masks, self.model.mask_patch_size).unsqueeze(1)
        masked = images.masked_fill(pixel, 0.0)
        shown = recon.where(pixel, images)  # the visible pixels as given, the hidden ones predicted
        plt = pyplot()
        fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
        for row in range(n):
            for col, (img, title) in enumerate(
                ((masked, "masked input"), (shown, "reconstruction"), (images, "original"))
            ):
                ax = axes[row][col]
                ax.imshow(img[row, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(title)
        fig.suptitle(f"SimMIM after {self.iteration} iterations")
        save_figure(fig, path)


def draw_loss(run: RunDir, path: Path) -> None:
    """The masked-pixel L1 loss per logged iteration."""
    records = run.metrics("train")
    if not records:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["iter"] for r in records], [r["loss"] for r in records], lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("L1 on masked pixels")
    ax.set_title("SimMIM pretraining loss")
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------- the verb


def pretrain(
    config: dict | str | Path | None = None,
    sources: list[Any] | SegmentationDataset | None = None,
    out_dir: str | Path = "runs/pretrain",
    resume: bool = False,
) -> dict[str, Any]:
    """Pretrain a Swin-Unet encoder by masked image modelling; return the run summary (with ``encoder``: the
    weight file for ``model.pretrained``).

    ``config``: a preset name (``swin_unet_simmim``), a YAML path or a dict. ``sources``: folders (or
    ``data.sources`` items) added to the configuration's, or a dataset object (tests, notebooks)."""
    raw = load_pretrain_config(config)
    if isinstance(sources, list):
        raw.setdefault("data", {})
        raw["data"]["sources"] = list(raw["data"].get("sources") or []) + list(sources)
    cfg = resolve_pretrain_config(raw)
    paths = {f"data.sources[{i}]": _source_path(s) for i, s in enumerate(cfg["data"]["sources"])}
    check_output(out_dir, paths, folder=True, owned=PRETRAIN_FILES)
    check_output_dir(out_dir)
    run_dir = Path(out_dir)
    with run_session(cfg, run_dir, "pretrain", PRETRAIN_FILES) as env:
        if isinstance(sources, SegmentationDataset):
            dataset = sources
        else:
            dataset = PretrainImages(cfg["data"]["sources"], cfg["data"])
        state = resume_state(cfg, dataset, run_dir, resume, env)
        if state is not None and "simmim" not in state:
            last = RunDir(run_dir).checkpoint("last")
            raise ConfigError(f"{last}: a train run, not a pretraining run; pretrain into another --out")
        return Pretrainer(cfg, dataset, run_dir, env, state).fit()


def _source_path(entry: Any) -> str | None:
    return entry.get("path") if isinstance(entry, dict) else str(entry)


def load_pretrain_config(config: dict | str | Path | None) -> dict:
    """A pretraining configuration as given: a dict, a YAML file, or a preset of ``configs/pretrain/``."""
    if config is None:
        config = "swin_unet_simmim"
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = Path(config)
    if not path.suffix and not path.exists():
        preset = pretrain_presets_dir() / f"{config}.yaml"
        if not preset.is_file():
            raise ConfigError(
                f"unknown pretraining preset {str(config)!r}; presets: {', '.join(list_pretrain_presets())}"
            )
        path = preset
    return load_config(path)


def pretrain_presets_dir() -> Path:
    return presets_dir() / "pretrain"


def list_pretrain_presets() -> list[str]:
    return sorted(p.stem for p in pretrain_presets_dir().glob("*.yaml"))
