"""The benchmark's reference attacks: shapes, ranges, determinism, and that each does its job.

A tiny MLP trained here on real bundled digits (8×8, three per class) stands
in for the reference models, so the whole file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks import (
    class_mean_candidates,
    kkt_objective,
    kkt_reconstruction,
    pixel_inversion,
    spread_targets,
)
from leakaudit.model.target import TargetModel
from leakaudit.zoo import bundled_images

SIDE = 8
K = 10


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on shared cores, more threads spin and wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = bundled_images("digits", SIDE)  # (1797, 1, 8, 8) uint8
    return images, labels


@pytest.fixture(scope="module")
def members(digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Three real digits per class, float [0, 1]: (30, 1, 8, 8), (30,)."""
    images, labels = digits
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:3] for c in range(K)])
    return images[idx].float() / 255, labels[idx]


@pytest.fixture(scope="module")
def target(members: tuple[torch.Tensor, torch.Tensor]) -> TargetModel:
    """A small ReLU MLP trained to fit the members (full batch, weight decay)."""
    torch.manual_seed(0)
    x, y = members
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, K))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    for _ in range(400):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).all()
    return TargetModel.from_module(model, (1, SIDE, SIDE), K, device="cpu")


def confidence(target: TargetModel, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(target.logits(images), 1).gather(1, targets[:, None]).squeeze(1)


# --- class means --------------------------------------------------------------

def test_class_means_are_the_means(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits
    means, targets = class_mean_candidates(images, labels, K)
    assert means.shape == (K, 1, SIDE, SIDE) and means.dtype == torch.float32
    assert targets.tolist() == list(range(K))
    for c in range(K):
        expected = images[labels == c].double().mean(0) / 255
        torch.testing.assert_close(means[c].double(), expected, atol=1e-6, rtol=0)
    assert 0 <= means.min() and means.max() <= 1


def test_class_means_skip_absent_classes(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits
    keep = (labels == 2) | (labels == 7)
    means, targets = class_mean_candidates(images[keep], labels[keep], K)
    assert targets.tolist() == [2, 7]
    torch.testing.assert_close(means[1].double(), images[labels == 7].double().mean(0) / 255, atol=1e-6, rtol=0)


# --- pixel inversion ----------------------------------------------------------

def test_pixel_inversion_shapes_targets_and_range(target: TargetModel) -> None:
    images, targets = pixel_inversion(target, per_class=2, steps=5, seed=0)
    assert images.shape == (2 * K, 1, SIDE, SIDE) and images.dtype == torch.float32
    assert targets.dtype == torch.int64
    assert targets.tolist() == [c for c in range(K) for _ in range(2)]
    assert 0 <= images.min() and images.max() <= 1


def test_pixel_inversion_is_deterministic_for_a_seed(target: TargetModel) -> None:
    a, _ = pixel_inversion(target, per_class=1, steps=20, seed=3)
    b, _ = pixel_inversion(target, per_class=1, steps=20, seed=3)
    c, _ = pixel_inversion(target, per_class=1, steps=20, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_pixel_inversion_raises_target_confidence(target: TargetModel) -> None:
    start, targets = pixel_inversion(target, per_class=2, steps=0, seed=1)  # the random starts
    end, _ = pixel_inversion(target, per_class=2, steps=150, seed=1)
    before, after = confidence(target, start, targets), confidence(target, end, targets)
    assert after.mean() > before.mean() + 0.3
    assert after.mean() > 0.9


# --- KKT reconstruction -------------------------------------------------------

def test_spread_targets_cover_classes_evenly() -> None:
    t = spread_targets(25, K)
    assert t.tolist()[:K] == list(range(K))
    assert torch.bincount(t, minlength=K).tolist() == [3] * 5 + [2] * 5


@pytest.mark.parametrize("competitors", ["all", "max"])
def test_kkt_shapes_targets_range_and_objective_decreases(target: TargetModel, competitors: str) -> None:
    trace: list[float] = []
    images, targets = kkt_reconstruction(target, 20, steps=100, seed=0, competitors=competitors, trace=trace)
    assert images.shape == (20, 1, SIDE, SIDE) and images.dtype == torch.float32
    assert torch.equal(targets, spread_targets(20, K))
    assert 0 <= images.min() and images.max() <= 1
    assert len(trace) == 100
    assert trace[-1] < 0.85 * trace[0]
    # the model's weights are left frozen and without gradients
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())


def test_kkt_is_deterministic_for_a_seed(target: TargetModel) -> None:
    a, _ = kkt_reconstruction(target, 10, steps=15, seed=5)
    b, _ = kkt_reconstruction(target, 10, steps=15, seed=5)
    c, _ = kkt_reconstruction(target, 10, steps=15, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _fitted_objective(target: TargetModel, x: torch.Tensor, y: torch.Tensor) -> float:
    """KKT objective with the best non-negative λ for fixed x (projected gradient on a convex problem)."""
    params = target.parameters()
    for p in params:
        p.requires_grad_(True)
    try:
        lam = torch.full((len(x), K), 1e-3).scatter_(1, y[:, None], 0.0).requires_grad_(True)
        opt = torch.optim.Adam([lam], lr=1e-3)
        for _ in range(200):
            loss = kkt_objective(target, x, y, lam, params)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                lam.clamp_(min=0).scatter_(1, y[:, None], 0.0)
        return float(kkt_objective(target, x, y, lam, params).detach())
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def test_kkt_objective_prefers_the_training_points(
    target: TargetModel, members: tuple[torch.Tensor, torch.Tensor], digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The identity θ = Σ λ ∇θ margins holds better at the members than at other real digits."""
    x, y = members
    images, labels = digits
    other = torch.cat([torch.nonzero(labels == c).flatten()[10:13] for c in range(K)])
    at_members = _fitted_objective(target, x, y)
    at_others = _fitted_objective(target, images[other].float() / 255, labels[other])
    assert at_members < 0.5 * at_others


def test_bad_arguments_are_refused(target: TargetModel) -> None:
    with pytest.raises(ValueError):
        pixel_inversion(target, per_class=0)
    with pytest.raises(ValueError):
        kkt_reconstruction(target, 0)
    with pytest.raises(ValueError):
        kkt_reconstruction(target, 5, competitors="some")
