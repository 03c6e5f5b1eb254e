"""The membership stage's result as the record's ``ReferenceMembership`` (what the document, gate and report read)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from leakaudit.membership.splits import Splits
from leakaudit.pipeline.membership import GATE_FPR, MembershipResult
from leakaudit.record.membership import ExposedMember, ReferenceMembership
from leakaudit.record.parse import frozen

EXPOSED_MEMBERS = 12  # the members the report shows by membership score


def splits_record(splits: Splits) -> dict[str, object]:
    """The splits' seed and size, and a digest of the IN/OUT masks (drawn again from the seed, they must match)."""
    return {"seed": splits.seed, "subset_size": splits.subset_size, "models": splits.models,
            "pool": int(splits.masks.shape[1]), "masks_sha256": splits.masks_sha256}


def reference_membership(result: MembershipResult | None, best_index: torch.Tensor | None = None,
                         best_ssim: torch.Tensor | None = None,
                         gate_fpr: float = GATE_FPR) -> ReferenceMembership | None:
    """The record of the attacks; None when no reference model was planned (R = 0: the document is unchanged)."""
    if result is None or result.planned_models == 0:
        return None
    record = ReferenceMembership(
        result.rows, gate_fpr, result.reference_models, result.planned_models, frozen(result.recipe.to_dict()),
        result.recipe_given, frozen(result.check.to_dict()) if result.check else None,
        frozen(splits_record(result.splits)) if result.splits is not None else None, result.seconds_per_model,
        result.method, result.complete, result.notes, ())
    strongest = record.strongest
    order = np.argsort(-np.asarray(strongest.member_scores), kind="stable")[:EXPOSED_MEMBERS]
    exposed = tuple(ExposedMember(int(i), float(strongest.member_scores[i]), *_best(int(i), best_index, best_ssim))
                    for i in order)
    return replace(record, exposed=exposed)


def _best(i: int, best_index: torch.Tensor | None, best_ssim: torch.Tensor | None) -> tuple[int | None, float | None]:
    """Member ``i``'s best reconstruction and its SSIM (None where it has none)."""
    if best_index is None or best_ssim is None or int(best_index[i]) < 0:
        return None, None
    return int(best_index[i]), float(best_ssim[i])
