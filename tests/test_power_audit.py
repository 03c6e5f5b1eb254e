"""The positive control inside whole audits: power shown on the memorising MLP, require_power, the splits, reruns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from leakaudit.data.folders import load_image_folder
from leakaudit.exit_codes import ExitStatus
from leakaudit.zoo import build_reference, load_spec
from leakaudit.report.json_format import without_timings
from leakaudit.report.schema import schema_errors

from .conftest import TinyReference, run_cli

pytestmark = pytest.mark.slow  # whole audits


def _audit(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code, _, err = run_cli(["run", *args, "--out", str(out)], capsys)
    path = out / "leakaudit.json"
    assert path.exists(), err
    return code, json.loads(path.read_text()), err


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The bundled 1-digit-per-class MLP reference (the demo's)."""
    spec, _ = load_spec("digits-mlp-1pc")
    return build_reference(spec, tmp_path_factory.mktemp("digits-mlp-1pc"))


def test_power_is_shown_on_the_one_per_class_mlp(one_per_class: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(one_per_class.model_path), "--data", str(one_per_class.train_dir), "--holdout",
            str(one_per_class.holdout_dir), "--effort", "quick", "--require-power"]
    code, doc, err = _audit(args, tmp_path / "out", capsys)
    assert schema_errors(doc) == []
    power = doc["power"]
    assert power["status"] == "shown" and power["largest_k_shown"] == 1 and power["ladder"] == [1], power["reason"]
    rung = power["rungs"][0]
    assert rung["memorised"] and rung["accuracy"] == 1.0 and rung["final_loss"] <= 1e-3
    assert rung["members_at_ssim_0_4"] >= 5 and rung["leak_score"]["value"] >= 0.7
    assert "memorising up to 1 image per class; this model was trained on 1 per class" in power["statement"]
    assert code in (ExitStatus.PASSED, ExitStatus.GATE_FAILED) and code == doc["exit_code"]  # power shown: no 2
    assert "Power shown" in err and "power: control K=1" in err  # the phase in the progress output
    assert "power" in doc["provenance"]["stage_seconds"]
    # the splits are indices into the holdout: members from the null, never in the control's own null
    members, null = set(rung["splits"]["members"]), set(rung["splits"]["null"])
    assert len(members) == 10 and not members & null
    holdout = load_image_folder(one_per_class.holdout_dir, channels=1, size=(32, 32))
    assert sorted(holdout.labels[sorted(members)].tolist()) == list(range(10))
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Power shown." in html and 'id="power"' in html and "Control members at K = 1" in html


def test_a_pass_without_shown_power_is_incomplete_under_require_power(tiny: TinyReference, quick_config: Path,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = [str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout", str(tiny.holdout_dir),
            "--config", str(quick_config), "--seed", "2"]
    code, doc, err = _audit([*base, "--no-power-check", "--require-power"], tmp_path / "required", capsys)
    assert doc["power"]["status"] == "not measured" and "--no-power-check" in doc["power"]["reason"]
    failed = any(c["status"] == "fail" for c in doc["gate"]["conditions"])
    assert code == (ExitStatus.GATE_FAILED if failed else ExitStatus.INCOMPLETE), err
    assert doc["power"]["rungs"] == []
    code_free, doc_free, err_free = _audit([*base, "--no-power-check"], tmp_path / "free", capsys)
    assert code_free == (ExitStatus.GATE_FAILED if failed else ExitStatus.PASSED)
    assert "Power not measured" in err_free and "does not show that the model is safe" in err_free


def test_without_holdout_power_is_not_measured(tiny: TinyReference, quick_power_config: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _, doc, _ = _audit([str(tiny.torchscript), "--data", str(tiny.train_dir), "--config", str(quick_power_config)],
                       tmp_path / "out", capsys)
    assert doc["power"]["status"] == "not measured" and "no holdout" in doc["power"]["reason"]


def test_the_control_gives_identical_documents_on_a_rerun(tiny: TinyReference, quick_power_config: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    documents = []
    for run in range(2):
        _, doc, err = _audit([str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout", str(tiny.holdout_dir),
                              "--config", str(quick_power_config), "--seed", "4"], tmp_path / f"run{run}", capsys)
        assert doc["power"]["status"] in ("shown", "not shown") and doc["power"]["rungs"], err
        documents.append(without_timings(doc))
    assert documents[0]["power"] == documents[1]["power"]
    assert documents[0] == documents[1]
