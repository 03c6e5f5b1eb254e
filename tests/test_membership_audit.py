"""Whole audits with reference models: the membership phase in the document, the gate, the outputs and the CLI.

A small dense classifier of real digits, trained here to memorise its members (or with heavy regularisation),
is audited with the quick inversion; the membership phase trains its reference models on the pool.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import leakaudit
from leakaudit.errors import ConfigError
from leakaudit.gate.verdict import GateSettings, apply_gate
from leakaudit.membership.recipe import TrainingRecipe
from leakaudit.membership.training import train_module
from leakaudit.record import load
from leakaudit.report.json_format import without_timings
from leakaudit.report.summary import summarise
from leakaudit.zoo import bundled_images

from .conftest import QUICK_INVERSION, Pool, assert_error, digits_pool, run_cli
from .scenarios import TODAY, scenario, with_references

SIDE = 32
QUICK = tomllib.loads(QUICK_INVERSION)  # the quick inversion, without the positive control
MEMORISE = TrainingRecipe(optimizer="adam", lr=1e-3, batch_size=64, epochs=150, until_train_accuracy=None)
ROBUST = TrainingRecipe(optimizer="adamw", lr=1e-3, weight_decay=1.0, batch_size=64, epochs=4,
                        until_train_accuracy=None, augment=("shift:1",), label_smoothing=0.1)


@pytest.fixture(scope="module")
def pool() -> Pool:
    return digits_pool(SIDE)  # 100 members, 10 per class: a model fitted to them memorises


pytestmark = pytest.mark.usefixtures("one_thread")  # both sides of every comparison: one thread


def _model(pool: Pool, recipe: TrainingRecipe) -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 256), nn.ReLU(), nn.Linear(256, 10))
    train_module(module, *pool.members, recipe, 0, lambda x: x)
    return module


def _audit(module: nn.Module, pool: Pool, **settings: Any) -> leakaudit.AuditReport:
    return leakaudit.audit(module, pool.members, pool.nonmembers, effort="quick", prior="none", budget=900,
                           **{**QUICK, **settings})


def _conditions(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in document["gate"]["conditions"]}


@pytest.fixture(scope="module")
def memorising_module(pool: Pool) -> nn.Module:
    """The dense classifier trained to memorise its members, once for the module (an audit leaves it as it is)."""
    return _model(pool, MEMORISE)


@pytest.fixture(scope="module")
def memorising(pool: Pool, memorising_module: nn.Module) -> tuple[leakaudit.AuditReport, leakaudit.AuditReport]:
    """The memorising model audited twice with the same seed, eight reference models and its own recipe."""
    return tuple(_audit(memorising_module, pool, reference_models=8,  # type: ignore[return-value]
                        recipe=MEMORISE.to_dict()) for _ in range(2))


@pytest.mark.slow
def test_a_memorising_model_fails_on_membership_with_the_attack_named(
        memorising: tuple[leakaudit.AuditReport, leakaudit.AuditReport]) -> None:
    report = memorising[0]
    document = report.document
    attacks = document["membership_attacks"]
    assert [a["attack"] for a in attacks["attacks"]] == ["loss", "lira-online", "lira-offline", "rmia-offline"]
    assert attacks["reference_models"] == 8 and attacks["complete"] and attacks["recipe_given"]
    assert attacks["splits"]["seed"] == 0 and len(attacks["splits"]["masks_sha256"]) == 64
    assert attacks["strongest"] in ("lira-online", "lira-offline", "rmia-offline")
    assert attacks["recipe_check"]["target"]["in_accuracy"] == 1.0
    condition = _conditions(document)["membership_tpr"]
    assert condition["status"] == "fail", condition
    assert "LiRA" in condition["message"] or "RMIA" in condition["message"]
    assert int(report.exit_status) == 1 and report.verdict == "fail"
    detail = summarise(document).detail
    assert " with 8 reference models identifies " in detail and "% FPR" in detail, detail
    assert document["provenance"]["stage_seconds"]["membership"] > 0
    record = load(document)  # the written document reads back, its strongest attack derived again
    assert record.membership_attacks is not None and record.membership_attacks.strongest.attack == attacks["strongest"]


@pytest.mark.slow
def test_the_same_seed_gives_the_same_document(
        memorising: tuple[leakaudit.AuditReport, leakaudit.AuditReport]) -> None:
    first, second = (without_timings(r.document) for r in memorising)
    assert first == second


@pytest.mark.slow
def test_a_robust_model_does_not_fail_on_membership(pool: Pool) -> None:
    report = _audit(_model(pool, ROBUST), pool, reference_models=4, recipe=ROBUST.to_dict())
    conditions = _conditions(report.document)
    assert conditions["membership_tpr"]["status"] == "pass", conditions["membership_tpr"]
    assert conditions["membership"]["status"] == "pass", conditions["membership"]


@pytest.mark.slow
def test_no_reference_models_writes_todays_document_and_require_power_says_why(pool: Pool,
                                                                             memorising_module: nn.Module) -> None:
    report = _audit(memorising_module, pool, reference_models=0)
    document = report.document
    assert "membership_attacks" not in document
    assert [c["name"] for c in document["gate"]["conditions"]] == ["ssim", "lpips", "leak_score", "membership"]
    assert not any("reference model" in n for n in document["summary"]["notes"])
    assert "membership" in document["provenance"]["stage_seconds"]
    strict = apply_gate(document, GateSettings(require_power=True, fail_ssim=None, warn_ssim=None,
                                               fail_leak_score=None, warn_membership_auc=None), today=TODAY)
    assert strict["verdict"] == "incomplete" and strict["exit_code"] == 2
    why = " ".join(strict["summary"]["notes"])
    assert "membership was tested only by the loss threshold" in why, why
    assert "membership tested only by the loss threshold" in load(strict).headline


def test_a_bad_recipe_file_is_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('optimiser = "adam"\nlr = -0.1\nepochs = "ten"\n')
    (tmp_path / "data").mkdir()
    code, _, err = run_cli(["run", str(tmp_path / "model.pt"), "--data", str(tmp_path / "data"),
                            "--recipe", str(recipe), "--out", str(tmp_path / "out")], capsys)
    assert_error(code, err, "optimiser")
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "'optimizer'" in lines[0] and "lr" in lines[0] and "epochs" in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_recipe_comes_from_a_mapping_or_the_config_files_table(tmp_path: Path) -> None:
    from leakaudit.api import build_settings
    from leakaudit.config import read_config

    images, labels, _ = bundled_images("digits", SIDE)
    module = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 10))
    built = build_settings(module, (images[:20], labels[:20]), recipe={"optimizer": "sgd", "lr": 0.05})
    assert built.recipe == TrainingRecipe(optimizer="sgd", lr=0.05)
    with pytest.raises(ConfigError, match="lr"):
        build_settings(module, (images[:20], labels[:20]), recipe={"lr": -1})
    (tmp_path / "pyproject.toml").write_text('[tool.leakaudit.recipe]\noptimizer = "adamw"\nepochs = 5\n')
    assert read_config(None, tmp_path).recipe == {"optimizer": "adamw", "epochs": 5}


def test_a_membership_phase_the_budget_cut_short_is_incomplete_never_a_pass() -> None:
    s = with_references(scenario(leaky=False), 8)
    s.document["membership_attacks"].update(complete=False, reference_models=3)
    gate = GateSettings(fail_ssim=None, warn_ssim=None, fail_leak_score=None, warn_membership_auc=None,
                        fail_membership_tpr=None)
    document = apply_gate(s.document, gate, today=TODAY)
    assert document["verdict"] == "incomplete" and document["exit_code"] == 2
    assert any("membership phase is incomplete" in n for n in document["summary"]["notes"])
    assert load(document).incomplete
    s.document["membership_attacks"]["complete"] = True
    assert apply_gate(s.document, gate, today=TODAY)["verdict"] == "pass"


@pytest.mark.slow
def test_the_most_leaked_list_names_the_membership_attack_and_every_output_lists_it(
        memorising: tuple[leakaudit.AuditReport, leakaudit.AuditReport]) -> None:
    """The real memorising audit: its members identified by the strongest attack are in the list read first."""
    from leakaudit.cli.console import summary_lines
    from leakaudit.report import render_markdown
    from leakaudit.report.markdown import md_escape
    from leakaudit.report.ranking import most_leaked, sample_line

    document = memorising[0].document
    record = load(document)
    samples = most_leaked(record)
    assert record.membership_attacks is not None
    strongest = record.membership_attacks.strongest.name
    identified = [s for s in samples if s.membership is not None and s.membership.identified]
    assert identified and all(f"membership: {strongest} ranks it " in sample_line(s) for s in identified)
    assert all("membership" in s.counts for s in identified)
    terminal, markdown = "\n".join(summary_lines(document, [])), render_markdown(document)
    for k, s in enumerate(samples, 1):
        assert f"{k}. {s.status}: {sample_line(s)}" in terminal
        assert md_escape(sample_line(s)) in markdown
