"""Train one copy of the audited architecture by a ``TrainingRecipe``: the reference models' training loop.

Seeded (data order, augmentation, dropout draw from the seed only) and so
deterministic for a seed and a thread count; the stop request is checked
between batches. Augmentations act on whole float batches (one affine
resampling for shifts and rotations, one masked flip), never image by image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leakaudit.errors import ConfigError, ModelError
from leakaudit.membership.recipe import TrainingRecipe, augmentations
from leakaudit.model.features import fixed_batch
from leakaudit.model.passes import forward, set_mode

EVAL_CHUNK = 512


@dataclass(frozen=True)
class TrainStats:
    """How one training run went."""

    epochs: int
    steps: int
    train_accuracy: float  # eval mode, unaugmented, at the last check (NaN without ``until_train_accuracy``, or
    # when the check stopped early: below the threshold)
    stopped: bool  # a stop request ended it early


def augment_batch(x01: torch.Tensor, recipe: TrainingRecipe, gen: torch.Generator) -> torch.Tensor:
    """A batch in [0, 1] augmented as the recipe says: random mirror, integer shift, rotation (zeros outside)."""
    flip, shift, rotate = augmentations(recipe)
    n, _, h, w = x01.shape
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x01 = torch.where(mask.view(-1, 1, 1, 1).to(x01.device), x01.flip(3), x01)
    if shift == 0 and rotate == 0:
        return x01
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotate)
    dx = torch.randint(-shift, shift + 1, (n,), generator=gen).float() * (2.0 / w)
    dy = torch.randint(-shift, shift + 1, (n,), generator=gen).float() * (2.0 / h)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1).to(x01)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear" if rotate else "nearest", padding_mode="zeros",
                         align_corners=False)


def trained_parameters(module: nn.Module, recipe: TrainingRecipe) -> list[nn.Parameter]:
    """The parameters the recipe trains: all, the last layer's (``head``), or those under the named prefixes."""
    named = list(module.named_parameters())
    if recipe.trained_layers == "all":
        return [p for _, p in named]
    if recipe.trained_layers == "head":
        last = named[-1][0].rsplit(".", 1)[0] if named else ""
        return [p for name, p in named if name.rsplit(".", 1)[0] == last]
    prefixes = tuple(recipe.trained_layers)
    return [p for name, p in named if name.startswith(prefixes)]


def make_optimizer(params: list[nn.Parameter], recipe: TrainingRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _freeze_norms(module: nn.Module) -> None:
    """A partly trained model keeps its frozen layers' BatchNorm statistics (eval mode for every norm)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.eval()


@torch.no_grad()
def eval_logits(module: nn.Module, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Eval-mode logits of normalised inputs, in chunks (float32 on the inputs' device)."""
    set_mode(module, False)
    return torch.cat([forward(module, x[i:i + EVAL_CHUNK], batch).float() for i in range(0, len(x), EVAL_CHUNK)])


@torch.no_grad()
def reaches_accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, threshold: float,
                     batch: int | None = None) -> tuple[bool, float]:
    """Whether the eval-mode accuracy on ``x`` reaches ``threshold``, and the accuracy (NaN when not read to the end).

    Read chunk by chunk and stopped once the errors so far already rule the threshold out: the decision of a full
    pass (the same comparison of the same count), at the cost of the chunks that decide it. While a model is far
    from fitting its training set that is one chunk, not the whole set: the full pass cost a third of each epoch
    on the Fashion-MNIST CNN (bench/bench_membership.py).
    """
    set_mode(module, False)
    n, errors = len(x), 0
    for i in range(0, n, EVAL_CHUNK):
        errors += int((forward(module, x[i:i + EVAL_CHUNK], batch).argmax(1) != y[i:i + EVAL_CHUNK]).sum())
        if (n - errors) / n < threshold:
            return False, float("nan")
    accuracy = (n - errors) / n
    return accuracy >= threshold, accuracy


def train_module(module: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: TrainingRecipe, seed: int,
                 normalise: Callable[[torch.Tensor], torch.Tensor],
                 should_stop: Callable[[], bool] = lambda: False) -> TrainStats:
    """Train ``module`` in place on ``images`` (uint8 pixels, or float features) by ``recipe``; eval mode after.

    ``normalise`` maps a batch in [0, 1] to the model's input (identity for features).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout and other in-model randomness
    params = trained_parameters(module, recipe)
    for p in module.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = make_optimizer(params, recipe)
    x01 = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    clean = normalise(x01)
    y = labels.long().to(x01.device)
    batch, static = recipe.batch_for(len(x01)), fixed_batch(module)
    plain = not recipe.augment
    steps, epochs, accuracy, stopped = 0, 0, float("nan"), False
    for epoch in range(recipe.epochs):
        set_mode(module, True)
        if recipe.trained_layers != "all":
            _freeze_norms(module)
        perm = torch.randperm(len(x01), generator=gen).to(x01.device)
        for start in range(0, len(x01), batch):
            if should_stop():
                stopped = True
                break
            idx = perm[start:start + batch]
            xb = clean[idx] if plain else normalise(augment_batch(x01[idx], recipe, gen))
            loss = F.cross_entropy(forward(module, xb, static), y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        epochs = epoch + 1
        if stopped:
            break
        if recipe.until_train_accuracy is not None:  # the stopping rule's own check; nothing else costs a pass
            reached, accuracy = reaches_accuracy(module, clean, y, recipe.until_train_accuracy, static)
            if reached:
                break
    set_mode(module, False)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return TrainStats(epochs, steps, accuracy, stopped)


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of the owner's training function, as the document names it."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"


def train_by_function(fn: Callable[..., Any], module: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      seed: int, normalise: Callable[[torch.Tensor], torch.Tensor], model_id: int) -> nn.Module:
    """One reference model trained by the owner's own loop: ``fn(model, images, labels, *, seed) -> model``.

    ``images`` reach it as the model takes them (float32 in [0, 1], after the audit's normalisation, or the
    features of a head); the trained model is the one returned, or ``module`` trained in place when it returns
    None. The global generator is seeded first, so a loop that draws from it is as reproducible as the recipe's.
    """
    x = normalise(images.float().div(255.0)) if images.dtype == torch.uint8 else images.float()
    torch.manual_seed(seed)
    module.train()
    for p in module.parameters():  # a fresh copy arrives frozen: the owner's loop trains every parameter it likes
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            trained = fn(module, x, labels.long(), seed=seed)
    except Exception as exc:
        raise ModelError(f"train_fn {function_name(fn)} failed on reference model {model_id}: "
                         f"{type(exc).__name__}: {exc}") from exc
    trained = module if trained is None else trained
    if not isinstance(trained, nn.Module):
        raise ConfigError(f"train_fn {function_name(fn)} returned a {type(trained).__name__}, not the trained "
                          "torch.nn.Module (or None when it trains the model in place)")
    for p in trained.parameters():
        p.requires_grad_(False)
        p.grad = None
    trained.eval()
    return trained


def function_spec(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` by which the confined worker imports the owner's function, or None when it has no
    importable name (a lambda, a local function, one defined in ``__main__``)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def import_function(spec: str) -> Callable[..., Any]:
    """The owner's training function imported by ``module:qualname`` from the working directory (as ``--arch``)."""
    from leakaudit.loading import import_arch

    try:
        return import_arch(spec)
    except ModelError as exc:
        raise ConfigError(str(exc).replace("--arch", "train_fn", 1)) from None
