"""Matching with the images sharded over the ranks of a distributed run, merged to the single-process result."""

from __future__ import annotations

from typing import Any

import torch

from leakaudit.runtime.distributed import DistContext, DistributedError
from leakaudit.errors import LeakAuditError
from leakaudit.matching.search import best_matches
from leakaudit.matching.topk import BestMatches


def sharded_best_matches(candidates: torch.Tensor, images: torch.Tensor, ctx: DistContext, **kw: Any) -> BestMatches:
    """``best_matches`` with the images sharded over the ranks; the merged result on every rank.

    Candidates are taken from rank 0 (so every rank matches the very same
    ones). Shards are aligned to ``image_chunk``: each rank scores exactly the
    chunks one process would, and the merge (per image: concatenate; per
    candidate: the best over ranks, ties to the lowest image index, as one
    process does) reproduces ``best_matches`` bit for bit. ``progress`` reports
    this rank's shard. With the prefilter the per-candidate screening is done
    per shard, so more pairs may be scored than by one process (never fewer):
    a best match can only come out higher. Choose ``prefilter`` (e.g. with
    ``auto_prefilter``) from the whole set, so that every rank uses the same.
    A ``should_stop`` that cuts a rank's shard short keeps the shards before it
    and that shard's prefix: the result covers a prefix of the images on every rank.
    """
    if not ctx.is_distributed:
        return best_matches(candidates, images, **kw)
    with ctx.in_stage("matching"):
        candidates = ctx.broadcast_tensor(candidates)
        chunk = int(kw.get("image_chunk", 512))
        part = ctx.shard(images.shape[0], align=chunk)
        local_kw = dict(kw)
        labels = kw.get("image_labels")
        if labels is not None:
            local_kw["image_labels"] = labels[part]
        local = None
        error = None
        if part.stop > part.start:
            try:
                local = best_matches(candidates, images[part], **local_kw)
            except LeakAuditError as exc:  # bad input is bad on every rank alike: report it, don't hang
                error = str(exc)
        parts = ctx.all_gather_object((part.start, local, error))
    for _, _, err in parts:
        if err is not None:
            raise DistributedError(f"matching failed: {err}")
    shards = [(start, bm) for start, bm, _ in parts if bm is not None]
    pieces = _prefix(shards)
    if not pieces:  # only when there are no images at all: let best_matches say so
        return best_matches(candidates, images, **kw)
    near_val = torch.full((candidates.shape[0],), float("-inf"))
    near_idx = torch.full((candidates.shape[0],), -1, dtype=torch.int64)
    for start, bm in pieces:  # ascending image offset: strict '>' keeps the lowest index on ties
        val = torch.nan_to_num(bm.nearest_ssim, nan=float("-inf"))
        better = val > near_val
        near_val = torch.where(better, val, near_val)
        near_idx = torch.where(better, bm.nearest_image + start, near_idx)
    missing = torch.isneginf(near_val)
    near_val = near_val.masked_fill(missing, float("nan"))
    near_idx = near_idx.masked_fill(missing, -1)
    k = min(bm.topk_index.shape[1] for _, bm in pieces)
    return BestMatches(
        best_index=torch.cat([bm.best_index for _, bm in pieces]),
        best_ssim=torch.cat([bm.best_ssim for _, bm in pieces]),
        topk_index=torch.cat([bm.topk_index[:, :k] for _, bm in pieces]),
        topk_ssim=torch.cat([bm.topk_ssim[:, :k] for _, bm in pieces]),
        nearest_image=near_idx,
        nearest_ssim=near_val,
        exact=all(bm.exact for _, bm in pieces),
        pairs_scored=sum(bm.pairs_scored for _, bm in pieces),
        cut=any(bm.cut for _, bm in pieces) or len(pieces) < len(shards),
    )


def _prefix(pieces: list[tuple[int, BestMatches]]) -> list[tuple[int, BestMatches]]:
    """The shards up to the first one a stop cut (kept: its own prefix), so that the images covered are a prefix."""
    kept = []
    for start, bm in sorted(pieces, key=lambda piece: piece[0]):
        kept.append((start, bm))
        if bm.cut:
            break
    return kept
