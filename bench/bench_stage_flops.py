"""The arithmetic of each stage's step, as a multiple of one classifier forward+backward on the same batch.

``bench/bench_cost.py`` says how many classifier passes each step costs in
time; this benchmark says how many it costs in arithmetic, so the gap between
the two is the overhead a change could remove, and the arithmetic itself is
what no change short of a different attack can. It runs the same cases as
``bench_cost.py`` (the real engine, informed, a few steps of every phase;
then the control's training step and a reference model's epoch) inside
``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix products
and convolutions of the forward and every backward pass, double backward
included (elementwise work is not counted). Counts do not depend on the
machine or its load: one step a stage is enough.

    python bench/bench_stage_flops.py                           # mlp, cnn, fashion-cnn (when cached), 32×32 / 28×28
    python bench/bench_stage_flops.py --models resnet18 --sizes 64,224
    python bench/bench_stage_flops.py --pretrain-split --models mlp,cnn,resnet18 --sizes 64,224
    python bench/bench_stage_flops.py --rates --models mlp,cnn,resnet18 --sizes 64,128,224

``--rates`` prints instead each classifier's measured rate (counted GFLOP of one
forward+backward over its median seconds, one thread, batches of 20 and 80):
what the planned-work line's nominal 30 GFLOP/s a thread stands for.
``--pretrain-split`` prints instead the pre-training step's parts (the
encoder's and the generator's GFLOP on one batch of prior images) beside the
classifier's forward+backward on as many images: that stage has no
classifier pass of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_cost import (MEMBERS_PER_CLASS, STAGES, Case, adam_training, cases,  # noqa: E402
                              forward_backward, members)
from leakaudit.inversion import InversionCallbacks, InversionConfig, invert  # noqa: E402
from leakaudit.inversion.generator import ConditionalGenerator, one_hot  # noqa: E402
from leakaudit.inversion.informed import Encoder  # noqa: E402
from leakaudit.inversion.scale import large_input  # noqa: E402
from leakaudit.inversion.stationarity import differentiable  # noqa: E402
from leakaudit.model.target import TargetModel  # noqa: E402
from leakaudit.power.control import Recipe, train_copy  # noqa: E402

STEPS = 2  # counted steps a stage (one more runs first and is dropped, as in bench_cost.py)


class StepFlops:
    """FLOPs counted between consecutive steps of each phase, read from one counter that sees the whole run."""

    def __init__(self, counter: FlopCounterMode) -> None:
        self.counter = counter
        self.phase = ""
        self.last = 0
        self.first = True
        self.steps: dict[str, list[int]] = {}

    def on_phase(self, name: str) -> None:
        self.phase, self.last, self.first = name, self.counter.get_total_flops(), True

    def on_step(self, step: int, planned: int, losses: dict[str, float]) -> None:
        at = self.counter.get_total_flops()
        if not self.first:  # the first step of a phase also holds its set-up (the candidate pool)
            self.steps.setdefault(self.phase, []).append(at - self.last)
        self.first, self.last = False, at

    def per_step(self, phase: str) -> float | None:
        seen = self.steps.get(phase)
        return sum(seen) / len(seen) if seen else None


def counted(work: Callable[[], object]) -> int:
    """FLOPs of ``work()``, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def classifier_pass(target: TargetModel, batch: int) -> int:
    """FLOPs of one cross-entropy forward+backward to every weight on ``batch`` images (bench_cost's floor)."""
    x = torch.rand(batch, *target.input_shape)
    y = torch.arange(batch) % target.num_classes
    params = target.parameters()
    with differentiable(params):
        flops = counted(lambda: F.cross_entropy(target.logits(x), y).backward(inputs=params))
    for p in params:
        p.grad = None
    return flops


def engine_flops(target: TargetModel, case: Case) -> dict[str, float | None]:
    """FLOPs of one step of each engine phase (informed: pretrain, finetune, refine, stationarity)."""
    n = STEPS + 1
    config = InversionConfig.for_effort("quick", pretrain_steps=n, finetune_steps=n, refine_steps=n, kkt_steps=n,
                                        pool_per_class=2, threads=1, seed=0)
    with FlopCounterMode(display=False) as counter:
        steps = StepFlops(counter)
        invert(target, config, prior=case.prior, callbacks=InversionCallbacks(on_step=steps.on_step,
                                                                              on_phase=steps.on_phase),
               should_stop=lambda: False)
    return {stage: steps.per_step(stage) for stage in STAGES[:4]}


def training_flops(case: Case, target: TargetModel) -> dict[str, float | None]:
    """FLOPs of one step of the control's training and of one reference epoch (Adam, full batch of members)."""
    x, y = members(case, 2, target.device, target.num_classes)
    check = counted(lambda: train_copy(case.module, x, y, Recipe(max_steps=0, loss_bound=-1.0), 0, lambda: False))
    run = counted(lambda: train_copy(case.module, x, y, Recipe(max_steps=STEPS, loss_bound=-1.0), 0, lambda: False))
    case.module.train()
    reference = counted(lambda: adam_training(case.module, x, y, 1)) / 2  # one untimed step and one step
    case.module.eval()
    return {"control": (run - 2 * check) / STEPS, "reference": reference}


