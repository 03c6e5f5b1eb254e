"""The model-touching half of the positive control: a fresh copy of the architecture, made to memorise, inverted.

``run_control`` is the one function that handles the audited model for the
control: it clones the loaded module with fresh weights (``reinit.py``),
trains the clone on the control's members until it has memorised them, and
inverts the clone with the audit's own engine and settings. What it returns
holds only tensors and plain values, so it can run wherever the model is
kept. Choosing the members, matching and scoring happen elsewhere
(``ladder.py``, ``verdict.py``), never touching the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from leakaudit.inversion import InversionCallbacks, InversionConfig, invert
from leakaudit.inversion.interrupt import StopPoll, interruptible
from leakaudit.inversion.warmstart import PretrainCache
from leakaudit.loading import import_arch
from leakaudit.model.features import fixed_batch
from leakaudit.model.passes import forward, set_mode
from leakaudit.model.target import TargetModel
from leakaudit.runtime.numerics import flush_denormals, without_jit_profiling
from leakaudit.power.reinit import UnknownLayer, copy_from_init, fresh_copy

LOSS_BOUND = 1e-3  # mean cross-entropy the control must reach on its members
CHECK_EVERY = 10  # steps between convergence checks (eval mode: what the inversion sees)


@dataclass(frozen=True)
class Recipe:
    """How the copy is trained: full-batch descent on every member at once, seeded."""

    optimizer: str = "adam"
    lr: float = 1e-3
    max_steps: int = 3000
    loss_bound: float = LOSS_BOUND
    start: str = "fresh"  # "fresh": the architecture's default initialisation; "init": the audit's --init weights

    def to_dict(self) -> dict[str, object]:
        return {"optimizer": self.optimizer, "lr": self.lr, "max_steps": self.max_steps,
                "loss_bound": self.loss_bound, "batch": "full", "weight_decay": 0.0, "start": self.start}


RECIPE = Recipe()
# The init-aware attack bounds what an owner's (S)GD training leaks from a known start, so its control starts
# from the same --init weights and trains by SGD with momentum, whose update stays a sum of gradients.
INIT_RECIPE = Recipe(optimizer="sgd", lr=0.01, start="init")


def recipe_for(init: Path | None) -> Recipe:
    """The training recipe of a control: from the --init weights by SGD, else fresh by Adam."""
    return INIT_RECIPE if init is not None else RECIPE


@dataclass(frozen=True)
class ControlRun:
    """What one control produced: tensors and plain values only."""

    candidates: torch.Tensor  # (N, C, H, W) float32 in [0, 1] on the CPU
    targets: torch.Tensor  # (N,) int64
    steps: int  # training steps taken
    final_loss: float  # members' mean cross-entropy at the end (eval mode)
    accuracy: float  # share of members classified correctly at the end
    memorised: bool  # accuracy 1 and loss within the bound
    complete: bool  # the inversion ran every planned step
    method: str  # how the copy got its weights: "arch" | "reset" (fresh) | "init" (the --init weights)
    train_seconds: float
    invert_seconds: float
    notes: tuple[str, ...] = field(default=())
    unsupported: str | None = None  # why no copy could be made (then nothing else is filled)


def _without_attack(steps: int = 0, final_loss: float = float("nan"), accuracy: float = 0.0, method: str = "none",
                    train_seconds: float = 0.0, notes: tuple[str, ...] = (),
                    unsupported: str | None = None) -> ControlRun:
    """A control that produced no candidates: not memorised as far as the audit knows, and not complete."""
    empty = torch.zeros(0)
    return ControlRun(empty, empty.long(), steps, final_loss, accuracy, False, False, method, train_seconds, 0.0,
                      notes, unsupported)


def _unsupported(reason: str) -> ControlRun:
    return _without_attack(unsupported=reason)


def stopped_control() -> ControlRun:
    """What a control stopped from outside leaves: nothing, and not complete (the audit stops right after)."""
    return _without_attack()


def train_copy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, seed: int,
               should_stop: Callable[[], bool]) -> tuple[int, float, float]:
    """Full-batch descent until every member is right and the loss is within the bound: (steps, loss, accuracy)."""
    torch.manual_seed(seed)
    params = [p for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    if recipe.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=recipe.lr)
    else:
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9)
    batch = fixed_batch(module)
    stop = StopPoll(should_stop)
    steps, loss_value, accuracy = 0, float("inf"), 0.0
    while not stop.poll():  # every step: at 224×224 ten steps are minutes
        if steps % CHECK_EVERY == 0 or steps >= recipe.max_steps:
            set_mode(module, False)
            with torch.no_grad():
                logits = forward(module, x, batch)
                loss_value = float(F.cross_entropy(logits, y))
                accuracy = float((logits.argmax(1) == y).double().mean())
            if (accuracy == 1.0 and loss_value <= recipe.loss_bound) or steps >= recipe.max_steps:
                break
        set_mode(module, True)
        with interruptible(stop):  # a stop inside the step drops it: the copy is not used after a stop
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(module, x, batch), y).backward()
        if stop.asked:
            break
        opt.step()
        steps += 1
    set_mode(module, False)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return steps, loss_value, accuracy


def run_control(target: TargetModel, images: torch.Tensor, labels: torch.Tensor, config: InversionConfig, seed: int,
                prior: tuple[torch.Tensor, torch.Tensor] | None = None,
                callbacks: InversionCallbacks | None = None,
                should_stop: Callable[[], bool] | None = None, recipe: Recipe | None = None,
                pretrain_cache: PretrainCache | None = None, init: Path | None = None) -> ControlRun:
    """Copy ``target``'s architecture, train it on ``images`` (uint8), invert it with ``config``.

    ``prior``: the informed attacker's non-member images, as the audit used them.
    Deterministic for a seed; ``should_stop`` ends training or inversion early
    (the run is then incomplete). ``pretrain_cache``: the audit's informed
    pre-training, which the copy's inversion would repeat step for step.
    ``init``: the init-aware audit's initial weights; the copy starts from
    them and is inverted by the init-aware mode; otherwise its weights are
    fresh. ``recipe``: ``recipe_for(init)`` unless told.
    """
    chosen = recipe if recipe is not None else recipe_for(init)
    with torch.random.fork_rng(devices=[]):  # the audit's own random stream is left as it was
        return _run_control(target, images, labels, config, seed, prior, callbacks, should_stop or (lambda: False),
                            chosen, pretrain_cache, init)


def _run_control(target: TargetModel, images: torch.Tensor, labels: torch.Tensor, config: InversionConfig, seed: int,
                 prior: tuple[torch.Tensor, torch.Tensor] | None, callbacks: InversionCallbacks | None,
                 stop: Callable[[], bool], recipe: Recipe, pretrain_cache: PretrainCache | None,
                 init: Path | None) -> ControlRun:
    module = target.module
    if module is None:
        return _unsupported("the loaded model keeps no module to copy")
    if init is not None:
        copy_module, method = copy_from_init(module, init), "init"
    else:
        arch = import_arch(target.arch) if target.arch is not None else None
        try:
            fresh = fresh_copy(module, seed, arch)
        except UnknownLayer as exc:
            return _unsupported(f"no known default initialisation for {exc}")
        copy_module, method = fresh.module, fresh.method
    x = ((images.float() / 255.0).to(target.device) - target.mean) / target.std
    y = labels.long().to(target.device)
    started = time.monotonic()
    deadline = None if config.budget_s is None else started + config.budget_s  # the budget covers training too
    train_stop = stop if deadline is None else (lambda: stop() or time.monotonic() >= deadline)
    with flush_denormals(), without_jit_profiling():  # TorchScript's profiling passes cost ~5× here
        steps, loss, accuracy = train_copy(copy_module, x, y, recipe, seed, train_stop)
    train_seconds = time.monotonic() - started
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:  # spent in training: no attack, incomplete
        return _without_attack(steps, loss, accuracy, method, train_seconds,
                               ("The budget ended the control's training before its attack.",))
    config = config if left is None else replace(config, budget_s=left)
    memorised = accuracy == 1.0 and loss <= recipe.loss_bound
    notes = [] if memorised else [f"The control did not memorise its members within {recipe.max_steps} steps "
                                  f"(accuracy {accuracy:.3f}, loss {loss:.2g})."]
    mean = target.mean.flatten().tolist()
    std = target.std.flatten().tolist()
    control = TargetModel.from_module(copy_module, target.input_shape, target.num_classes, mean=mean, std=std,
                                      device=target.device, fmt=target.format)
    started = time.monotonic()
    if init is not None:
        from leakaudit.inversion.initaware import init_aware_inversion

        result = init_aware_inversion(control, init, prior, config, stop, callbacks)
    else:
        result = invert(control, config, prior=prior, callbacks=callbacks, should_stop=stop,
                        pretrain_cache=pretrain_cache)
    invert_seconds = time.monotonic() - started
    candidates = result.images.detach().float().cpu().clamp(0, 1)
    return ControlRun(candidates, result.targets.detach().cpu().long(), steps, loss, accuracy, memorised,
                      bool(result.complete), method, train_seconds, invert_seconds,
                      tuple(notes), None)
