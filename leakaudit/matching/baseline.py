"""What a best-match SSIM means: statistics against a non-member baseline.

Reconstructions resemble class prototypes, so a high SSIM alone is no
evidence of leakage. The evidence is the gap between how well members
(training images) and non-members (holdout images of the same distribution)
are matched, reported with its uncertainty: the leak score is the AUC of
member vs non-member best-match SSIM (0.5 = no difference), with a bootstrap
interval and a one-sided permutation p-value. The helpers here also give the
prototype null (how well a plain class-mean image matches), a loss-threshold
membership test for comparison, near-duplicate groups and report histograms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata
import torch.nn.functional as F

from leakaudit.errors import DataError
from leakaudit.matching.search import best_matches
from leakaudit.matching.ssim import to_float01

QUANTILES = (0.5, 0.9, 0.95, 0.99)
CLASS_MEAN_SAMPLE = 5000  # images per set matched against the class means (only their mean is reported)
LEAK_SCORE_METHOD = (
    "Mann-Whitney AUC of best-match SSIM, members vs non-members (ties count half); "
    "percentile bootstrap interval resampling both groups; one-sided permutation test "
    "of the member/non-member labels"
)


def _finite(values: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """Values as a float64 numpy vector without NaN (images that had no candidate)."""
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    arr = arr.astype(np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + ½ P(tie): the Mann–Whitney AUC, 0.5 = indistinguishable."""
    if positives.size == 0 or negatives.size == 0:
        raise DataError("an AUC needs at least one value in each group")
    neg = np.sort(negatives)
    below = np.searchsorted(neg, positives, side="left")
    not_above = np.searchsorted(neg, positives, side="right")
    return float((below + not_above).sum() / (2.0 * positives.size * neg.size))


