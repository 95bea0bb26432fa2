"""``train``: the reference recipe (SGD, poly LR per iteration, 0.4·CE + 0.6·Dice), resumable and fast.

The run folder it writes (config.yaml, env.json, metrics.jsonl, tensorboard/, checkpoints/, summary.json) is
described and named in :mod:`organseg.run` (:class:`~organseg.run.RunDir`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from organseg.checkpoint import atomic_torch_save, make_checkpoint, read_checkpoint, validate_checkpoint
from organseg.data.base import SegmentationDataset
from organseg.errors import CheckpointError, ConfigError, DataError, OrgansegError
from organseg.fileio import check_output, check_output_dir
from organseg.losses import DiceCELoss
from organseg.precision import autocast_dtype
from organseg.progress import progress_bar, progress_write
from organseg.run import TRAIN_FILES, RunDir
from organseg.training.config import config_differences, effective_lr, load_config, resolve_config, to_yaml
from organseg.training.data import TrainBatches
from organseg.training.distributed import (
    STREAM_MODEL,
    DistEnv,
    barrier,
    broadcast_object,
    derive_seed,
    init_distributed,
    mean_over_ranks,
    seed_all,
    set_deterministic,
    shutdown,
    sum_over_ranks_fn,
)
from organseg.training.runlog import RunLog, environment
from organseg.training.validation import validate

# What last.pt carries besides the weights so that a run can continue (see save() in _train).
RESUME_STATE = ("optimizer", "scaler", "iteration", "iterations_per_epoch", "best_dice", "train_seconds")


class TrainingDiverged(OrgansegError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


# What train writes in a run folder: an input elsewhere in the folder (a dataset kept beside the run) is safe.
RUN_FILES = TRAIN_FILES


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The reference schedule: after step ``iteration`` (0-based) the LR becomes
    ``base_lr * (1 - iteration / max_iterations) ** power``. Steps 0 and 1 therefore both use ``base_lr``."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


def is_save_epoch(epoch: int, max_epochs: int, save_interval: int = 50) -> bool:
    """The reference cadence of ``epoch_N`` files (0-based N): past half-way every ``save_interval`` epochs,
    and the last epoch; 150 epochs give epoch_99 and epoch_149."""
    return (epoch > max_epochs // 2 and (epoch + 1) % save_interval == 0) or epoch == max_epochs - 1


def open_dataset_for(data: str | Path | SegmentationDataset | None, cfg: dict) -> SegmentationDataset:
    if isinstance(data, SegmentationDataset):
        return data
    root = data if data is not None else cfg["data"]["root"]
    if root is None:
        raise ConfigError("no training data: pass --data DIR (or set data.root)")
    from organseg.data import open_dataset

    return open_dataset(root)


def _wants_channels_last(model: nn.Module, setting: str | bool) -> bool:
    if setting != "auto":
        return bool(setting)
    # Convolutional networks (the U-Net: ~99 % 3x3 convs) gain from NHWC; Swin-Unet (linear layers) does not.
    total = sum(p.numel() for p in model.parameters())
    conv = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False)
    )
    return conv > total / 2


def _checkpoint(model: nn.Module, cfg: dict, args: dict, dataset: SegmentationDataset, **state: Any) -> dict:
    return make_checkpoint(
        model,
        model_name=cfg["model"]["name"],
        model_args=args,
        class_names=list(dataset.class_names),
        preprocessing=dataset.preprocessing,
        config=cfg,
        **state,
    )


def make_sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """The reference SGD, fused where this torch has the fused kernel (CPU and CUDA since 2.4): the same
    update in one pass over the parameters instead of four, 2.3x faster on CPU (16 ms vs 38 ms a step for
    Swin-Unet on 2 cores) and equal to the loop implementation (tests/test_train_loop.py)."""
    params = list(params)
    try:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def train(
    config: dict | str | Path,
    data: str | Path | SegmentationDataset | None = None,
    out_dir: str | Path = "runs/train",
    resume: bool = False,
) -> dict[str, Any]:
    """Train a network; return the run summary (also written to ``RUN_DIR/summary.json``).

    ``config``: a preset name, a YAML path, or a config dict (raw or resolved). ``data``: a dataset folder or
    a :class:`SegmentationDataset` (else ``data.root``). ``resume``: continue ``RUN_DIR/checkpoints/last.pt``
    when it exists (start fresh otherwise). Works the same under ``torchrun``.
    """
    raw = config if isinstance(config, dict) else load_config(config)
    cfg = resolve_config(raw, data if isinstance(data, (str, Path)) else None)
    check_network(cfg)  # before the data are read and before the run folder exists
    data_root = data if isinstance(data, (str, Path)) else getattr(data, "root", None)
    config_file = config if isinstance(config, (str, Path)) and Path(config).is_file() else None
    check_output(
        out_dir,
        {"--data": data_root or cfg["data"].get("root"), "PRESET_OR_YAML": config_file},
        folder=True,
        owned=RUN_FILES,
    )
    check_output_dir(out_dir)
    env = init_distributed(cfg["train"]["device"])
    # Threads and determinism are process-wide: put them back for the caller (tests, notebooks, compare).
    cudnn = torch.backends.cudnn
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    saved_cudnn = cudnn.benchmark, cudnn.deterministic
    run_dir = Path(out_dir)
    existed = {name for name in RUN_FILES if (run_dir / name).exists()} if run_dir.is_dir() else None
    try:
        if cfg["train"]["threads"]:
            torch.set_num_threads(cfg["train"]["threads"])
        set_deterministic(cfg["train"]["deterministic"])
        return _train(cfg, open_dataset_for(data, cfg), run_dir, resume, env)
    except BaseException:
        if env.is_main:
            _undo_fresh_run(run_dir, existed)
        raise
    finally:
        torch.set_num_threads(threads)
        set_deterministic(strict)
        cudnn.benchmark, cudnn.deterministic = saved_cudnn
        shutdown(env)


def _undo_fresh_run(run_dir: Path, existed: set[str] | None) -> None:
    """A run that fails before its first checkpoint (bad data found while loading, an interrupt in the first
    iterations) has nothing to resume: remove the files it created, so no half-made run folder is left (and
    the folder itself if this call created it). A run with a checkpoint is kept: it resumes."""
    ckpts = RunDir(run_dir).checkpoints_dir
    if ckpts.is_dir() and any(ckpts.glob("*.pt")):
        return
    before = existed or set()
    for name in RUN_FILES:
        path = run_dir / name
        if name in before or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if existed is None:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # only when empty: a file someone else put there keeps it


def _previous_env(run_dir: Path) -> dict[str, Any]:
    env = RunDir(run_dir).env()
    return env.raw if env is not None else {}


def _train(
    cfg: dict, dataset: SegmentationDataset, run_dir: Path, resume: bool, env: DistEnv
) -> dict[str, Any]:
    t = cfg["train"]
    main = env.is_main
    rd = RunDir(run_dir)
    ckpt_dir, last_path = rd.checkpoints_dir, rd.checkpoint("last")
    # Rank 0 reads the checkpoint and hands it (or the error) to every process: other nodes may not see the
    # run folder, and a check failing on one rank only would leave the others waiting.
    state, error = None, None
    try:
        if main and last_path.exists():
            if not resume:
                raise ConfigError(
                    f"{run_dir} already holds a run ({last_path}): use --resume, or another --out"
                )
            state = read_checkpoint(last_path)
            validate_checkpoint(state, last_path)
            missing = [k for k in RESUME_STATE if k not in state]
            if missing:
                raise CheckpointError(
                    f"{last_path}: no training state to resume ({', '.join(missing)} missing): a checkpoint "
                    "for inference only? Train into another --out"
                )
            _check_same_classes(state, dataset, last_path)
            diff = config_differences(state["config"], cfg)
            if diff:
                raise ConfigError(
                    f"{last_path}: the configuration differs from the run being resumed: " + "; ".join(diff)
                )
    except OrgansegError as exc:
        error = exc
    state, error = broadcast_object((state, error), env)
    if error is not None:
        raise error
    amp_dtype = autocast_dtype(t["precision"], env.device)

    seed_all(t["seed"])
    args = model_args(cfg, dataset.num_classes)
    model = _build_model(cfg, args)
    batches = TrainBatches(dataset, cfg, env)
    ipe = len(batches)
    max_iterations = t["max_iterations"] or t["max_epochs"] * ipe
    if t["budget_images"]:  # equal images seen, whatever the batch: ceil(images / global batch) iterations
        max_iterations = math.ceil(t["budget_images"] / t["batch_size"])
    max_epochs = math.ceil(max_iterations / ipe)
    pretrained_info: dict[str, Any] | None = None
    if state is not None:
        if state["iterations_per_epoch"] != ipe:
            raise ConfigError(
                f"{last_path}: {state['iterations_per_epoch']} iterations per epoch there, {ipe} now "
                "(another dataset or number of processes?)"
            )
        model.load_state_dict(state["model"])
    elif cfg["model"]["pretrained"]:
        # Every rank loads the same file, so no broadcast is needed; a resumed run has its own weights.
        # Concurrent first downloads (torchrun) are safe: each writes its own temporary, then renames.
        from organseg.models.hub import resolve_pretrained
        from organseg.models.pretrained import load_pretrained

        spec = cfg["model"]["pretrained"]
        weights = resolve_pretrained(spec, cfg["model"]["name"], model, progress=main and t["progress"])
        report = load_pretrained(model, weights)
        pretrained_info = {"spec": str(spec), "path": str(weights)}
        pretrained_info.update(loaded=report.loaded, left_random=report.left_random)
        if main:
            print(f"pretrained weights {spec}: {report}", flush=True)
    channels_last = _wants_channels_last(model, t["channels_last"])
    # On the device before the optimizer exists, so that its restored state lands there too.
    model.to(env.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if env.device.type == "cuda":  # the summary's peak is this run's, not an earlier run's in the process
        torch.cuda.reset_peak_memory_stats(env.device)
    base_lr = effective_lr(t)
    optimizer = make_sgd(model.parameters(), base_lr, t["momentum"], t["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=t["precision"] == "fp16")
    it, best, train_seconds = 0, -1.0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        it, best, train_seconds = state["iteration"], state["best_dice"], state["train_seconds"]
    net: nn.Module = model
    if env.distributed:
        # A 1x1 conv weight (Swin-Unet's output layer) is contiguous and channels-last at once; DDP's check
        # flags its gradient's layout anyway. Only that message is silenced.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    if t["compile"]:
        net = torch.compile(net)
    loss_fn = DiceCELoss(
        dataset.num_classes, t["ce_weight"], t["dice_weight"], all_reduce=sum_over_ranks_fn(env)
    )

    if main:
        print(f"organseg train: {run_dir}\n{to_yaml(cfg)}", flush=True)
        print(
            f"{batches.num_slices} slices, {ipe} iterations/epoch, {max_iterations} in all, lr {base_lr:g}, "
            f"{env.world_size} process(es) on {env.device}, {t['precision']}"
            + (f", resuming at iteration {it}" if state else ""),
            flush=True,
        )
        if it >= max_iterations:
            print("organseg train: the run is already complete; nothing to do", flush=True)
        if not dataset.case_ids("val"):
            print("organseg train: the dataset has no validation cases, so no best.pt is written", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        rd.write_config(to_yaml(cfg))
        env_info = environment(env.device, t["precision"], env.world_size)
        env_info.update(channels_last=channels_last, compile=t["compile"], augment=t["augment"])
        if batches.cases is not None:  # data.train_fraction: which cases this run trained on
            env_info["train_subset"] = {"cases": batches.cases, "slices": batches.num_slices}
        if pretrained_info is None and state is not None:  # a resumed run keeps the record of its start
            pretrained_info = _previous_env(run_dir).get("pretrained")
        if pretrained_info is not None:
            env_info["pretrained"] = pretrained_info
        rd.write_env(env_info)
    log = RunLog(run_dir, enabled=main, resume_iteration=it if state else None)

    def save(name: str, full: bool, **extra: Any) -> None:
        if not main:
            return
        ckpt = _checkpoint(
            model, cfg, args, dataset, iteration=it, epoch=it // ipe, iterations_per_epoch=ipe, **extra
        )
        if full:  # only last.pt carries what resuming needs; epoch_N / best are for inference
            ckpt.update(
                optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(),
                best_dice=best,
                train_seconds=train_seconds,
            )
        atomic_torch_save(ckpt, rd.checkpoint(name))

    budget_s = t["time_budget_min"] * 60 if t["time_budget_min"] else math.inf
    stopped, val_record = ("time_budget" if train_seconds >= budget_s else "completed"), None
    start_time = time.perf_counter() - train_seconds
    v_loss = math.nan
    net.train()
    while it < max_iterations and stopped == "completed":
        epoch, start = divmod(it, ipe)
        bar = progress_bar(
            total=min(ipe, max_iterations - epoch * ipe),
            initial=start,
            desc=f"epoch {epoch + 1}/{max_epochs}",
            disable=not (main and t["progress"]),
            dynamic_ncols=True,
        )
        epoch_t0, epoch_images = time.perf_counter(), 0
        for images, labels in batches.epoch(epoch, start):
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            torch.manual_seed(derive_seed(t["seed"], STREAM_MODEL, it, env.rank))  # dropout / drop-path
            with torch.autocast(
                env.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                logits = net(images)
            loss, ce, dice = loss_fn.components(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            for group in optimizer.param_groups:  # after the step, as the reference
                group["lr"] = poly_lr(base_lr, it, max_iterations, t["poly_power"])
            it += 1
            epoch_images += images.shape[0] * env.world_size  # the last batch of an epoch is short
            train_seconds = time.perf_counter() - start_time
            if it % t["log_every"] == 0 or it % ipe == 0:
                over = float(train_seconds >= budget_s)
                vals = mean_over_ranks(
                    torch.stack(
                        [loss.detach(), ce.detach(), dice.detach(), torch.tensor(over, device=loss.device)]
                    ),
                    env,
                )
                v_loss, v_ce, v_dice, v_over = vals.tolist()
                if not math.isfinite(v_loss):
                    good = (
                        f"the last good checkpoint is {last_path}"
                        if last_path.exists()
                        else "no checkpoint was written"
                    )
                    raise TrainingDiverged(
                        f"loss is {v_loss} at iteration {it} (epoch {epoch + 1}): training stopped; {good}. "
                        "Try a lower train.base_lr, or --precision fp32"
                    )
                log.write(
                    {
                        "kind": "train",
                        "iter": it,
                        "epoch": epoch,
                        "loss": v_loss,
                        "ce": v_ce,
                        "dice": v_dice,
                        "lr": lr,
                        "time": round(train_seconds, 3),
                    }
                )
                rate = epoch_images / max(time.perf_counter() - epoch_t0, 1e-9)
                eta = (batches.images_seen(max_iterations) - batches.images_seen(it)) / rate
                bar.set_postfix_str(
                    f"loss {v_loss:.4f} lr {lr:.2e} {rate:.1f} img/s ETA {_hms(eta)}", refresh=False
                )
                if v_over > 0:
                    stopped = "time_budget"
            bar.update(1)
            if stopped != "completed" or it >= max_iterations:
                break
        bar.close()
        if main:  # one line per epoch for logs (the bar is for terminals)
            secs = time.perf_counter() - epoch_t0
            print(
                f"epoch {epoch + 1}/{max_epochs}: {epoch_images} images in {secs:.1f} s "
                f"({epoch_images / secs:.1f} img/s), loss {v_loss:.4f}",
                flush=True,
            )

        epoch_done = it % ipe == 0
        final = it >= max_iterations or stopped != "completed"
        every = cfg["val"]["every"]
        if final or (epoch_done and every and (epoch + 1) % every == 0):
            val_record = _validate(model, dataset, cfg, env, epoch, it, log)
            if val_record is not None and val_record["mean_dice"] > best:
                best = val_record["mean_dice"]
                save("best.pt", full=False, val=val_record)
        if epoch_done and is_save_epoch(epoch, max_epochs, cfg["checkpoint"]["save_interval"]):
            save(f"epoch_{epoch}.pt", full=False)
        save("last.pt", full=True)
        barrier(env)

    log.close()
    summary = {
        "run_dir": str(run_dir),
        "stopped": stopped,
        "iterations": it,
        "epochs": round(it / ipe, 3),
        "max_iterations": max_iterations,
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(batches.images_seen(it) / max(train_seconds, 1e-9), 2),
        "best_mean_dice": best if best >= 0 else None,
        "last_val": val_record,
        **_peak_memory(env.device),
        "checkpoints": sorted(p.name for p in ckpt_dir.glob("*.pt")) if main else [],
    }
    if main:
        rd.write_summary(summary)
    return summary


def _peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process for the cost table of ``organseg compare``: on CUDA the most tensor memory
    allocated on the device, on a CPU the peak resident set of the process (data, network and framework
    together; a process that trained several runs reports its peak over all of them)."""
    if device.type == "cuda":
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "peak_memory_kind": "cuda max allocated"}  # fmt: skip
    try:
        import resource
    except ImportError:  # not on POSIX: not recorded
        return {"peak_memory_mb": None, "peak_memory_kind": None}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return {"peak_memory_mb": round(mb, 1), "peak_memory_kind": "process peak RSS"}


