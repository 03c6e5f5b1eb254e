"""The attack's cost per stage, as a multiple of one classifier forward+backward on the same batch.

The floor of the attack is its number of classifier forward+backward passes;
this benchmark says how far each stage sits above it. For each model and
input size it runs the real engine (``invert``, informed, a few steps of every
phase) and times the interval between consecutive steps of each phase
(the first step of a phase is dropped: it holds the phase's set-up, e.g. the
candidate pool), then the positive control's training step and a reference
model's epoch (a plain full-batch loop over the members, the way the control
trains: the tree has no separate reference-model trainer for membership).
Each is divided by one forward+backward of the classifier (cross-entropy,
gradient to every weight) on a batch of the size that stage feeds the
classifier, measured in the same process at the same thread count. Ratios,
not seconds, are what compare across runs on a shared machine.

Stages and their classifier batch: pretrain (the VAE on the prior: no
classifier pass: its ratio is against a batch of pretrain_batch), finetune
(batch_per_class × K generated images, plus the anchor), refine
(candidates_per_class × K), stationarity (the same, a double backward; only
where it runs: dense first layer, no BatchNorm), control (the members, full
batch), reference epoch (the members).

    python bench/bench_cost.py                                  # every model and size, 3 steps a stage, 1 thread
    python bench/bench_cost.py --models resnet18 --sizes 224 --steps 3 --threads 1
    python bench/bench_cost.py --models mlp,cnn --script        # TorchScript-compiled classifiers

Models: ``mlp`` (the digits MLP, 32×32), ``cnn`` (a small CNN, 32×32),
``fashion-cnn`` (the Fashion-MNIST CNN, 28×28; skipped with a line when the
real-data cache is absent), ``resnet18`` (torchvision, random weights, 10
classes, 3 channels, at each of ``--sizes``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakaudit.inversion import InversionCallbacks, InversionConfig, invert  # noqa: E402
from leakaudit.model.target import TargetModel  # noqa: E402
from leakaudit.power.control import Recipe, train_copy  # noqa: E402
from leakaudit.zoo import (ReferenceSpec, bundled_images, build_classifier, real_images,  # noqa: E402
                                 realdata_cache)

STAGES = ("pretrain", "finetune", "refine", "stationarity", "control", "reference")
MEMBERS_PER_CLASS = 4
PRIOR_PER_CLASS = 8


@dataclass(frozen=True)
class Case:
    """One classifier at one input size."""

    name: str
    module: nn.Module
    shape: tuple[int, int, int]
    prior: tuple[torch.Tensor, torch.Tensor]  # uint8 images, labels (resized by the engine)


@dataclass(frozen=True)
class Row:
    name: str
    side: int
    floor: dict[int, float]  # classifier batch → seconds of one forward+backward
    seconds: dict[str, float | None]  # stage → seconds per step (None: the stage does not run here)
    batches: dict[str, int]


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The prior an audit of 8 holdout images per class would hand the attack: 8 digits per class."""
    images, labels, _ = bundled_images("digits", 32)
    return _per_class(images, labels)


def _per_class(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:PRIOR_PER_CLASS] for c in range(10)])
    return images[keep], labels[keep]


def cases(models: list[str], sizes: list[int]) -> list[Case]:
    """The classifiers asked for, random weights from seed 0 (their cost does not depend on training)."""
    out: list[Case] = []
    torch.manual_seed(0)
    for model in models:
        if model in ("mlp", "cnn"):
            spec = ReferenceSpec(name=model, dataset="digits", arch=model)
            out.append(Case(f"digits-{model}", build_classifier(spec, 1, 10), (1, 32, 32), _digits()))
        elif model == "fashion-cnn":
            if not (realdata_cache() / "fashion-mnist.npz").exists():
                print(f"fashion-cnn skipped: fashion-mnist is not cached at {realdata_cache()} "
                      "(python -m bench.realdata fills it)")
                continue
            images, labels, _ = real_images("fashion-mnist", 28)
            spec = ReferenceSpec(name=model, dataset="fashion-mnist", arch="cnn", size=28)
            out.append(Case("fashion-cnn", build_classifier(spec, 1, 10), (1, 28, 28), _per_class(images, labels)))
        elif model == "resnet18":
            spec = ReferenceSpec(name=model, dataset="digits", arch="resnet18")
            for side in sizes:
                out.append(Case("resnet18", build_classifier(spec, 3, 10), (3, side, side), _digits()))
        else:
            raise SystemExit(f"unknown model {model!r}: mlp, cnn, fashion-cnn, resnet18")
    return out


