"""The model-touching half of membership inference: train R reference models, read their logits on the pool.

``train_references`` is the one function that handles the audited model for
the membership test. Each reference model is a copy of the audited
architecture (fresh weights as the positive control makes them, or the
``--init`` weights), trained by the recipe on its split of the pool; what it
returns holds only tensors and plain values, so it can run in the confined
worker. When only the head trains, the backbone's features are computed once
and each reference model is a linear head trained on them (seconds, not minutes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leakaudit.errors import ModelError
from leakaudit.membership.recipe import TrainingRecipe
from leakaudit.membership.training import eval_logits, train_by_function, train_module, trained_parameters
from leakaudit.model.features import fixed_batch
from leakaudit.model.target import TargetModel
from leakaudit.power.reinit import UnknownLayer, copy_from_init, fresh_copy
from leakaudit.runtime.numerics import flush_denormals, without_jit_profiling

HEAD_CHECK_TOLERANCE = 1e-3  # relative: the head applied to the tapped features must give the model's logits


@dataclass(frozen=True)
class ReferenceModel:
    """One finished reference model's signals: all the attacks read of it, and all a checkpoint keeps (no weights)."""

    index: int  # its row of the splits
    logits: torch.Tensor  # (N, K) float32 on the pool
    mirrored: torch.Tensor | None  # (N, K) float32 on the mirrored pool, when the recipe flips
    fit: tuple[float, float, float, float]  # IN loss, IN accuracy, OUT loss, OUT accuracy
    seconds: float  # its training and scoring time


@dataclass(frozen=True)
class ReferenceRun:
    """Every pool image's logits under each reference model, and how each model trained."""

    logits: torch.Tensor  # (R, N, K) float32
    mirrored: torch.Tensor | None  # (R, N, K) float32 of the mirrored images, when the recipe flips
    in_loss: torch.Tensor  # (R,) mean cross-entropy on the model's own split (IN)
    in_accuracy: torch.Tensor  # (R,)
    out_loss: torch.Tensor  # (R,) on the pool images it did not train on (OUT)
    out_accuracy: torch.Tensor  # (R,)
    seconds: torch.Tensor  # (R,) training and scoring time of each model
    models_done: int  # < R when a stop ended the run
    method: str  # "head" (features once, head retrained) | "full"
    unsupported: str | None = None  # why no copy could be made

    def models(self, ids: Sequence[int]) -> list[ReferenceModel]:
        """The run's finished models one by one; ``ids``: the splits' row of each model the request asked for."""
        return [ReferenceModel(int(ids[r]), self.logits[r], None if self.mirrored is None else self.mirrored[r],
                               (float(self.in_loss[r]), float(self.in_accuracy[r]), float(self.out_loss[r]),
                                float(self.out_accuracy[r])), float(self.seconds[r]))
                for r in range(self.models_done)]


def assemble(models: Mapping[int, ReferenceModel], n: int, k: int, method: str) -> ReferenceRun:
    """The run of models 0, 1, … as far as every one is finished (models past a gap cannot be used: the attacks
    read the first R' rows of the splits)."""
    done = 0
    while done in models:
        done += 1
    rows = [models[i] for i in range(done)]
    fits = torch.tensor([m.fit for m in rows], dtype=torch.float64).reshape(done, 4)
    flipped = [m.mirrored for m in rows if m.mirrored is not None]
    return ReferenceRun(torch.stack([m.logits for m in rows]) if rows else torch.zeros(0, n, k),
                        torch.stack(flipped) if rows and len(flipped) == done else None, fits[:, 0], fits[:, 1],
                        fits[:, 2], fits[:, 3], torch.tensor([m.seconds for m in rows], dtype=torch.float64), done,
                        method)


OnModel = Callable[[ReferenceModel, int, int], None]  # a finished model, how many are done, how many planned
TrainFn = Callable[..., Any]  # the owner's own loop: train_fn(model, images, labels, *, seed) -> model (or None)


def _starting_copy(target: TargetModel, recipe: TrainingRecipe, seed: int, init: Path | None) -> nn.Module:
    """Where a reference model starts: the --init weights, or fresh weights (``power.reinit``)."""
    module = target.module
    assert module is not None
    if recipe.start == "init":
        if init is None:
            raise ModelError("the recipe starts from the initial weights (start = \"init\") but no --init was given")
        return copy_from_init(module, init)
    from leakaudit.loading import import_arch

    arch = import_arch(target.arch) if target.arch is not None else None
    copied = fresh_copy(module, seed, arch).module
    if recipe.trained_layers != "all":  # the layers it does not train are the audited model's own (a public backbone)
        trained = {id(p) for p in trained_parameters(copied, recipe)}
        own: dict[str, torch.Tensor] = dict(module.named_parameters())
        own.update(dict(module.named_buffers()))
        with torch.no_grad():
            for name, tensor in [*copied.named_parameters(), *copied.named_buffers()]:
                if id(tensor) not in trained and name in own:
                    tensor.copy_(own[name])
    return copied