def check_network(cfg: dict) -> None:
    """The configured network exists and takes ``train.img_size`` inputs (one rule per network, from the
    registry): raised as a ConfigError naming the key and the nearest sizes that fit, before a run folder
    exists, instead of a ValueError from the first forward pass."""
    from organseg.models._registry import check_input_size, check_model_args, has_model, list_models

    m, side = cfg["model"], cfg["train"]["img_size"]
    if not has_model(m["name"]):
        raise ConfigError(f"model.name: unknown model {m['name']!r}; available: {', '.join(list_models())}")
    check_model_args(m["name"], m["args"])
    given = m["args"].get("img_size")
    if given is not None and given not in (side, [side, side], (side, side)):
        raise ConfigError(
            f"model.args.img_size={given} but train.img_size={side}: the network is fed {side}x{side} "
            "slices; set train.img_size only"
        )
    check_input_size(m["name"], side, m["args"])


def _check_same_classes(state: dict, dataset: SegmentationDataset, last_path: Path) -> None:
    """A run resumed on a dataset of another kind (Synapse run, ACDC data) says so in one line."""
    old, new = list(state.get("class_names") or []), [str(n) for n in dataset.class_names]
    if old and [n.lower() for n in old] != [n.lower() for n in new]:
        raise DataError(
            f"{last_path}: the run was trained on {len(old)} classes {old}, but the dataset "
            f"{getattr(dataset, 'root', dataset.name)} has {len(new)} {new}: resume with the run's dataset, "
            "or train into another --out"
        )


