"""LPIPS stays offline: unavailable with a reason when the backbone is missing, and correct plumbing when present."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torchvision

from leakaudit.errors import ConfigError
from leakaudit.matching.lpips import LpipsScorer, backbone_filename, default_backbone_path
from leakaudit.zoo import bundled_images


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test, so a download attempt cannot pass unnoticed."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("LPIPS tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_unavailable_without_backbone(empty_torch_home: Path, no_network: None) -> None:
    scorer = LpipsScorer.load("alex")
    assert not scorer.available
    assert scorer.reason is not None
    assert "alexnet-owt-7be5be79.pth" in scorer.reason and "leakaudit fetch-weights" in scorer.reason
    assert str(empty_torch_home) in scorer.reason
    assert scorer.settings() == {"available": False, "reason": scorer.reason, "net": "alex", "version": "0.1"}
    with pytest.raises(ConfigError, match="unavailable"):
        scorer.distance_pairs(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    assert list(empty_torch_home.rglob("*")) == []  # nothing was fetched into the cache
    for net in ("vgg", "squeeze"):
        other = LpipsScorer.load(net)
        assert not other.available and backbone_filename(net) in (other.reason or "")


def test_explicit_missing_or_wrong_file(tmp_path: Path, no_network: None) -> None:
    missing = LpipsScorer.load("alex", weights_path=tmp_path / "nope.pth")
    assert not missing.available and "nope.pth" in (missing.reason or "")
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), wrong)  # not an AlexNet
    scorer = LpipsScorer.load("alex", weights_path=wrong)
    assert not scorer.available and "could not be used" in (scorer.reason or "")


@pytest.fixture(scope="module")
def alexnet_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME holding a deterministic, randomly initialised AlexNet under torchvision's file name."""
    home = tmp_path_factory.mktemp("torch-home-alexnet")
    path = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return home


@pytest.fixture
def random_alexnet_home(alexnet_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(alexnet_home))
    path = default_backbone_path("alex")
    assert path == alexnet_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    return path


def test_offline_plumbing_with_a_cached_backbone(random_alexnet_home: Path, no_network: None) -> None:
    """Checks the plumbing (loading, preprocessing, caching, symmetry), NOT perceptual quality:
    the backbone here is random, so the numbers mean nothing beyond these properties."""
    scorer = LpipsScorer.load("alex")
    assert scorer.available and scorer.reason is None and scorer.weights_path == random_alexnet_home
    images, _, _ = bundled_images("digits", 32)
    a, b = images[:6], images[6:12]  # real digits, uint8, 1 channel
    d_same = scorer.distance_pairs(a, a)
    torch.testing.assert_close(d_same, torch.zeros(6), atol=1e-7, rtol=0)
    d_ab, d_ba = scorer.distance_pairs(a, b), scorer.distance_pairs(b, a)
    torch.testing.assert_close(d_ab, d_ba)
    assert (d_ab > 0).all()
    # gray is the same as gray replicated to RGB; uint8 the same as [0, 1] floats
    rgb_a, rgb_b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    torch.testing.assert_close(scorer.distance_pairs(rgb_a, rgb_b), d_ab)
    torch.testing.assert_close(scorer.distance_pairs(a.float() / 255, b.float() / 255), d_ab)
    # agrees with the lpips package's own forward on the preprocessed inputs
    model = scorer._require()
    ref = model(scorer.preprocess(a), scorer.preprocess(b)).flatten()
    torch.testing.assert_close(d_ab, ref, atol=1e-6, rtol=1e-5)
    # small images (8×8, raw digits size) are upsampled to 64 px and still work
    small = torch.nn.functional.interpolate(a.float() / 255, size=(8, 8), mode="area")
    assert scorer.preprocess(small).shape == (6, 3, 64, 64)
    d_small = scorer.distance_pairs(small, small.flip(3))
    assert torch.isfinite(d_small).all() and (d_small >= 0).all()


def test_feature_cache_reuses_keys(random_alexnet_home: Path, no_network: None) -> None:
    scorer = LpipsScorer.load("alex", cache_size=8)
    images, _, _ = bundled_images("digits", 32)
    d = scorer.distance_pairs(images[:3], images[3:6], a_keys=["t0", "t1", "t2"], b_keys=["c0", "c1", "c2"])
    torch.testing.assert_close(d, scorer.distance_pairs(images[:3], images[3:6]))
    # a cached key returns its features without looking at the pixels again
    d2 = scorer.distance_pairs(torch.zeros_like(images[:1]), images[3:4], a_keys=["t0"], b_keys=["c0"])
    torch.testing.assert_close(d2, d[:1])
    assert len(scorer._cache) == 6
    small = LpipsScorer.load("alex", cache_size=2)
    small.distance_pairs(images[:3], images[3:6], a_keys=[0, 1, 2], b_keys=[3, 4, 5])
    assert list(small._cache) == [4, 5]  # least recently used dropped first