def _fit_report(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float, float]:
    """(IN loss, IN accuracy, OUT loss, OUT accuracy) of one model's pool logits."""
    loss = F.cross_entropy(logits.double(), labels, reduction="none")
    right = (logits.argmax(1) == labels).double()
    out = ~mask
    nan = float("nan")
    return (float(loss[mask].mean()) if mask.any() else nan, float(right[mask].mean()) if mask.any() else nan,
            float(loss[out].mean()) if out.any() else nan, float(right[out].mean()) if out.any() else nan)


def train_references(target: TargetModel, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                     recipe: TrainingRecipe, seed: int, init: Path | None = None,
                     should_stop: Callable[[], bool] = lambda: False, on_model: OnModel | None = None,
                     model_ids: Sequence[int] | None = None, train_fn: TrainFn | None = None) -> ReferenceRun:
    """Train one reference model per row of ``masks`` (R, N) on the uint8 pool ``images``; seeded per model.

    ``model_ids``: each row's model number in the whole plan (default 0 … R − 1): a model's seeds follow its
    number, so a share of the plan (another rank's, or what a resumed run has left) trains the same models.
    ``train_fn``: the owner's own training loop in place of the recipe's (``training.train_by_function``).
    """
    ids = tuple(range(len(masks))) if model_ids is None else tuple(int(i) for i in model_ids)
    with torch.random.fork_rng(devices=[]), flush_denormals(), without_jit_profiling():
        if target.module is None:
            return _unsupported("the loaded model keeps no module to copy", len(masks), len(images),
                                target.num_classes)
        recipe = head_by_init(target, recipe, init) if train_fn is None else recipe
        wants_head = _wants_head(recipe) and train_fn is None
        head = _head_features(target, images, recipe, init, seed) if wants_head else None
        plan = _Plan(labels, masks, ids, recipe, seed, should_stop, on_model, target.num_classes, train_fn)
        if head is not None:
            return _run(head.model_for, head.inputs, head.mirrored, lambda x: x, plan, "head")
        x = images.to(target.device)
        mirrored = x.flip(3) if recipe.flips else None
        try:
            return _run(lambda r: _starting_copy(target, recipe, seed + 1000 * (r + 1), init), x, mirrored,
                        target.normalise, plan, "full")
        except UnknownLayer as exc:
            return _unsupported(f"no known default initialisation for {exc}", len(masks), len(images),
                                target.num_classes)


def head_by_init(target: TargetModel, recipe: TrainingRecipe, init: Path | None) -> TrainingRecipe:
    """The recipe as head-only when the --init weights show that only the last layer changed (a fine-tuned head)."""
    if init is None or recipe.trained_layers != "all" or target.module is None:
        return recipe
    from leakaudit.inversion.initaware import load_initial_state

    initial = load_initial_state(init)
    named = dict(target.module.named_parameters())
    changed = {name for name, p in named.items()
               if name not in initial or initial[name].shape != p.shape or not torch.equal(initial[name].to(p), p)}
    head = replace(recipe, trained_layers="head")
    head_names = {name for name, p in named.items() if any(p is q for q in trained_parameters(target.module, head))}
    return head if changed and changed <= head_names else recipe


def _wants_head(recipe: TrainingRecipe) -> bool:
    return recipe.head_only and not recipe.augment


def _unsupported(reason: str, r: int, n: int, k: int) -> ReferenceRun:
    empty = torch.zeros(0, dtype=torch.float64)
    return ReferenceRun(torch.zeros(0, n, k), None, empty, empty, empty, empty, empty, 0, "none", reason)


@dataclass(frozen=True)
class _Plan:
    """What every model of one run shares: its split, its number in the plan, the recipe, the callbacks."""

    labels: torch.Tensor
    masks: torch.Tensor  # (R, N) bool
    ids: tuple[int, ...]  # each row's model number in the whole plan: its seeds
    recipe: TrainingRecipe
    seed: int
    should_stop: Callable[[], bool]
    on_model: OnModel | None
    classes: int  # the target's, so that a run stopped before its first model still has the reply's shape
    train_fn: TrainFn | None


