"""The first layer's learned update W₁ − W₁⁰ and the pixel span that holds every training image.

For a fully connected first layer trained by (S)GD the rows of the update lie
in the span of the training images, and the spectrum of the update ends in a
cliff down to rounding noise; ``update_span`` finds that cliff and maps the
span to pixels. The bias update gives each unit's weighted mean input
(``unit_ratio_images``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from leakaudit.errors import ModelError
from leakaudit.model.target import TargetModel

# A drop in the update's singular values at least this steep marks an exact span. Measured: ×2,100 at rank 100
# (10 MNIST digits per class, σ₁₀₁ at float32 rounding), ×8.6 at rank 500 (50 per class: the last members' share
# of the update is barely above rounding); Adam-trained first layers drop by at most ×1.7 between neighbours.
MIN_GAP = 5.0
# Below the cliff lies the weights' rounding: σ_{r+1}/σ₁ was 4e-7 and 2e-7 on those MLPs, 1e-5 for Adam's tail.
ROUNDING_FLOOR = 2e-6
ZERO_SINGULAR = 1e-10  # relative to σ₁: below this a singular value is an exact zero (an unlit pixel, a dead unit)
# Units whose ratio ΔWⱼ/Δbⱼ becomes candidates (the ones whose bias moved most), each with both signs. Measured on
# the real MNIST MLPs (1,000 units): all 1,000 at 10 per class give members ≥ SSIM 0.4 81 %, leak 0.82 alone; at
# 50 per class 23 %, 0.58 alone (the extreme images: 0.51). The negated ratio adds 3 points at both sizes: a mean
# with weights of both signs, clipped to the pixel range, keeps the strokes of its negative part.
MAX_RATIO_UNITS = 2000


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
        raise ModelError("--init: the first weight of the initial state does not have the model's shape "
                         f"{tuple(first.shape)}")
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
