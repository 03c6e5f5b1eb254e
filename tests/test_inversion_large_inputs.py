"""The inversion on large inputs: a stop inside a long step, the planned work against the budget, the cheap path."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from leakaudit.inversion import InversionCallbacks, InversionConfig, invert
from leakaudit.model.target import TargetModel

from .conftest import QUICK


# --- stop requests inside a step ----------------------------------------------

def test_a_stop_inside_a_long_step_ends_the_run_within_seconds() -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    target = TargetModel.from_module(model, (3, 224, 224), 10, device="cpu")
    raised: list[float] = []

    def arm(name: str) -> None:  # once the attack trains: the checks of the model at wrapping ran before
        if name == "train":
            model.layer2.register_forward_pre_hook(lambda mod, args: raised.append(time.monotonic()))

    result = invert(target, dataclasses.replace(QUICK, batch_per_class=4), callbacks=InversionCallbacks(on_phase=arm),
                    should_stop=lambda: bool(raised))
    ended = time.monotonic()
    assert raised, "the stop was never asked for"
    assert ended - raised[0] <= 5.0  # the stop came in the middle of the first step's forward pass
    assert result.interrupted and not result.complete
    assert result.steps == 0  # that step was dropped, not applied
    assert result.images.shape == (20, 3, 224, 224)


# --- the planned work and the budget ---------------------------------------------

def test_a_budget_that_cannot_hold_the_plan_is_announced_with_the_effort_that_would() -> None:
    from torchvision.models import resnet18

    from leakaudit.inversion.plan import budget_message, plan

    torch.manual_seed(0)
    target = TargetModel.from_module(resnet18(num_classes=10), (3, 224, 224), 10, device="cpu")
    standard = InversionConfig.for_effort("standard", budget_s=1200.0)
    quick = InversionConfig.for_effort("quick", budget_s=1200.0)
    # counted, not timed: ResNet-18 forward at 224×224 is 1.8 G multiply-adds (3.6 GFLOP), ×3 with the backward
    assert plan(target, standard, True, 0).flops_per_pass == pytest.approx(3 * 3.63e9, rel=0.01)
    assert plan(target, quick, True, 0).passes < plan(target, standard, True, 0).passes
    message = budget_message(target, standard, True, 0, threads=1)
    assert message is not None and "effort quick would" in message
    assert "may end incomplete (exit 2)" in message  # a nominal rate: a warning, never a promise
    assert budget_message(target, quick, True, 0, threads=1) is None  # it fits: nothing to say
    assert budget_message(target, dataclasses.replace(standard, budget_s=None), True, 0, threads=1) is None
    data_free = budget_message(target, standard, False, 0, threads=1)
    assert data_free is not None and "no effort level would" in data_free


def test_an_informed_attack_on_a_large_input_runs_every_phase_on_the_cheap_path() -> None:
    from leakaudit.zoo import bundled_images

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(128, 10))
    target = TargetModel.from_module(model, (3, 96, 96), 10, device="cpu")
    images, labels, _ = bundled_images("digits", 32)  # gray 32×32: the engine brings them to 3×96×96
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:4] for c in range(10)])
    result = invert(target, QUICK, prior=(images[keep], labels[keep]), should_stop=lambda: False)
    assert result.complete and result.mode == "informed"
    assert result.images.shape == (20, 3, 96, 96) and 0 <= float(result.images.min()) <= float(result.images.max()) <= 1
    assert result.pretrained_images is not None and result.pretrained_images.shape == (20, 3, 96, 96)
    assert set(result.phase_seconds) == {"pretrain", "finetune", "refine"}
