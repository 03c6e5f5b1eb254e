"""The CI gate on real audit documents: exit codes, calibration, chance, baseline, ignores, config."""

from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from datetime import date, timedelta

import pytest
from tests.scenarios import scenario

from leakaudit.errors import ConfigError, UsageError
from leakaudit.exit_codes import ExitStatus
from leakaudit.gate.verdict import (
    GateSettings,
    IgnoreEntry,
    apply_gate,
    evaluate_gate,
)
from leakaudit.gate.settings import gate_settings_from_mapping
from leakaudit.scoring import binomial_tail
from leakaudit.report.schema import schema_errors

TODAY = date(2026, 11, 28)
DEFAULTS = GateSettings()


def _conditions(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["gate"]["conditions"]}


def test_leaky_model_fails_with_exit_code_1() -> None:
    doc = apply_gate(scenario(leaky=True).document, DEFAULTS, today=TODAY)
    assert doc["verdict"] == "fail"
    assert doc["exit_code"] == ExitStatus.GATE_FAILED == 1
    cond = _conditions(doc)
    assert cond["ssim"]["status"] == "fail"
    assert cond["leak_score"]["status"] == "fail"
    assert cond["lpips"]["status"] == "skipped"
    assert "significant" in cond["ssim"]["message"]
    assert schema_errors(doc) == []


def test_clean_model_passes_the_default_gate() -> None:
    s = scenario(leaky=False)
    doc = apply_gate(s.document, DEFAULTS, today=TODAY)
    # real other digits match members at SSIM well above fail_ssim, yet no better than non-members
    assert max(f["ssim"] for f in doc["findings"]) > DEFAULTS.fail_ssim
    assert doc["verdict"] == "pass"
    assert doc["exit_code"] == ExitStatus.PASSED == 0
    assert schema_errors(doc) == []


def test_warning_exits_0() -> None:
    settings = replace(DEFAULTS, fail_ssim=None, fail_leak_score=None)
    doc = apply_gate(scenario(leaky=True).document, settings, today=TODAY)
    assert doc["verdict"] == "warn"
    assert doc["exit_code"] == 0
    assert {f["status"] for f in doc["findings"]} <= {"warn", "ok"}
    assert any(f["status"] == "warn" for f in doc["findings"])


def test_calibration_only_counts_samples_above_the_holdout_quantile() -> None:
    doc = apply_gate(scenario(leaky=False).document, DEFAULTS, today=TODAY)
    p99 = doc["summary"]["holdout_ssim_p99"]
    below = [f for f in doc["findings"] if f["ssim"] >= DEFAULTS.fail_ssim and f["ssim"] <= p99]
    assert below, "the scenario must contain prototype matches above fail_ssim but within the holdout's range"
    assert all(f["status"] == "ok" for f in below)


def test_uncalibrated_applies_absolute_thresholds_and_says_so() -> None:
    doc = apply_gate(scenario(leaky=False, calibrated=False).document, DEFAULTS, today=TODAY)
    cond = _conditions(doc)
    assert "Uncalibrated" in cond["ssim"]["message"]
    assert cond["leak_score"]["status"] == "skipped"
    for f in doc["findings"]:
        expected = "fail" if f["ssim"] >= 0.70 else "warn" if f["ssim"] >= 0.45 else "ok"
        assert f["status"] == expected
    assert doc["exit_code"] == (1 if any(f["ssim"] >= 0.70 for f in doc["findings"]) else 0)
    assert schema_errors(doc) == []


def test_exceedances_consistent_with_chance_pass_with_a_note() -> None:
    document = scenario(leaky=True).document
    document["summary"]["n_train"] = 100_000  # the same 12 exceedances among 100k members: expected by chance
    doc = apply_gate(document, replace(DEFAULTS, fail_leak_score=None), today=TODAY)
    cond = _conditions(doc)
    assert cond["ssim"]["status"] == "pass"
    assert "consistent with chance" in cond["ssim"]["message"]
    assert doc["verdict"] == "pass" and doc["exit_code"] == 0
    assert {f["status"] for f in doc["findings"]} == {"ok"}
    above = [f for f in doc["findings"] if f["ssim"] >= DEFAULTS.fail_ssim and f["above_holdout_p99"]]
    assert above and all("consistent with chance" in f["status_rule"] for f in above)


def test_leak_score_needs_a_small_p_value_to_fail_or_warn() -> None:
    document = scenario(leaky=True).document
    document["summary"]["leak_score"]["p_value"] = 0.2
    doc = apply_gate(document, replace(DEFAULTS, fail_ssim=None, warn_ssim=None), today=TODAY)
    assert _conditions(doc)["leak_score"]["status"] == "pass"
    assert "consistent with chance" in _conditions(doc)["leak_score"]["message"]
    assert doc["exit_code"] == 0


def test_binomial_tail_matches_scipy() -> None:
    from scipy.stats import binom

    for k, n, p in [(0, 10, 0.01), (1, 10, 0.01), (2, 10, 0.01), (23, 1300, 0.01), (12, 20, 0.0099)]:
        assert binomial_tail(k, n, p) == pytest.approx(binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)


def test_missing_holdout_quantile_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="0.97"):
        evaluate_gate(scenario(leaky=True).document, replace(DEFAULTS, holdout_quantile=0.97), today=TODAY)


# ------------------------------------------------------------------ baseline


def test_baseline_identical_audit_persists_and_passes() -> None:
    previous = apply_gate(scenario(leaky=True).document, DEFAULTS, today=TODAY)
    doc = apply_gate(scenario(leaky=True).document, DEFAULTS, today=TODAY, previous=previous, baseline_path="prev.json")
    assert {f["baseline_status"] for f in doc["findings"]} == {"persisting"}
    assert doc["exit_code"] == 0
    assert doc["verdict"] == "warn"
    b = doc["gate"]["baseline"]
    assert (b["path"], b["new"], b["worse"], b["fixed"]) == ("prev.json", 0, 0, [])
    assert b["persisting"] == sum(1 for f in previous["findings"] if f["status"] == "fail")
    assert schema_errors(doc) == []


