"""The candidates at large inputs: capped by one refinement step's counted classifier work, never by a clock.

A ResNet-18 built here (random weights, no download) has its forward+backward
FLOPs counted exactly as the worker counts them at load (``ModelInfo.of``);
the plan then depends only on the inputs and the effort.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.models import resnet18

from leakaudit.config import AuditSettings
from leakaudit.confine import results
from leakaudit.confine.operations import ModelInfo
from leakaudit.inversion import InversionResult
from leakaudit.inversion.candidates import FLOOR, REFINE_FLOPS, REFINE_STEP_FLOPS, REFINE_STEPS_FLOOR, work_cap
from leakaudit.inversion.plan import PERTURBED_COPIES, budget_message
from leakaudit.model.target import TargetModel
from leakaudit.pipeline.attack import Attack, resolve_inversion, work_cap_notes
from leakaudit.pipeline.power import rung_config

N_TRAIN = 40  # 4 members a class: the data asks for 8 candidates a class


def _settings(**values: Any) -> AuditSettings:
    return AuditSettings(model=Path("m.pt"), data=Path("train"), effort="quick", **values)


def _target(side: int) -> TargetModel:
    torch.manual_seed(0)
    return TargetModel.from_module(resnet18(num_classes=10), (3, side, side), 10, device="cpu")


@pytest.fixture(scope="module")
def r18_224() -> tuple[TargetModel, ModelInfo]:
    target = _target(224)
    return target, ModelInfo.of(target)


@pytest.fixture(scope="module")
def info_128() -> ModelInfo:
    return ModelInfo.of(_target(128))


@pytest.fixture(scope="module")
def info_64() -> ModelInfo:
    return ModelInfo.of(_target(64))


def test_the_load_counts_one_images_forward_and_backward(r18_224: tuple[TargetModel, ModelInfo]) -> None:
    _, info = r18_224
    # ResNet-18 at 224×224: 1.8 G multiply-adds forward (3.6 GFLOP), ×3 with the backward
    assert info.flops_per_image == pytest.approx(3 * 3.63e9, rel=0.01)
    # the count crosses from the worker to the parent, and the parent checks it
    assert results.model_info(results.info_fields(info)).flops_per_image == info.flops_per_image
    for bad in (-1.0, float("nan"), float("inf"), "10e9", True):
        with pytest.raises(results.ReplyError):
            results.model_info({**results.info_fields(info), "flops_per_image": bad})


def test_resnet18_at_224_gets_the_floor_and_at_128_a_few_more(r18_224: tuple[TargetModel, ModelInfo],
                                                               info_128: ModelInfo) -> None:
    _, info = r18_224
    asked = resolve_inversion(_settings(), N_TRAIN, 10).candidates_per_class
    assert asked == 8
    at_224 = resolve_inversion(_settings(), N_TRAIN, 10, model=info)
    assert at_224.candidates_per_class == FLOOR < asked
    assert at_224.pool_per_class >= at_224.candidates_per_class
    at_128 = resolve_inversion(_settings(), N_TRAIN, 10, model=info_128).candidates_per_class
    assert FLOOR < at_128 < asked
    # the rule: one refinement step (image and perturbed copy of every candidate) within the allowance
    assert PERTURBED_COPIES * at_128 * 10 * info_128.flops_per_image <= REFINE_STEP_FLOPS
    assert PERTURBED_COPIES * (at_128 + 1) * 10 * info_128.flops_per_image > REFINE_STEP_FLOPS
    # never below the floor, however many members or however costly a pass
    assert resolve_inversion(_settings(), 4000, 10, model=info).candidates_per_class == FLOOR
    assert work_cap(1e15, 10) == FLOOR and work_cap(1e15, 1000) == FLOOR


def test_up_to_64x64_the_plan_is_exactly_as_before(info_64: ModelInfo) -> None:
    assert info_64.flops_per_image > 0  # counted (ResNet-18 at 64×64: about 0.9 GFLOP), and still no cap
    for n_train in (10, N_TRAIN, 400):
        for settings in (_settings(), AuditSettings(model=Path("m.pt"), data=Path("train"))):
            before = resolve_inversion(settings, n_train, 10)
            assert resolve_inversion(settings, n_train, 10, model=info_64) == before
    # a 64×64 model as costly as ResNet-18 at 224 still plans what the data asks for
    costly = dataclasses.replace(info_64, flops_per_image=1e13)
    assert resolve_inversion(_settings(), N_TRAIN, 10, model=costly) == resolve_inversion(_settings(), N_TRAIN, 10)
    assert work_cap_notes(_settings(), N_TRAIN, costly) == []


def test_an_explicit_count_wins_over_the_cap(r18_224: tuple[TargetModel, ModelInfo]) -> None:
    _, info = r18_224
    assert resolve_inversion(_settings(candidates_per_class=8), N_TRAIN, 10, model=info).candidates_per_class == 8
    table = _settings(inversion={"candidates_per_class": 5})
    assert resolve_inversion(table, N_TRAIN, 10, model=info).candidates_per_class == 5
    assert not any("Candidates capped" in n for n in work_cap_notes(_settings(candidates_per_class=8), N_TRAIN, info))


def test_the_document_note_says_what_was_asked_and_what_the_work_allows(
        r18_224: tuple[TargetModel, ModelInfo]) -> None:
    _, info = r18_224
    note = next(n for n in work_cap_notes(_settings(), N_TRAIN, info) if "Candidates capped" in n)
    assert "3×224×224" in note and "asks for 8 per class" in note and "allows 2" in note
    assert "10.9 GFLOP" in note and "--candidates-per-class" in note
    # the data asks for the floor: nothing was capped
    assert not any("Candidates capped" in n for n in work_cap_notes(_settings(), 4, info))


def test_the_budget_message_plans_the_capped_count(r18_224: tuple[TargetModel, ModelInfo]) -> None:
    target, info = r18_224
    capped = resolve_inversion(_settings(), N_TRAIN, 10, model=info)
    asked = resolve_inversion(_settings(), N_TRAIN, 10)
    assert capped.budget_s == asked.budget_s == 900.0
    # on one thread at the nominal rate, the quick plan with the floor's candidates fits the default budget
    assert budget_message(target, capped, True, 0, threads=1) is None
    message = budget_message(target, asked, True, 0, threads=1)
    assert message is not None and "more than the 900 s of budget left" in message


def test_the_positive_controls_attack_gets_the_cap_too(r18_224: tuple[TargetModel, ModelInfo]) -> None:
    _, info = r18_224
    uncapped = resolve_inversion(_settings(), N_TRAIN, 10)  # an attack that ran with 8 a class
    result = InversionResult(images=torch.zeros(0, 3, 224, 224), targets=torch.zeros(0, dtype=torch.int64),
                             confidence=torch.zeros(0), mode="informed", threat_model="informed", steps=0,
                             planned_steps=0, seconds=0.0, completed_fraction=1.0)
    attack = Attack(result, uncapped, result.images, (), None)
    assert rung_config(_settings(), attack, N_TRAIN, info).candidates_per_class == FLOOR
    assert rung_config(_settings(), attack, N_TRAIN, dataclasses.replace(info, flops_per_image=0.0)
                       ).candidates_per_class == 8  # not counted: the audit's own count bounds it, as before


def test_the_quick_refinement_at_224_is_cut_to_its_planned_work(r18_224: tuple[TargetModel, ModelInfo]) -> None:
    _, info = r18_224
    quick = resolve_inversion(_settings(), N_TRAIN, 10, model=info)
    planned = resolve_inversion(_settings(), N_TRAIN, 10)
    assert REFINE_STEPS_FLOOR <= quick.refine_steps < planned.refine_steps == 40
    step = PERTURBED_COPIES * quick.candidates_per_class * 10 * info.flops_per_image
    assert quick.refine_steps * step <= REFINE_FLOPS["quick"] < (quick.refine_steps + 1) * step
    # standard keeps its own steps (the candidate cap already holds a step within REFINE_STEP_FLOPS)
    standard = AuditSettings(model=Path("m.pt"), data=Path("train"))
    assert resolve_inversion(standard, N_TRAIN, 10, model=info).refine_steps == \
        resolve_inversion(standard, N_TRAIN, 10).refine_steps
    # an explicit refine_steps stands; the note names what was cut
    assert resolve_inversion(_settings(inversion={"refine_steps": 40}), N_TRAIN, 10, model=info).refine_steps == 40
    notes = work_cap_notes(_settings(), N_TRAIN, info)
    assert any("effort quick plans 40" in n and f"allow {quick.refine_steps}" in n for n in notes)


def test_the_positive_controls_attack_takes_the_audits_refinement_steps(info_128: ModelInfo) -> None:
    info = info_128
    audit_config = resolve_inversion(_settings(), N_TRAIN, 10, model=info)  # 6 candidates a class: steps cut
    assert audit_config.refine_steps < 40
    # the control's 10 members ask for fewer candidates, whose steps alone the work would allow more of
    assert resolve_inversion(_settings(), 10, 10, model=info).refine_steps > audit_config.refine_steps
    result = InversionResult(images=torch.zeros(0, 3, 128, 128), targets=torch.zeros(0, dtype=torch.int64),
                             confidence=torch.zeros(0), mode="informed", threat_model="informed", steps=0,
                             planned_steps=0, seconds=0.0, completed_fraction=1.0)
    attack = Attack(result, audit_config, result.images, (), None)
    assert rung_config(_settings(), attack, 10, info).refine_steps == audit_config.refine_steps
