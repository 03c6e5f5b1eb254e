"""Init-aware inversion: the model owner's upper bound, given the weights before training.

With the initial weights θ₀ (``--init FILE``) the learned update θ − θ₀ is
exact. For a fully connected first layer trained by (S)GD, with or without
momentum, each step adds Σᵢ δᵢ uᵢᵀ (back-propagated errors times first-layer
inputs), so every row of the update lies in the span of the training images:
its rank is at most the number of training images and its singular spectrum
ends in a cliff down to rounding noise. Every member lies in that span and a
non-member generally does not, and while the span is narrow the training
images are, among the non-negative images in the span, the extreme ones: mostly
exact zeros, which a mixture of them is not (``spanfaces`` measures whether
the span is that narrow). A small linear programme per objective finds such
an extreme image: maximise its overlap with a public image (or a row of the
update) over the non-negative images of the span with unit mass. Adaptive
optimisers (Adam) scale the update per weight and break the span: then the
mode reports that no exact span was found.

Each unit's bias moves by the sum of the same errors, Σᵢ δᵢ, so the ratio
ΔWⱼ / Δbⱼ of unit j is a weighted mean of the inputs that reached it, exactly
one input when only one did (Fowl et al. 2022): those ratios are candidates
beside the extreme images.

Threat model: stronger than informed inversion. An attacker rarely knows θ₀,
but it can often be rebuilt from a seed; the audit bounds what such an attacker
gets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leakaudit.errors import ConfigError, ModelError
from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.featurespan import (FeatureSpan, feature_span, first_linear_forward, linear_update,
                                             push_into_span)
from leakaudit.inversion.invert import InversionCallbacks, InversionResult, invert
from leakaudit.inversion.rowspace import first_layer_is_dense
from leakaudit.inversion.spanfaces import NOT_MEASURED, span_faces
from leakaudit.inversion.updatespan import (MAX_RATIO_UNITS, MIN_GAP, ROUNDING_FLOOR, ZERO_SINGULAR, UpdateSpan,
                                            first_layer_bias_update, first_layer_update, unit_ratio_images,
                                            update_span)
from leakaudit.loading import load_state
from leakaudit.matching.ssim import to_float01
from leakaudit.model.target import TargetModel
from leakaudit.sanitize import terminal_text

__all__ = ["MAX_OBJECTIVES", "MAX_RATIO_UNITS", "MIN_GAP", "PROGRAMME_BUDGET", "ROUNDING_FLOOR", "THREAT_MODEL",
           "ZERO_SINGULAR", "ZERO_TOLERANCE", "InitAwareRun", "SpanPush", "UpdateSpan", "extreme_candidates",
           "extreme_image", "first_layer_bias_update", "first_layer_update", "init_aware_inversion",
           "invert_init_aware", "load_initial_state", "objectives_for", "programmes_for", "span_push",
           "unit_ratio_images", "update_span"]

THREAT_MODEL = (
    "Init-aware (stronger than informed): an attacker holding the model's weights, its weights before training "
    "(--init) and public images from the training distribution; an upper bound for attackers who know or rebuild "
    "the initialisation."
)
ZERO_TOLERANCE = 1e-4  # pixels may dip this far below 0 (the span is exact only to rounding)
# Every public image steers one programme, up to this many (~50 ms each at rank 100 on one core). Measured on the
# 10-per-class MNIST MLP: 200 objectives gave a leak score of 0.67, 500 gave 0.78; keeping only the sparsest
# results (the purest extreme points) lowered it (0.73 with the sparser half).
MAX_OBJECTIVES = 1000
# A programme's cost grows with the span's rank, and its worth falls with it: a wide span has many extreme points
# that are no member. So the programmes are capped at this budget divided by the rank: 500 at rank 100 (the
# 10-per-class MLP, unchanged), 100 at rank 500. Measured on the 50-per-class MNIST MLP (0.85 s per programme,
# with the 2,000 unit ratios, on the audit's split): no programme 0.564 and 123 of 500 members at SSIM >= 0.4;
# 100 programmes 0.564 and 141 (66 s); 200 the same (134 s). The whole audit with 500: 0.565 and 141, 373 s.
PROGRAMME_BUDGET = 50_000


def load_initial_state(path: Path) -> dict[str, torch.Tensor]:
    """The classifier's initial weights, read by the model's own vetted loaders (the file is as untrusted).

    Any format the model may have (state_dict, safetensors, TorchScript, .pt2) with all of its checks; the
    error names ``--init``.
    """
    if not path.exists():
        raise ConfigError(f"--init {terminal_text(path)}: no such file")
    if not path.is_file():
        raise ConfigError(f"--init {terminal_text(path)}: not a regular file")
    try:
        return load_state(path)
    except ModelError as exc:
        raise type(exc)(f"--init {exc}") from None


def extreme_image(basis: np.ndarray, objective: np.ndarray) -> np.ndarray | None:
    """The non-negative unit-mass image of the span that overlaps the objective most, scaled to max 1.

    A linear programme in the span's coordinates a: maximise ⟨objective, Bᵀa⟩
    subject to Bᵀa ≥ −tolerance and Σ Bᵀa = 1; its optimum is an extreme
    point, an image with as many zero pixels as the span allows.
    """
    from scipy.optimize import linprog  # scipy's optimiser is slow to import: only when a span is found

    r, d = basis.shape
    res = linprog(-(basis @ objective), A_ub=-basis.T, b_ub=np.full(d, ZERO_TOLERANCE), A_eq=basis.sum(1)[None],
                  b_eq=[1.0], bounds=[(None, None)] * r, method="highs")
    if res.status != 0:
        return None
    x: np.ndarray = basis.T @ res.x  # scipy has no stubs: res.x is the optimum's float array
    return x / max(float(x.max()), 1e-12)


def extreme_candidates(span: UpdateSpan, objectives: torch.Tensor, shape: tuple[int, int, int],
                       keep_going: Callable[[int], bool]) -> tuple[torch.Tensor, int]:
    """One extreme image per objective (N, D) → (n, C, H, W) in [0, 1] and the objectives done.

    Stops before objective i when ``keep_going(i)`` is False.
    """
    basis = span.basis.numpy()
    out: list[np.ndarray] = []
    done = 0
    for i, objective in enumerate(objectives.double().numpy()):
        if not keep_going(i):
            break
        x = extreme_image(basis, objective)
        done += 1
        if x is not None:
            out.append(x)
    if not out:
        return torch.zeros(0, *shape), done
    return torch.from_numpy(np.stack(out)).float().clamp(0, 1).view(-1, *shape), done


def objectives_for(delta: torch.Tensor, public01: torch.Tensor | None, limit: int) -> tuple[torch.Tensor, str]:
    """What the extreme images are steered by: public images (N, D) in [0, 1] when there are any, else the
    update's rows.

    Measured on the 10-per-class real MNIST MLP (500 objectives each): public
    images recovered 44 of 100 members exactly (SSIM ≥ 0.9), the update's
    rows 13, single pixels 3.
    """
    if public01 is not None:
        return public01[:limit], "public images"
    rows = torch.cat([delta, -delta]).float().clamp_min(0)
    rows = rows[rows.amax(1) > 0]
    rows = rows / rows.amax(1, keepdim=True)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    return rows[order[:limit]], "rows of the update"


@dataclass
class InitAwareRun:
    """Candidates of the init-aware mode and what it found on the way."""

    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    targets: torch.Tensor  # (N,) the classifier's label for each
    confidence: torch.Tensor  # (N,)
    planned: int
    done: int
    seconds: float
    notes: list[str]
    span: UpdateSpan | None  # the exact pixel span of a dense first layer, when there is one
    feature_span: FeatureSpan | None = None  # the first linear layer's update span, behind any backbone


@dataclass(frozen=True)
class SpanPush:
    """How the feature-span stage runs: its starts and steps come from the effort level."""

    starts: int
    steps: int
    lr: float


def _span_starts(prior: torch.Tensor | None, count: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Public images to start from (every one when there are fewer), else mid-grey noise: (n, C, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    if prior is not None and len(prior):
        return to_float01(prior[torch.randperm(len(prior), generator=generator)[:count]])
    return (0.5 + 0.1 * torch.randn(count, *shape, generator=generator)).clamp(0, 1)


def programmes_for(span: UpdateSpan, limit: int) -> int:
    """How many extreme-image programmes run: at most ``limit``, and fewer as the span widens."""
    return max(1, min(limit, PROGRAMME_BUDGET // span.update_rank))


def _pixel_span_candidates(target: TargetModel, initial: dict[str, torch.Tensor], delta: torch.Tensor,
                           span: UpdateSpan, prior: torch.Tensor | None, programmes: int,
                           keep_going: Callable[[int], bool],
                           notes: list[str]) -> tuple[list[torch.Tensor], int, int]:
    """A dense first layer's extreme images and unit ratios: candidates, objectives planned and done.

    ``programmes``: how many extreme-image programmes to run, already capped by the caller.
    """
    public01 = to_float01(prior).flatten(1) if prior is not None and len(prior) else None
    objectives, source = objectives_for(delta, public01, programmes)
    faces = span_faces(span.basis, public01)
    notes.append(faces.note() if faces is not None else NOT_MEASURED)
    images, done = extreme_candidates(span, objectives, target.input_shape, keep_going)
    notes.append(f"init-aware mode: {len(images)} extreme images of the span, steered by {done} of "
                 f"{len(objectives)} {source}")
    parts = [images]
    bias_delta = first_layer_bias_update(target, initial)
    if bias_delta is not None:
        ratios = unit_ratio_images(delta, bias_delta, target)
        parts.append(ratios)
        notes.append(f"init-aware mode: {len(ratios)} unit ratios ±ΔWⱼ/Δbⱼ of the first layer (each a weighted mean "
                     "of the training inputs that reached unit j)")
    return parts, len(objectives), done


def _feature_span_candidates(target: TargetModel, initial: dict[str, torch.Tensor], prior: torch.Tensor | None,
                             push: SpanPush, keep_going: Callable[[int], bool],
                             notes: list[str]) -> tuple[torch.Tensor | None, FeatureSpan | None, int]:
    """Public images pushed into the first linear layer's update span: candidates, the span, steps done."""
    forward, why = first_linear_forward(target)
    if forward is None:
        notes.append(f"feature span skipped: {why}")
        return None, None, 0
    with torch.no_grad():
        width = forward(torch.zeros(1, *target.input_shape, device=target.device))[1].shape[1]
    span, note = feature_span(linear_update(target, initial, width), target.device, target.num_classes)
    notes.append(note)
    if span is None:
        return None, None, 0
    starts = _span_starts(prior, push.starts, target.input_shape).to(target.device)
    with torch.enable_grad():
        images, done = push_into_span(forward, span, starts, push.steps, push.lr, keep_going)
    notes.append(f"feature span: {len(images)} images pushed for {done} of {push.steps} steps")
    return images.cpu(), span, done