def pretrain_flops(case: Case, k: int = 10) -> tuple[float, float, float]:
    """GFLOP of one pre-training step's parts, forward+backward on ``pretrain_batch`` prior images (counted by
    ``torch.utils.flop_counter``): the encoder, the generator, and the classifier's own pass on as many images.

    The step has no classifier pass; the third figure is what its ratio is measured against.
    """
    config = InversionConfig.for_effort("quick")
    batch = config.pretrain_batch
    gen = ConditionalGenerator(case.shape, k, latent_dim=config.latent_dim, embed_dim=config.embed_dim,
                               width=config.width, conditioning=config.conditioning, dropout=config.dropout,
                               gen_scale=config.gen_scale, min_gen_side=config.min_gen_side)
    at_gen = large_input(case.shape)  # large inputs: the prior is fitted at the generation size (scale.py)
    side = gen.gen_size if at_gen else case.shape[1:]
    enc = Encoder((case.shape[0], *side), k, config.latent_dim)
    x = torch.rand(batch, case.shape[0], *side)
    y = torch.arange(batch) % k

    encoder = counted(lambda: enc(x, y)[0].sum().backward()) / 1e9
    draw = gen.low_res if at_gen else gen
    generator = counted(lambda: draw(torch.randn(batch, config.latent_dim), one_hot(y, k)).sum().backward()) / 1e9
    module = case.module.to("cpu").train(False)
    images = torch.rand(batch, *case.shape)
    with differentiable(list(module.parameters())):
        classifier = counted(lambda: F.cross_entropy(module(images), y).backward()) / 1e9
    return encoder, generator, classifier


def row(case: Case) -> str:
    module = case.module.to("cpu").eval()
    target = TargetModel.from_module(module, case.shape, 10, device=torch.device("cpu"))
    config = InversionConfig.for_effort("quick")
    k = target.num_classes
    batches = {"pretrain": config.pretrain_batch, "finetune": config.batch_per_class * k,
               "refine": config.candidates_per_class * k, "stationarity": config.candidates_per_class * k,
               "control": MEMBERS_PER_CLASS * k, "reference": MEMBERS_PER_CLASS * k}
    floor = {b: classifier_pass(target, b) for b in sorted(set(batches.values()))}
    flops = {**engine_flops(target, case), **training_flops(case, target)}
    cells = []
    for stage in STAGES:
        got = flops[stage]
        cells.append("—" if got is None else f"{got / floor[batches[stage]]:.2f}× ({got / 1e9:.2f})")
    floors = ", ".join(f"{f / 1e9:.2f} ({b})" for b, f in floor.items())
    return f"| {case.name} | {case.shape[-1]}×{case.shape[-1]} | {floors} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,fashion-cnn")
    parser.add_argument("--sizes", default="64,224", help="ResNet-18 input sides")
    parser.add_argument("--pretrain-split", action="store_true",
                        help="only: the pre-training step's arithmetic (encoder, generator) against the classifier's")
    parser.add_argument("--rates", action="store_true",
                        help="only: each classifier's forward+backward rate in GFLOP/s, one thread")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.rates:
        print("| model | input | batch | GFLOP | seconds | GFLOP/s |\n|---|---|---|---|---|---|")
        for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
            target = TargetModel.from_module(case.module.to("cpu").eval(), case.shape, 10, device=torch.device("cpu"))
            for batch in (20, 80):
                flops, seconds = classifier_pass(target, batch), forward_backward(target, batch, reps=3)
                print(f"| {case.name} | {case.shape[-1]}×{case.shape[-1]} | {batch} | {flops / 1e9:.1f} | "
                      f"{seconds:.3f} | {flops / seconds / 1e9:.0f} |", flush=True)
        return 0
    if args.pretrain_split:
        print("| model | input | encoder GFLOP | generator GFLOP | classifier F+B GFLOP (same batch) | "
              "step / classifier |\n|---|---|---|---|---|---|")
        for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
            enc, gen, clf = pretrain_flops(case)
            print(f"| {case.name} | {case.shape[-1]}×{case.shape[-1]} | {enc:.2f} | {gen:.2f} | {clf:.2f} | "
                  f"{(enc + gen) / clf:.2f}× |", flush=True)
        return 0
    print("each cell: one stage step's counted FLOPs / one classifier forward+backward on that stage's batch "
          "(GFLOP of the step)")
    print("| model | input | F+B GFLOP (batch) | " + " | ".join(STAGES) + " |\n|" + "---|" * (3 + len(STAGES)))
    for case in cases(args.models.split(","), [int(s) for s in args.sizes.split(",")]):
        print(row(case), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
