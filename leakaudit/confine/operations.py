"""What touches the model, as plain functions of a ``TargetModel`` and serialisable arguments.

Both sessions call these: the in-process one directly, the worker from its
table of named operations (``worker.OPERATIONS``). Adding an operation that
touches the model is one function here and one entry in that table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leakaudit.runtime.distributed import DistContext
from leakaudit.inversion import InversionCallbacks, InversionConfig, InversionResult, invert
from leakaudit.inversion.initaware import init_aware_inversion
from leakaudit.inversion.plan import image_flops
from leakaudit.inversion.warmstart import PretrainCache
from leakaudit.runtime.memory import release_free_memory
from leakaudit.model.target import TargetModel, load_model, wrap_module
from leakaudit.runtime.numerics import flush_denormals
from leakaudit.membership.recipe import TrainingRecipe
from leakaudit.membership.references import OnModel, ReferenceRun
from leakaudit.power.control import ControlRun, run_control

LOGITS_BATCH = 256


@dataclass(frozen=True)
class ModelInfo:
    """What the audit reads about the model, without holding it."""

    input_shape: tuple[int, int, int]
    num_classes: int
    format: str
    sha256: str | None
    feature_note: str | None  # why penultimate features are unavailable, or None
    device: torch.device
    load_notes: tuple[str, ...]
    # one image's forward+backward, counted at load (plan.image_flops): plans the work at large inputs; 0: not counted
    flops_per_image: float = 0.0

    @property
    def has_features(self) -> bool:
        return self.feature_note is None

    @classmethod
    def of(cls, target: TargetModel) -> ModelInfo:
        c, h, w = target.input_shape
        return cls((c, h, w), int(target.num_classes), target.format, target.sha256,
                   target.feature_note, target.device, tuple(target.load_notes), image_flops(target))


@dataclass(frozen=True)
class LoadRequest:
    """``load_model``'s arguments; ``path`` may be an in-memory module (the caller's own object, in-process only)."""

    path: Path | nn.Module
    arch: str | None = None
    unsafe_pickle: bool = False
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    shape_hint: tuple[int, int, int] | None = None
    device: str | None = None


@dataclass(frozen=True)
class AttackRequest:
    """One inversion of the audited model: the engine settings and the data it may learn from."""

    config: InversionConfig
    prior: tuple[torch.Tensor, torch.Tensor] | None  # uint8 images, int64 labels of the prior part
    informed: bool
    init: Path | None = None  # the init-aware mode
    resume_tag: str = ""


@dataclass(frozen=True)
class ControlRequest:
    """One positive control: a fresh copy of the architecture trained on ``images`` and inverted with ``config``."""

    images: torch.Tensor  # (N, C, H, W) uint8 non-members planted in the copy
    labels: torch.Tensor  # (N,) int64
    config: InversionConfig
    seed: int
    prior: tuple[torch.Tensor, torch.Tensor] | None  # the informed attacker's images, as the audit used them
    init: Path | None = None  # the init-aware audit's initial weights: the copy starts from them


@dataclass(frozen=True)
class ReferenceRequest:
    """Reference models for membership inference: copies of the architecture trained by ``recipe`` on their splits."""

    images: torch.Tensor  # (N, C, H, W) uint8 pool: the audit's members and non-members
    labels: torch.Tensor  # (N,) int64
    masks: torch.Tensor  # (R, N) bool: the images each reference model trains on
    recipe: TrainingRecipe
    seed: int
    init: Path | None = None  # the --init weights, for a recipe that starts from them
    budget_s: float | None = None  # what the audit's budget leaves this phase (the confined call's ceiling)
    model_ids: tuple[int, ...] | None = None  # each row's model number in the plan (its seeds); None: 0 … R − 1
    train_fn: Callable[..., Any] | None = None  # the owner's training loop (train_fn=), trusted like --arch


def load(request: LoadRequest) -> TargetModel:
    """A file loaded safely, or an in-memory module checked the same way (shape, classes, normalisation)."""
    if isinstance(request.path, nn.Module):
        return wrap_module(request.path, input_size=request.input_size, mean=request.mean, std=request.std,
                           shape_hint=request.shape_hint, device=request.device)
    return load_model(request.path, arch=request.arch, unsafe_pickle=request.unsafe_pickle,
                      input_size=request.input_size, mean=request.mean, std=request.std,
                      shape_hint=request.shape_hint, device=request.device)


def attack(target: TargetModel, request: AttackRequest, callbacks: InversionCallbacks,
           should_stop: Callable[[], bool], checkpoint_dir: Path | None, dist: DistContext | None = None,
           pretrain_cache: PretrainCache | None = None) -> InversionResult:
    """Invert in the mode the request asks for (init-aware, informed or data-free).

    ``pretrain_cache``: where the informed pre-training is kept for the controls that follow.
    """
    if request.init is not None:
        return init_aware_inversion(target, request.init, request.prior, request.config, should_stop, callbacks)
    return invert(target, request.config, prior=request.prior if request.informed else None, callbacks=callbacks,
                  checkpoint_dir=checkpoint_dir, should_stop=should_stop, dist=dist, resume_tag=request.resume_tag,
                  pretrain_cache=pretrain_cache)


def control(target: TargetModel, request: ControlRequest, callbacks: InversionCallbacks,
            should_stop: Callable[[], bool], pretrain_cache: PretrainCache | None = None) -> ControlRun:
    """The positive control on a copy of ``target``'s architecture (``leakaudit.power.control``)."""
    return run_control(target, request.images, request.labels, request.config, request.seed, request.prior,
                       callbacks, should_stop, pretrain_cache=pretrain_cache, init=request.init)


def train_references(target: TargetModel, request: ReferenceRequest, should_stop: Callable[[], bool],
                     on_model: OnModel | None = None) -> ReferenceRun:
    """The reference models of the membership test (``leakaudit.membership.references``)."""
    from leakaudit.membership.references import train_references as run

    return run(target, request.images, request.labels, request.masks, request.recipe, request.seed, request.init,
               should_stop, on_model, request.model_ids, request.train_fn)


@torch.no_grad()
def logits(target: TargetModel, images: torch.Tensor, on_batch: Callable[[], None] | None = None) -> torch.Tensor:
    """(N, K) float32 logits on the CPU of uint8 images (N, C, H, W): the membership pass."""
    out = []
    with flush_denormals():
        for start in range(0, len(images), LOGITS_BATCH):
            batch = images[start:start + LOGITS_BATCH].to(torch.float32).div_(255.0)
            out.append(target.logits(batch.to(target.device)).float().cpu())
            if start // LOGITS_BATCH % 16 == 15:
                release_free_memory()  # long passes fragment the C heap (leakaudit/runtime/memory.py)
            if on_batch is not None:
                on_batch()
    return torch.cat(out) if out else torch.zeros(0, target.num_classes)


def result_fields(result: Any) -> dict[str, Any]:
    """A dataclass result as plain fields, tensors detached onto the CPU (own storage: nothing else travels)."""
    out: dict[str, Any] = {}
    for name, value in vars(result).items():
        out[name] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
    return out
