"""Shared fixtures: real digits and tiny classifiers trained once per test session."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# No test may find (or fetch) LPIPS backbone weights by accident: point
# torchvision's cache at an empty folder for the whole session.
os.environ["TORCH_HOME"] = str(Path(__file__).parent / ".torch-home-empty")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

from leakaudit.reference import ReferenceSpec, build_classifier, split_members, train_classifier  # noqa: E402
from leakaudit.data import write_image_folder  # noqa: E402


@dataclass(frozen=True)
class TinyReference:
    """A classifier trained here on a few real digits, with its image folders."""

    module: torch.nn.Sequential
    train_dir: Path
    holdout_dir: Path
    torchscript: Path
    state_dict: Path
    spec: ReferenceSpec


TINY_SPEC = ReferenceSpec(name="tiny", dataset="digits", train_per_class=3, holdout_per_class=4, arch="mlp",
                          hidden=64, optimizer="adam", lr=3e-3, epochs=60, batch_size=30, seed=0)


def tiny_architecture() -> torch.nn.Sequential:
    """What ``--arch tests.conftest:tiny_architecture`` builds for the tiny state_dict."""
    return build_classifier(TINY_SPEC, in_channels=1, num_classes=10)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyReference:
    root = tmp_path_factory.mktemp("tiny")
    torch.set_num_threads(2)
    data = split_members(TINY_SPEC)
    module, _ = train_classifier(TINY_SPEC, data)
    write_image_folder(root / "train", data.train_images, data.train_labels, data.classes)
    write_image_folder(root / "holdout", data.holdout_images, data.holdout_labels, data.classes)
    torch.jit.save(torch.jit.script(module), str(root / "model.pt"))
    torch.save(module.state_dict(), root / "weights.pth")
    return TinyReference(module, root / "train", root / "holdout", root / "model.pt", root / "weights.pth", TINY_SPEC)
