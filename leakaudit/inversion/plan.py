"""The planned work of an attack in classifier passes, and whether a wall-clock budget can hold it.

The floor of the attack is the classifier work it plans: every step of the
generator's training and of the refinement sends its batch through the
classifier twice (the image and a perturbed copy), forward and backward to the
pixels; the stationarity stage adds a double backward; scoring the candidate
pool is a forward pass (about a third of a forward+backward). The plan is a
function of the settings, the number of classes and the classifier's
floating-point operations on one image (counted, never timed), so it is the
same on every machine; only the seconds it is turned into use a nominal rate
of the device. It is what the progress line announces before the first step
when a budget is set, and what it suggests when the budget cannot hold it.
The steps themselves never depend on it: the document is the same wherever
the audit runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from leakaudit.config import EFFORTS
from leakaudit.inversion.config import EFFORT_LEVELS, InversionConfig
from leakaudit.model.target import TargetModel

# Nominal rates of one forward+backward's floating-point operations, per second: a CPU thread of the
# 2-core development machine and a data-centre GPU. Measured there, ResNet-18's forward+backward runs at
# 73–97 GFLOP/s on an idle thread and below 10 beside busy neighbours; 30 sits between. Estimates for the
# warning only: nothing in an audit's document depends on them.
CPU_FLOPS_PER_THREAD = 30e9
GPU_FLOPS = 5e12
BACKWARD_FACTOR = 3.0  # forward+backward ≈ 3 forwards
PERTURBED_COPIES = 2  # each objective step: the image and its perturbed copy


@dataclass(frozen=True)
class Plan:
    """The classifier work of one attack, in forward+backward passes of one image."""

    passes: float
    flops_per_pass: float  # forward+backward of one image

    @property
    def flops(self) -> float:
        return self.passes * self.flops_per_pass

    def seconds(self, device: torch.device, threads: int) -> float:
        """The nominal time of the plan (an estimate: the steps never depend on it)."""
        rate = GPU_FLOPS if device.type == "cuda" else CPU_FLOPS_PER_THREAD * max(1, threads)
        return self.flops / rate


def image_flops(target: TargetModel) -> float:
    """Floating-point operations of one forward+backward of one image (counted on one forward pass)."""
    x = torch.zeros(1, *target.input_shape, device=target.device)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            target.logits(x)
        forward = float(counter.get_total_flops())
    except RuntimeError:
        forward = 0.0
    if forward <= 0.0:  # an operation the counter cannot see: two operations per weight, at least
        forward = 2.0 * sum(p.numel() for p in target.parameters())
    return BACKWARD_FACTOR * forward


def passes(config: InversionConfig, num_classes: int, informed: bool, stationarity_steps: int) -> float:
    """The planned classifier passes (forward+backward of one image) of an attack with these settings."""
    batch = config.batch_per_class * num_classes
    candidates = config.candidates_per_class * num_classes
    trained = (config.finetune_steps if informed else config.steps) * batch
    refine = 0 if config.diverse else config.refine_steps * candidates
    pool = 0 if config.diverse else config.pool_per_class * num_classes / BACKWARD_FACTOR
    kkt = stationarity_steps * candidates * 2.0  # a double backward: about twice a forward+backward
    return PERTURBED_COPIES * (trained + refine) + pool + kkt


def plan(target: TargetModel, config: InversionConfig, informed: bool, stationarity_steps: int) -> Plan:
    """The plan of this attack on this classifier."""
    return Plan(passes(config, target.num_classes, informed, stationarity_steps), image_flops(target))


def at_effort(config: InversionConfig, effort: str) -> InversionConfig:
    """These settings with another effort level's steps and pool (the run's own choices otherwise kept)."""
    base = InversionConfig()
    levels = {name: getattr(base, name) for values in EFFORT_LEVELS.values() for name in values}
    return dataclasses.replace(config, **{**levels, **EFFORT_LEVELS[effort]}, effort=effort)


def budget_message(target: TargetModel, config: InversionConfig, informed: bool, stationarity_steps: int,
                   threads: int) -> str | None:
    """When a budget is set and the plan will not fit it: one line saying so and which effort would fit."""
    if config.budget_s is None:
        return None
    flops = image_flops(target)
    device = torch.device(config.device) if config.device else target.device

    def seconds(settings: InversionConfig) -> float:
        kkt = settings.kkt_steps if stationarity_steps else 0  # the stage runs on this model or it does not
        return Plan(passes(settings, target.num_classes, informed, kkt), flops).seconds(device, threads)

    needed = seconds(config)
    if needed <= config.budget_s:
        return None
    fits = [e for e in EFFORTS if seconds(at_effort(config, e)) <= config.budget_s]
    advice = f"effort {fits[-1]} would (about {seconds(at_effort(config, fits[-1])):.0f} s)" if fits else \
        "no effort level would; raise the budget"
    return (f"planned work: about {needed:.0f} s of classifier passes at a nominal rate, more than the "
            f"{config.budget_s:.0f} s of budget left, with the audit's later phases still to come: the audit may end "
            f"incomplete (exit 2); {advice}")
