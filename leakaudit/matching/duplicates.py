"""Training images that one reconstruction explains together, or that are near-identical to each other.

A finding that shares its reconstruction with other members is weaker
evidence than one matched alone; the report lists the sharers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from leakaudit.errors import DataError
from leakaudit.matching.search import paired_scores, best_matches, screen_features


@dataclass(frozen=True)
class DuplicateGroup:
    """Training images that one reconstruction explains together, or that are near-identical."""

    members: tuple[int, ...]  # training indices, ascending
    reason: str  # "shared_reconstruction" or "near_identical"
    candidate: int | None = None  # the shared reconstruction's index


SHARE_LIMIT = 10  # sharing indices listed per finding; the count is kept in full


@dataclass(frozen=True)
class NearDuplicates:
    """Groups plus, per training index, the groups it belongs to: linear in the images, however large a group."""

    groups: tuple[DuplicateGroup, ...]
    member_groups: dict[int, tuple[int, ...]] = field(default_factory=dict)  # training index → group positions

    def _partners(self, train_index: int) -> set[int]:
        out: set[int] = set()
        for g in self.member_groups.get(int(train_index), ()):
            out.update(self.groups[g].members)
        out.discard(int(train_index))
        return out

    def shares_with(self, train_index: int, limit: int = SHARE_LIMIT) -> list[int]:
        """The value of a finding's ``shares_reconstruction_with``: the lowest ``limit`` partner indices."""
        return sorted(self._partners(train_index))[:limit]

    def share_count(self, train_index: int) -> int:
        """How many other training images a finding is grouped with (``shares_reconstruction_count``)."""
        return len(self._partners(train_index))


def _components(n: int, edges: np.ndarray) -> list[list[int]]:
    """Connected components (size ≥ 2) of an undirected graph on 0..n-1, edges (E, 2)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(root(i), []).append(i)
    return [c for c in comps.values() if len(c) > 1]


@torch.no_grad()
def near_duplicates(
    best_index: torch.Tensor,
    best_ssim: torch.Tensor,
    images: torch.Tensor,
    *,
    indices: torch.Tensor | Sequence[int] | None = None,
    min_ssim: float = 0.0,
    duplicate_ssim: float = 0.95,
) -> NearDuplicates:
    """Group training images that share a best-match reconstruction or are near-identical.

    ``best_index``/``best_ssim`` (M,) come from ``best_matches`` on the
    training images (M, C, H, W). A group "shared_reconstruction" holds the
    images whose best match is the same candidate (only those matched at
    SSIM ≥ ``min_ssim``). A group "near_identical" holds images with SSIM ≥
    ``duplicate_ssim`` to each other (connected components). Near-identity is
    searched for the images in ``indices`` (e.g. the findings) against all
    images, which costs len(indices)·M SSIM pairs; None checks all M·M.
    """
    m = images.shape[0]
    if best_index.shape != (m,) or best_ssim.shape != (m,):
        raise DataError("best_index and best_ssim must have one entry per image")
    groups = _shared_groups(best_index, best_ssim >= min_ssim)
    probe = torch.arange(m) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    if probe.numel() > 0 and m > 1:
        for comp in _components(m, _near_identical_edges(images, probe, duplicate_ssim)):
            groups.append(DuplicateGroup(tuple(comp), "near_identical"))
    member_groups: dict[int, list[int]] = {}
    for position, g in enumerate(groups):
        for i in g.members:
            member_groups.setdefault(i, []).append(position)
    return NearDuplicates(tuple(groups), {i: tuple(p) for i, p in member_groups.items()})


EXACT_NEAR_IDENTITY_PAIRS = 200_000  # beyond this many probe × image pairs, near-identity is screened first


SCREEN_MIN_CORRELATION = 0.8  # thumbnails of images at SSIM ≥ 0.95 correlate far above this


SCREEN_PER_PROBE = 64


def _near_identical_edges(images: torch.Tensor, probe: torch.Tensor, duplicate_ssim: float) -> np.ndarray:
    """(E, 2) pairs (image, probed image) at SSIM ≥ ``duplicate_ssim``.

    Exact all-pairs for small sets. For large ones, exact SSIM only for the
    pairs whose 8×8 thumbnails correlate at ≥ 0.8 (at most 64 per probe), so
    the cost is a thumbnail pass over the images rather than a full SSIM pass.
    """
    m = images.shape[0]
    if probe.numel() * m <= EXACT_NEAR_IDENTITY_PAIRS:
        k = min(m, int(probe.numel()), 16)  # best_matches keeps at most one entry per probe
        near = best_matches(images[probe], images, k=k)  # images × probed: (M, k) best probes per image
        rows = torch.arange(m)[:, None].expand(m, k)
        hit = ((near.topk_ssim >= duplicate_ssim) & (probe[near.topk_index.clamp_min(0)] != rows)
               & (near.topk_index >= 0))
        return torch.stack([rows[hit], probe[near.topk_index[hit]]], 1).numpy()
    fp = screen_features(images[probe])  # (P, d)
    best_val = torch.full((probe.numel(), SCREEN_PER_PROBE), float("-inf"))
    best_idx = torch.full((probe.numel(), SCREEN_PER_PROBE), -1, dtype=torch.int64)
    for start in range(0, m, 8192):
        corr = fp @ screen_features(images[start : start + 8192]).T  # (P, chunk)
        vals = torch.cat([best_val, corr], 1)
        idx = torch.cat([best_idx, torch.arange(start, start + corr.shape[1]).expand(probe.numel(), -1)], 1)
        best_val, pos = vals.topk(min(SCREEN_PER_PROBE, vals.shape[1]), dim=1)
        best_idx = idx.gather(1, pos)
    keep = (best_val >= SCREEN_MIN_CORRELATION) & (best_idx != probe[:, None]) & (best_idx >= 0)
    probe_pos, image_idx = torch.nonzero(keep, as_tuple=True)
    image_idx = best_idx[probe_pos, image_idx]
    scores = paired_scores(images[probe], images, probe_pos, image_idx, None)
    hit = scores >= duplicate_ssim
    return torch.stack([image_idx[hit], probe[probe_pos[hit]]], 1).numpy()


def _shared_groups(best_index: torch.Tensor, eligible: torch.Tensor) -> list[DuplicateGroup]:
    """Images with the same best-match candidate, by one sort (not one pass over the images per candidate)."""
    idx = torch.nonzero(eligible & (best_index >= 0)).flatten()
    if idx.numel() < 2:
        return []
    order = torch.argsort(best_index[idx], stable=True)
    cands, counts = torch.unique_consecutive(best_index[idx][order], return_counts=True)
    groups = []
    for cand, members in zip(cands.tolist(), torch.split(idx[order], counts.tolist())):
        if members.numel() > 1:
            groups.append(DuplicateGroup(tuple(sorted(members.tolist())), "shared_reconstruction", int(cand)))
    return groups
