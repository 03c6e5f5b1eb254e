"""The inversion's parts alone: the generator's shapes and conditioning, each loss against a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from leakaudit.inversion import ConditionalGenerator
from leakaudit.inversion import losses
from leakaudit.inversion.generator import hot_patterns, soft_conditioning



# --- generator ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32), (1, 20, 28), (3, 9, 13), (1, 8, 8)])
@pytest.mark.parametrize("classes", [2, 10])
@pytest.mark.parametrize("conditioning", ["vector", "matrix", "both"])
def test_generator_output_shape_and_range(shape: tuple[int, int, int], classes: int, conditioning: str) -> None:
    torch.manual_seed(0)
    gen = ConditionalGenerator(shape, classes, conditioning=conditioning, width=16, latent_dim=8, embed_dim=8)
    targets = torch.arange(classes).repeat(3)
    with torch.no_grad():
        x = gen(torch.randn(len(targets), 8) * 5, F.one_hot(targets, classes).float())
    assert x.shape == (len(targets), *shape)
    assert x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


@pytest.mark.parametrize("conditioning", ["vector", "matrix", "both"])
def test_each_conditioning_changes_the_image_with_the_label(conditioning: str) -> None:
    torch.manual_seed(0)
    gen = ConditionalGenerator((1, 16, 16), 4, conditioning=conditioning, width=16, latent_dim=8, embed_dim=8).eval()
    z = torch.randn(1, 8).expand(4, 8)
    x = gen(z, torch.eye(4))  # same noise, four labels
    assert (x[0] - x[1]).abs().max() > 1e-4
    assert (x[2] - x[3]).abs().max() > 1e-4


def test_soft_conditioning_argmax_is_target() -> None:
    targets = torch.tensor([0, 3, 9, 9, 1] * 20)
    p = soft_conditioning(targets, 10, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(p.argmax(1), targets)
    assert torch.allclose(p.sum(1), torch.ones(len(targets)))
    assert float(p.max(1).values.min()) < 0.999  # soft, not one-hot


def test_hot_patterns_mark_row_and_column() -> None:
    pat = hot_patterns(3)
    assert pat.shape == (3, 3, 3)
    assert torch.equal(pat[1], torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]]))


# --- losses against hand-computed values ------------------------------------

def test_kl_against_hand_value() -> None:
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.8, 0.2]]))
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + 1.0 * math.log(1 / 0.8)) / 2
    assert losses.kl_loss(p, logits).item() == pytest.approx(expected, abs=1e-6)


def test_ce_against_hand_value() -> None:
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.8, 0.2]]))
    expected = -(math.log(0.75) + math.log(0.2)) / 2
    assert losses.ce_loss(logits, torch.tensor([1, 1])).item() == pytest.approx(expected, abs=1e-6)


def test_cosine_and_orthogonality_against_hand_values() -> None:
    phi = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    c = 1 / math.sqrt(2)  # cos(φ0, φ1) = cos(φ1, φ2); cos(φ0, φ2) = 0
    assert losses.cosine_loss(phi).item() == pytest.approx((2 * c + 2 * c + 0) / 6, abs=1e-6)
    # ‖Φ̂Φ̂ᵀ − I‖²_F / N²: the off-diagonal cosines squared, diagonal exactly 0
    assert losses.orthogonality_loss(phi).item() == pytest.approx(4 * c * c / 9, abs=1e-6)


def test_total_variation_against_hand_value() -> None:
    x = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])  # one bright pixel
    # vertical diffs: (0-0)², (0-1)² → mean 0.5; horizontal: (1-0)², (0-0)² → mean 0.5
    assert losses.total_variation(x).item() == pytest.approx(1.0)


def test_margin_and_range_and_bn_against_hand_values() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 4.5]])
    # margins 2 and 0.5 → hinge at 1: max(0, 1-2) = 0, max(0, 1-0.5) = 0.5
    assert losses.margin_loss(logits, torch.tensor([0, 1]), 1.0).item() == pytest.approx(0.25)
    assert losses.range_loss(torch.tensor([7.0, -8.0, 0.0, 1.0]), limit=6.0).item() == pytest.approx((1 + 4) / 4)
    stats = [(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))]
    assert losses.bn_stats_loss(stats).item() == pytest.approx(1.0 + 1.0)


def test_gradient_norm_against_hand_value() -> None:
    w = torch.tensor([[1.0, -1.0]], requires_grad=True)  # logits = [w·x, 0]
    x = torch.tensor([[2.0, 1.0]])
    logits = torch.cat([x @ w.T, torch.zeros(1, 1)], dim=1)
    ce = F.cross_entropy(logits, torch.tensor([0]))
    # dCE/dw = (σ(1) − 1) x
    expected = ((1 / (1 + math.exp(-1)) - 1) ** 2) * (4 + 1)
    assert losses.gradient_norm_loss(ce, [w]).item() == pytest.approx(expected, rel=1e-5)
