"""The per-image signals the attacks read from logits, computed stably.

φ(x) = log p_y − log(1 − p_y) is the logit-scaled confidence in the true
label; from logits z it is z_y − logsumexp_{k≠y} z_k, which never takes the
log of a rounded-off 1 − p. When the recipe mirrors images the model saw both
versions, so the signal is the mean over the image and its mirror.
"""

from __future__ import annotations

import torch


def scaled_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """φ of each row of ``logits`` (..., N, K) for its label (N,): float64, shape (..., N)."""
    z = logits.double()
    index = labels.long().view(*([1] * (z.dim() - 2)), -1, 1).expand(*z.shape[:-1], 1)
    true = z.gather(-1, index).squeeze(-1)
    others = z.scatter(-1, index, float("-inf"))
    return true - torch.logsumexp(others, dim=-1)


def true_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p_y of each row (float64, shape (..., N)): RMIA's Pr(x | θ)."""
    z = logits.double()
    index = labels.long().view(*([1] * (z.dim() - 2)), -1, 1).expand(*z.shape[:-1], 1)
    return torch.log_softmax(z, dim=-1).gather(-1, index).squeeze(-1).exp()


def signal(logits: torch.Tensor, labels: torch.Tensor, mirrored: torch.Tensor | None) -> torch.Tensor:
    """φ averaged over the image and its mirror when the mirror's logits are given."""
    phi = scaled_confidence(logits, labels)
    return phi if mirrored is None else (phi + scaled_confidence(mirrored, labels)) / 2


def probability(logits: torch.Tensor, labels: torch.Tensor, mirrored: torch.Tensor | None) -> torch.Tensor:
    """p_y averaged over the image and its mirror when the mirror's logits are given."""
    p = true_probability(logits, labels)
    return p if mirrored is None else (p + true_probability(mirrored, labels)) / 2
