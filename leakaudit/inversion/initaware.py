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
from typing import Any
from pathlib import Path

import numpy as np
import torch

from leakaudit.errors import ConfigError, ModelError
from leakaudit.inversion.featurespan import FeatureSpan, feature_span, first_linear_forward, linear_update, push_into_span
from leakaudit.inversion.invert import InversionCallbacks, InversionResult, invert
from leakaudit.inversion.rowspace import first_layer_is_dense
from leakaudit.inversion.spanfaces import NOT_MEASURED, span_faces
from leakaudit.loading import load_state
from leakaudit.matching.ssim import to_float01
from leakaudit.model.target import TargetModel
from leakaudit.sanitize import terminal_text

THREAT_MODEL = (
    "Init-aware (stronger than informed): an attacker holding the model's weights, its weights before training "
    "(--init) and public images from the training distribution; an upper bound for attackers who know or rebuild "
    "the initialisation."
)
# A drop in the update's singular values at least this steep marks an exact span. Measured: ×2,100 at rank 100
# (10 MNIST digits per class, σ₁₀₁ at float32 rounding), ×8.6 at rank 500 (50 per class: the last members' share
# of the update is barely above rounding); Adam-trained first layers drop by at most ×1.7 between neighbours.
MIN_GAP = 5.0
# Below the cliff lies the weights' rounding: σ_{r+1}/σ₁ was 4e-7 and 2e-7 on those MLPs, 1e-5 for Adam's tail.
ROUNDING_FLOOR = 2e-6
ZERO_SINGULAR = 1e-10  # relative to σ₁: below this a singular value is an exact zero (an unlit pixel, a dead unit)
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
# Units whose ratio ΔWⱼ/Δbⱼ becomes candidates (the ones whose bias moved most), each with both signs. Measured on
# the real MNIST MLPs (1,000 units): all 1,000 at 10 per class give members ≥ SSIM 0.4 81 %, leak 0.82 alone; at
# 50 per class 23 %, 0.58 alone (the extreme images: 0.51). The negated ratio adds 3 points at both sizes: a mean
# with weights of both signs, clipped to the pixel range, keeps the strokes of its negative part.
MAX_RATIO_UNITS = 2000


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


def _first_matrix(tensors: list[torch.Tensor]) -> int | None:
    """Index of the first tensor with two or more dimensions: the first layer's weight, in either state."""
    return next((i for i, t in enumerate(tensors) if t.dim() >= 2), None)


def _first_layer_pairs(target: TargetModel, initial: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], int | None,
                                                                                       list[torch.Tensor], int | None]:
    """The model's parameters and the initial state's tensors, in order, each with its first weight's index."""
    params = [p.detach().cpu() for p in target.parameters()]
    start = list(initial.values())
    return params, _first_matrix(params), start, _first_matrix(start)


def first_layer_update(target: TargetModel, initial: dict[str, torch.Tensor]) -> torch.Tensor:
    """W₁ − W₁⁰ (out, D) of a fully connected first layer; ModelError when there is none to compare."""
    params, i, start, j = _first_layer_pairs(target, initial)
    size = int(np.prod(target.input_shape))
    if i is None or params[i].dim() != 2 or params[i].shape[1] != size:
        raise ModelError("--init needs a classifier whose first layer is fully connected on the flattened input")
    first = params[i]
    if j is None or tuple(start[j].shape) != tuple(first.shape):
        raise ModelError(f"--init: the first weight of the initial state does not have the model's shape {tuple(first.shape)}")
    return first.double() - start[j].double()