@dataclass(frozen=True)
class LeakScore:
    """Member-vs-non-member AUC of best-match SSIM, with its uncertainty."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    n_members: int
    n_nonmembers: int
    ci_level: float = 0.95
    method: str = LEAK_SCORE_METHOD

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ci_level": self.ci_level,
            "p_value": self.p_value,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "method": self.method,
        }


def leak_score(
    train_best: torch.Tensor | np.ndarray,
    holdout_best: torch.Tensor | np.ndarray,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> LeakScore:
    """AUC of train (member) vs holdout (non-member) best-match SSIM, with bootstrap CI and p-value.

    The p-value is one-sided (members matched better), (1 + #perm ≥ observed) / (1 + n_perm),
    so it is never 0. NaN entries (no candidate of that class) are left out.
    """
    pos, neg = _finite(train_best), _finite(holdout_best)
    if pos.size == 0 or neg.size == 0:
        raise DataError("the leak score needs best-match SSIM for at least one member and one non-member")
    value = auc(pos, neg)
    rng = np.random.default_rng(seed)
    boots = _bootstrap_aucs(pos, neg, n_boot, rng)
    alpha = (1.0 - ci_level) / 2.0
    ci_low, ci_high = (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))) if n_boot else (value, value)
    ranks = rankdata(np.concatenate([pos, neg]))  # tie-averaged: a permutation only reshuffles them
    offset = pos.size * (pos.size + 1) / 2.0
    exceed = 0
    for _ in range(n_perm):
        shuffled = rng.permutation(ranks)
        exceed += (shuffled[: pos.size].sum() - offset) / (pos.size * neg.size) >= value - 1e-12
    p_value = (1.0 + exceed) / (1.0 + n_perm)
    return LeakScore(value, ci_low, ci_high, float(p_value), int(pos.size), int(neg.size), ci_level)


def _bootstrap_aucs(pos: np.ndarray, neg: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """AUCs of ``rounds`` bootstrap resamples, each in O(n + m): resampling as counts, no sort per round.

    Each positive's place among the sorted negatives is found once; a resample
    weights positives and negatives by multinomial counts, and the negatives
    below (or tied with) a positive are a cumulative sum of their counts.
    """
    order = np.sort(neg)
    below = np.searchsorted(order, pos, side="left")  # (n,) negatives strictly below each positive
    not_above = np.searchsorted(order, pos, side="right")
    out = np.empty(rounds, dtype=np.float64)
    for r in range(rounds):
        w = np.bincount(rng.integers(0, pos.size, pos.size), minlength=pos.size)
        v = np.concatenate([[0], np.cumsum(np.bincount(rng.integers(0, neg.size, neg.size), minlength=neg.size))])
        out[r] = float(w @ (v[below] + v[not_above])) / (2.0 * pos.size * neg.size)
    return out


def distribution_summary(
    best_ssim: torch.Tensor | np.ndarray, thresholds: Sequence[float] = (0.4, 0.5, 0.6)
) -> dict[str, object]:
    """Mean, quantiles (0.5/0.9/0.95/0.99/max) and fraction above each threshold, as plain floats."""
    x = _finite(best_ssim)
    if x.size == 0:
        raise DataError("no best-match SSIM values to summarise")
    quantiles = {str(q): float(np.quantile(x, q)) for q in QUANTILES}
    quantiles["max"] = float(x.max())
    return {
        "mean": float(x.mean()),
        "quantiles": quantiles,
        "fraction_above": {str(t): float((x > t).mean()) for t in thresholds},
    }


def topk_comparison(
    train_best: torch.Tensor | np.ndarray,
    holdout_best: torch.Tensor | np.ndarray,
    *,
    k: int = 10,
    rounds: int = 200,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean of the k highest best-match SSIMs of members and non-members at equal group size.

    The top of a larger group is higher by chance alone, so both groups are
    subsampled (without replacement) to the smaller size, ``rounds`` times,
    and the top-k means averaged. ``difference`` > 0: members' best matches
    are better at the top of the distribution.
    """
    pos, neg = _finite(train_best), _finite(holdout_best)
    n = int(min(pos.size, neg.size))
    if n == 0:
        raise DataError("the top-k comparison needs members and non-members")
    k = min(k, n)
    rng = np.random.default_rng(seed)

    def top_mean(x: np.ndarray) -> float:
        if x.size == n:
            return float(np.sort(x)[-k:].mean())
        return float(np.mean([np.sort(rng.choice(x, n, replace=False))[-k:].mean() for _ in range(rounds)]))

    train_top, holdout_top = top_mean(pos), top_mean(neg)
    return {
        "n": n,
        "k": k,
        "train_topk_mean": train_top,
        "holdout_topk_mean": holdout_top,
        "difference": train_top - holdout_top,
    }


def class_means(images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain mean image of each class present: (K, C, H, W) float [0, 1] and their class indices (K,)."""
    x = to_float01(images)
    classes = torch.unique(labels) if num_classes is None else torch.arange(num_classes)
    present = [int(c) for c in classes if bool((labels == c).any())]
    if not present:
        raise DataError("no images to average into class means")
    means = torch.stack([x[labels == c].mean(0) for c in present])  # (K, C, H, W)
    return means, torch.tensor(present, dtype=torch.int64)


@dataclass(frozen=True)
class ClassMeanNull:
    """Best-match SSIM that class-mean prototypes alone reach: the prototype null."""

    train_best: torch.Tensor  # (M_train,)
    holdout_best: torch.Tensor | None  # (M_holdout,)
    source: str  # "holdout" or "train"

    @property
    def train_mean(self) -> float:
        return float(_finite(self.train_best).mean())

    @property
    def holdout_mean(self) -> float | None:
        return None if self.holdout_best is None else float(_finite(self.holdout_best).mean())

    def to_dict(self) -> dict[str, float | None]:
        return {"train_mean": self.train_mean, "holdout_mean": self.holdout_mean}


@torch.no_grad()
def class_mean_null(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    holdout_images: torch.Tensor | None = None,
    holdout_labels: torch.Tensor | None = None,
    *,
    same_class: bool = False,
    max_images: int = CLASS_MEAN_SAMPLE,
) -> ClassMeanNull:
    """Match the per-class mean images, as if they were the reconstructions, to train and holdout.

    The prototypes are averaged from the holdout when there is one (so they
    carry no member information), otherwise from the training data itself.
    Scoring the holdout against prototypes that include it biases its value
    up by about 1/(images per class); negligible beyond a few dozen per class.
    ``same_class`` matches each image only to its own class mean. Only the
    means are reported, so beyond ``max_images`` a seeded sample of each set
    is matched (the standard error of a mean SSIM over 5,000 images is ~0.002).
    """
    if (holdout_images is None) != (holdout_labels is None):
        raise DataError("holdout images and holdout labels must be given together")
    if holdout_images is not None and holdout_labels is not None:
        means, mean_labels = class_means(holdout_images, holdout_labels)
    else:
        means, mean_labels = class_means(train_images, train_labels)
    train_images, train_labels = _sample(train_images, train_labels, max_images)
    train_best = best_matches(
        means, train_images, k=1, candidate_labels=mean_labels, image_labels=train_labels, same_class=same_class
    ).best_ssim
    holdout_best = None
    if holdout_images is not None and holdout_labels is not None:
        holdout_images, holdout_labels = _sample(holdout_images, holdout_labels, max_images)
        holdout_best = best_matches(
            means, holdout_images, k=1, candidate_labels=mean_labels, image_labels=holdout_labels, same_class=same_class
        ).best_ssim
    return ClassMeanNull(train_best, holdout_best, "train" if holdout_best is None else "holdout")


def _sample(images: torch.Tensor, labels: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images up to ``limit``, else a seeded sample of ``limit`` of them (sorted indices)."""
    if images.shape[0] <= limit:
        return images, labels
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return images[keep], labels[keep]


def loss_membership_auc(
    logits_members: torch.Tensor,
    labels_members: torch.Tensor,
    logits_nonmembers: torch.Tensor,
    labels_nonmembers: torch.Tensor,
) -> float:
    """AUC of the loss-threshold membership test (lower cross-entropy → member); 0.5 = no signal."""
    loss_in = F.cross_entropy(logits_members.double(), labels_members, reduction="none")
    loss_out = F.cross_entropy(logits_nonmembers.double(), labels_nonmembers, reduction="none")
    return auc(-loss_in.numpy(), -loss_out.numpy())


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
        hit = (near.topk_ssim >= duplicate_ssim) & (probe[near.topk_index.clamp_min(0)] != rows) & (near.topk_index >= 0)
        return torch.stack([rows[hit], probe[near.topk_index[hit]]], 1).numpy()
    from leakaudit.matching.search import _paired_scores, screen_features

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
    scores = _paired_scores(images[probe], images, probe_pos, image_idx, None)
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


def histogram(
    train_best: torch.Tensor | np.ndarray,
    holdout_best: torch.Tensor | np.ndarray | None = None,
    *,
    bins: int = 20,
    low: float = 0.0,
    high: float = 1.0,
) -> dict[str, list[float] | list[int] | None]:
    """Counts of best-match SSIM in ``bins`` equal bins on [low, high] for the report.

    ``bins`` in the result are the bins + 1 edges; values outside [low, high]
    (SSIM can be negative) are counted in the first or last bin.
    """
    edges = np.linspace(low, high, bins + 1)

    def counts(values: torch.Tensor | np.ndarray) -> list[int]:
        x = np.clip(_finite(values), low, high)
        return [int(c) for c in np.histogram(x, bins=edges)[0]]

    return {
        "bins": [float(e) for e in edges],
        "train": counts(train_best),
        "holdout": None if holdout_best is None else counts(holdout_best),
    }