def forward_backward(target: TargetModel, batch: int, reps: int, warm: bool = True) -> float:
    """Median seconds of one cross-entropy forward+backward to every weight, on ``batch`` images."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *target.input_shape, generator=gen)
    y = torch.arange(batch) % target.num_classes
    params = target.parameters()
    for p in params:
        p.requires_grad_(True)
    times = []
    try:
        for _ in range(reps + int(warm)):  # the first one warms up
            began = time.perf_counter()
            F.cross_entropy(target.logits(x), y).backward(inputs=params)
            times.append(time.perf_counter() - began)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return statistics.median(times[int(warm):])


class StepTimes:
    """Seconds between consecutive steps of each phase (the first step of a phase, its set-up, dropped)."""

    def __init__(self) -> None:
        self.phase = ""
        self.last = 0.0
        self.first = True
        self.intervals: dict[str, list[float]] = {}

    def on_phase(self, name: str) -> None:
        self.phase, self.last, self.first = name, time.perf_counter(), True

    def on_step(self, step: int, planned: int, losses: dict[str, float]) -> None:
        now = time.perf_counter()
        if not self.first:
            self.intervals.setdefault(self.phase, []).append(now - self.last)
        self.first, self.last = False, now

    def per_step(self, phase: str) -> float | None:
        seen = self.intervals.get(phase)
        return statistics.median(seen) if seen else None


def engine_steps(target: TargetModel, case: Case, steps: int, threads: int) -> StepTimes:
    """Run the informed engine for ``steps`` steps of every phase (+1, dropped) and time its steps."""
    n = steps + 1
    config = InversionConfig.for_effort("quick", pretrain_steps=n, finetune_steps=n, refine_steps=n, kkt_steps=n,
                                        pool_per_class=2, threads=threads, seed=0)
    times = StepTimes()
    callbacks = InversionCallbacks(on_step=times.on_step, on_phase=times.on_phase)
    invert(target, config, prior=case.prior, callbacks=callbacks, should_stop=lambda: False)  # as an audit asks
    return times


def control_step(case: Case, target: TargetModel, steps: int) -> float:
    """Seconds per step of the control's full-batch training on the members (its convergence checks, one every
    10 steps in an audit, left out)."""
    k = target.num_classes
    x = torch.rand(MEMBERS_PER_CLASS * k, *case.shape, generator=torch.Generator().manual_seed(2))
    y = torch.arange(x.shape[0]) % k
    def run(n: int) -> float:
        began = time.perf_counter()
        train_copy(case.module, x, y, Recipe(max_steps=n, loss_bound=-1.0), 0, lambda: False)
        return time.perf_counter() - began

    check = run(0)  # a run of no step is one convergence check (no-gradient pass over the members)
    return max(0.0, run(steps) - 2 * check) / steps  # n steps cost n steps and two checks


def reference_epoch(case: Case, target: TargetModel, epochs: int) -> float:
    """Seconds of one epoch of a reference model on the members (batch = every member, Adam)."""
    k = target.num_classes
    x = torch.rand(MEMBERS_PER_CLASS * k, *case.shape, generator=torch.Generator().manual_seed(3))
    y = torch.arange(x.shape[0]) % k
    module = case.module
    params = list(module.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-4)
    module.train()
    times = []
    for _ in range(epochs + 1):
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - began)
    module.eval()
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return statistics.median(times[1:])


def measure(case: Case, steps: int, threads: int, script: bool, reps: int) -> Row:
    module = torch.jit.script(case.module) if script else case.module
    target = TargetModel.from_module(module, case.shape, 10)
    config = InversionConfig.for_effort("quick")
    k = target.num_classes
    batches = {"pretrain": config.pretrain_batch, "finetune": config.batch_per_class * k,
               "refine": config.candidates_per_class * k, "stationarity": config.candidates_per_class * k,
               "control": MEMBERS_PER_CLASS * k, "reference": MEMBERS_PER_CLASS * k}
    sizes = sorted(set(batches.values()))
    floor = {b: forward_backward(target, b, reps=reps, warm=i == 0) for i, b in enumerate(sizes)}
    times = engine_steps(target, case, steps, threads)
    seconds: dict[str, float | None] = {stage: times.per_step(stage) for stage in STAGES[:4]}
    seconds["control"] = control_step(case, target, steps)
    seconds["reference"] = reference_epoch(case, target, steps)
    return Row(case.name, case.shape[-1], floor, seconds, batches)


def compare_threads(case: Case, batch: int, rounds: int) -> tuple[float, float]:
    """Median seconds of one forward+backward at 1 and at 2 threads, interleaved so both see the same load."""
    target = TargetModel.from_module(case.module, case.shape, 10)
    seen: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seen[threads].append(forward_backward(target, batch, reps=1, warm=False))
    return statistics.median(seen[1]), statistics.median(seen[2])


def table(rows: list[Row]) -> str:
    head = "| model | input | F+B s (batch) | " + " | ".join(STAGES) + " |"
    lines = [head, "|" + "---|" * (3 + len(STAGES))]
    for row in rows:
        floors = ", ".join(f"{s:.3f} ({b})" for b, s in row.floor.items())
        cells = []
        for stage in STAGES:
            sec = row.seconds[stage]
            cells.append("—" if sec is None else f"{sec / row.floor[row.batches[stage]]:.2f}× ({sec:.3f} s)")
        lines.append(f"| {row.name} | {row.side}×{row.side} | {floors} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,fashion-cnn,resnet18")
    parser.add_argument("--sizes", default="64,128,224", help="ResNet-18 input sides")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage (one more runs first)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2, help="forward+backward passes timed per batch size")
    parser.add_argument("--script", action="store_true", help="TorchScript-compile the classifiers")
    parser.add_argument("--compare-threads", action="store_true",
                        help="only: one forward+backward of 20 images at 1 vs 2 threads per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compare_threads:
        print("| model | input | 1 thread s | 2 threads s | 2 threads / 1 |\n|---|---|---|---|---|")
        for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
            one, two = compare_threads(case, 20, rounds=args.reps + 1)
            print(f"| {case.name} | {case.shape[-1]}×{case.shape[-1]} | {one:.3f} | {two:.3f} | {two / one:.2f} |",
                  flush=True)
        return 0
    rows = []
    for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
        began = time.perf_counter()
        rows.append(measure(case, args.steps, args.threads, args.script, args.reps))
        print(f"{case.name} {case.shape[-1]}×{case.shape[-1]}: measured in {time.perf_counter() - began:.0f} s",
              flush=True)
    print(f"threads {args.threads}, {args.steps} steps a stage; each cell: stage step / one classifier "
          "forward+backward on that stage's batch (seconds per step)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
