"""One training step, side by side with the code people compare organseg with (issue 24's protocol).

    python benchmarks/bench_step.py --official-swin \
        Swin-Unet/networks/swin_transformer_unet_skip_expand_decoder_sys.py
    python benchmarks/bench_step.py --cases unet/seed unet/organseg --repeats 5

Protocol: batch 4, 224x224, 1 input channel, 9 classes, 2 torch threads, one process per case, median of
``--repeats`` steps after ``--warmup`` steps. A step is forward, loss, backward and optimiser update.

Cases:
  swin_unet/official   the official network file itself (``--official-swin``: HuCaoFighting/Swin-Unet's
                       ``networks/swin_transformer_unet_skip_expand_decoder_sys.py``; it imports einops and
                       ``timm.models.layers``), built as its ``SwinUnet`` wrapper builds it (Swin-T, drop path
                       0.2, a 1-channel slice repeated to 3), trained as its trainer does: fp32, SGD (momentum
                       0.9, weight decay 1e-4), 0.4 CE + 0.6 Dice with the official per-class Dice loop.
  swin_unet/reference  organseg's network with ``attn_impl="reference"`` (the official arithmetic) in that
                       same fp32 step: the reference-style loop of ``bench_train.py``.
  swin_unet/organseg   the step as ``organseg train`` runs it: bf16 autocast, organseg's DiceCELoss, fused
                       SGD, the process started as the ``organseg`` command starts (allocator setting).
  unet/seed            the seed write-up's U-Net as written (its code is read from ``--seed`` at run time,
                       ../shared/seed by default), in the official fp32 step.
  unet/reference       organseg's U-Net, contiguous fp32, in the official fp32 step.
  unet/organseg        the step as ``organseg train`` runs it: bf16, channels-last, fused SGD.

Nothing from the official repository or the seed is stored here: both are read from the paths given. Where
``timm`` is not installed, the three helpers the official file imports from it (``DropPath``,
``to_2tuple``, ``trunc_normal_``) are provided by a stand-in module written here.

The table names the CPU and its bf16 instructions and gives each organseg row's speed-up over the official
(or seed) row of the same network. Time nothing else on the machine while it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from _common import cpu_description, run_child
from _reference import official_loss, official_sgd
from organseg.losses import DiceCELoss
from organseg.models import create_model, wants_channels_last
from organseg.runtime import tune_malloc
from organseg.training.schedule import make_sgd

ROOT = Path(__file__).resolve().parents[1]
SEED_DIR = ROOT.parent / "shared" / "seed"
CASES = (
    "swin_unet/official",
    "swin_unet/reference",
    "swin_unet/organseg",
    "unet/seed",
    "unet/reference",
    "unet/organseg",
)
BASELINE = {"swin_unet": "swin_unet/official", "unet": "unet/seed"}
NUM_CLASSES = 9
SIZE = 224


# ------------------------------------------------------------------------------------- the official pieces


class OfficialDiceLoss(nn.Module):
    """The official ``utils.DiceLoss`` behaviour: softmax, a one-hot target built class by class, one soft
    Dice per class (smooth 1e-5) and a Python float of each (``.item()``) as the trainer logs them."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=1)
        onehot = torch.cat([(target == c).unsqueeze(1) for c in range(self.n_classes)], dim=1).float()
        loss = 0.0
        for c in range(self.n_classes):
            score, tgt = probs[:, c], onehot[:, c]
            dice = 1 - (2 * torch.sum(score * tgt) + 1e-5) / (
                torch.sum(score * score) + torch.sum(tgt * tgt) + 1e-5
            )
            _ = 1.0 - dice.item()
            loss = loss + dice
        return loss / self.n_classes


def _timm_stand_in() -> None:
    """Make ``from timm.models.layers import DropPath, to_2tuple, trunc_normal_`` work without timm."""
    if importlib.util.find_spec("timm") is not None:
        return

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask.div_(keep)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, tuple | list) else (v, v)
    layers.trunc_normal_ = lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0: nn.init.trunc_normal_(
        t, mean, std, a, b
    )
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


