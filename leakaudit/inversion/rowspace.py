"""The first layer's row space: where a fully connected first layer keeps its training images.

Why: gradient descent changes a first ``Linear`` layer only by outer products
δ xᵢᵀ of back-propagated errors and training inputs, so its learned part lies
in the span of the training images. When the random initialisation has been
small (or decayed away), that span stands out of the weights' singular
spectrum as a handful of directions far above the initialisation's bulk. The
classifier cannot see anything outside the span; projecting candidates onto it
removes what the image prior made up there and keeps what the weights hold.

On real 784-dimensional data the span is only partly visible this way. On
the 10-per-class MNIST MLP (small init, full-batch GD) the update θ − θ₀ has
rank exactly 100, but its singular values fall from 3.05 (σ₁) to 0.14 (σ₂₀),
0.031 (σ₅₀) and 0.0024 (σ₁₀₀), while the initial weights' spectrum reaches
0.122: only ~22 learned directions stand above the random bulk, hence the 20
this rule finds. The other 80 are recoverable only with θ₀ (``initaware.py``).

Only models whose first layer is fully connected on the flattened input have
such a span; for any other model, or a first layer of (nearly) full rank, the
prior is skipped with a note.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leakaudit.model.target import TargetModel


@dataclass(frozen=True)
class RowSpace:
    """An orthonormal basis of the first layer's learned directions, in the classifier's normalised input space."""

    basis: torch.Tensor  # (r, D) orthonormal rows, D = C·H·W
    mean: torch.Tensor  # (1, C, 1, 1) the target's input normalisation
    std: torch.Tensor  # (1, C, 1, 1)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    def _flat(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels → (N, D): what the first layer is given."""
        return ((x01 - self.mean) / self.std).flatten(1)

    def project(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels → the same images with the part the first layer cannot see removed.

        Not clamped: the caller decides how to bring pixels back into [0, 1].
        """
        u = self._flat(x01)  # (N, D)
        kept = (u @ self.basis.T) @ self.basis  # (N, D)
        return kept.view_as(x01) * self.std + self.mean

    def outside_fraction(self, x01: torch.Tensor) -> torch.Tensor:
        """(N,) share of each image's normalised energy outside the span: ≈ 0 for a training image.

        ‖u − Pu‖² / ‖u‖² with u the normalised image; scale-free, so it cannot
        be lowered by fading the image.
        """
        u = self._flat(x01)  # (N, D)
        inside = (u @ self.basis.T).pow(2).sum(1)  # (N,) ‖Pu‖² (orthonormal basis)
        total = u.pow(2).sum(1).clamp_min(1e-12)
        return (1.0 - inside / total).clamp_min(0.0)


MAX_WEIGHTS = 100_000_000  # above this the decomposition would cost more than the inversion


def _right_singular(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending) and right singular vectors (as rows) of an (out, D) weight.

    Through the smaller Gram matrix, so a wide first layer costs an
    out × out eigendecomposition rather than a full SVD.
    """
    w = w.double()
    if w.shape[0] >= w.shape[1]:
        _, singular, vh = torch.linalg.svd(w, full_matrices=False)
        return singular, vh
    eigenvalues, u = torch.linalg.eigh(w @ w.T)  # ascending
    singular = eigenvalues.flip(0).clamp_min(0.0).sqrt()  # (out,)
    u = u.flip(1)
    vh = (u.T @ w) / singular.clamp_min(1e-30)[:, None]  # (out, D): rows with zero singular value are unused
    return singular, vh


def first_layer_is_dense(target: TargetModel) -> bool:
    """Whether the first weight matrix is a fully connected layer on the flattened input."""
    weights = [p for p in target.parameters() if p.dim() >= 2]
    size = 1
    for side in target.input_shape:
        size *= side
    return bool(weights) and weights[0].dim() == 2 and weights[0].shape[1] == size


def first_layer_rowspace(target: TargetModel, bulk_factor: float = 3.0,
                         max_rank_fraction: float = 0.5) -> tuple[RowSpace | None, str]:
    """The learned row space of a fully connected first layer, or None and the reason.

    Rank: singular values above ``bulk_factor`` × the median one (the median
    sits inside the initialisation's bulk whenever the rank is low). A rank
    above ``max_rank_fraction`` of the input size means the span holds no
    usable information, and the check that the logits really ignore the
    complement guards against a first weight that is not the first layer.
    """
    if not first_layer_is_dense(target):
        return None, "row-space prior skipped: the first layer is not fully connected on the flattened input"
    weights = [p for p in target.parameters() if p.dim() >= 2]
    size = weights[0].shape[1]
    if weights[0].numel() > MAX_WEIGHTS:
        return None, (f"row-space prior skipped: the first layer has {weights[0].numel():,} weights "
                      f"(limit {MAX_WEIGHTS:,})")
    singular, vh = _right_singular(weights[0].detach())
    rank = int((singular > bulk_factor * singular.median()).sum())
    if rank == 0 or rank > max_rank_fraction * size:
        return None, (f"row-space prior skipped: the first layer's weights have {rank} of {size} directions above "
                      "their random bulk (no low-rank learned span)")
    space = RowSpace(vh[:rank].to(device=target.device, dtype=torch.float32), target.mean, target.std)
    if not _logits_ignore_complement(target, space):
        return None, "row-space prior skipped: the logits are not invariant outside the first weight's span"
    return space, (f"row-space prior: candidates projected onto the {rank} learned directions of the first layer "
                   f"(of {size})")


@torch.no_grad()
def _logits_ignore_complement(target: TargetModel, space: RowSpace, tolerance: float = 0.05) -> bool:
    """Per unit of movement, leaving the span must move the logits far less than moving within it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, *target.input_shape, generator=gen).to(target.device) * 0.5 + 0.25
    noise = torch.randn(4, *target.input_shape, generator=gen).to(target.device) * 0.1
    inside = space.project(x + noise) - space.project(x)  # the noise's component in the span, in pixels
    outside = noise - inside
    base = target.logits(x)
    within = (target.logits(x + inside) - base).norm() / inside.norm().clamp_min(1e-12)
    across = (target.logits(x + outside) - base).norm() / outside.norm().clamp_min(1e-12)
    return bool(across <= tolerance * within)