@torch.no_grad()
def invert_init_aware(target: TargetModel, init_path: Path, prior: torch.Tensor | None, limit: int,
                      push: SpanPush | None = None, budget_s: float | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      callbacks: InversionCallbacks | None = None) -> InitAwareRun:
    """Candidates from the update θ − θ₀, labelled by the classifier.

    A dense first layer gives its exact pixel span's extreme images (at most
    ``limit``, fewer as the span widens: ``programmes_for``) and unit ratios;
    behind a backbone, the first linear layer gives public images pushed into
    its update's span (``push``; None skips that stage).
    """
    started = time.monotonic()
    initial = load_initial_state(init_path)
    notes: list[str] = []
    planned = done = 0
    dense = first_layer_is_dense(target)
    objectives = min(limit, len(prior)) if prior is not None and len(prior) else limit
    delta = span = None
    if dense:
        delta = first_layer_update(target, initial)
        span, note = update_span(delta, target)
        notes.append(note)
        objectives = programmes_for(span, objectives) if span is not None else 0
    # A dense first layer's span is the pixel stage's own: pushing public images into it as well added only
    # generic digits (measured on the 50-per-class MNIST MLP: leak 0.574 and a fail without it, 0.514 and a pass
    # with it), so the feature stage runs behind a backbone only.
    push = None if dense else push
    pushing = push.steps if push is not None else 0
    progress = _Progress(callbacks, (objectives if dense else 0) + pushing, started, budget_s, should_stop)
    if not dense and push is None:
        raise ModelError("--init on a classifier whose first layer is not fully connected on the flattened input needs "
                         "the feature-span stage (span_steps > 0)")
    parts: list[torch.Tensor] = []
    if delta is not None and span is not None:
        progress.phase("extreme images of the first layer's span")
        parts, planned, done = _pixel_span_candidates(target, initial, delta, span, prior, objectives,
                                                      progress.keep_going_from(0), notes)
    fspan = None
    if push is not None:
        progress.phase("public images pushed into the first linear layer's update span")
        pushed, fspan, steps = _feature_span_candidates(target, initial, prior, push,
                                                        progress.keep_going_from(planned), notes)
        if pushed is not None:
            parts.append(pushed)
            planned += push.steps
            done += steps
    images, targets, confidence = _labelled(target, parts)
    return InitAwareRun(images, targets, confidence, planned, done, time.monotonic() - started, notes, span, fspan)