class _RepeatToRGB(nn.Module):
    """The official ``SwinUnet`` wrapper's forward: a 1-channel slice repeated to the 3 channels of Swin-T."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.swin_unet = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(1) == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.swin_unet(x)


def official_swin(path: Path) -> nn.Module:
    """The official Swin-Unet from its own file, with the configuration of its Swin-T ACDC/Synapse runs."""
    _timm_stand_in()
    spec = importlib.util.spec_from_file_location("official_swin_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.SwinTransformerSys(
        img_size=SIZE,
        patch_size=4,
        in_chans=3,
        num_classes=NUM_CLASSES,
        embed_dim=96,
        depths=[2, 2, 2, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        drop_path_rate=0.2,
        ape=False,
        patch_norm=True,
        use_checkpoint=False,
    )
    return _RepeatToRGB(net)


def seed_unet(seed_dir: Path) -> nn.Module:
    """The seed write-up's ``Unet`` as written, its code read from the write-up (the text between ``class
    Unet`` and the Swin-Unet section)."""
    files = sorted(seed_dir.glob("*.txt"))
    if not files:
        raise SystemExit(f"bench_step: no seed write-up (*.txt) in {seed_dir}; give --seed DIR")
    # The write-up's code is indented with "? " pairs (its non-breaking spaces, lost in conversion).
    text = files[0].read_text(encoding="utf-8").replace("?", " ")
    start = text.index("class Unet(nn.Module):")
    end = text.index("\nSwin-Unet", start)
    code = "\n".join(line for line in text[start:end].splitlines() if re.match(r"^(\s|class |#|$)", line))
    namespace: dict = {"nn": nn, "torch": torch}
    exec(compile(code, str(files[0]), "exec"), namespace)
    # The write-up calls Encoder._initialize_weights without showing it; the initial weights do not change
    # the time of a step, so PyTorch's default initialisation stands in for it.
    namespace["Encoder"]._initialize_weights = lambda self: None
    return namespace["Unet"](num_classes=NUM_CLASSES)


# ------------------------------------------------------------------------------------------------- one case


def make_step(case: str, spec: dict):
    """The model and the step closure of one case."""
    network, kind = case.split("/")
    torch.manual_seed(0)
    x = torch.rand(4, 1, SIZE, SIZE)
    y = torch.randint(0, NUM_CLASSES, (4, SIZE, SIZE))
    if kind == "organseg":
        tune_malloc()
        args = {"img_size": SIZE} if network == "swin_unet" else {}
        model = create_model(network, num_classes=NUM_CLASSES, **args)
        if wants_channels_last(model, "auto"):
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        model.train()
        loss_fn = DiceCELoss(NUM_CLASSES, 0.4, 0.6)
        opt = make_sgd(model.parameters(), 0.01, 0.9, 1e-4)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            loss, _, _ = loss_fn.components(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()

        return step

    if case == "swin_unet/official":
        model = official_swin(Path(spec["official_swin"]))
    elif case == "unet/seed":
        model = seed_unet(Path(spec["seed"]))
    elif network == "swin_unet":
        model = create_model("swin_unet", num_classes=NUM_CLASSES, img_size=SIZE, attn_impl="reference")
    else:
        model = create_model("unet", num_classes=NUM_CLASSES)
    model.train()
    ce = nn.CrossEntropyLoss()
    dice = OfficialDiceLoss(NUM_CLASSES) if kind in ("official", "seed") else None
    ref_loss = official_loss(NUM_CLASSES)
    opt = official_sgd(model, 0.01)

    def official_step() -> None:
        out = model(x)
        loss = 0.4 * ce(out, y) + 0.6 * dice(out, y) if dice is not None else ref_loss(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    return official_step


def measure(case: str, spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    step = make_step(case, spec)
    for _ in range(spec["warmup"]):
        step()
    times, cpu = [], []
    for _ in range(spec["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "case": case,
        "median": statistics.median(times),
        "min": min(times),
        "cpu": statistics.median(cpu),
    }


def step_flops(network: str) -> float:
    """FLOPs of one training step (forward and backward, batch 4; a multiply-add is 2), as
    ``torch.utils.flop_counter`` counts them for organseg's network (as in the official one)."""
    args = {"img_size": SIZE} if network == "swin_unet" else {}
    model = create_model(network, num_classes=NUM_CLASSES, **args).train()
    x = torch.rand(4, 1, SIZE, SIZE)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).float().sum().backward()
    return float(counter.get_total_flops())


