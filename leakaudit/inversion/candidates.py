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


def candidates_per_class_for(n_train: int, num_classes: int, *, per_member: float = PER_MEMBER, floor: int = FLOOR,
                             ceiling: int = CEILING) -> int:
    """About ``per_member`` candidates per training image, spread over the classes, within [floor, ceiling]."""
    if num_classes < 1:
        return floor
    wanted = math.ceil(per_member * max(0, n_train) / num_classes)
    return max(floor, min(ceiling, wanted))


def grown(config: Any, n_train: int, num_classes: int, explicit: int | None) -> Any:
    """The inversion config with its candidate count grown for this training set (an explicit count wins)."""
    if explicit is not None:
        return config
    per = candidates_per_class_for(n_train, num_classes)
    return replace(config, candidates_per_class=per, pool_per_class=max(config.pool_per_class, per))
