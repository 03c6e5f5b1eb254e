"""Which non-members the positive control memorises: a ladder of K per class, taken from the null.

Each rung plants K images per class from the audit's null into a fresh copy of
the architecture; the rest of the null is the rung's own null, so a control
member is never among the non-members it is compared with. The rungs are
nested (the first K of one seeded order per class), and the ladder is capped
so that every class keeps at least as many non-members as it gives up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LADDERS: dict[str, tuple[int, ...]] = {"quick": (1,), "standard": (1, 5), "thorough": (1, 5, 20)}
SPLIT_SEED_OFFSET = 104_729  # the control's own stream, apart from the inversion's and the prior split's


@dataclass(frozen=True)
class Rung:
    """One control: K members per class and the null it is compared with (indices into the audit's null)."""

    k: int
    members: torch.Tensor  # (K · classes,) int64 indices into the null set
    null: torch.Tensor  # (E,) int64 indices into the null set, disjoint from members


def cap(null_labels: torch.Tensor, num_classes: int) -> int:
    """The largest K every class can give while keeping at least as many non-members: ⌊smallest class / 2⌋."""
    counts = torch.bincount(null_labels.long(), minlength=num_classes)
    return int(counts.min()) // 2 if num_classes else 0


def ladder(effort: str, null_labels: torch.Tensor, num_classes: int) -> tuple[int, ...]:
    """The effort's K values within the cap; when the cap cuts the top rung, the cap itself is the last rung."""
    wanted = LADDERS[effort]
    limit = cap(null_labels, num_classes)
    kept = [k for k in wanted if k <= limit]
    if kept and kept[-1] < wanted[-1] and limit > kept[-1]:
        kept.append(limit)
    return tuple(kept)


def rungs(null_labels: torch.Tensor, num_classes: int, ks: tuple[int, ...], seed: int) -> list[Rung]:
    """The members and null of every rung: per class, the first K of one seeded order of that class's null."""
    gen = torch.Generator().manual_seed(seed + SPLIT_SEED_OFFSET)
    orders = []
    for c in range(num_classes):
        idx = torch.nonzero(null_labels == c).flatten()
        orders.append(idx[torch.randperm(idx.numel(), generator=gen)])
    out = []
    for k in ks:
        members = torch.cat([order[:k] for order in orders]).sort().values
        keep = torch.ones(len(null_labels), dtype=torch.bool)
        keep[members] = False
        out.append(Rung(k, members, torch.nonzero(keep).flatten()))
    return out
