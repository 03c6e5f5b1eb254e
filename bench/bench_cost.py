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
    python bench/bench_cost.py --device cuda --models mlp,cnn,resnet18 --sizes 224   # on a GPU (wall clock)
    python bench/bench_cost.py --models mlp,cnn --steps 10 --rounds 5   # each cell: median ratio of 5 rounds, range
    python bench/bench_cost.py --adam --models mlp,cnn                  # Adam's step against a forward+backward

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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakaudit.inversion import InversionCallbacks, InversionConfig, invert  # noqa: E402
from leakaudit.inversion.stationarity import differentiable  # noqa: E402
from leakaudit.model.target import TargetModel  # noqa: E402
from leakaudit.power.control import Recipe, train_copy  # noqa: E402
from leakaudit.zoo import (ReferenceSpec, bundled_images, build_classifier, real_images,  # noqa: E402
                                 realdata_cache)

STAGES = ("pretrain", "finetune", "refine", "stationarity", "control", "reference")
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
_clock: dict[str, Any] = {"now": time.process_time, "device": torch.device("cpu")}


def now() -> float:
    """The measuring clock: the process's CPU seconds by default (``--clock``).

    On a shared machine the wall clock charges a step with whatever else ran
    meanwhile, and the floor and the stages are timed at different moments, so
    their ratio moved by 2× between runs; CPU time counts this process's own work.
    With ``--threads`` above 1 it sums the threads' seconds: use ``--clock wall``
    to see what a second thread buys. On a GPU (``--device cuda``) the wall
    clock, read after the device has finished the work queued so far.
    """
    if _clock["device"].type == "cuda":
        torch.cuda.synchronize(_clock["device"])
    return float(_clock["now"]())
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


FLOOR_SECONDS = 0.5  # each timing of the floor keeps passing until it has spent this much, at least ``reps`` passes


def forward_backward(target: TargetModel, batch: int, reps: int, warm: bool = True) -> float:
    """Median seconds of one cross-entropy forward+backward to every weight, on ``batch`` images."""
    return statistics.median(floor_passes(target, batch, reps, warm))


