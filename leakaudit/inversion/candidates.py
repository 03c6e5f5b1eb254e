"""How many reconstructions an audit asks for: they grow with the training set.

Reconstruction attacks on weights (Haim et al. 2022, Buzaglo et al. 2023) use
about two candidates per training image; a fixed handful per class leaves most
of a large training set to share a few class prototypes. The count is bounded
by ``ceiling`` per class, because the refinement's cost grows with it and
matching beyond ``AUTO_PREFILTER_PAIRS`` falls back to the prefilter.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

PER_MEMBER = 2.0  # candidates per training image (Buzaglo et al.)
FLOOR = 2  # per class: the engine's measured default for a handful of members
CEILING = 32  # per class: refinement and matching stay within the default budget on two CPU cores
# The init-aware feature stage pushes public images into the update's span; each lands near one member at best, so
# it needs starts in proportion to the members. Measured on the fine-tuned MNIST CNNs (400 steps): 80 starts for
# 10 members reached 10/10 at SSIM >= 0.4, 160 for 20 reached 20/20, while 128 for 100 members reached 78/100
# where 256 reached 87/100. The effort level's span_starts is the ceiling.
SPAN_STARTS_PER_MEMBER = 8
SPAN_STARTS_FLOOR = 64


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
