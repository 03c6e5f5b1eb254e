"""How many reconstructions an audit asks for: they grow with the training set.

Reconstruction attacks on weights (Haim et al. 2022, Buzaglo et al. 2023) use
about two candidates per training image; a fixed handful per class leaves most
of a large training set to share a few class prototypes. The count is bounded
by ``ceiling`` per class, because the refinement's cost grows with it and
matching beyond ``AUTO_PREFILTER_PAIRS`` falls back to the prefilter.

Above 64×64 pixels (``scale.large_input``) a classifier pass costs gigaflops,
so the count is also capped by the planned work of one refinement step,
counted in floating-point operations (never timed): ``REFINE_STEP_FLOPS``;
and the refinement's steps by the work of the whole stage at the effort level
(``REFINE_FLOPS``). Up to 64×64 the count and the steps are the data's and the
effort's alone, as they always were.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from leakaudit.inversion.plan import PERTURBED_COPIES
from leakaudit.inversion.scale import large_input

PER_MEMBER = 2.0  # candidates per training image (Buzaglo et al.)
FLOOR = 2  # per class: the engine's measured default for a handful of members
CEILING = 32  # per class: refinement and matching stay within the default budget on two CPU cores
# The init-aware feature stage pushes public images into the update's span; each lands near one member at best, so
# it needs starts in proportion to the members. Measured on the fine-tuned MNIST CNNs (400 steps): 80 starts for
# 10 members reached 10/10 at SSIM >= 0.4, 160 for 20 reached 20/20, while 128 for 100 members reached 78/100
# where 256 reached 87/100. The effort level's span_starts is the ceiling.
SPAN_STARTS_PER_MEMBER = 8
SPAN_STARTS_FLOOR = 64
# The classifier work one refinement step may plan at a large input: PERTURBED_COPIES × candidates × one image's
# counted forward+backward FLOPs. 480 GFLOP holds the floor on ResNet-18 at 224×224 (2 a class × 10 classes × 2
# copies × 10.9 GFLOP = 435 GFLOP) and 6 a class at 128×128 (3.55 GFLOP); the 8 a class that 40 members ask for
# would plan four times that a step, far past the default 900 s budget on its own (docs/performance.md).
REFINE_STEP_FLOPS = 480e9
# The classifier work the whole refinement may plan at a large input, by effort level: the steps are cut to fit,
# never below REFINE_STEPS_FLOOR. Quick's 10.5 TFLOP is 24 of its 40 steps on ResNet-18 at 224×224 (436 GFLOP a step
# at the floor's 2 candidates a class), which with the positive control's copy brings the whole quick audit within
# the default 900 s budget on one CPU thread (bench/README.md, "ResNet-18 at 224×224"). Standard and thorough allow
# their own steps at REFINE_STEP_FLOPS a step (100 × 480 GFLOP, 250 × 480 GFLOP): only quick is cut.
REFINE_FLOPS = {"quick": 10.5e12, "standard": 48e12, "thorough": 120e12}
REFINE_STEPS_FLOOR = 10


def candidates_per_class_for(n_train: int, num_classes: int, *, per_member: float = PER_MEMBER, floor: int = FLOOR,
                             ceiling: int = CEILING) -> int:
    """About ``per_member`` candidates per training image, spread over the classes, within [floor, ceiling]."""
    if num_classes < 1:
        return floor
    wanted = math.ceil(per_member * max(0, n_train) / num_classes)
    return max(floor, min(ceiling, wanted))


def span_starts_for(n_train: int, ceiling: int) -> int:
    """Public images the feature-span stage starts from: ``SPAN_STARTS_PER_MEMBER`` per member, within
    [floor, ceiling]."""
    return min(ceiling, max(SPAN_STARTS_FLOOR, SPAN_STARTS_PER_MEMBER * max(0, n_train)))


def grown(config: Any, n_train: int, num_classes: int, explicit: int | None) -> Any:
    """The inversion config grown for this training set: its candidates (an explicit count wins) and span starts."""
    config = replace(config, span_starts=span_starts_for(n_train, config.span_starts))
    if explicit is not None:
        return config
    per = candidates_per_class_for(n_train, num_classes)
    return replace(config, candidates_per_class=per, pool_per_class=max(config.pool_per_class, per))


def step_flops(candidates_per_class: int, num_classes: int, flops_per_image: float) -> float:
    """The classifier work of one refinement step: every candidate and its perturbed copy, forward and backward."""
    return PERTURBED_COPIES * candidates_per_class * max(1, num_classes) * flops_per_image


def work_cap(flops_per_image: float, num_classes: int) -> int:
    """Candidates per class whose refinement step plans at most ``REFINE_STEP_FLOPS``, never below ``FLOOR``."""
    step_per_class = step_flops(1, num_classes, flops_per_image)
    if step_per_class <= 0.0:
        return CEILING  # not counted: the data's count stands
    return max(FLOOR, math.floor(REFINE_STEP_FLOPS / step_per_class))


def steps_cap(effort: str, candidates_per_class: int, flops_per_image: float, num_classes: int) -> int | None:
    """Refinement steps whose planned work stays within the effort's ``REFINE_FLOPS`` (None: not counted)."""
    step = step_flops(candidates_per_class, num_classes, flops_per_image)
    if step <= 0.0:
        return None
    return max(REFINE_STEPS_FLOOR, math.floor(REFINE_FLOPS[effort] / step))


