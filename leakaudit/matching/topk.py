"""What every search hands back and the bookkeeping they share: the best-match record, the running top-k.

The exact, large-image and prefiltered searches (``search.py``) differ in how
they score pairs; they keep their best matches, mask pairs of other classes,
poll a stop check and package the result the same way, here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from leakaudit.errors import DataError

StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class BestMatches:
    """Best matches in both directions.

    Per image (M): ``best_index`` / ``best_ssim`` (the top candidate) and
    ``topk_index`` / ``topk_ssim`` (M, k), best first. Per candidate (N):
    ``nearest_image`` / ``nearest_ssim``. When matching is restricted to the
    same class and an image has fewer than k candidates of its class, the
    missing entries hold index -1 and SSIM NaN (likewise for a candidate with
    no image of its class). ``exact`` is False when the prefilter was used:
    then every score is an exact SSIM, but a better pair may have been skipped.
    ``cut``: a stop ended the search early; the per-image arrays then cover
    only the first images (at least one), and ``exact`` says whether every
    candidate was scored against them.
    """

    best_index: torch.Tensor  # (M,) int64
    best_ssim: torch.Tensor  # (M,) float32
    topk_index: torch.Tensor  # (M, k) int64
    topk_ssim: torch.Tensor  # (M, k) float32
    nearest_image: torch.Tensor  # (N,) int64
    nearest_ssim: torch.Tensor  # (N,) float32
    exact: bool
    pairs_scored: int
    cut: bool = False


def check_inputs(
    candidates: torch.Tensor,
    images: torch.Tensor,
    candidate_labels: torch.Tensor | None,
    image_labels: torch.Tensor | None,
    same_class: bool,
    k: int,
) -> None:
    if candidates.ndim != 4 or images.ndim != 4:
        raise DataError(
            f"candidates and images must be (N, C, H, W); got {tuple(candidates.shape)} and {tuple(images.shape)}"
        )
    if candidates.shape[1:] != images.shape[1:]:
        raise DataError(
            f"candidates are {tuple(candidates.shape[1:])} but images are {tuple(images.shape[1:])} (C, H, W)"
        )
    if candidates.shape[0] == 0 or images.shape[0] == 0:
        raise DataError("matching needs at least one candidate and one image")
    if k < 1:
        raise DataError("k must be at least 1")
    if same_class:
        if candidate_labels is None or image_labels is None:
            raise DataError("same_class matching needs candidate_labels and image_labels")
        if candidate_labels.shape != (candidates.shape[0],) or image_labels.shape != (images.shape[0],):
            raise DataError("candidate_labels and image_labels must have one label per image")


def class_mask(
    candidate_labels: torch.Tensor | None, image_labels: torch.Tensor | None, same_class: bool
) -> Callable[[slice, slice], torch.Tensor | None]:
    """A function giving, for a (candidate slice, image slice) block, where pairs are not allowed."""

    def mask(ci: slice, ij: slice) -> torch.Tensor | None:
        if not same_class or candidate_labels is None or image_labels is None:
            return None
        return candidate_labels[ci, None] != image_labels[None, ij]  # (n, m)

    return mask


def finalise(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark disallowed (-inf) entries as index -1 and SSIM NaN."""
    missing = torch.isneginf(values)
    return values.masked_fill(missing, float("nan")), index.masked_fill(missing, -1)


def merge_topk(
    run_val: torch.Tensor, run_idx: torch.Tensor, new_val: torch.Tensor, new_idx: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two (m, ·) score lists into the best k per row."""
    val = torch.cat([run_val, new_val], 1)
    idx = torch.cat([run_idx, new_idx], 1)
    top_val, pos = torch.topk(val, min(k, val.shape[1]), dim=1)
    return top_val, torch.gather(idx, 1, pos)


def asked(should_stop: StopCheck | None) -> bool:
    """Whether a stop check was given and asks to stop now (searches without one never poll)."""
    return should_stop is not None and bool(should_stop())



def result_of(top_val: torch.Tensor, top_idx: torch.Tensor, near_val: torch.Tensor, near_idx: torch.Tensor, *,
            exact: bool, pairs_scored: int, cut: bool = False) -> BestMatches:
    """Package both directions' results (unfilled slots become index -1 / NaN)."""
    top_val, top_idx = finalise(top_val, top_idx)
    near_val, near_idx = finalise(near_val, near_idx)
    return BestMatches(
        best_index=top_idx[:, 0].clone(), best_ssim=top_val[:, 0].clone(), topk_index=top_idx, topk_ssim=top_val,
        nearest_image=near_idx, nearest_ssim=near_val, exact=exact, pairs_scored=pairs_scored, cut=cut,
    )
