"""Leak statistics on real digits: the leak score's power check, the prototype null, loss AUC, duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from leakaudit.errors import DataError
from leakaudit.matching.duplicates import near_duplicates
from leakaudit.matching.null import class_mean_null
from leakaudit.scoring import auc, distribution_summary, histogram, leak_score, membership_test, weights_gain
from leakaudit.matching.search import best_matches
from leakaudit.matching.ssim import ssim_pairs
from leakaudit.zoo import ReferenceSpec, bundled_images, split_members, train_classifier


def test_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, 40).astype(float)  # many ties, within and across groups
    neg = rng.integers(0, 4, 30).astype(float)
    ref = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos, neg])
    assert auc(pos, neg) == pytest.approx(ref, abs=1e-12)
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5
    with pytest.raises(DataError):
        auc(np.array([]), neg)


@pytest.fixture(scope="module")
def power_setup() -> dict[str, torch.Tensor]:
    """200 members and 200 non-members (20 per class) and ~1,000 candidates: other real, non-member digits.

    Planted copies are searched as separate candidate groups and combined with
    a maximum, which is exactly the best match over the union of candidates.
    """
    data = split_members(ReferenceSpec(train_per_class=20, holdout_per_class=20, seed=0))
    images, _, _ = bundled_images("digits", 32)
    flat = images.flatten(1)
    used = torch.zeros(len(images), dtype=torch.bool)
    for x in torch.cat([data.train_images, data.holdout_images]).flatten(1):
        used |= (flat == x).all(1)
    rest = torch.nonzero(~used).flatten()
    g = torch.Generator().manual_seed(0)
    cands = images[rest[torch.randperm(len(rest), generator=g)[:1000]]].float() / 255  # (1000, 1, 32, 32)
    members, nonmembers = data.train_images, data.holdout_images
    base_members = best_matches(cands, members, k=1).best_ssim  # (200,)
    base_nonmembers = best_matches(cands, nonmembers, k=1).best_ssim  # (200,)
    copies = members[:100].float() / 255
    noisy = (copies + 0.3 * torch.randn(copies.shape, generator=g)).clamp(0, 1)
    return {
        "members": members,
        "nonmembers": nonmembers,
        "base_members": base_members,
        "base_nonmembers": base_nonmembers,
        # best match of each member among the planted copies (copy i is of member i)
        "copy_best": best_matches(copies, members[:100], k=1).best_ssim,
        "noisy_best": best_matches(noisy, members[:100], k=1).best_ssim,
    }


def planted(setup: dict[str, torch.Tensor], key: str, n: int) -> torch.Tensor:
    """Members' best-match SSIM when the first n planted copies join the candidates."""
    best = setup["base_members"].clone()
    best[:n] = torch.maximum(best[:n], setup[key][:n])
    return best


def test_power_check_no_copies_stays_at_chance(power_setup: dict[str, torch.Tensor]) -> None:
    s = leak_score(power_setup["base_members"], power_setup["base_nonmembers"], n_boot=300, n_perm=300, seed=0)
    assert abs(s.value - 0.5) <= 0.05
    assert s.p_value > 0.05
    assert s.ci_low < 0.5 < s.ci_high
    assert (s.n_members, s.n_nonmembers) == (200, 200)


@pytest.mark.parametrize("n_copies,low,high", [(50, 0.57, 0.66), (100, 0.69, 0.80)])
def test_power_check_exact_copies_raise_the_score(
    power_setup: dict[str, torch.Tensor], n_copies: int, low: float, high: float
) -> None:
    assert torch.allclose(power_setup["copy_best"], torch.ones(100), atol=1e-5)
    s = leak_score(planted(power_setup, "copy_best", n_copies), power_setup["base_nonmembers"], n_boot=300, n_perm=300)
    assert low <= s.value <= high
    assert s.p_value < 0.01 and s.ci_low > 0.5
    assert s.ci_low <= s.value <= s.ci_high


def test_power_check_noisy_copies_stay_near_chance(power_setup: dict[str, torch.Tensor]) -> None:
    assert power_setup["noisy_best"].mean() < 0.5  # heavy noise: not a recognisable copy
    base = leak_score(power_setup["base_members"], power_setup["base_nonmembers"], n_boot=0, n_perm=0)
    s = leak_score(planted(power_setup, "noisy_best", 100), power_setup["base_nonmembers"], n_boot=0, n_perm=200)
    assert abs(s.value - 0.5) <= 0.05 and abs(s.value - base.value) < 0.02
    assert s.p_value > 0.05


def test_prototype_null_on_real_digits(power_setup: dict[str, torch.Tensor]) -> None:
    data = split_members(ReferenceSpec(train_per_class=20, holdout_per_class=20, seed=0))
    null = class_mean_null(data.train_images, data.train_labels, data.holdout_images, data.holdout_labels)
    assert null.source == "holdout"
    assert 0.4 < null.train_mean < 0.8 and null.holdout_mean is not None
    assert abs(null.train_mean - null.holdout_mean) < 0.05  # prototypes favour neither group
    # a real other digit matches better than the plain class mean
    assert power_setup["base_members"].mean() > null.train_mean + 0.1
    own = class_mean_null(data.train_images, data.train_labels, data.holdout_images, data.holdout_labels,
                          same_class=True)
    assert (own.train_best <= null.train_best + 1e-6).all()
    no_holdout = class_mean_null(data.train_images, data.train_labels)
    assert no_holdout.source == "train" and no_holdout.holdout_mean is None
    assert no_holdout.to_dict()["train_mean"] == pytest.approx(no_holdout.train_mean)


