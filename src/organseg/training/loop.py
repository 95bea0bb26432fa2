"""``train``: the reference recipe (SGD, poly LR per iteration, 0.4·CE + 0.6·Dice) or a faster one, resumable.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from organseg.checkpoint import atomic_torch_save, make_checkpoint, read_checkpoint, validate_checkpoint
from organseg.data.base import SegmentationDataset
from organseg.data.classes import check_same_classes
from organseg.data.detect import resolve_dataset
from organseg.data.identity import check_same_dataset, data_record
from organseg.errors import CheckpointError, ConfigError, NoRoomError, OrgansegError
from organseg.fileio import check_output, check_output_dir
from organseg.formatting import duration
from organseg.locks import folder_lock
from organseg.losses import DiceCELoss
from organseg.models import create_model, wants_channels_last
from organseg.models.hub import resolve_pretrained
from organseg.models.pretrained import load_pretrained
from organseg.precision import autocast_dtype
from organseg.progress import progress_bar, progress_write
from organseg.run import TRAIN_FILES, RunDir
from organseg.training.budget import BudgetFit, TimeBudget
from organseg.training.config import (
    check_network,
    config_differences,
    effective_lr,
    load_config,
    model_args,
    resolve_config,
    to_yaml,
)
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
from organseg.training.schedule import is_save_epoch, make_optimizer, run_length, scheduled_lr
from organseg.training.validation import validate

# What last.pt carries besides the weights so that a run can continue (see save() in _train).
RESUME_STATE = ("optimizer", "scaler", "iteration", "iterations_per_epoch", "best_dice", "train_seconds")


class TrainingDiverged(OrgansegError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


# What train writes in a run folder: an input elsewhere in the folder (a dataset kept beside the run) is safe.
RUN_FILES = TRAIN_FILES


def open_dataset_for(data: str | Path | SegmentationDataset | None, cfg: dict) -> SegmentationDataset:
    return resolve_dataset(data, cfg, "no training data: pass --data DIR (or set data.root)")


def run_checkpoint(model: nn.Module, cfg: dict, args: dict, data: SegmentationDataset, **state: Any) -> dict:
    return make_checkpoint(
        model,
        model_name=cfg["model"]["name"],
        model_args=args,
        class_names=list(data.class_names),
        preprocessing=data.preprocessing,
        orientation=data.orientation,
        config=cfg,
        **state,
    )


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
    data_root = data if isinstance(data, (str, Path)) or data is None else data.root
    config_file = config if isinstance(config, (str, Path)) and Path(config).is_file() else None
    check_output(
        out_dir,
        {"--data": data_root or cfg["data"].get("root"), "PRESET_OR_YAML": config_file},
        folder=True,
        owned=RUN_FILES,
    )
    check_output_dir(out_dir)
    run_dir = Path(out_dir)
    with run_session(cfg, run_dir, "train", RUN_FILES) as env:
        return _train(cfg, open_dataset_for(data, cfg), run_dir, resume, env)


@contextlib.contextmanager
def run_session(cfg: dict, run_dir: Path, verb: str, files: tuple[str, ...]) -> Iterator[DistEnv]:
    """The process around one run of ``verb`` (train, pretrain): the distributed environment it yields, the
    run folder's lock, the configured threads and determinism, and on the way out the caller's threads,
    determinism and cuDNN flags back (they are process-wide: tests, notebooks and compare call on) and, when
    the run fails before its first checkpoint, the files it created (``files``: the verb's own) removed."""
    env = init_distributed(cfg["train"]["device"])
    cudnn = torch.backends.cudnn
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    saved_cudnn = cudnn.benchmark, cudnn.deterministic
    existed = {name for name in files if (run_dir / name).exists()} if run_dir.is_dir() else None
    # One writer per run folder (organseg.locks): rank 0 holds it; the lock file goes at the end, and the
    # folder too when this call created it and a failed fresh run left it empty.
    with folder_lock(run_dir, verb, enabled=env.is_main):
        try:
            if cfg["train"]["threads"]:
                torch.set_num_threads(cfg["train"]["threads"])
            set_deterministic(cfg["train"]["deterministic"])
            yield env
        except BaseException:
            if env.is_main:
                _undo_fresh_run(run_dir, existed, files)
            raise
        finally:
            torch.set_num_threads(threads)
            set_deterministic(strict)
            cudnn.benchmark, cudnn.deterministic = saved_cudnn
            shutdown(env)


def _undo_fresh_run(run_dir: Path, existed: set[str] | None, files: tuple[str, ...] = RUN_FILES) -> None:
    """A run that fails before its first checkpoint (bad data found while loading, an interrupt in the first
    iterations) has nothing to resume: remove the files it created, so no half-made run folder is left (and
    the folder itself if this call created it). A run with a checkpoint is kept: it resumes."""
    ckpts = RunDir(run_dir).checkpoints_dir
    if ckpts.is_dir() and any(ckpts.glob("*.pt")):
        return
    before = existed or set()
    for name in files:
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
    state = resume_state(cfg, dataset, run_dir, resume, env)
    return Trainer(cfg, dataset, run_dir, env, state).fit()


def resume_state(
    cfg: dict, dataset: SegmentationDataset, run_dir: Path, resume: bool, env: DistEnv
) -> dict[str, Any] | None:
    """The checked ``last.pt`` to continue, or None for a fresh start. Rank 0 reads it and hands it (or the
    error) to every process: other nodes may not see the run folder, and a check failing on one rank only
    would leave the others waiting."""
    last_path = RunDir(run_dir).checkpoint("last")
    state, error = None, None
    try:
        if env.is_main and last_path.exists():
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
            old, new = list(state.get("class_names") or []), list(dataset.class_names)
            check_same_classes(
                old,
                new,
                source=last_path,
                names_are=f"the run was trained on {len(old)} classes",
                expected_are=f"the dataset {dataset.location} has {len(new)}",
                then="resume with the run's dataset, or train into another --out",
            )
            check_same_dataset(state.get("dataset"), dataset, last_path)
            diff = config_differences(state["config"], cfg)  # train.fitted_iterations aside: taken below
            if diff:
                raise ConfigError(
                    f"{last_path}: the configuration differs from the run being resumed: " + "; ".join(diff)
                )
    except OrgansegError as exc:
        error = exc
    state, error = broadcast_object((state, error), env)
    if error is not None:
        raise error
    if state is not None:  # every rank: resume keeps the horizon fitted before the interruption
        cfg["train"]["fitted_iterations"] = state["config"].get("train", {}).get("fitted_iterations")
    return state


class Trainer:
    """One training run. The parts a recipe variant changes are methods, so that a variant overrides one of
    them (as nnU-Net's trainer variants do): :meth:`build_optimizer`, :meth:`build_loss`, :meth:`lr_at` (the
    schedule), :meth:`step` (forward, loss, backward, update), :meth:`validate` and :meth:`save`
    (checkpointing). All of them work on a Trainer just built, before :meth:`fit`.

    :meth:`fit` is the loop that calls them. What makes a resumed run bit-identical belongs to the loop, not
    to the seams, so that no variant can lose it: the dropout seed set before every step, the learning rate
    set after it, ``last.pt`` at every epoch's end.

    ``model`` is the network as built (what checkpoints hold and validation runs); ``wrapped`` is what
    :meth:`step` calls (DistributedDataParallel and ``torch.compile`` around it, when configured).

    A variant that trains another objective (``organseg pretrain``) also sets :attr:`verb` (its console
    lines), :attr:`log_fields` (what :meth:`step` returns, as metrics.jsonl names it) and overrides
    :meth:`build_model`."""

    verb = "train"
    log_fields: tuple[str, ...] = ("loss", "ce", "dice")

    def __init__(
        self, cfg: dict, dataset: SegmentationDataset, run_dir: Path, env: DistEnv, state: dict | None
    ) -> None:
        train_cfg = self.train_cfg = cfg["train"]
        self.cfg, self.dataset, self.env, self.main = cfg, dataset, env, env.is_main
        self.run = RunDir(run_dir)
        self.last_path = self.run.checkpoint("last")
        # Where the data are and what they are, in every checkpoint (organseg.data.identity): test and resume
        # find and check the dataset by it, whatever folder they are started from.
        self.data_record = data_record(dataset, cfg["data"].get("root"))
        self.amp_dtype = autocast_dtype(train_cfg["precision"], env.device)
        seed_all(train_cfg["seed"])
        self.model_args = model_args(cfg, dataset.num_classes)
        self.model = self.build_model()
        self.batches = TrainBatches(dataset, cfg, env)
        self.iterations_per_epoch = len(self.batches)
        self.max_iterations = run_length(train_cfg, self.iterations_per_epoch)
        self.max_epochs = math.ceil(self.max_iterations / self.iterations_per_epoch)
        self.pretrained_info = self._load_weights(state)
        self.channels_last = wants_channels_last(self.model, train_cfg["channels_last"])
        # On the device before the optimizer exists, so that its restored state lands there too.
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        self.model.to(env.device, memory_format=fmt)
        if env.device.type == "cuda":  # the summary's peak is this run's, not an earlier run's in the process
            torch.cuda.reset_peak_memory_stats(env.device)
        self.base_lr = effective_lr(train_cfg)
        self.optimizer = self.build_optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=train_cfg["precision"] == "fp16")
        self.iteration, self.best_dice, self.train_seconds = 0, -1.0, 0.0
        self.resumed = state is not None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.best_dice = state["iteration"], state["best_dice"]
            self.train_seconds = state["train_seconds"]
        self.wrapped = self._wrap(self.model)
        self.loss_fn = self.build_loss()
        self.budget = TimeBudget.from_config(
            train_cfg, self.iteration, self.iterations_per_epoch, agree=lambda h: broadcast_object(h, env)
        )
        self.stopped = "time_budget" if self.budget.exhausted(self.train_seconds) else "completed"
        # Records nothing until fit() has written the run's header and opens its metrics.jsonl.
        self.log = RunLog(self.run.path, enabled=False)
        # Clocks: the run's (train_seconds = now - start_time, restarted by fit()) and the epoch's (its rate).
        self.start_time = time.perf_counter() - self.train_seconds
        self.epoch_start_time, self.epoch_images = time.perf_counter(), 0
        self.last_loss = math.nan  # the last logged loss (mean over ranks), for the line at an epoch's end

    # ----------------------------------------------------------------------------- the seams for variants

    def build_model(self) -> nn.Module:
        """The network ``model.name`` with :attr:`model_args`: what checkpoints hold."""
        return _build_model(self.cfg, self.model_args)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """``train.optimizer`` over the network's parameters, at the schedule's first learning rate."""
        return make_optimizer(self.model.parameters(), self.train_cfg, self.lr_at(0))

    def build_loss(self) -> nn.Module:
        """The loss, whose ``components(logits, labels)`` gives (loss, ce, dice) to :meth:`step`: the
        reference ``train.ce_weight`` · CE + ``train.dice_weight`` · Dice, its Dice over the global batch (all
        ranks)."""
        train_cfg = self.train_cfg
        return DiceCELoss(
            self.dataset.num_classes,
            train_cfg["ce_weight"],
            train_cfg["dice_weight"],
            all_reduce=sum_over_ranks_fn(self.env),
        )

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): ``train.schedule`` over ``max_iterations``."""
        return scheduled_lr(self.train_cfg, self.base_lr, step, self.max_iterations)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One optimisation step on one batch; returns (loss, ce, dice) for the log. The loop has seeded
        torch's generator for this iteration already."""
        amp = self.amp_dtype
        with torch.autocast(self.env.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = self.wrapped(images)
        loss, ce, dice = self.loss_fn.components(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, ce, dice

    def validate(self, epoch: int) -> dict[str, Any] | None:
        """The validation record of the network as it is (written to metrics.jsonl once fit() runs), or None
        when the dataset has no validation cases."""
        return _validate(self.model, self.dataset, self.cfg, self.env, epoch, self.iteration, self.log)

    def save(self, name: str, full: bool, **extra: Any) -> None:
        """``name`` in the run's checkpoints/; only ``full`` ones (last.pt) carry what resuming needs, epoch_N
        and best.pt are for inference."""
        if not self.main:
            return
        per_epoch = self.iterations_per_epoch
        ckpt = run_checkpoint(
            self.model,
            self.cfg,
            self.model_args,
            self.dataset,
            **extra,
            dataset=self.data_record,
            iteration=self.iteration,
            epoch=self.iteration // per_epoch,
            iterations_per_epoch=per_epoch,
        )
        if full:
            ckpt.update(
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict(),
                best_dice=self.best_dice,
                train_seconds=self.train_seconds,
            )
        try:
            atomic_torch_save(ckpt, self.run.checkpoint(name))
        except NoRoomError as exc:
            # The previous last.pt is whole (atomic writes): the run resumes from it once there is room. A
            # fresh run without one is removed again (_undo_fresh_run) and starts over.
            if self.run.checkpoint("last.pt").is_file():
                raise exc.with_hint("free some space and resume with --resume") from None
            raise

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to the horizon or until the time budget is spent; return the run summary."""
        self._write_header()
        self.log = RunLog(
            self.run.path, enabled=self.main, resume_iteration=self.iteration if self.resumed else None
        )
        self.start_time = time.perf_counter() - self.train_seconds  # writing the header is not training time
        val_record = None
        self.wrapped.train()
        while self.iteration < self.max_iterations and self.stopped == "completed":
            epoch = self.iteration // self.iterations_per_epoch
            self._epoch(epoch)
            epoch_done = self.iteration % self.iterations_per_epoch == 0
            final = self.iteration >= self.max_iterations or self.stopped != "completed"
            every = self.cfg["val"]["every"]
            if final or (epoch_done and every and (epoch + 1) % every == 0):
                val_record = self.validate(epoch)
                if val_record is not None and val_record["mean_dice"] > self.best_dice:
                    self.best_dice = val_record["mean_dice"]
                    self.save("best.pt", full=False, val=val_record)
            if epoch_done and is_save_epoch(epoch, self.max_epochs, self.cfg["checkpoint"]["save_interval"]):
                self.save(f"epoch_{epoch}.pt", full=False)
            self.save("last.pt", full=True)
            barrier(self.env)
        self.log.close()
        return self._summary(val_record)

    def _epoch(self, epoch: int) -> None:
        """The iterations of one epoch (the rest of it, when resuming mid-epoch), until the horizon or the
        time budget; one plain line at its end for logs (the bar is for terminals)."""
        per_epoch = self.iterations_per_epoch
        start = self.iteration - epoch * per_epoch
        bar = self._progress_bar(epoch, start)
        self.epoch_start_time, self.epoch_images = time.perf_counter(), 0
        for images, labels in self.batches.epoch(epoch, start):
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self._seed_iteration()  # here, not in step(): a variant's step() cannot lose it
            parts = self.step(images, labels)
            lr = self.optimizer.param_groups[0]["lr"]  # the one this step used
            for group in self.optimizer.param_groups:  # after the step, as the reference
                group["lr"] = self.lr_at(self.iteration + 1)
            self.iteration += 1
            self.epoch_images += images.shape[0] * self.env.world_size  # the last batch of an epoch is short
            self.train_seconds = time.perf_counter() - self.start_time
            self._follow_budget()
            if self.iteration % self.train_cfg["log_every"] == 0 or self.iteration % per_epoch == 0:
                self._log_iteration(epoch, lr, parts, bar)
            bar.update(1)
            if self.stopped != "completed" or self.iteration >= self.max_iterations:
                break
        bar.close()
        if self.main:
            secs = time.perf_counter() - self.epoch_start_time
            print(
                f"epoch {epoch + 1}/{self.max_epochs}: {self.epoch_images} images in {secs:.1f} s "
                f"({self.epoch_images / secs:.1f} img/s), loss {self.last_loss:.4f}",
                flush=True,
            )

    def _seed_iteration(self) -> None:
        """dropout / drop-path: a stream of its own per iteration and rank, whatever ran before (the
        determinism design: a resumed run draws what the uninterrupted one drew)."""
        torch.manual_seed(derive_seed(self.train_cfg["seed"], STREAM_MODEL, self.iteration, self.env.rank))

    def _follow_budget(self) -> None:
        """The time budget after an iteration: a horizon it fits becomes the schedule's (every rank takes rank
        0's), and a spent budget stops the run (one rank's clock past it stops every rank at this iteration;
        only a run with a budget pays for that agreement)."""
        fitted = self.budget.after_iteration(self.iteration, self.train_seconds)
        if fitted is not None:
            self.max_iterations = fitted.horizon
            self.max_epochs = math.ceil(fitted.horizon / self.iterations_per_epoch)
            self.train_cfg["fitted_iterations"] = fitted.horizon  # config.yaml and every later checkpoint
            _record_fit(self.run, self.cfg, self.env, fitted)
        if self.budget.limited and self._on_any_rank(self.budget.exhausted(self.train_seconds)):
            self.stopped = "time_budget"

    def _on_any_rank(self, flag: bool) -> bool:
        if not self.env.distributed:
            return flag
        return mean_over_ranks(torch.tensor(float(flag), device=self.env.device), self.env).item() > 0

    def _progress_bar(self, epoch: int, start: int):
        per_epoch = self.iterations_per_epoch
        return progress_bar(
            total=min(per_epoch, self.max_iterations - epoch * per_epoch),
            initial=start,
            desc=f"epoch {epoch + 1}/{self.max_epochs}",
            disable=not (self.main and self.train_cfg["progress"]),
            dynamic_ncols=True,
        )

    def _log_iteration(self, epoch: int, lr: float, parts: tuple[torch.Tensor, ...], bar: Any) -> None:
        """Averaged over ranks: the record (``parts`` named by :attr:`log_fields`, the loss first) and the
        divergence check."""
        stacked = torch.stack([p.detach() for p in parts])
        values = mean_over_ranks(stacked, self.env).tolist()
        v_loss = self.last_loss = values[0]
        if not math.isfinite(v_loss):
            good = (
                f"the last good checkpoint is {self.last_path}"
                if self.last_path.exists()
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                f"loss is {v_loss} at iteration {self.iteration} (epoch {epoch + 1}): training stopped; "
                f"{good}. Try a lower train.base_lr, or --precision fp32"
            )
        self.log.write(
            {
                "kind": "train",
                "iter": self.iteration,
                "epoch": epoch,
                **dict(zip(self.log_fields, values, strict=True)),
                "lr": lr,
                "time": round(self.train_seconds, 3),
            }
        )
        rate = self.epoch_images / max(time.perf_counter() - self.epoch_start_time, 1e-9)
        images_left = self.batches.images_seen(self.max_iterations) - self.batches.images_seen(self.iteration)
        eta = duration(images_left / rate, "clock")
        bar.set_postfix_str(f"loss {v_loss:.4f} lr {lr:.2e} {rate:.1f} img/s ETA {eta}", refresh=False)

    # ---------------------------------------------------------------------------------------- set-up, end

    def _load_weights(self, state: dict | None) -> dict[str, Any] | None:
        """A resumed run's own weights, or the configured pretrained ones at a fresh start (every rank loads
        the same file, so no broadcast; concurrent first downloads are safe: temporary, then rename)."""
        if state is not None:
            if state["iterations_per_epoch"] != self.iterations_per_epoch:
                raise ConfigError(
                    f"{self.last_path}: {state['iterations_per_epoch']} iterations per epoch there, "
                    f"{self.iterations_per_epoch} now (another dataset or number of processes?)"
                )
            self.model.load_state_dict(state["model"])
            return None
        spec = self.cfg["model"]["pretrained"]
        if not spec:
            return None
        name, show = self.cfg["model"]["name"], self.main and self.train_cfg["progress"]
        weights = resolve_pretrained(spec, name, self.model, progress=show)
        report = load_pretrained(self.model, weights)
        if self.main:
            print(f"pretrained weights {spec}: {report}", flush=True)
        info = {"spec": str(spec), "path": str(weights)}
        return {**info, "kind": report.kind, "loaded": report.loaded, "left_random": report.left_random}

    def _wrap(self, model: nn.Module) -> nn.Module:
        net: nn.Module = model
        if self.env.distributed:
            # A 1x1 conv weight (Swin-Unet's output layer) is contiguous and channels-last at once; DDP's
            # check flags its gradient's layout anyway. Only that message is silenced.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return torch.compile(net) if self.train_cfg["compile"] else net

    def _write_header(self) -> None:
        """The resolved configuration and the start line on the console; config.yaml and env.json."""
        if not self.main:
            return
        train_cfg, env, run_dir = self.train_cfg, self.env, self.run.path
        print(f"organseg {self.verb}: {run_dir}\n{to_yaml(self.cfg)}", flush=True)
        print(
            f"{self.batches.num_slices} slices, {self.iterations_per_epoch} iterations/epoch, "
            f"{self.max_iterations} in all, "
            f"lr {self.base_lr:g}, {env.world_size} process(es) on {env.device}, {train_cfg['precision']}"
            + (f", resuming at iteration {self.iteration}" if self.resumed else ""),
            flush=True,
        )
        if self.iteration >= self.max_iterations:
            print(f"organseg {self.verb}: the run is already complete; nothing to do", flush=True)
        if self.verb == "train" and not self.dataset.case_ids("val"):
            print("organseg train: the dataset has no validation cases, so no best.pt is written", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run.write_config(to_yaml(self.cfg))
        env_info = environment(env.device, train_cfg["precision"], env.world_size)
        env_info.update(
            channels_last=self.channels_last, compile=train_cfg["compile"], augment=train_cfg["augment"]
        )
        if self.batches.cases is not None:  # data.train_fraction: which cases this run trained on
            env_info["train_subset"] = {"cases": self.batches.cases, "slices": self.batches.num_slices}
        if getattr(self.dataset, "held_out", None) is not None:  # data.fold: the subjects it never saw
            fold = self.dataset
            env_info["fold"] = {"fold": fold.fold, "folds": fold.folds, "held_out_subjects": fold.held_out}
        previous = _previous_env(run_dir) if self.resumed else {}
        pretrained = self.pretrained_info or previous.get("pretrained")  # a resumed run keeps its start's
        if pretrained is not None:
            env_info["pretrained"] = pretrained
        for key in ("time_budget_fit", "time_budget_refit"):  # a resumed run keeps its measurements
            if key in previous:
                env_info[key] = previous[key]
        self.run.write_env(env_info)

    def _summary(self, val_record: dict | None) -> dict[str, Any]:
        iteration, ckpt_dir = self.iteration, self.run.checkpoints_dir
        summary = {
            "run_dir": str(self.run.path),
            "stopped": self.stopped,
            "iterations": iteration,
            "epochs": round(iteration / self.iterations_per_epoch, 3),
            "max_iterations": self.max_iterations,
            "train_seconds": round(self.train_seconds, 1),
            "images_per_second": round(
                self.batches.images_seen(iteration) / max(self.train_seconds, 1e-9), 2
            ),
            "best_mean_dice": self.best_dice if self.best_dice >= 0 else None,
            "last_val": val_record,
            **_peak_memory(self.env.device),
            "checkpoints": sorted(p.name for p in ckpt_dir.glob("*.pt")) if self.main else [],
        }
        if self.main:
            self.run.write_summary(summary)
        return summary


def _record_fit(run: RunDir, cfg: dict, env: DistEnv, fitted: BudgetFit) -> None:
    """The fitted horizon goes into config.yaml (and so into every later checkpoint: resume keeps it) and the
    measurement behind it into env.json under ``fitted.key``."""
    if not env.is_main:
        return
    run.write_config(to_yaml(cfg))
    info = _previous_env(run.path)
    budget = cfg["train"]["time_budget_min"]
    per_it, span = fitted.seconds_per_iteration, list(fitted.measured)
    info[fitted.key] = {
        "seconds_per_iteration": round(per_it, 4),
        "measured_iterations": span,
        "budget_min": budget,
        "horizon": fitted.horizon,
    }
    run.write_env(info)
    again = " (again, half-way)" if fitted.refit else ""
    progress_write(
        f"time budget {budget:g} min{again}: {per_it:.3f} s/iteration measured over iterations "
        f"{span[0]}-{span[1]}, schedule horizon {fitted.horizon} iterations"
    )


def _peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process for the cost table of ``organseg compare``: on CUDA the most tensor memory
    allocated on the device, on a CPU the peak resident set of the process (data, network and framework
    together; a process that trained several runs reports its peak over all of them)."""
    if device.type == "cuda":
        return {
            "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_memory_kind": "cuda max allocated",
        }
    try:
        import resource  # noqa: PLC0415 (POSIX only: elsewhere the peak is not measured)
    except ImportError:  # not on POSIX: not recorded
        return {"peak_memory_mb": None, "peak_memory_kind": None}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return {"peak_memory_mb": round(mb, 1), "peak_memory_kind": "process peak RSS"}


def _build_model(cfg: dict, args: dict[str, Any]) -> nn.Module:
    try:
        return create_model(cfg["model"]["name"], **args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"model {cfg['model']['name']!r} with args {args}: {exc}") from None


def _validate(
    model: nn.Module,
    dataset: SegmentationDataset,
    cfg: dict,
    env: DistEnv,
    epoch: int,
    iteration: int,
    log: RunLog,
) -> dict[str, Any] | None:
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
    record = {"kind": "val", "epoch": epoch, "iter": iteration, **rec}
    log.write(record)
    if env.is_main:
        dice = " ".join(f"{n} {m['dice']:.4f}" for n, m in rec["per_class"].items())
        progress_write(
            f"val epoch {epoch + 1}: mean DSC {rec['mean_dice']:.4f} HD95 {rec['mean_hd95']:.2f} | {dice}"
        )
    return record
