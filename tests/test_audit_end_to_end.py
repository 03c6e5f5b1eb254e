"""Whole audits through the CLI, on a classifier trained here on real digits.

The inversion is kept short through ``[tool.leakaudit.inversion]`` (a few
dozen steps) so that a run takes seconds; what is checked is the contract a
user relies on, not the strength of the attack (that is ``bench/``'s job).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

from leakaudit.cli.commands import main
from leakaudit.data.folders import load_image_folder
from leakaudit.exit_codes import ExitStatus
from leakaudit.matching.ssim import ssim_pairs
from leakaudit.report.json_format import without_timings
from leakaudit.report.schema import load_schema

from tests.scenarios import gated

from .conftest import TinyReference, run_cli

pytestmark = pytest.mark.slow  # whole audits

@pytest.fixture(scope="module")
def audited(tiny: TinyReference, quick_config: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One informed audit with every output switched on."""
    out = tmp_path_factory.mktemp("audit")
    args = ["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout", str(tiny.holdout_dir),
            "--out", str(out / "result"), "--config", str(quick_config), "--budget", "600", "--seed", "3",
            "--junit", str(out / "junit.xml"), "--markdown", str(out / "summary.md"), "--format", "json", "--top", "10"]
    out_buffer, err_buffer = io.StringIO(), io.StringIO()
    with redirect_stdout(out_buffer), redirect_stderr(err_buffer), pytest.raises(SystemExit) as exit_info:
        main(args)
    return {"code": int(exit_info.value.code or 0), "stdout": out_buffer.getvalue(), "stderr": err_buffer.getvalue(),
            "out": out, "result": out / "result"}


def test_exit_code_matches_the_verdict(audited: dict[str, Any]) -> None:
    document = json.loads((audited["result"] / "leakaudit.json").read_text())
    assert audited["code"] in (ExitStatus.PASSED, ExitStatus.GATE_FAILED), audited["stderr"]
    assert audited["code"] == document["exit_code"]
    assert (document["verdict"] == "fail") == (audited["code"] == ExitStatus.GATE_FAILED)


def test_stdout_is_exactly_the_json_document(audited: dict[str, Any]) -> None:
    printed = json.loads(audited["stdout"])
    written = json.loads((audited["result"] / "leakaudit.json").read_text())
    assert printed == written
    assert "PASS" in audited["stderr"] or "WARN" in audited["stderr"] or "FAIL" in audited["stderr"]


def test_document_follows_the_schema(audited: dict[str, Any]) -> None:
    document = json.loads((audited["result"] / "leakaudit.json").read_text())
    jsonschema.validate(document, load_schema())
    assert document["calibrated"] is True
    assert document["mode"] == "informed"
    assert document["summary"]["leak_score"]["n_members"] == 30
    assert 0.0 <= document["summary"]["leak_score"]["value"] <= 1.0
    assert document["provenance"]["seed"] == 3
    assert len(document["provenance"]["model"]["sha256"]) == 64


def test_findings_can_be_recomputed_from_the_saved_reconstructions(audited: dict[str, Any],
                                                                   tiny: TinyReference) -> None:
    document = json.loads((audited["result"] / "leakaudit.json").read_text())
    saved = np.load(audited["result"] / "reconstructions.npz")
    train = load_image_folder(tiny.train_dir, channels=1, size=(32, 32))
    findings = document["findings"]
    assert len(findings) == 10
    assert [f["ssim"] for f in findings] == sorted((f["ssim"] for f in findings), reverse=True)
    for finding in findings:
        reconstruction = torch.from_numpy(saved["images"][finding["reconstruction_index"]])[None]
        member = train.float01(torch.tensor([train.paths.index(finding["path"])]))
        recomputed = float(ssim_pairs(reconstruction, member)[0])
        assert recomputed == pytest.approx(finding["ssim"], abs=1e-5)
        assert finding["class"] == finding["path"].split("/")[0]
    assert saved["finding_train_images"].shape == (10, 1, 32, 32)


def test_lpips_is_reported_unavailable_offline(audited: dict[str, Any]) -> None:
    document = json.loads((audited["result"] / "leakaudit.json").read_text())
    assert document["metrics"]["lpips"]["available"] is False
    assert "weights" in document["metrics"]["lpips"]["reason"]
    assert all(f["lpips"] is None for f in document["findings"])
    assert "LPIPS unavailable" in (audited["result"] / "report.html").read_text()


def test_machine_outputs_are_written(audited: dict[str, Any]) -> None:
    import xml.etree.ElementTree as ET

    suite = ET.parse(audited["out"] / "junit.xml").getroot()
    assert suite.tag == "testsuites" and len(list(suite.iter("testcase"))) > 0
    assert "|" in (audited["out"] / "summary.md").read_text()
    html = (audited["result"] / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "data:image/png;base64," in html


def test_report_can_be_rerendered_from_the_outputs(audited: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    target = audited["out"] / "again.html"
    code, _, err = run_cli(["report", str(audited["result"] / "leakaudit.json"), "--out", str(target)], capsys)
    assert code == 0, err
    assert "report written" in err
    assert target.read_text().count("<tr") == (audited["result"] / "report.html").read_text().count("<tr")


def test_same_seed_same_result(tiny: TinyReference, quick_config: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    documents = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                                str(tiny.holdout_dir), "--out", str(out), "--config", str(quick_config),
                                "--seed", "5", "--quiet", "--prior", "none"], capsys)
        assert code in (0, 1), err
        documents.append(without_timings(json.loads((out / "leakaudit.json").read_text())))
    assert documents[0] == documents[1]


def test_without_holdout_the_result_says_it_is_uncalibrated(tiny: TinyReference, quick_config: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(tmp_path / "o"),
                            "--config", str(quick_config)], capsys)
    assert code in (0, 1), err
    document = json.loads((tmp_path / "o" / "leakaudit.json").read_text())
    assert document["calibrated"] is False
    assert document["mode"] == "data-free"
    assert document["summary"]["leak_score"] is None
    assert any("uncalibrated" in note for note in document["summary"]["notes"])
    assert "not calibrated" in err


