"""The same weights give the same taps and the same findings in every model format.

A residual network is the hard case: its forward is not a chain of its
children, so a TorchScript file can only be tapped through its own graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from leakaudit.cli.commands import main
from leakaudit.model.target import TargetModel, load_model
from leakaudit.report.json_format import without_timings

class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class ResidualNet(nn.Module):
    """Conv-BN stem, one residual block, global pooling, a hidden and an output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = ResidualBlock(8)
        self.hidden = nn.Linear(8, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x)).mean(dim=(2, 3))
        return self.head(torch.relu(self.hidden(x)))


def residual_net() -> ResidualNet:
    """What ``--arch tests.test_formats:residual_net`` builds."""
    return ResidualNet()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One set of weights (BatchNorm statistics included) saved in every format leakaudit reads."""
    root = tmp_path_factory.mktemp("formats")
    torch.manual_seed(0)
    net = residual_net()
    net.train()
    with torch.no_grad():
        for _ in range(5):  # running statistics that differ from the initial ones
            net(torch.rand(16, 1, 32, 32))
    net.eval()
    paths = {"state_dict": root / "weights.pth", "torchscript": root / "model.pt", "export": root / "model.pt2"}
    torch.save(net.state_dict(), paths["state_dict"])
    torch.jit.save(torch.jit.script(net), str(paths["torchscript"]))
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 32, 32),)), paths["export"])
    return paths


def _load(paths: dict[str, Path], fmt: str) -> TargetModel:
    arch = "tests.test_formats:residual_net" if fmt == "state_dict" else None
    return load_model(paths[fmt], arch=arch, shape_hint=(1, 32, 32), device="cpu")


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_every_format_taps_the_same_features_and_batchnorm_statistics(saved: dict[str, Path], fmt: str) -> None:
    reference, other = _load(saved, "state_dict"), _load(saved, fmt)
    assert other.has_features, other.feature_note
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = reference.probe(x), other.probe(x)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)
    assert a.features is not None and b.features is not None
    torch.testing.assert_close(b.features, a.features, rtol=1e-5, atol=1e-6)
    assert len(b.bn_stats) == len(a.bn_stats) == 2
    for mine, theirs in zip(b.bn_stats, a.bn_stats):
        for x_mine, x_theirs in zip(mine, theirs):
            torch.testing.assert_close(x_mine, x_theirs, rtol=1e-5, atol=1e-6)


def test_torchscript_and_state_dict_give_the_same_findings(saved: dict[str, Path], tiny, quick_config: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    documents = []
    for fmt in ("torchscript", "state_dict"):
        out = tmp_path / fmt
        args = ["run", str(saved[fmt]), "--data", str(tiny.train_dir), "--holdout", str(tiny.holdout_dir),
                "--out", str(out), "--config", str(quick_config), "--no-images", "--quiet"]
        if fmt == "state_dict":
            args += ["--arch", "tests.test_formats:residual_net"]
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        capsys.readouterr()
        assert exit_info.value.code in (0, 1)
        document = without_timings(json.loads((out / "leakaudit.json").read_text()))
        documents.append(document)
    torchscript, state_dict = documents
    assert torchscript["provenance"]["model"]["features"] == state_dict["provenance"]["model"]["features"]
    assert [f["fingerprint"] for f in torchscript["findings"]] == [f["fingerprint"] for f in state_dict["findings"]]
    assert [f["ssim"] for f in torchscript["findings"]] == pytest.approx([f["ssim"] for f in state_dict["findings"]],
                                                                         abs=1e-4)
    assert torchscript["verdict"] == state_dict["verdict"]
