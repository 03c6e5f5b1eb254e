"""All-pairs best match between candidate reconstructions and images.

Every image (a training or holdout sample) gets its best-matching candidates
by SSIM, and every candidate its nearest image. Memory stays bounded however
many images there are: images are streamed in chunks and only the running
top-k is kept, never the (N, M) matrix. Candidates are prepared once per pass
while their prepared form fits ``max_prepared_bytes``; beyond that they are
taken in groups, and the images are streamed once per group.

Exact by default. The optional prefilter ranks pairs by a cheap correlation
of downsampled images and computes exact SSIM only for each image's top-P
candidates (and each candidate's top-P images); it can miss a best match,
which would understate leakage, so it is opt-in and its recall is measured by
``bench/bench_matching.py``.

A stop check (``should_stop``) is polled between chunks; when it asks, the
search ends at the next chunk with what it has: a prefix of the images, each
with its best matches over the candidates scored so far (``cut``). Polling
changes nothing else: an uncut search is the same, number for number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from leakaudit.errors import DataError
from leakaudit.matching.topk import (BestMatches, StopCheck, asked, check_inputs, class_mask, merge_topk,
                                     result_of)
from leakaudit.matching.ssim import (block_ssim, local_stats, prepare, prepare_left, prepare_right,
                                     ssim_map_from_stats)

# Prepared candidates take ~248·C·(H-10)·(W-10)·4 bytes each (~480 kB at 32×32 gray,
# ~320 kB at 28×28): 768 MiB holds 2,000 candidates at 28×28 in one group.
DEFAULT_MAX_PREPARED_BYTES = 768 * 2**20
PREFILTER_SIDE = 8  # images are average-pooled to 8×8 for the correlation screen
_PAIR_CHUNK = 4096
# Large images (more pixels than 64×64): the all-pairs kernel's operands hold 248 numbers per position and image
# (≈134 MB for one 3×224×224 image) and its matrix products shrink to a few pairs per position, so there each
# image is scored against the candidates from their local statistics instead (``ssim_map_from_stats``: the same
# SSIM, in float64), a chunk of candidates at a time within ``_PAIR_BYTES``. Up to 64×64 nothing changes.
PAIRWISE_ABOVE_PIXELS = 64 * 64
_PAIR_BYTES = 512 * 2**20
_PAIR_ARRAYS = 8  # full-size float64 arrays one pair needs at once in ``ssim_map_from_stats``


@torch.no_grad()
def _exact_search(
    candidates: torch.Tensor,
    images: torch.Tensor,
    k: int,
    image_chunk: int,
    max_prepared_bytes: int,
    mask: Callable[[slice, slice], torch.Tensor | None],
    progress: Callable[[int, int], None] | None,
    should_stop: StopCheck | None = None,
) -> BestMatches:
    n, m = candidates.shape[0], images.shape[0]
    top_val = torch.full((m, k), float("-inf"))
    top_idx = torch.full((m, k), -1, dtype=torch.int64)
    near_val = torch.full((n,), float("-inf"))
    near_idx = torch.full((n,), -1, dtype=torch.int64)
    # Candidates per group so that one group's prepared form fits the budget.
    per_candidate = prepare_left(candidates[:1]).nbytes()
    group = max(1, min(n, max_prepared_bytes // max(per_candidate, 1)))
    groups = range(0, n, group)
    total = m * len(groups)
    done = pairs = 0
    for g0 in groups:
        gs = slice(g0, min(g0 + group, n))
        left = prepare_left(candidates[gs])
        for j0 in range(0, m, image_chunk):
            if done and asked(should_stop):  # the images scored so far: those of the first group, or all of them
                covered = j0 if g0 == 0 else m
                return result_of(top_val[:covered], top_idx[:covered], near_val, near_idx, exact=len(groups) == 1,
                                 pairs_scored=pairs, cut=True)
            js = slice(j0, min(j0 + image_chunk, m))
            scores = block_ssim(left, prepare_right(images[js]))  # (n_g, m_c)
            disallowed = mask(gs, js)
            if disallowed is not None:
                scores.masked_fill_(disallowed, float("-inf"))
            kk = min(k, scores.shape[0])
            blk_val, blk_pos = torch.topk(scores.T, kk, dim=1)  # (m_c, kk)
            top_val[js], top_idx[js] = merge_topk(top_val[js], top_idx[js], blk_val, blk_pos + g0, k)
            row_val, row_pos = scores.max(1)  # (n_g,)
            better = row_val > near_val[gs]
            near_val[gs] = torch.where(better, row_val, near_val[gs])
            near_idx[gs] = torch.where(better, row_pos + j0, near_idx[gs])
            done += js.stop - js.start
            pairs += (gs.stop - gs.start) * (js.stop - js.start)
            if progress is not None:
                progress(done, total)
    return result_of(top_val, top_idx, near_val, near_idx, exact=True, pairs_scored=n * m)


@torch.no_grad()
def _pairwise_search(
    candidates: torch.Tensor,
    images: torch.Tensor,
    k: int,
    mask: Callable[[slice, slice], torch.Tensor | None],
    progress: Callable[[int, int], None] | None,
    should_stop: StopCheck | None = None,
) -> BestMatches:
    """Exact search for large images (``PAIRWISE_ABOVE_PIXELS``): one image at a time against every candidate.

    The candidates' local statistics are computed once; each image's once, broadcast over a chunk of
    candidates (no copy of either side per pair).
    """
    n, m = candidates.shape[0], images.shape[0]
    x = prepare(candidates, torch.float64)  # (N, C, H', W')
    mx, vx = local_stats(x)
    chunk = max(1, _PAIR_BYTES // (x[0].numel() * x.element_size() * _PAIR_ARRAYS))
    scores = torch.empty(n, m)  # (N, M) float32, as the all-pairs kernel gives
    covered = m
    for j in range(m):
        if j and asked(should_stop):
            covered = j
            break
        y = prepare(images[j : j + 1], torch.float64)  # (1, C, H', W')
        my, vy = local_stats(y)
        for c0 in range(0, n, chunk):
            cs = slice(c0, min(c0 + chunk, n))
            smap = ssim_map_from_stats(x[cs], y, mx[cs], vx[cs], my, vy)
            scores[cs, j] = smap.mean(dim=(1, 2, 3)).float()
        if progress is not None:
            progress(j + 1, m)
    scores = scores[:, :covered]
    disallowed = mask(slice(0, n), slice(0, covered))
    if disallowed is not None:
        scores.masked_fill_(disallowed, float("-inf"))
    top_val, top_idx = torch.topk(scores.T, k, dim=1)  # (M, k)
    near_val, near_idx = scores.max(1)  # (N,)
    return result_of(top_val, top_idx, near_val, near_idx, exact=True, pairs_scored=n * covered, cut=covered < m)


def screen_features(images: torch.Tensor, side: int = PREFILTER_SIDE) -> torch.Tensor:
    """Zero-mean, unit-norm thumbnails (N, C·side·side): their dot product is a Pearson correlation."""
    x = prepare(images)
    x = F.adaptive_avg_pool2d(x, (min(side, x.shape[2]), min(side, x.shape[3]))).flatten(1)
    x = x - x.mean(1, keepdim=True)
    unit: torch.Tensor = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return unit


@torch.no_grad()
def paired_scores(
    candidates: torch.Tensor,
    images: torch.Tensor,
    cand_idx: torch.Tensor,
    img_idx: torch.Tensor,
    progress: Callable[[int, int], None] | None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Exact SSIM (float64) for listed (candidate, image) pairs: (L,) float32.

    Each candidate is prepared and its mean/variance maps computed once (up
    front), each image once per chunk of pairs sorted by image, so a pair
    costs one filtered product instead of five filters. ``should_stop`` is
    polled once the first image's pairs are done; the pairs it leaves unscored
    are NaN, those of the lowest images scored first.
    """
    total = cand_idx.shape[0]
    out = torch.empty(total, dtype=torch.float32)
    if total == 0:
        return out
    x_all = prepare(candidates, torch.float64)  # (N, C, H', W'): candidates are few, prepared once
    stats = [local_stats(x_all[s : s + _PAIR_CHUNK]) for s in range(0, x_all.shape[0], _PAIR_CHUNK)]
    mx_all = torch.cat([mu for mu, _ in stats])  # (N, C, Ho, Wo) float64
    vx_all = torch.cat([var for _, var in stats])
    order = torch.argsort(img_idx, stable=True)  # pairs of one image together
    for s in range(0, total, _PAIR_CHUNK):
        if s and img_idx[order[s]] != img_idx[order[0]] and asked(should_stop):
            out[order[s:]] = float("nan")
            break
        sel = order[s : s + _PAIR_CHUNK]
        ci, ii = cand_idx[sel], img_idx[sel]
        uniq, inverse = torch.unique(ii, return_inverse=True)
        y_u = prepare(images[uniq], torch.float64)
        my_u, vy_u = local_stats(y_u)
        smap = ssim_map_from_stats(x_all[ci], y_u[inverse], mx_all[ci], vx_all[ci], my_u[inverse], vy_u[inverse])
        out[sel] = smap.flatten(1).mean(1).float()
        if progress is not None:
            progress(min(s + _PAIR_CHUNK, total), total)
    return out