# A budget the attack of 100,000 steps cannot finish in, that still outlasts loading the model and the data with
# the other test worker busy (the loading phase ends at the budget too). The inversion gets what the budget leaves
# less a 10 s reserve for matching and reporting, at least 5 s, so a larger budget costs the test little time.
UNFINISHED_BUDGET_S = 20


def test_budget_is_a_ceiling_and_an_unfinished_attack_exits_2(tiny: TinyReference, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import xml.etree.ElementTree as ET

    config = tmp_path / "long.toml"
    # the fail conditions are off, so the work done cannot fail the gate: the verdict must be incomplete
    config.write_text("[gate]\nfail_ssim = false\nfail_leak_score = false\n[inversion]\nwidth = 16\n"
                      "batch_per_class = 2\nsteps = 100000\npool_per_class = 8\ncandidates_per_class = 2\n"
                      "refine_steps = 10\nkkt_steps = 10\ncheckpoint_every = 5\n")
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir),
                            "--holdout", str(tiny.holdout_dir),
                            "--prior", "none", "--out", str(tmp_path / "o"), "--config", str(config), "--budget",
                            str(UNFINISHED_BUDGET_S),
                            "--junit", str(tmp_path / "j.xml"), "--markdown", str(tmp_path / "s.md")], capsys)
    assert code == ExitStatus.INCOMPLETE == 2, err
    document = json.loads((tmp_path / "o" / "leakaudit.json").read_text())
    assert document["verdict"] == "incomplete" and document["exit_code"] == 2
    assert document["inversion"]["complete"] is False
    assert document["inversion"]["completed_fraction"] < 0.5
    assert document["exposure"]["statement"] == "incomplete"
    reason = document["inversion"]["incomplete_reason"]
    assert f"--budget {UNFINISHED_BUDGET_S} s" in reason and "of its 100020 planned steps" in reason
    assert "raise --budget" in reason
    assert "INCOMPLETE" in err and reason in err  # the terminal summary
    html = (tmp_path / "o" / "report.html").read_text()
    assert "INCOMPLETE" in html and "Incomplete attack" in html
    assert "Incomplete attack" in (tmp_path / "s.md").read_text()
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")}
    assert cases["leakaudit.gate.attack_complete"].find("failure") is not None
    # a finished (incomplete) run leaves no checkpoint of its attack; only the finished reference models of a
    # membership phase the budget cut short stay, for the same command with a larger budget
    left = tmp_path / "o" / "checkpoints"
    kept = sorted(p.name for p in left.iterdir()) if left.exists() else []
    assert kept in ([], ["membership"]), kept
    attacks = document.get("membership_attacks")  # absent when the budget was spent before the membership phase
    if attacks is None or attacks["complete"]:
        assert kept == [], "a finished membership phase, or one that did not run, keeps nothing"
    if attacks is None:
        assert "membership" in [cut["phase"] for cut in document["budget_cuts"]]


def test_an_unfinished_attack_that_already_fails_is_a_fail(tiny: TinyReference, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "long.toml"
    config.write_text("[inversion]\nwidth = 16\nbatch_per_class = 2\nsteps = 100000\npool_per_class = 8\n"
                      "candidates_per_class = 2\nrefine_steps = 10\nkkt_steps = 10\n")
    # no holdout: the absolute threshold applies, and every member is above SSIM 0.01
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(tmp_path / "o"),
                            "--config", str(config), "--budget", str(UNFINISHED_BUDGET_S), "--fail-ssim", "0.01",
                            "--quiet"], capsys)
    assert code == ExitStatus.GATE_FAILED, err
    document = json.loads((tmp_path / "o" / "leakaudit.json").read_text())
    assert document["verdict"] == "fail" and document["inversion"]["complete"] is False
    assert any("incomplete" in note and "already fails" in note for note in document["summary"]["notes"])
    assert document["thresholds"]["warn_ssim"] == 0.01  # --fail-ssim alone lowers the warning level with it


def _shape(value: Any) -> Any:
    """The keys of a document, nested; a list is described by its first element."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list) and value:
        return [_shape(value[0])]
    return None


def _missing(real: Any, built: Any, path: str = "") -> list[str]:
    if isinstance(real, dict):
        if built is None:  # a field that may be null: present, with nothing in it
            return []
        if not isinstance(built, dict):
            return [path or "/"]
        return [p for key in real for p in (_missing(real[key], built[key], f"{path}/{key}") if key in built
                                            else [f"{path}/{key}"])]
    if isinstance(real, list) and isinstance(built, list) and real and built:
        return _missing(real[0], built[0], f"{path}/0")
    return []


def test_the_hand_built_scenario_has_every_field_of_a_real_document(audited: dict[str, Any]) -> None:
    """The report and gate tests run on a hand-built document: it must not drift from what an audit writes."""
    real = _shape(json.loads((audited["result"] / "leakaudit.json").read_text()))
    built, _ = gated(leaky=True, references=8)
    assert _missing(real, _shape(built)) == []