def _run(model_for: Callable[[int], nn.Module], inputs: torch.Tensor, mirrored: torch.Tensor | None,
         normalise: Callable[[torch.Tensor], torch.Tensor], plan: _Plan, method: str) -> ReferenceRun:
    """Train each model on its split and read its logits on the whole pool (and the mirrors)."""
    y = plan.labels.long().to(inputs.device)
    scaled = inputs if inputs.dtype != torch.uint8 else None  # features are already the model's inputs
    done: dict[int, ReferenceModel] = {}
    for r, model_id in enumerate(plan.ids):
        if plan.should_stop():
            break
        started = time.monotonic()
        module = model_for(model_id)
        mask = plan.masks[r].to(inputs.device)
        train_seed = plan.seed + 7 * (model_id + 1)
        if plan.train_fn is not None:
            module = train_by_function(plan.train_fn, module, inputs[mask], y[mask], train_seed, normalise, model_id)
        elif train_module(module, inputs[mask], y[mask], plan.recipe, train_seed, normalise,
                          plan.should_stop).stopped:
            break
        batch = fixed_batch(module)
        pool = scaled if scaled is not None else normalise(inputs.float() / 255.0)
        out = eval_logits(module, pool, batch).cpu()
        flipped = None
        if mirrored is not None:
            m = mirrored if mirrored.dtype != torch.uint8 else normalise(mirrored.float() / 255.0)
            flipped = eval_logits(module, m, batch).cpu()
        model = ReferenceModel(model_id, out, flipped, _fit_report(out, plan.labels.long().cpu(), plan.masks[r].cpu()),
                               time.monotonic() - started)
        done[r] = model
        if plan.on_model is not None:
            plan.on_model(model, len(done), len(plan.ids))
    return assemble(done, len(inputs), plan.classes, method)


@dataclass(frozen=True)
class _Head:
    """The features computed once, and how to make a fresh copy of the head."""

    inputs: torch.Tensor  # (N, D) float32 features of the pool
    mirrored: torch.Tensor | None
    weight: torch.Tensor  # the head's starting weight (K, D) and bias (K,)
    bias: torch.Tensor | None
    fresh: bool
    seed: int

    def model_for(self, r: int) -> nn.Module:
        head = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        head = head.to(self.inputs.device)
        with torch.no_grad():
            if self.fresh:
                torch.manual_seed(self.seed + 1000 * (r + 1))  # as the full path seeds each fresh copy
                head.reset_parameters()
            else:
                head.weight.copy_(self.weight)
                if self.bias is not None and head.bias is not None:
                    head.bias.copy_(self.bias)
        return head


@torch.no_grad()
def _head_features(target: TargetModel, images: torch.Tensor, recipe: TrainingRecipe, init: Path | None,
                   seed: int) -> _Head | None:
    """The pool's penultimate features and the head's start, or None when the head is not one final linear layer."""
    module = target.module
    if module is None or not target.has_features:
        return None
    named = dict(module.named_parameters())
    head_params = trained_parameters(module, recipe)
    names = [n for n, p in named.items() if any(p is q for q in head_params)]
    weight_name = next((n for n in names if n.endswith("weight")), None)
    if weight_name is None or named[weight_name].dim() != 2:
        return None
    bias_name = next((n for n in names if n.endswith("bias")), None)
    feats, logits = _features(target, images)
    w, b = named[weight_name].detach(), named[bias_name].detach() if bias_name else None
    rebuilt = feats @ w.T + (b if b is not None else 0)
    atol = HEAD_CHECK_TOLERANCE * float(logits.abs().max())
    if not torch.allclose(rebuilt, logits, rtol=HEAD_CHECK_TOLERANCE, atol=atol):
        return None
    mirrored = _features(target, images.flip(3))[0] if recipe.flips else None
    if recipe.start == "init" and init is not None:
        from leakaudit.inversion.initaware import load_initial_state

        state = load_initial_state(init)
        w, b = state.get(weight_name, w), state.get(bias_name, b) if bias_name else None
    return _Head(feats, mirrored, w.float().clone(), None if b is None else b.float().clone(), recipe.start == "fresh",
                 seed)


def _features(target: TargetModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and logits of uint8 images, in chunks."""
    feats, logits = [], []
    for i in range(0, len(images), 512):
        probe = target.probe(images[i:i + 512].to(target.device).float() / 255.0)
        assert probe.features is not None
        feats.append(probe.features.float().flatten(1))
        logits.append(probe.logits.float())
    return torch.cat(feats), torch.cat(logits)
