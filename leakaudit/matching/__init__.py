"""Matching candidates to images: SSIM, best-match search, baseline statistics.

LPIPS lives in ``leakaudit.matching.lpips`` and is not imported here, so that
using SSIM does not pay for importing torchvision and the lpips package.
"""

from leakaudit.matching.baseline import (
    ClassMeanNull,
    DuplicateGroup,
    LeakScore,
    NearDuplicates,
    auc,
    class_mean_null,
    class_means,
    distribution_summary,
    histogram,
    leak_score,
    loss_membership_auc,
    near_duplicates,
    topk_comparison,
)
from leakaudit.matching.search import BestMatches, best_matches
from leakaudit.matching.ssim import SSIM_SETTINGS, ssim_matrix, ssim_pairs

__all__ = [
    "SSIM_SETTINGS",
    "BestMatches",
    "ClassMeanNull",
    "DuplicateGroup",
    "LeakScore",
    "NearDuplicates",
    "auc",
    "best_matches",
    "class_mean_null",
    "class_means",
    "distribution_summary",
    "histogram",
    "leak_score",
    "loss_membership_auc",
    "near_duplicates",
    "ssim_matrix",
    "ssim_pairs",
    "topk_comparison",
]