def matmul_rate(dtype: torch.dtype, threads: int, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matrix product in ``dtype``: what this CPU's kernels reach at best."""
    torch.set_num_threads(threads)
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def roofline(spec: dict) -> dict:
    """The step FLOPs of both networks and the matrix-product rates in fp32 and bf16 (one process)."""
    flops = {net: step_flops(net) for net in ("swin_unet", "unet")}
    rates = {
        name: matmul_rate(dt, spec["threads"])
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    return {"case": "roofline", "flops": flops, "rates": rates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--official-swin", type=Path, help="the official network file (else its row is skipped)")
    p.add_argument("--seed", type=Path, default=SEED_DIR, help="folder of the seed write-up (../shared/seed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="run the case list this many times, interleaved")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--_one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._one:
        one = json.loads(args._one)
        print(json.dumps(roofline(one) if one["case"] == "roofline" else measure(one["case"], one)))
        return 0

    cases = [c for c in args.cases if c != "swin_unet/official" or args.official_swin]
    if "swin_unet/official" in args.cases and not args.official_swin:
        print("bench_step: swin_unet/official skipped: no --official-swin file given", file=sys.stderr)
    spec = {
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "official_swin": str(args.official_swin) if args.official_swin else None,
        "seed": str(args.seed),
    }
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            r = run_child(__file__, "--_one", {**spec, "case": case})
            runs[case].append(r)
            shown = f"{r['median']:.3f} s" if "median" in r else r["error"]
            print(f"  {case}: {shown}", file=sys.stderr, flush=True)
    cpu = cpu_description()
    flags = ", ".join(cpu["flags"]) or "none"
    print(
        f"\n{cpu['model']} ({cpu['cores']} logical cores; bf16-relevant flags: {flags}); "
        f"torch {torch.__version__}, {args.threads} threads; batch 4, {SIZE}², {NUM_CLASSES} classes; "
        f"median of {args.repeats} steps after {args.warmup} warm-up, per process; "
        f"best of {args.rounds} round(s)\n"
    )
    print("| case | s per step (median) | min | CPU s | speed-up over official/seed |\n|---|---|---|---|---|")
    best = {
        c: min((r for r in rs if "median" in r), key=lambda r: r["median"], default=None)
        for c, rs in runs.items()
    }
    for case in cases:
        r = best[case]
        if r is None:
            print(f"| {case} | failed: {runs[case][-1].get('error')} | | | |")
            continue
        base = best.get(BASELINE[case.split("/")[0]])
        ratio = (
            f"{base['median'] / r['median']:.2f}x" if base and case != BASELINE[case.split("/")[0]] else ""
        )
        print(f"| {case} | {r['median']:.3f} | {r['min']:.3f} | {r['cpu']:.2f} | {ratio} |")
    roof = run_child(__file__, "--_one", {**spec, "case": "roofline"}, failed="bench_step: roofline failed")
    rates = roof["rates"]
    print(
        f"\nCeiling: a matrix product of 2048² runs at {rates['fp32'] / 1e9:.0f} GFLOP/s in fp32 and "
        f"{rates['bf16'] / 1e9:.0f} GFLOP/s in bf16 here ({args.threads} threads). "
        "A step whose every FLOP ran at the bf16 rate would take:\n"
    )
    print(
        "| network | GFLOP per step | at the bf16 matmul rate | organseg measured | its share of that rate "
        "| speed-up ceiling over official/seed |"
    )
    print("|---|---|---|---|---|---|")
    for net, flops in roof["flops"].items():
        floor = flops / rates["bf16"]
        ours, base = best.get(f"{net}/organseg"), best.get(BASELINE[net])
        measured = f"{ours['median']:.3f} s" if ours else ""
        share = f"{floor / ours['median']:.0%}" if ours else ""
        ceiling = f"{base['median'] / floor:.2f}x" if base else ""
        print(f"| {net} | {flops / 1e9:.0f} | {floor:.3f} s | {measured} | {share} | {ceiling} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "spec": spec, "runs": runs, "roofline": roof}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
