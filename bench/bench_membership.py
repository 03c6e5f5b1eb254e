"""Membership inference against R reference models on the references: each attack's AUC and TPR at low FPR.

For each reference (a target trained here on real images by a known recipe),
trains R reference models once with the recipe given and once with the
default (guessed) recipe, and prints, for R = 0, 1, 2, 4, 8 (the first R of
the same models), each attack's AUC and TPR at 1 % and 0.1 % FPR, the recipe
check, and the seconds per reference model. ``--throughput`` times the
reference-model training loop against a plain PyTorch loop of the same recipe,
side by side; ``--head`` audits a fine-tuned head with R = 64 reference heads.

    python bench/bench_membership.py --reference fmnist-50            # ~4 min on 2 cores
    python bench/bench_membership.py --reference fmnist-500 --models 8 --default-models 4 --threads 1
    python bench/bench_membership.py --reference digits-robust
    python bench/bench_membership.py --throughput
    python bench/bench_membership.py --head
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakaudit.confine import operations  # noqa: E402
from leakaudit.confine.operations import ReferenceRequest  # noqa: E402
from leakaudit.inversion import InversionCallbacks  # noqa: E402
from leakaudit.membership.splits import draw_splits  # noqa: E402
from leakaudit.confine.session import InProcessSession  # noqa: E402
from leakaudit.membership.recipe import DEFAULT_RECIPE, TrainingRecipe  # noqa: E402
from leakaudit.record.membership import AttackResult  # noqa: E402
from leakaudit.membership.references import ReferenceModel, assemble  # noqa: E402
from leakaudit.membership.training import train_module  # noqa: E402
from leakaudit.model.target import TargetModel  # noqa: E402
from leakaudit.pipeline.membership import (Fit, MembershipSets, MembershipSettings, attack_rows,  # noqa: E402
                                           loss_row, membership_stage, recipe_check, target_fit)
from leakaudit.zoo import ReferenceSpec, build_classifier, bundled_images  # noqa: E402

R_LEVELS = (0, 1, 2, 4, 8)


@dataclass(frozen=True)
class Bench:
    """One reference: its data, architecture and the recipe that trained the target."""

    dataset: str
    size: int
    members_per_class: int
    nonmembers_per_class: int
    recipe: TrainingRecipe


BENCHES = {
    "digits-cnn": Bench("digits", 32, 50, 50, TrainingRecipe(epochs=60, until_train_accuracy=1.0)),
    "digits-robust": Bench("digits", 32, 50, 50, TrainingRecipe(
        optimizer="adamw", weight_decay=0.05, epochs=4, until_train_accuracy=None, augment=("shift:2", "rotate:10"),
        label_smoothing=0.1)),
    "fmnist-50": Bench("fashion-mnist", 28, 50, 50, TrainingRecipe(batch_size=32, epochs=100)),
    "fmnist-500": Bench("fashion-mnist", 28, 500, 500, TrainingRecipe(batch_size=32, epochs=100)),
}


def split(bench: Bench, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels, member and non-member indices, per class, seeded."""
    images, labels, classes = bundled_images(bench.dataset, bench.size)
    gen = torch.Generator().manual_seed(seed)
    members, nonmembers = [], []
    for c in range(len(classes)):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        members.append(idx[: bench.members_per_class])
        nonmembers.append(idx[bench.members_per_class : bench.members_per_class + bench.nonmembers_per_class])
    return images, labels, torch.cat(members), torch.cat(nonmembers)


def cnn(size: int) -> nn.Module:
    torch.manual_seed(0)
    return build_classifier(ReferenceSpec(arch="cnn", size=size), 1, 10)


def run_reference(name: str, recipes: list[str], models: int, default_models: int | None = None) -> None:
    """The target once, then R reference models per recipe (``default_models`` of them for the guessed one)."""
    bench = BENCHES[name]
    images, labels, mi, ni = split(bench)
    started = time.monotonic()
    module = cnn(bench.size)
    stats = train_module(module, images[mi], labels[mi], bench.recipe, 0, lambda x: x)
    target = TargetModel.from_module(module, (1, bench.size, bench.size), 10, device="cpu")
    sets = MembershipSets(images[mi], labels[mi], images[ni], labels[ni], operations.logits(target, images[mi]),
                          operations.logits(target, images[ni]))
    accuracy = float((sets.member_logits.argmax(1) == sets.member_labels).double().mean())
    print(f"{name}: target trained in {time.monotonic() - started:.0f} s ({stats.epochs} epochs, train accuracy "
          f"{accuracy:.3f}); {len(mi)} members, {len(ni)} non-members", flush=True)
    session = InProcessSession("bench", target)
    pool = torch.cat([images[mi], images[ni]])
    pool_labels = torch.cat([labels[mi], labels[ni]])
    for which in recipes:
        recipe = bench.recipe if which == "given" else DEFAULT_RECIPE
        count = default_models if which != "given" and default_models is not None else models
        settings = MembershipSettings(count, recipe, which == "given", seed=0)
        splits = draw_splits(len(pool), len(mi), count, settings.seed)
        request = ReferenceRequest(pool, pool_labels, torch.from_numpy(splits.masks), recipe, settings.seed)
        mirrored = session.logits(pool.flip(3)) if recipe.flips else None
        began = time.monotonic()
        finished: dict[int, ReferenceModel] = {}
        print(f"  {'recipe':8} {'R':>2} {'attack':13} {'AUC':>6} {'TPR@1%':>7} {'TPR@0.1%':>8}", flush=True)
        print_rows(which, 0, [loss_row(sets, settings)])

        def on_model(model: ReferenceModel, done: int, planned: int) -> None:
            """Each R level's rows as soon as its models are trained (a run cut short still reports)."""
            finished[model.index] = model
            print(f"  reference model {done}/{planned} ({which}) after {time.monotonic() - began:.0f} s", flush=True)
            if done in R_LEVELS:
                run = assemble(finished, len(pool), 10, "full")
                print_rows(which, done, attack_rows(run, splits.masks[:done], target_logits, mirrored, pool_labels,
                                                    len(mi), settings))

        target_logits = torch.cat([sets.member_logits, sets.nonmember_logits])
        run = session.train_references(request, InversionCallbacks(), lambda: False, on_model)
        check = recipe_check(target_fit(sets.member_logits, sets.member_labels, sets.nonmember_logits,
                                        sets.nonmember_labels), run)
        print(f"  recipe check ({which}): target {_fit(check.target)}; references {_fit(check.references)}; "
              f"warning: {check.warning}")
        print(f"  seconds per reference model ({which}): {float(run.seconds.mean()):.1f}", flush=True)