class _Progress:
    """The callbacks of one init-aware run, and whether it may go on (its budget, a stop request)."""

    def __init__(self, callbacks: InversionCallbacks | None, total: int, started: float, budget_s: float | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.callbacks, self.total, self.started = callbacks, total, started
        self.budget_s, self.should_stop = budget_s, should_stop
        if callbacks is not None and callbacks.on_start is not None:
            callbacks.on_start(total)

    def phase(self, name: str) -> None:
        if self.callbacks is not None and self.callbacks.on_phase is not None:
            self.callbacks.on_phase(name)

    def keep_going_from(self, offset: int) -> Callable[[int], bool]:
        """The check a stage calls before its step i: reports the step, then says whether to take it."""
        def keep_going(i: int) -> bool:
            if self.callbacks is not None and self.callbacks.on_step is not None:
                self.callbacks.on_step(offset + i, self.total, {})
            late = self.budget_s is not None and time.monotonic() - self.started > self.budget_s
            return not late and not (self.should_stop is not None and self.should_stop())
        return keep_going


def _labelled(target: TargetModel, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates (N, C, H, W), the classifier's label for each (N,) and its confidence (N,)."""
    images = torch.cat(parts) if parts else torch.zeros(0, *target.input_shape)
    if not len(images):
        return images, torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    logits = target.logits(images.to(target.device)).float().cpu()
    targets = logits.argmax(1)
    return images, targets, logits.softmax(1).gather(1, targets[:, None]).flatten()


def span_push(config: InversionConfig) -> SpanPush | None:
    """The feature-span stage's settings from the inversion config; None when it is off (0 steps)."""
    if config.span_steps <= 0:
        return None
    return SpanPush(starts=config.span_starts, steps=config.span_steps, lr=config.span_lr)


def init_aware_inversion(target: TargetModel, init_path: Path, prior: tuple[torch.Tensor, torch.Tensor] | None,
                         config: InversionConfig, should_stop: Callable[[], bool] | None,
                         callbacks: InversionCallbacks | None) -> InversionResult:
    """The audit's entry point: an ``InversionResult`` of the init-aware mode.

    When the update has no usable span (an adaptive optimiser breaks it) the
    ordinary inversion runs and the result says why.
    """
    limit = max(config.candidates_per_class * target.num_classes, MAX_OBJECTIVES)
    run = invert_init_aware(target, init_path, None if prior is None else prior[0], limit, span_push(config),
                            config.budget_s, should_stop, callbacks)
    if (run.span is None and run.feature_span is None) or len(run.images) == 0:
        fallback = invert(target, config, callbacks=callbacks, should_stop=should_stop, prior=prior)
        fallback.notes[:0] = run.notes
        return fallback
    return InversionResult(
        images=run.images, targets=run.targets, confidence=run.confidence, mode="init-aware",
        threat_model=THREAT_MODEL, steps=run.done, planned_steps=run.planned, seconds=run.seconds,
        completed_fraction=run.done / max(1, run.planned), notes=run.notes,
        complete=run.done >= run.planned, interrupted=should_stop is not None and should_stop(),
    )