def capped_by_work(config: Any, shape: tuple[int, int, int], flops_per_image: float, num_classes: int, *,
                   candidates: bool = True, steps: bool = True) -> Any:
    """The config with its candidates and refinement steps capped by their planned work, only at a large input;
    ``candidates`` / ``steps`` false: that value was set explicitly and stands."""
    if not large_input(shape):
        return config
    allowed = work_cap(flops_per_image, num_classes)
    if candidates and config.candidates_per_class > allowed:
        config = replace(config, candidates_per_class=allowed)
    most_steps = steps_cap(config.effort, config.candidates_per_class, flops_per_image, num_classes)
    if steps and most_steps is not None and config.refine_steps > most_steps:
        config = replace(config, refine_steps=most_steps)
    return config


def cap_note(asked: int, allowed: int, shape: tuple[int, int, int], flops_per_image: float, num_classes: int) -> str:
    """What the document says when the planned work capped the candidates."""
    c, h, w = shape
    step = step_flops(asked, num_classes, flops_per_image)
    return (f"Candidates capped by the planned work at {c}×{h}×{w}: the training set asks for {asked} per class "
            f"(about {PER_MEMBER:g} per member), the planned work allows {allowed}. One refinement step would send "
            f"{asked * num_classes} candidates and their perturbed copies through the classifier "
            f"({flops_per_image / 1e9:.1f} GFLOP a forward+backward of one image, {step / 1e9:.0f} GFLOP a step), "
            f"more than the {REFINE_STEP_FLOPS / 1e9:.0f} GFLOP a step allowed above 64×64 pixels. Fewer candidates "
            "per member make a weaker attack; the positive control's attack has the same cap; "
            "--candidates-per-class sets the count explicitly.")


def steps_note(effort: str, asked: int, allowed: int, shape: tuple[int, int, int]) -> str:
    """What the document says when the planned work cut the refinement's steps."""
    c, h, w = shape
    return (f"Refinement steps cut by the planned work at {c}×{h}×{w}: effort {effort} plans {asked}, the "
            f"{REFINE_FLOPS[effort] / 1e12:g} TFLOP of classifier work its refinement may plan above 64×64 pixels "
            f"allow {allowed}. Fewer steps make a weaker attack; the positive control's attack has the same cut; "
            "refine_steps in [tool.leakaudit.inversion] sets them explicitly.")
