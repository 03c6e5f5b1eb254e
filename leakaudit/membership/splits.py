"""Which pool images each reference model trains on: IN/OUT masks, balanced and seeded (the online protocol).

The pool is the audit's members and non-members together. Each reference model
trains on a subset of the target's training-set size where the pool allows
(else half the pool). The masks are drawn so every image is IN for about half
of the models: for each model, the images IN least often so far are preferred,
ties broken at random, which keeps every image's IN count within one of R/2
when the subset is half the pool.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Splits:
    """The IN/OUT masks of R reference models over a pool of N images."""

    masks: np.ndarray  # (R, N) bool: True where the model trained on the image
    subset_size: int
    seed: int

    @property
    def models(self) -> int:
        return int(self.masks.shape[0])

    @property
    def masks_sha256(self) -> str:
        """The SHA-256 of the IN/OUT masks (R × N bits), as the document records it and the checkpoints key on it."""
        return masks_sha256(self.masks)

    def in_counts(self) -> np.ndarray:
        """How many models trained on each image."""
        return np.asarray(self.masks.sum(0))

    def to_dict(self) -> dict[str, object]:
        """The recorded splits: each model's IN pool indices, compactly."""
        return {"seed": self.seed, "subset_size": self.subset_size, "models": self.models,
                "in_indices": [np.flatnonzero(m).tolist() for m in self.masks]}


def masks_sha256(masks: np.ndarray) -> str:
    """The SHA-256 of IN/OUT masks packed as bits."""
    return hashlib.sha256(np.packbits(masks.astype(bool)).tobytes()).hexdigest()


def subset_size(pool: int, target_train_size: int) -> int:
    """The target's training-set size where at most half the pool, else half the pool (so OUT models exist)."""
    return max(1, min(target_train_size, pool // 2)) if pool >= 2 else pool


def draw_splits(pool: int, target_train_size: int, models: int, seed: int) -> Splits:
    """R masks over ``pool`` images, each with ``subset_size`` IN, balanced across models."""
    size = subset_size(pool, target_train_size)
    rng = np.random.default_rng(seed)
    masks = np.zeros((models, pool), dtype=bool)
    counts = np.zeros(pool, dtype=np.int64)
    for r in range(models):
        order = np.lexsort((rng.random(pool), counts))  # fewest INs first, ties at random
        chosen = order[:size]
        masks[r, chosen] = True
        counts[chosen] += 1
    return Splits(masks, size, seed)
