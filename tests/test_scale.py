"""Statistics and duplicate groups stay linear in the number of training images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakaudit.matching.duplicates import SHARE_LIMIT, near_duplicates
from leakaudit.matching.null import class_mean_null
from leakaudit.zoo import bundled_images
from leakaudit.scoring import auc, leak_score


def test_bootstrap_interval_agrees_with_resampling_the_values() -> None:
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.3, 1, 80), rng.normal(0, 1, 120)
    fast = leak_score(pos, neg, n_boot=2000, n_perm=200, seed=0)
    slow = np.array([auc(rng.choice(pos, pos.size), rng.choice(neg, neg.size)) for _ in range(2000)])
    assert abs(fast.ci_low - np.quantile(slow, 0.025)) < 0.02
    assert abs(fast.ci_high - np.quantile(slow, 0.975)) < 0.02
    assert fast.value == auc(pos, neg)


def test_permutation_p_value_separates_signal_from_none() -> None:
    rng = np.random.default_rng(2)
    none = leak_score(rng.normal(0, 1, 200), rng.normal(0, 1, 200), n_boot=10, n_perm=500, seed=0)
    strong = leak_score(rng.normal(1, 1, 200), rng.normal(0, 1, 200), n_boot=10, n_perm=500, seed=0)
    assert none.p_value > 0.05 and strong.p_value == 1 / 501


@pytest.mark.slow
def test_sixty_thousand_members_sharing_one_reconstruction_stay_small_and_fast() -> None:
    m = 60_000
    best_index = torch.zeros(m, dtype=torch.int64)
    best_index[::3] = 1  # two groups of 40,000 and 20,000
    images = torch.randint(0, 256, (m, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images[70] = images[0]  # one exact twin of a probed image, found through the thumbnail screen
    d = near_duplicates(best_index, torch.ones(m), images, indices=torch.arange(5))
    shared = [g for g in d.groups if g.reason == "shared_reconstruction"]
    assert sorted(len(g.members) for g in shared) == [20_000, 40_000]
    assert ("near_identical", (0, 70)) in {(g.reason, g.members) for g in d.groups}
    assert d.shares_with(0) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30][:SHARE_LIMIT]
    assert d.share_count(0) == 20_000 and d.share_count(1) == 39_999  # 19,999 sharers and the twin
    scored = leak_score(torch.rand(m), torch.rand(1000), seed=0)
    assert 0.4 < scored.value < 0.6


def test_class_mean_null_samples_large_sets_without_moving_the_mean() -> None:
    images, labels, _ = bundled_images("digits", 32)
    full = class_mean_null(images[:1500], labels[:1500], images[1500:], labels[1500:])
    sampled = class_mean_null(images[:1500], labels[:1500], images[1500:], labels[1500:], max_images=500)
    assert sampled.train_best.shape == (500,) and full.train_best.shape == (1500,)
    assert abs(sampled.train_mean - full.train_mean) < 0.02
    assert sampled.holdout_mean == full.holdout_mean  # 297 images: below the limit, all matched
