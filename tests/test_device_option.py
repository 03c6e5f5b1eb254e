"""``--device`` names a device that must exist: a wrong one ends the audit at once, in one line, with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TinyReference, assert_error, assert_no_result, run_cli


def _run(tiny: TinyReference, out: Path, device: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--out", str(out), "--device", device, "--effort", "quick"], capsys)
    return code, err


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0"])
def test_a_device_torch_does_not_know_is_refused_by_name(tiny: TinyReference, tmp_path: Path, device: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(tiny, tmp_path / "o", device, capsys)
    assert_error(code, err, f"--device {device}: not a device torch knows")
    assert_no_result(tmp_path / "o")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here: cuda:N may well be usable")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_asked_for_where_none_is_visible_is_refused_before_any_work(
        tiny: TinyReference, tmp_path: Path, device: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(tiny, tmp_path / "o", device, capsys)
    expected = "no GPU is visible" if device == "cuda" else f"--device {device} is not usable in this process: "
    assert_error(code, err, expected)
    assert len(err.strip().splitlines()) == 1  # one line: the reason, not a traceback
    assert_no_result(tmp_path / "o")