def print_rows(which: str, r: int, rows: list[AttackResult]) -> None:
    for row in rows:
        print(f"  {which:8} {r:>2} {row.attack:13} {row.auc:6.3f} {row.tpr(0.01):7.3f} {row.tpr(0.001):8.4f}",
              flush=True)


def _fit(fit: Fit) -> str:
    return (f"loss {fit.in_loss:.3f} IN / {fit.out_loss:.3f} OUT, accuracy {fit.in_accuracy:.3f} IN / "
            f"{fit.out_accuracy:.3f} OUT")


def plain_loop(module: nn.Module, x01: torch.Tensor, y: torch.Tensor, recipe: TrainingRecipe, seed: int) -> None:
    """The same recipe written as the usual PyTorch loop (no stop checks, no augmentation hooks)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    batch = recipe.batch_for(len(x01))
    module.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(x01), generator=gen)
        for start in range(0, len(x01), batch):
            idx = perm[start:start + batch]
            loss = F.cross_entropy(module(x01[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def throughput(rounds: int) -> None:
    """Images per second of the reference-model loop and of the plain loop, alternated, same recipe and data."""
    bench = BENCHES["fmnist-50"]
    images, labels, mi, _ = split(bench)
    recipe = replace(bench.recipe, epochs=3, until_train_accuracy=None)
    x, y = images[mi], labels[mi]
    ours, plain = [], []
    for i in range(rounds):
        started = time.monotonic()
        train_module(cnn(bench.size), x, y, recipe, i, lambda v: v)
        ours.append(time.monotonic() - started)
        started = time.monotonic()
        plain_loop(cnn(bench.size), x.float() / 255.0, y, recipe, i)
        plain.append(time.monotonic() - started)
    seen = len(x) * recipe.epochs
    a, b = seen / min(ours), seen / min(plain)
    print(f"throughput (Fashion-MNIST CNN, {len(x)} images x {recipe.epochs} epochs, best of {rounds}): reference "
          f"loop {a:.0f} img/s, plain loop {b:.0f} img/s, ratio {a / b:.2f}")


def head(models: int) -> None:
    """A fine-tuned head: a CNN pre-trained on public MNIST, its last layer trained on Fashion-MNIST members."""
    bench = BENCHES["fmnist-50"]
    images, labels, mi, ni = split(bench)
    public, public_labels, _ = bundled_images("mnist", bench.size)
    module = cnn(bench.size)
    train_module(module, public[:3000], public_labels[:3000], TrainingRecipe(epochs=2, until_train_accuracy=None),
                 0, lambda v: v)
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    torch.manual_seed(1)
    last.reset_parameters()
    recipe = TrainingRecipe(optimizer="adam", lr=1e-2, batch_size="full", epochs=60, until_train_accuracy=None,
                            trained_layers="head")
    started = time.monotonic()
    train_module(module, images[mi], labels[mi], recipe, 0, lambda v: v)
    print(f"fine-tuned head: pre-trained on 3,000 MNIST images, head trained on {len(mi)} Fashion-MNIST members in "
          f"{time.monotonic() - started:.0f} s")
    target = TargetModel.from_module(module, (1, bench.size, bench.size), 10, device="cpu")
    sets = MembershipSets(images[mi], labels[mi], images[ni], labels[ni], operations.logits(target, images[mi]),
                          operations.logits(target, images[ni]))
    started = time.monotonic()
    result = membership_stage(InProcessSession("bench", target), sets,
                              MembershipSettings(models, recipe, True, seed=0))
    seconds = time.monotonic() - started
    print(f"fine-tuned head: R = {models} by the '{result.method}' path in {seconds:.1f} s "
          f"({result.seconds_per_model:.2f} s per reference model)")
    for row in result.rows:
        print(f"  {row.attack:13} AUC {row.auc:.3f}  TPR@1% {row.tpr(0.01):.3f}  TPR@0.1% {row.tpr(0.001):.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", choices=sorted(BENCHES), action="append")
    parser.add_argument("--recipes", default="given,default")
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--default-models", type=int, default=None,
                        help="reference models with the default (guessed) recipe (default: --models)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--head-models", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.reference or []:
        run_reference(name, args.recipes.split(","), args.models, args.default_models)
    if args.throughput:
        throughput(args.rounds)
    if args.head:
        head(args.head_models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