@torch.no_grad()
def _prefiltered_search(
    candidates: torch.Tensor,
    images: torch.Tensor,
    k: int,
    keep: int,
    image_chunk: int,
    mask: Callable[[slice, slice], torch.Tensor | None],
    progress: Callable[[int, int], None] | None,
    should_stop: StopCheck | None = None,
) -> BestMatches:
    n, m = candidates.shape[0], images.shape[0]
    keep = min(max(keep, k), n)
    keep_img = min(keep, m)
    fc = screen_features(candidates)  # (N, d)
    img_cand = torch.empty(m, keep, dtype=torch.int64)  # each image's screened candidates
    img_allowed = torch.empty(m, keep, dtype=torch.bool)
    cand_val = torch.full((n, keep_img), float("-inf"))
    cand_img = torch.full((n, keep_img), -1, dtype=torch.int64)  # each candidate's screened images
    for j0 in range(0, m, image_chunk):
        js = slice(j0, min(j0 + image_chunk, m))
        corr = fc @ screen_features(images[js]).T  # (N, m_c)
        disallowed = mask(slice(0, n), js)
        if disallowed is not None:
            corr.masked_fill_(disallowed, float("-inf"))
        val, pos = torch.topk(corr.T, keep, dim=1)  # (m_c, keep)
        img_cand[js], img_allowed[js] = pos, ~torch.isneginf(val)
        kk = min(keep_img, corr.shape[1])
        cval, cpos = torch.topk(corr, kk, dim=1)  # (N, kk)
        cand_val, cand_img = merge_topk(cand_val, cand_img, cval, cpos + j0, keep_img)
        if progress is not None:  # screening is the first half of the work reported
            progress(js.stop, 2 * m)
    # Exact SSIM for the screened pairs of both directions.
    img_rows = torch.arange(m)[:, None].expand(m, keep)
    sel = img_allowed.reshape(-1)
    cand_rows = torch.arange(n)[:, None].expand(n, keep_img)
    pair_c = torch.cat([img_cand.reshape(-1)[sel], cand_rows[~torch.isneginf(cand_val)]])
    pair_i = torch.cat([img_rows.reshape(-1)[sel], cand_img[~torch.isneginf(cand_val)]])
    pairs = torch.unique(pair_c * m + pair_i)
    pair_c, pair_i = pairs // m, pairs % m
    def scoring_progress(done: int, total: int) -> None:
        if progress is not None:
            progress(m + (m * done) // total, 2 * m)

    scores = paired_scores(candidates, images, pair_c, pair_i, scoring_progress, should_stop)  # (L,)
    unscored = torch.isnan(scores)
    covered = int(pair_i[unscored].min()) if bool(unscored.any()) else m  # images whose pairs were all scored
    if covered < m:
        kept = pair_i < covered
        pair_c, pair_i, scores = pair_c[kept], pair_i[kept], scores[kept]
    return _top_from_pairs(pair_c, pair_i, scores, n, covered, k, cut=covered < m)


def _top_from_pairs(pair_c: torch.Tensor, pair_i: torch.Tensor, scores: torch.Tensor, n: int, m: int,
                    k: int, cut: bool) -> BestMatches:
    """Both directions' best matches over the scored (candidate, image) pairs of the prefiltered search."""
    # Per image top-k over its scored pairs.
    order = torch.argsort(pair_i * 4.0 - scores.double(), stable=True)  # by image, best first (|ssim| ≤ 1)
    pi, pc, ps = pair_i[order], pair_c[order], scores[order]
    counts = torch.bincount(pi, minlength=m)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(pi.shape[0]) - starts[pi]
    top_val = torch.full((m, k), float("-inf"))
    top_idx = torch.full((m, k), -1, dtype=torch.int64)
    take = rank < k
    top_val[pi[take], rank[take]] = ps[take]
    top_idx[pi[take], rank[take]] = pc[take]
    # Per candidate: nearest over its scored pairs.
    near_val = torch.full((n,), float("-inf")).scatter_reduce(0, pair_c, scores, reduce="amax")
    hit = scores == near_val[pair_c]
    near_idx = torch.full((n,), m, dtype=torch.int64).scatter_reduce(0, pair_c[hit], pair_i[hit], reduce="amin")
    near_idx[near_idx == m] = -1  # ties: the lowest image index wins
    return result_of(top_val, top_idx, near_val, near_idx, exact=False, pairs_scored=int(pair_c.shape[0]), cut=cut)


# Above this many candidate-image pairs, exact all-pairs SSIM takes more than a
# minute or two on a 2-core CPU (it scores ~10^5-10^6 pairs/s there), which a
# default audit budget cannot spare once candidates grow with the training set.
AUTO_PREFILTER_PAIRS = 10_000_000
AUTO_PREFILTER_KEEP = 50


def matched_pairs(n_candidates: int, n_images: int) -> int:
    """SSIM pairs that matching under ``auto_prefilter`` scores exactly (for time estimates)."""
    keep = auto_prefilter(n_candidates, n_images)
    if keep is None:
        return n_candidates * n_images
    return min(n_candidates * n_images, keep * (n_images + n_candidates))


def auto_prefilter(n_candidates: int, n_images: int) -> int | None:
    """A policy for callers: exact matching up to 10M pairs, the top-50 prefilter beyond.

    At top-50 the prefilter found the exact best match for 99.6–99.7% of real
    digits, losing at most 0.03 SSIM on the others, and every planted exact
    copy (``bench/bench_matching.py``); a caller that uses it should say so in
    its output, since ``exact`` is False.
    """
    return None if n_candidates * n_images <= AUTO_PREFILTER_PAIRS else AUTO_PREFILTER_KEEP


@torch.no_grad()
def best_matches(
    candidates: torch.Tensor,
    images: torch.Tensor,
    *,
    k: int = 5,
    image_chunk: int = 512,
    max_prepared_bytes: int = DEFAULT_MAX_PREPARED_BYTES,
    prefilter: int | None = None,
    candidate_labels: torch.Tensor | None = None,
    image_labels: torch.Tensor | None = None,
    same_class: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: StopCheck | None = None,
) -> BestMatches:
    """Best SSIM matches of candidates (N, C, H, W) float [0, 1] and images (M, C, H, W) uint8 or float.

    ``k``: how many best candidates to keep per image (clipped to N).
    ``image_chunk``: images prepared at once (each ~248·C·(H-10)·(W-10) floats).
    ``max_prepared_bytes``: budget for prepared candidates; more candidates
    are processed in groups, streaming the images once per group.
    ``prefilter``: None for exact all-pairs SSIM (the default), or P to score
    only each image's P most correlated candidates and each candidate's P most
    correlated images (thumbnail correlation, see ``screen_features``).
    ``same_class``: only pair a candidate with images of its own class
    (needs ``candidate_labels`` and ``image_labels``); by default every
    candidate is matched against every image.
    ``progress(done, total)`` is called as the work proceeds (in images; the
    prefiltered search reports screening and exact scoring as two halves).
    ``should_stop()`` is polled between chunks once the first image is
    scored: asked, the search ends there (``BestMatches.cut``).
    """
    check_inputs(candidates, images, candidate_labels, image_labels, same_class, k)
    if image_chunk < 1 or max_prepared_bytes < 1:
        raise DataError("image_chunk and max_prepared_bytes must be positive")
    if prefilter is not None and prefilter < 1:
        raise DataError("prefilter must be None or a positive number of candidates")
    k = min(k, candidates.shape[0])
    mask = class_mask(candidate_labels, image_labels, same_class)
    if prefilter is None and candidates.shape[-2] * candidates.shape[-1] > PAIRWISE_ABOVE_PIXELS:
        return _pairwise_search(candidates, images, k, mask, progress, should_stop)
    if prefilter is None:
        return _exact_search(candidates, images, k, image_chunk, max_prepared_bytes, mask, progress, should_stop)
    return _prefiltered_search(candidates, images, k, prefilter, image_chunk, mask, progress, should_stop)
