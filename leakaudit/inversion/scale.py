"""What changes with the classifier's input size: only above 64×64, so smaller audits stay exactly as they were.

The references and tests audit inputs of at most 32×32; every cost-saving
choice that could move a number is gated on ``large_input`` so that their
documents stay identical. Above it (ImageNet-style models at 128 or 224):
- the informed pre-training fits the generator at its generation size (a
  quarter of the side), where it produces its images before the bilinear
  up-sampling anyway, instead of reconstructing full-resolution priors;
- the no-gradient classifier passes (scoring the candidate pool) run in
  chunks of a few images, so a stop request is seen within seconds.
"""

from __future__ import annotations

LARGE_SIDE = 64  # inputs with more pixels than LARGE_SIDE × LARGE_SIDE are "large"
POOL_CHUNK = 256  # images per no-gradient classifier pass at most


def large_input(shape: tuple[int, int, int]) -> bool:
    """Whether (C, H, W) has more pixels than 64×64: where the cost-saving paths apply."""
    return shape[1] * shape[2] > LARGE_SIDE * LARGE_SIDE


def pool_chunk(shape: tuple[int, int, int]) -> int:
    """Images per no-gradient classifier pass: 256 up to 64×64, then as many as 8 images of 64×64 hold (≥ 1)."""
    if not large_input(shape):
        return POOL_CHUNK
    return max(1, 8 * LARGE_SIDE * LARGE_SIDE * 4 // (shape[1] * shape[2]))