def test_baseline_new_and_worse_findings_fail() -> None:
    previous = apply_gate(scenario(leaky=True).document, DEFAULTS, today=TODAY)
    dropped = previous["findings"][:2]
    previous["findings"] = previous["findings"][2:]
    previous["findings"][0]["ssim"] -= 0.05  # the current audit is worse on this one
    worse_fp = previous["findings"][0]["fingerprint"]
    previous["findings"][1]["ssim"] -= 0.01  # within the margin: persisting
    doc = apply_gate(scenario(leaky=True).document, DEFAULTS, today=TODAY, previous=previous)
    by_fp = {f["fingerprint"]: f for f in doc["findings"]}
    for f in dropped:
        assert by_fp[f["fingerprint"]]["baseline_status"] == "new"
        assert by_fp[f["fingerprint"]]["status"] == "fail"
    assert by_fp[worse_fp]["baseline_status"] == "worse"
    assert by_fp[worse_fp]["status"] == "fail"
    assert by_fp[previous["findings"][1]["fingerprint"]]["baseline_status"] == "persisting"
    assert by_fp[previous["findings"][1]["fingerprint"]]["status"] == "warn"
    assert (doc["gate"]["baseline"]["new"], doc["gate"]["baseline"]["worse"]) == (2, 1)
    assert doc["exit_code"] == 1


def test_baseline_lists_fixed_findings_after_retraining() -> None:
    previous = apply_gate(scenario(leaky=True).document, DEFAULTS, today=TODAY)
    doc = apply_gate(scenario(leaky=False).document, DEFAULTS, today=TODAY, previous=previous)
    flagged_before = {f["fingerprint"] for f in previous["findings"] if f["status"] in ("fail", "warn")}
    assert flagged_before
    assert set(doc["gate"]["baseline"]["fixed"]) == flagged_before
    assert doc["exit_code"] == 0


# ------------------------------------------------------------------ ignore entries


def _ignore_all_flagged(expires: date) -> GateSettings:
    flagged = apply_gate(scenario(leaky=True).document, DEFAULTS, today=TODAY)["findings"]
    entries = tuple(
        IgnoreEntry(f["fingerprint"], "reviewed: public sample", expires) for f in flagged if f["status"] == "fail"
    )
    return replace(DEFAULTS, fail_leak_score=None, ignore=entries)


def test_ignore_entry_suppresses_its_finding() -> None:
    settings = _ignore_all_flagged(TODAY)  # expires today: still valid today
    doc = apply_gate(scenario(leaky=True).document, settings, today=TODAY)
    ignored = {e.fingerprint for e in settings.ignore}
    assert {f["status"] for f in doc["findings"] if f["fingerprint"] in ignored} == {"ignored"}
    assert doc["exit_code"] == 0
    assert all(not i["expired"] for i in doc["gate"]["ignored"])
    assert schema_errors(doc) == []


def test_expired_ignore_entry_stops_ignoring_and_says_so() -> None:
    settings = _ignore_all_flagged(TODAY - timedelta(days=1))
    doc = apply_gate(scenario(leaky=True).document, settings, today=TODAY)
    assert "ignored" not in {f["status"] for f in doc["findings"]}
    assert doc["exit_code"] == 1
    assert all(i["expired"] for i in doc["gate"]["ignored"])
    assert any("expired" in note for note in doc["summary"]["notes"])


# ------------------------------------------------------------------ settings


def test_settings_from_toml_table() -> None:
    table = tomllib.loads(
        """
        [tool.leakaudit.gate]
        fail_ssim = 0.8
        warn_ssim = 0.5
        fail_lpips = 0.2
        fail_leak_score = false
        holdout_quantile = 0.95
        ignore = [{fingerprint = "%s", reason = "public image", expires = 2027-01-31}]
        """
        % ("ab" * 32)
    )["tool"]["leakaudit"]["gate"]
    settings = gate_settings_from_mapping(table, baseline_path="prev.json")
    assert (settings.fail_ssim, settings.warn_ssim, settings.fail_lpips) == (0.8, 0.5, 0.2)
    assert settings.fail_leak_score is None
    assert settings.holdout_quantile == 0.95
    assert settings.ignore == (IgnoreEntry("ab" * 32, "public image", date(2027, 1, 31)),)
    assert settings.baseline_path == "prev.json"


def test_settings_report_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        gate_settings_from_mapping(
            {
                "fail_ssim": 0.4,
                "warn_ssim": 0.5,
                "fail_lpips": "low",
                "holdout_quantile": 1.5,
                "fail_ssmi": 0.3,
                "ignore": [{"fingerprint": "xyz", "reason": "", "expires": "soon"}],
            }
        )
    message = str(info.value)
    for fragment in ("fail_ssmi", "did you mean 'fail_ssim'", "fail_lpips", "holdout_quantile", "warn_ssim = 0.5",
                     "fingerprint", "reason", "expires"):
        assert fragment in message


def test_settings_without_expiry_are_rejected() -> None:
    with pytest.raises(ConfigError, match="expires is required"):
        gate_settings_from_mapping({"ignore": [{"fingerprint": "cd" * 32, "reason": "ok"}]})


def test_apply_gate_does_not_modify_its_input() -> None:
    document = scenario(leaky=True).document
    before = copy.deepcopy(document)
    apply_gate(document, DEFAULTS, today=TODAY)
    assert document == before