def first_layer_bias_update(target: TargetModel, initial: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """b₁ − b₁⁰ of the first layer, or None when it has no bias (the parameter after its weight, of its width)."""
    params, i, start, j = _first_layer_pairs(target, initial)
    if i is None or j is None or i + 1 >= len(params) or j + 1 >= len(start):
        return None
    bias, bias0 = params[i + 1], start[j + 1]
    width = params[i].shape[0]
    if bias.dim() != 1 or bias.shape[0] != width or tuple(bias0.shape) != (width,):
        return None
    return bias.double() - bias0.double()


def _input_scale(target: TargetModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input normalisation as flat (D,) mean and std: the first layer sees (x − mean) / std."""
    shape = target.input_shape
    return (target.mean.detach().cpu().double().expand(1, *shape).flatten(),
            target.std.detach().cpu().double().expand(1, *shape).flatten())


def unit_ratio_images(delta: torch.Tensor, bias_delta: torch.Tensor, target: TargetModel,
                      limit: int = MAX_RATIO_UNITS) -> torch.Tensor:
    """(n, C, H, W) in [0, 1]: ±ΔWⱼ/Δbⱼ in pixels for the ``limit`` units whose bias moved most.

    Units whose bias did not move (it never fired on a member) carry no mean and are left out.
    """
    shape = target.input_shape
    moved = bias_delta.abs() > ZERO_SINGULAR * float(bias_delta.abs().max().clamp_min(1e-300))
    units = torch.nonzero(moved).flatten()
    units = units[torch.argsort(-bias_delta[units].abs(), stable=True)[:limit]]
    if len(units) == 0:
        return torch.zeros(0, *shape)
    ratios = delta[units] / bias_delta[units, None]
    mean, std = _input_scale(target)
    pixels = torch.cat([mean + std * ratios, mean - std * ratios])
    pixels = pixels[torch.isfinite(pixels).all(1)]
    return pixels.clamp(0, 1).float().view(-1, *shape)


@dataclass(frozen=True)
class UpdateSpan:
    """Orthonormal basis (r, D) of the span in pixel space that holds every training image."""

    basis: torch.Tensor
    update_rank: int  # rank of the first layer's update
    gap: float  # σ_r / σ_{r+1}: how sharp the cliff is

    @torch.no_grad()
    def outside_fraction(self, x01: torch.Tensor) -> torch.Tensor:
        """(N,) share of each image's energy outside the span: ~0 for members."""
        u = x01.flatten(1).double()
        inside = (u @ self.basis.T).pow(2).sum(1)
        return (1.0 - inside / u.pow(2).sum(1).clamp_min(1e-12)).clamp_min(0.0).float()


def update_span(delta: torch.Tensor, target: TargetModel, min_gap: float = MIN_GAP) -> tuple[UpdateSpan | None, str]:
    """The span of the update's rows, mapped to pixels; None and the reason when the spectrum has no cliff.

    The rows span the first layer's inputs u = (x − mean) / std, so the pixel
    images lie in span{std·u} plus the mean image's direction.
    """
    _, singular, vh = torch.linalg.svd(delta, full_matrices=False)
    if singular.numel() < 2 or float(singular[0]) == 0.0:
        return None, "init-aware mode: the first layer did not change in training"
    # Pixels no member ever lights, and hidden units that never fired, leave exactly zero singular values;
    # the span's cliff is the steepest drop above them, down to the rounding noise of the weights.
    nonzero = int((singular > ZERO_SINGULAR * singular[0]).sum())
    if nonzero < 2:
        return None, "init-aware mode: the first layer's update has rank 1"
    ratios = singular[: nonzero - 1] / singular[1:nonzero]
    to_floor = (ratios >= min_gap) & (singular[1:nonzero] <= ROUNDING_FLOOR * singular[0])
    if not bool(to_floor.any()):
        rank = int(ratios.argmax()) + 1
        return None, (f"init-aware mode: the first layer's update has no exact low-rank span (steepest drop "
                      f"×{float(ratios[rank - 1]):.1f} at {rank} of {nonzero} directions, not down to rounding); "
                      "adaptive optimisers such as Adam break the span")
    rank = int(torch.nonzero(to_floor).flatten()[0]) + 1
    gap = float(ratios[rank - 1])
    mean, std = _input_scale(target)
    rows = vh[:rank] * std  # (r, D)
    if float(mean.abs().max()) > 0:
        rows = torch.cat([rows, mean[None]])
    q, _ = torch.linalg.qr(rows.T)  # (D, r')
    note = (f"init-aware mode: the first layer's update has rank {rank} (σ_{rank}/σ_{rank + 1} = {gap:.3g}); "
            "candidates are the extreme non-negative images of its span")
    return UpdateSpan(q.T.contiguous(), rank, gap), note


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
    x = basis.T @ res.x
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
    total = (objectives if dense else 0) + pushing
    if callbacks is not None and callbacks.on_start is not None:
        callbacks.on_start(total)

    def phase(name: str) -> None:
        if callbacks is not None and callbacks.on_phase is not None:
            callbacks.on_phase(name)

    def keep_going_from(offset: int) -> Callable[[int], bool]:
        def keep_going(i: int) -> bool:
            if callbacks is not None and callbacks.on_step is not None:
                callbacks.on_step(offset + i, total, {})
            late = budget_s is not None and time.monotonic() - started > budget_s
            return not late and not (should_stop is not None and should_stop())
        return keep_going

    if not dense and push is None:
        raise ModelError("--init on a classifier whose first layer is not fully connected on the flattened input needs "
                         "the feature-span stage (span_steps > 0)")
    parts: list[torch.Tensor] = []
    if delta is not None and span is not None:
        phase("extreme images of the first layer's span")
        parts, planned, done = _pixel_span_candidates(target, initial, delta, span, prior, objectives,
                                                      keep_going_from(0), notes)
    fspan = None
    if push is not None:
        phase("public images pushed into the first linear layer's update span")
        pushed, fspan, steps = _feature_span_candidates(target, initial, prior, push, keep_going_from(planned), notes)
        if pushed is not None:
            parts.append(pushed)
            planned += push.steps
            done += steps
    shape = target.input_shape
    images = torch.cat(parts) if parts else torch.zeros(0, *shape)
    logits = target.logits(images.to(target.device)).float().cpu() if len(images) else torch.zeros(0, target.num_classes)
    targets = logits.argmax(1) if len(images) else torch.zeros(0, dtype=torch.int64)
    confidence = logits.softmax(1).gather(1, targets[:, None]).flatten() if len(images) else torch.zeros(0)
    return InitAwareRun(images, targets, confidence, planned, done, time.monotonic() - started, notes, span, fspan)


def span_push(config: Any) -> SpanPush | None:
    """The feature-span stage's settings from the inversion config; None when it is off (0 steps)."""
    if config.span_steps <= 0:
        return None
    return SpanPush(starts=config.span_starts, steps=config.span_steps, lr=config.span_lr)


def init_aware_inversion(target: TargetModel, init_path: Path, prior: tuple[torch.Tensor, torch.Tensor] | None, config: Any,
                         should_stop: Callable[[], bool] | None, callbacks: Any) -> Any:
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
