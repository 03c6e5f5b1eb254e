"""A verdict that depends on the model alone: every member counted, conditions that cannot run refused,
baselines that cannot be trusted refused, interrupted writes reported exactly, membership exposure."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from leakaudit.runtime.cpus import cgroup_quota_cpus, choose_threads, usable_cpus
from leakaudit.gate.verdict import GateSettings, apply_gate
from leakaudit.report import write_outputs
from leakaudit.report.schema import schema_errors
from leakaudit.scoring import membership_test, tpr_at_fpr
from tests.scenarios import scenario

from .conftest import QUICK_INVERSION, TinyReference, assert_error, assert_no_result, run_cli

TODAY = date(2026, 11, 28)


def _members(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"fingerprint": f["fingerprint"], "ssim": f["ssim"]} for f in document["findings"]]


# ------------------------------------------------------------------ the gate counts every member


def test_listing_one_finding_does_not_change_the_verdict() -> None:
    full = scenario(leaky=True).document
    members = _members(full)
    top1 = dict(full, findings=full["findings"][:1])
    a = apply_gate(full, GateSettings(), today=TODAY, members=members)
    b = apply_gate(top1, GateSettings(), today=TODAY, members=members)
    assert a["verdict"] == b["verdict"] == "fail"
    assert a["gate"]["conditions"] == b["gate"]["conditions"]
    assert b["gate"]["counted"] == {"members": len(members), "from": "every member"}
    assert b["findings"][0]["status"] == a["findings"][0]["status"]


def test_without_the_members_the_count_says_it_is_a_lower_bound() -> None:
    doc = scenario(leaky=True).document
    doc["summary"]["n_train"] = 200
    gated = apply_gate(doc, GateSettings(), today=TODAY)
    assert "lower bound" in gated["gate"]["counted"]["from"]


def test_every_finding_carries_the_rule_with_the_gates_quantile() -> None:
    doc = scenario(leaky=False).document
    doc["summary"]["holdout"]["quantiles"]["0.9"] = doc["summary"]["holdout"]["quantiles"]["0.9"]
    settings = GateSettings(holdout_quantile=0.9)
    gated = apply_gate(doc, settings, today=TODAY)
    assert all(f["status_rule"] for f in gated["findings"])
    reference = doc["summary"]["holdout"]["quantiles"]["0.9"]
    excluded = [f for f in gated["findings"] if f["ssim"] >= 0.70 and f["ssim"] <= reference]
    assert excluded, "the clean scenario has prototype matches above fail_ssim within the holdout's range"
    for f in excluded:
        assert f["status"] == "ok"
        assert "not above the holdout's q0.9" in f["status_rule"] and "not counted" in f["status_rule"]
    assert schema_errors(gated) == []


def test_fail_ssim_alone_lowers_the_warning_level() -> None:
    from leakaudit.gate.settings import gate_settings_from_mapping

    settings = gate_settings_from_mapping({"fail_ssim": 0.3}, sources={"fail_ssim": "--fail-ssim"})
    assert (settings.fail_ssim, settings.warn_ssim) == (0.3, 0.3)
    assert gate_settings_from_mapping({"fail_ssim": 0.9}).warn_ssim == 0.45


def test_an_inconsistent_value_names_the_flag_it_came_from() -> None:
    from leakaudit.errors import ConfigError
    from leakaudit.gate.settings import gate_settings_from_mapping

    with pytest.raises(ConfigError) as info:
        gate_settings_from_mapping({"fail_ssim": 0.3, "warn_ssim": 0.5},
                                   sources={"fail_ssim": "--fail-ssim", "warn_ssim": "--warn-ssim"})
    assert "--warn-ssim = 0.5 must not exceed --fail-ssim = 0.3" in str(info.value)
    assert "[tool.leakaudit.gate]" not in str(info.value)


# ------------------------------------------------------------------ the membership condition


def test_membership_test_agrees_with_scikit_learn() -> None:
    gen = torch.Generator().manual_seed(0)
    logits_in, logits_out = torch.randn(300, 10, generator=gen) * 3, torch.randn(700, 10, generator=gen) * 2
    labels_in, labels_out = torch.randint(0, 10, (300,), generator=gen), torch.randint(0, 10, (700,), generator=gen)
    test = membership_test(logits_in, labels_in, logits_out, labels_out)
    loss = lambda lg, lb: torch.nn.functional.cross_entropy(lg.double(), lb, reduction="none").numpy()  # noqa: E731
    scores = np.r_[-loss(logits_in, labels_in), -loss(logits_out, labels_out)]
    truth = np.r_[np.ones(300), np.zeros(700)]
    assert test.auc == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert test.ci_low <= test.auc <= test.ci_high
    fpr, tpr, _ = roc_curve(truth, scores)
    assert test.tpr_at_fpr["0.01"] == pytest.approx(tpr[fpr <= 0.01].max(), abs=1 / 300 + 1e-12)
    assert tpr_at_fpr(np.array([2.0, 3.0]), np.array([0.0, 1.0]), 0.001) == 1.0


@pytest.fixture(scope="module")
def memorising_audit(tiny: TinyReference, quick_config: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """The tiny reference (three real digits per class, trained to memorise) audited once with the quick inversion:
    its exit code, its stderr and its output folder. Tests read it; none writes there."""
    from leakaudit.cli.commands import main

    root = tmp_path_factory.mktemp("memorising")
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout", str(tiny.holdout_dir),
              "--out", str(root / "o"), "--config", str(quick_config), "--quiet"])
    return int(exit_info.value.code or 0), err.getvalue(), root / "o"


@pytest.mark.slow
def test_the_memorising_reference_does_not_pass(memorising_audit: tuple[int, str, Path]) -> None:
    """Three real digits per class, trained to memorise: whatever the reconstructions, the verdict is not pass."""
    code, err, out = memorising_audit
    document = json.loads((out / "leakaudit.json").read_text())
    membership = {c["name"]: c for c in document["gate"]["conditions"]}["membership"]
    assert document["summary"]["membership"]["auc"] > 0.8 and document["summary"]["membership"]["p_value"] < 0.01
    assert membership["status"] == "warn"
    assert document["verdict"] != "pass" and code == document["exit_code"], err
    assert document["exposure"]["membership"] is True
    assert "memorises membership" in document["exposure"]["statement"]
    assert "memorises membership" in (out / "report.html").read_text()
    assert document["provenance"]["threads"] >= 1
    assert document["inversion"]["effort"] == "standard" and document["inversion"]["complete"] is True
    assert not (out / "checkpoints").exists()
    assert not (out / ".leakaudit.lock").exists()


def test_the_membership_fail_level_fails_the_gate() -> None:
    doc = scenario(leaky=False).document
    doc["summary"]["membership"] = {"auc": 0.9, "ci_low": 0.85, "ci_high": 0.95, "p_value": 1e-6,
                                    "tpr_at_fpr": {"0.01": 0.2, "0.001": 0.05}, "n_members": 20,
                                    "n_nonmembers": 200, "method": "loss threshold"}
    gated = apply_gate(doc, GateSettings(fail_membership_auc=0.85), today=TODAY)
    assert {c["name"]: c["status"] for c in gated["gate"]["conditions"]}["membership"] == "fail"
    assert gated["exit_code"] == 1 and gated["exposure"]["statement"] == "memorises membership"


# ------------------------------------------------------------------ conditions that cannot be evaluated


def test_requested_conditions_that_cannot_be_evaluated_are_errors(tiny: TinyReference, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    partial = tmp_path / "partial-holdout"
    shutil.copytree(tiny.holdout_dir, partial)
    shutil.rmtree(partial / "7")
    (partial / "7").mkdir()
    model, data = str(tiny.torchscript), str(tiny.train_dir)
    cases = {
        "leak score without holdout": ([model, "--data", data, "--fail-leak-score", "0.7"],
                                       "--fail-leak-score needs non-member images to compare with: pass --holdout DIR"),
        "lpips unavailable": ([model, "--data", data, "--fail-lpips", "0.2"],
                              "--fail-lpips is set but LPIPS is unavailable"),
        "holdout lacks a class": ([model, "--data", data, "--holdout", str(partial)],
                                  "has no images of class(es) 7, which the training data has"),
    }
    for case, (args, message) in cases.items():
        out = tmp_path / case.replace(" ", "-")
        code, _, err = run_cli(["run", *args, "--out", str(out)], capsys)
        assert_error(code, err, message)
        assert_no_result(out)
        assert not out.exists(), f"{case}: a refused run leaves no folder behind"


# ------------------------------------------------------------------ baselines


def _audit(tiny: TinyReference, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str,
           out: str = "o") -> tuple[int, str]:
    config = tmp_path / "quick.toml"
    config.write_text(QUICK_INVERSION)
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--out", str(tmp_path / out), "--config", str(config), "--quiet",
                            *extra], capsys)
    return code, err


def test_a_forged_baseline_is_refused_before_the_audit(tiny: TinyReference, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"findings": [{"fingerprint": "ab" * 32, "ssim": 1.0}],
                                  "summary": {"leak_score": {"value": 1.0, "ci_high": 1.0}}}))
    code, err = _audit(tiny, tmp_path, capsys, "--baseline", str(forged))
    assert_error(code, err, f"--baseline {forged} is not a valid leakaudit findings document")
    assert_no_result(tmp_path / "o")


@pytest.mark.slow
def test_a_baseline_of_another_model_is_refused_unless_meant(tiny: TinyReference,
                                                            memorising_audit: tuple[int, str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, err, first = memorising_audit  # the first audit: the same command as _audit's
    assert code in (0, 1), err
    baseline = json.loads((first / "leakaudit.json").read_text())
    baseline["provenance"]["model"]["sha256"] = "cd" * 32  # the audit of another model
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(baseline))
    code, err = _audit(tiny, tmp_path, capsys, "--baseline", str(foreign), out="second")
    assert_error(code, err, "was made for another model (sha256 cdcdcdcdcdcd…")
    assert "--allow-foreign-baseline" in err
    assert_no_result(tmp_path / "second")
    code, err = _audit(tiny, tmp_path, capsys, "--baseline", str(foreign), "--allow-foreign-baseline", out="third")
    assert code in (0, 1), err


def test_the_leak_score_baseline_uses_the_value_not_a_claimed_interval() -> None:
    previous = apply_gate(scenario(leaky=True).document, GateSettings(), today=TODAY)
    previous["summary"]["leak_score"]["value"] = 0.71
    previous["summary"]["leak_score"]["ci_high"] = 1.0  # a forged interval would accept any rise
    doc = apply_gate(scenario(leaky=True).document, GateSettings(), today=TODAY, previous=previous)
    leak = {c["name"]: c for c in doc["gate"]["conditions"]}["leak_score"]
    assert doc["summary"]["leak_score"]["value"] > 0.71 + 0.02
    assert leak["status"] == "fail"


# ------------------------------------------------------------------ interrupted writes


def test_a_stop_while_writing_leaves_only_complete_files_and_says_which(tmp_path: Path) -> None:
    from leakaudit.cli.console import interrupt_message

    s = scenario(leaky=True)
    document = apply_gate(s.document, GateSettings(), today=TODAY)
    asked = iter([False, True])  # the signal arrives after the first file
    outputs = write_outputs(document, s.arrays, tmp_path, should_stop=lambda: next(asked, True))
    assert outputs.stopped and outputs.paths == (tmp_path / "reconstructions.npz",)
    assert not (tmp_path / "leakaudit.json").exists() and not (tmp_path / "report.html").exists()
    message = interrupt_message("SIGINT", outputs.paths, tmp_path)
    assert f"only these outputs were complete before the stop: {tmp_path / 'reconstructions.npz'}" in message
    assert "no saved inversion state" in message
    assert "no result was written" in interrupt_message("SIGTERM", (), tmp_path)


# ------------------------------------------------------------------ threads


def test_the_thread_count_follows_what_the_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert cgroup_quota_cpus(v2=quota) == 1.5
    quota.write_text("max 100000\n")
    assert cgroup_quota_cpus(v2=quota, v1_quota=tmp_path / "absent") is None
    monkeypatch.setenv("LEAKAUDIT_THREADS", "3")
    assert choose_threads() == 3
    assert choose_threads(requested=1) == 1


@pytest.mark.slow
def test_the_verdict_does_not_depend_on_the_thread_count(tiny: TinyReference, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from leakaudit.report.json_format import without_timings

    documents = []
    for threads in ("1", "2"):
        monkeypatch.setenv("LEAKAUDIT_THREADS", threads)
        code, err = _audit(tiny, tmp_path, capsys, "--prior", "none", out=f"t{threads}")
        assert code in (0, 1), err
        documents.append(without_timings(json.loads((tmp_path / f"t{threads}" / "leakaudit.json").read_text())))
    assert [d["provenance"].pop("threads") for d in documents] == [1, 2]
    # Other thread counts sum in another order (SSIM moves by ~1e-3); the verdict and every status stay.
    assert documents[0]["verdict"] == documents[1]["verdict"]
    assert [(c["name"], c["status"]) for c in documents[0]["gate"]["conditions"]] == \
        [(c["name"], c["status"]) for c in documents[1]["gate"]["conditions"]]
    assert documents[0]["inversion"]["steps"] == documents[1]["inversion"]["steps"]


def test_effort_levels_fix_the_planned_steps() -> None:
    from leakaudit.inversion import InversionConfig

    quick, standard, thorough = (InversionConfig.for_effort(e) for e in ("quick", "standard", "thorough"))
    assert quick.steps < standard.steps < thorough.steps
    assert quick.pretrain_steps < standard.pretrain_steps < thorough.pretrain_steps
    assert quick.kkt_steps < standard.kkt_steps < thorough.kkt_steps
    assert standard == InversionConfig()
    assert replace(InversionConfig.for_effort("quick", budget_s=1.0), budget_s=None) == quick


def test_the_chance_test_is_exact_for_an_estimated_quantile() -> None:
    from scipy.stats import nhypergeom

    from leakaudit.scoring import exceedance_p_value, holdout_rank

    assert holdout_rank(300, 0.99) == 4 and holdout_rank(20, 0.99) == 2
    for k, m, n, r in [(8, 200, 300, 4), (1, 10, 60, 1), (12, 100_000, 200, 3), (3, 30, 15, 2)]:
        assert exceedance_p_value(k, m, n, r) == pytest.approx(nhypergeom(m + n, m, r).sf(k - 1), rel=1e-9, abs=1e-15)
    # the case a binomial test at rate 0.01 calls significant (p ≈ 0.001): chance explains it
    assert exceedance_p_value(8, 200, 300, holdout_rank(300, 0.99)) > 0.01