def model_args(cfg: dict, num_classes: int) -> dict[str, Any]:
    """Constructor arguments: ``model.args``, the dataset's class count and, for networks built for one input
    size (Swin-Unet), ``train.img_size`` unless ``model.args`` sets it."""
    from organseg.models._registry import has_model, list_models, takes_image_size

    m = cfg["model"]
    if not has_model(m["name"]):
        raise ConfigError(f"unknown model {m['name']!r}; available: {', '.join(list_models())}")
    args = {**m["args"], "num_classes": num_classes}
    if takes_image_size(m["name"]):
        args.setdefault("img_size", cfg["train"]["img_size"])
    return args


def _build_model(cfg: dict, args: dict[str, Any]) -> nn.Module:
    from organseg.models import create_model

    try:
        return create_model(cfg["model"]["name"], **args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"model {cfg['model']['name']!r} with args {args}: {exc}") from None


def _validate(
    model: nn.Module, dataset: SegmentationDataset, cfg: dict, env: DistEnv, epoch: int, it: int, log: RunLog
):
    rec = validate(
        model,
        dataset,
        img_size=cfg["train"]["img_size"],
        batch_size=cfg["val"]["batch_size"],
        precision=cfg["train"]["precision"],
        env=env,
        max_cases=cfg["val"]["max_cases"],
    )
    if rec is None:
        return None
    record = {"kind": "val", "epoch": epoch, "iter": it, **rec}
    log.write(record)
    if env.is_main:
        dice = " ".join(f"{n} {m['dice']:.4f}" for n, m in rec["per_class"].items())
        progress_write(
            f"val epoch {epoch + 1}: mean DSC {rec['mean_dice']:.4f} HD95 {rec['mean_hd95']:.2f} | {dice}"
        )
    return record


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