def test_loss_membership_test_on_real_digits() -> None:
    spec = ReferenceSpec(train_per_class=5, holdout_per_class=20, hidden=256, epochs=60, seed=0)
    data = split_members(spec)
    model, metrics = train_classifier(spec, data)
    assert metrics["train_accuracy"] == 1.0
    with torch.no_grad():
        logits_in = model(data.train_images.float() / 255)
        logits_out = model(data.holdout_images.float() / 255)
    memorised = membership_test(logits_in, data.train_labels, logits_out, data.holdout_labels, n_boot=0).auc
    assert memorised > 0.7
    # two halves of the non-members, every class in each: identical distributions
    same = membership_test(logits_out[0::2], data.holdout_labels[0::2], logits_out[1::2], data.holdout_labels[1::2],
                           n_boot=0).auc
    assert abs(same - 0.5) < 0.1


def test_distribution_summary_and_histogram() -> None:
    x = torch.tensor([0.1, 0.3, 0.45, 0.55, 0.65, 0.9, float("nan")])
    s = distribution_summary(x)
    finite = np.array([0.1, 0.3, 0.45, 0.55, 0.65, 0.9])
    assert s["mean"] == pytest.approx(finite.mean())
    assert s["quantiles"] == pytest.approx(
        {"0.5": np.quantile(finite, 0.5), "0.9": np.quantile(finite, 0.9), "0.95": np.quantile(finite, 0.95),
         "0.99": np.quantile(finite, 0.99), "max": 0.9}
    )
    assert s["fraction_above"] == pytest.approx({"0.4": 4 / 6, "0.5": 3 / 6, "0.6": 2 / 6})
    h = histogram(x, torch.tensor([-0.2, 0.95, 1.0]), bins=10)
    assert len(h["bins"]) == 11 and h["bins"][0] == 0.0 and h["bins"][-1] == 1.0
    assert sum(h["train"]) == 6 and h["holdout"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert histogram(x)["holdout"] is None
    with pytest.raises(DataError):
        distribution_summary(torch.tensor([float("nan")]))


def test_near_duplicates_on_a_constructed_case() -> None:
    images, _, _ = bundled_images("digits", 32)
    train = images[:6].clone()
    train[4] = train[1]  # two identical training images
    # candidate 0 is the best match of training images 2 and 3; the others are unshared
    best_index = torch.tensor([5, 7, 0, 0, 8, 9])
    best_ssim = torch.tensor([0.5, 0.6, 0.7, 0.45, 0.6, 0.3])
    d = near_duplicates(best_index, best_ssim, train)
    kinds = {(g.reason, g.members, g.candidate) for g in d.groups}
    assert ("shared_reconstruction", (2, 3), 0) in kinds
    assert ("near_identical", (1, 4), None) in kinds
    assert len(d.groups) == 2
    assert d.shares_with(2) == [3] and d.shares_with(4) == [1] and d.shares_with(0) == []
    # a floor on the match quality drops the weaker sharer; probing only some images still finds the twin
    d2 = near_duplicates(best_index, best_ssim, train, indices=[4], min_ssim=0.5)
    assert {(g.reason, g.members) for g in d2.groups} == {("near_identical", (1, 4))}
    # near-identical, not identical: a faint-noise copy is above 0.95 SSIM
    g = torch.Generator().manual_seed(0)
    train[5] = (train[0].float() + 2 * torch.randn(train[0].shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
    assert ssim_pairs(train[5:6], train[0:1]).item() >= 0.95
    d3 = near_duplicates(torch.arange(6), torch.ones(6), train)
    assert {g.members for g in d3.groups} == {(1, 4), (0, 5)}


def test_weights_gain_is_the_leak_score_of_each_images_gain() -> None:
    # members gain 0.3 each, non-members 0.0 (ties among them): AUC 1, significant, evidence
    members = weights_gain(torch.full((8,), 0.7), torch.full((40,), 0.5), torch.full((8,), 0.4), torch.full((40,), 0.5))
    assert members.gain.value == pytest.approx(1.0) and members.gain.p_value < 0.01 and members.is_evidence
    assert members.train_mean_gain == pytest.approx(0.3) and members.holdout_mean_gain == pytest.approx(0.0)
    assert members.pretrained.value == pytest.approx(0.0)  # before the weights, members matched worse
    # identical gains everywhere: AUC ½, nothing to claim
    same = weights_gain(torch.full((8,), 0.6), torch.full((40,), 0.6), torch.full((8,), 0.5), torch.full((40,), 0.5))
    assert same.gain.value == pytest.approx(0.5) and same.gain.p_value > 0.5 and not same.is_evidence
    # hand-checked Mann-Whitney: gains [3, 1] vs [2, 0] → pairs won 3 of 4
    small = weights_gain(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0]), torch.zeros(2), torch.zeros(2))
    assert small.gain.value == pytest.approx(0.75) and set(small.to_dict()) >= {"paired_auc", "p_value"}
