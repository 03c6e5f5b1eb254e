"""The positive control inside the budget it is given: its training counts, and a budget spent there ends it cleanly.

The control's budget covers the copy's training as well as its attack, so a
control never runs past ``--budget`` by the length of its training; a budget
spent while the copy trains ends the control without an attack, incomplete
(the audit then names the positive control among the phases the budget cut).
"""

from __future__ import annotations

import torch

from leakaudit.data.folders import load_image_folder
from leakaudit.inversion import InversionConfig
from leakaudit.model.target import load_model
from leakaudit.power.control import run_control
from tests.conftest import TinyReference

SMALL = dict(width=8, batch_per_class=1, steps=5, pool_per_class=2, candidates_per_class=2, refine_steps=2,
             kkt_steps=0, pretrain_steps=5, finetune_steps=0)


def _members(tiny: TinyReference) -> tuple[torch.Tensor, torch.Tensor]:
    holdout = load_image_folder(tiny.holdout_dir, channels=1, size=(32, 32))
    first = torch.stack([torch.nonzero(holdout.labels == c).flatten()[0] for c in range(10)])
    return holdout.images[first], holdout.labels[first]


def test_a_budget_spent_in_the_controls_training_ends_it_without_an_attack(tiny: TinyReference) -> None:
    target = load_model(tiny.torchscript, device="cpu")
    images, labels = _members(tiny)
    config = InversionConfig.for_effort("quick", **SMALL, budget_s=1e-9)  # type: ignore[arg-type]
    control = run_control(target, images, labels, config, seed=1)
    assert not control.complete and not control.memorised
    assert control.candidates.shape[0] == 0 and control.invert_seconds == 0.0
    assert any("budget ended the control's training" in note for note in control.notes)


def test_a_budget_the_control_does_not_reach_changes_nothing(tiny: TinyReference, one_thread: None) -> None:
    target = load_model(tiny.torchscript, device="cpu")
    images, labels = _members(tiny)
    unbounded = run_control(target, images, labels, InversionConfig.for_effort("quick", **SMALL), seed=1)  # type: ignore[arg-type]
    bounded = run_control(target, images, labels,
                          InversionConfig.for_effort("quick", **SMALL, budget_s=1e6), seed=1)  # type: ignore[arg-type]
    assert bounded.complete and bounded.memorised and bounded.steps == unbounded.steps
    assert torch.equal(bounded.candidates, unbounded.candidates)