def floor_passes(target: TargetModel, batch: int, reps: int, warm: bool = True,
                 least_seconds: float = 0.0) -> list[float]:
    """Seconds of each of at least ``reps`` forward+backward passes on ``batch`` images, more until they add up to
    ``least_seconds`` (a pass of milliseconds timed a few times is at the mercy of one interruption)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *target.input_shape, generator=gen).to(target.device)
    y = (torch.arange(batch) % target.num_classes).to(target.device)
    params = target.parameters()
    times: list[float] = []
    with differentiable(params):
        if warm:  # the first pass warms up, untimed
            F.cross_entropy(target.logits(x), y).backward(inputs=params)
        while len(times) < reps or sum(times) < least_seconds:
            began = now()
            F.cross_entropy(target.logits(x), y).backward(inputs=params)
            times.append(now() - began)
    for p in params:
        p.grad = None
    return times


class StepTimes:
    """Seconds between consecutive steps of each phase (the first step of a phase, its set-up, dropped)."""

    def __init__(self) -> None:
        self.phase = ""
        self.last = 0.0
        self.first = True
        self.intervals: dict[str, list[float]] = {}

    def on_phase(self, name: str) -> None:
        self.phase, self.last, self.first = name, now(), True

    def on_step(self, step: int, planned: int, losses: dict[str, float]) -> None:
        at = now()
        if not self.first:
            self.intervals.setdefault(self.phase, []).append(at - self.last)
        self.first, self.last = False, at

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


def members(case: Case, seed: int, device: torch.device, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images standing for the members (MEMBERS_PER_CLASS a class) and their labels, on ``device``."""
    x = torch.rand(MEMBERS_PER_CLASS * k, *case.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    return x, (torch.arange(x.shape[0]) % k).to(device)


def adam_training(module: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                  fused: bool = False) -> list[tuple[float, float]]:
    """Full-batch Adam on (x, y), after one untimed step: each step's seconds of forward+backward and of the update.

    The module's weights are trainable for the duration only, and left without gradients.
    """
    params = list(module.parameters())
    opt = torch.optim.Adam(params, lr=1e-4, **({"fused": True} if fused else {}))
    seen = []
    with differentiable(params):
        for i in range(steps + 1):
            began = now()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(module(x), y).backward()
            middle = now()
            opt.step()
            if i:
                seen.append((middle - began, now() - middle))
        opt.zero_grad(set_to_none=True)
    return seen


def control_step(case: Case, target: TargetModel, steps: int) -> float:
    """Seconds per step of the control's full-batch training on the members (its convergence checks, one every
    10 steps in an audit, left out)."""
    x, y = members(case, 2, target.device, target.num_classes)
    def run(n: int) -> float:
        began = now()
        train_copy(case.module, x, y, Recipe(max_steps=n, loss_bound=-1.0), 0, lambda: False)
        return now() - began

    check = run(0)  # a run of no step is one convergence check (no-gradient pass over the members)
    return max(0.0, run(steps) - 2 * check) / steps  # n steps cost n steps and two checks


def reference_epoch(case: Case, target: TargetModel, epochs: int) -> float:
    """Seconds of one epoch of a reference model on the members (batch = every member, Adam)."""
    x, y = members(case, 3, target.device, target.num_classes)
    case.module.train()
    steps = adam_training(case.module, x, y, epochs)
    case.module.eval()
    return statistics.median(fb + update for fb, update in steps)


def measure(case: Case, steps: int, threads: int, script: bool, reps: int, device: torch.device) -> Row:
    case.module.to(device)  # the control's and the reference's training use the module itself
    module = torch.jit.script(case.module) if script else case.module
    target = TargetModel.from_module(module, case.shape, 10, device=device)
    config = InversionConfig.for_effort("quick")
    k = target.num_classes
    batches = {"pretrain": config.pretrain_batch, "finetune": config.batch_per_class * k,
               "refine": config.candidates_per_class * k, "stationarity": config.candidates_per_class * k,
               "control": MEMBERS_PER_CLASS * k, "reference": MEMBERS_PER_CLASS * k}
    sizes = sorted(set(batches.values()))
    # the floor is timed before and after the stages, and its median taken over both: a machine that sped up or
    # slowed down during the stages moves both sides of each ratio alike
    passes = {b: floor_passes(target, b, reps, i == 0, FLOOR_SECONDS) for i, b in enumerate(sizes)}
    times = engine_steps(target, case, steps, threads)
    seconds: dict[str, float | None] = {stage: times.per_step(stage) for stage in STAGES[:4]}
    seconds["control"] = control_step(case, target, steps)
    seconds["reference"] = reference_epoch(case, target, steps)
    for b in sizes:
        passes[b] += floor_passes(target, b, reps, False, FLOOR_SECONDS)
    floor = {b: statistics.median(passes[b]) for b in sizes}
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


def adam_steps(case: Case, rounds: int = 3, steps: int = 20) -> dict[str, tuple[float, float]]:
    """Seconds of one forward+backward on the members and of one Adam step, with torch's default Adam on the CPU
    (one weight tensor at a time) and with ``fused=True``: median of ``rounds`` rounds of ``steps`` steps."""
    module = case.module.to("cpu").train(False)
    x, y = members(case, 4, torch.device("cpu"))
    seen: dict[str, list[tuple[float, float]]] = {"default": [], "fused": []}
    for _ in range(rounds):
        for mode in seen:
            timed = adam_training(module, x, y, steps, fused=mode == "fused")
            seen[mode].append((statistics.median(a for a, _ in timed), statistics.median(b for _, b in timed)))
    return {mode: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for mode, v in seen.items()}


def cell(rounds: list[Row], stage: str) -> str:
    """One stage's ratio: ``r× (s s)`` from one round; the median and the range ``r× (lo–hi×)`` from several."""
    seen = [(sec / row.floor[row.batches[stage]], sec) for row in rounds if (sec := row.seconds[stage]) is not None]
    if not seen:
        return "—"
    ratio, sec = statistics.median(r for r, _ in seen), statistics.median(t for _, t in seen)
    if len(seen) == 1:
        return f"{ratio:.2f}× ({sec:.3f} s)"
    return f"{ratio:.2f}× ({min(r for r, _ in seen):.2f}–{max(r for r, _ in seen):.2f}×, {sec:.3f} s)"


def table(cases_rounds: list[list[Row]]) -> str:
    head = "| model | input | F+B s (batch) | " + " | ".join(STAGES) + " |"
    lines = [head, "|" + "---|" * (3 + len(STAGES))]
    for rounds in cases_rounds:
        first = rounds[0]
        floors = ", ".join(f"{statistics.median(r.floor[b] for r in rounds):.3f} ({b})" for b in first.floor)
        cells = [cell(rounds, stage) for stage in STAGES]
        lines.append(f"| {first.name} | {first.side}×{first.side} | {floors} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,fashion-cnn,resnet18")
    parser.add_argument("--sizes", default="64,128,224", help="ResNet-18 input sides")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage (one more runs first)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where every stage runs")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the process's CPU seconds (default; steady under load); wall: elapsed seconds")
    parser.add_argument("--reps", type=int, default=2, help="forward+backward passes timed per batch size (at least)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every case this many times: each cell the median ratio and its range")
    parser.add_argument("--script", action="store_true", help="TorchScript-compile the classifiers")
    parser.add_argument("--adam", action="store_true",
                        help="only: one Adam step (torch's default, and fused) against a forward+backward")
    parser.add_argument("--compare-threads", action="store_true",
                        help="only: one forward+backward of 20 images at 1 vs 2 threads per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        args.clock = "wall"  # the host's CPU seconds say nothing of the device's work
    _clock["now"] = CLOCKS["wall" if args.compare_threads else args.clock]  # threads compare by elapsed time
    _clock["device"] = device
    if args.compare_threads:
        print("| model | input | 1 thread s | 2 threads s | 2 threads / 1 |\n|---|---|---|---|---|")
        for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
            one, two = compare_threads(case, 20, rounds=args.reps + 1)
            print(f"| {case.name} | {case.shape[-1]}×{case.shape[-1]} | {one:.3f} | {two:.3f} | {two / one:.2f} |",
                  flush=True)
        return 0
    if args.adam:
        print("| model | weights | F+B s (members) | Adam step, default | Adam step, fused |\n|---|---|---|---|---|")
        for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
            got = adam_steps(case)
            fb, default, fused = got["default"][0], got["default"][1], got["fused"][1]
            count = sum(p.numel() for p in case.module.parameters()) / 1e6
            print(f"| {case.name} | {count:.2f} M | {fb:.4f} | {default:.4f} s ({default / fb:.2f}×) "
                  f"| {fused:.4f} s ({fused / fb:.2f}×) |", flush=True)
        return 0
    rows = []
    for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
        began = time.perf_counter()
        rows.append([measure(case, args.steps, args.threads, args.script, args.reps, device)
                     for _ in range(args.rounds)])
        print(f"{case.name} {case.shape[-1]}×{case.shape[-1]}: measured in {time.perf_counter() - began:.0f} s",
              flush=True)
    spread = f", median of {args.rounds} rounds (their range)" if args.rounds > 1 else ""
    print(f"{device}, threads {args.threads}, {args.clock} clock, {args.steps} steps a stage{spread}; each cell: stage "
          "step / one classifier forward+backward on that stage's batch (seconds per step)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
