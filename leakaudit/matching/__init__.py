"""Matching candidates to images: SSIM, best-match search, the prototype null, duplicate groups.

LPIPS lives in ``leakaudit.matching.lpips`` and is not imported here, so that
using SSIM does not pay for importing torchvision and the lpips package.
The statistics of what a match means are in ``leakaudit.scoring``.
"""

from leakaudit.matching.duplicates import DuplicateGroup, NearDuplicates, near_duplicates
from leakaudit.matching.null import ClassMeanNull, class_mean_null, class_means
from leakaudit.matching.search import best_matches
from leakaudit.matching.topk import BestMatches
from leakaudit.matching.ssim import SSIM_SETTINGS, ssim_matrix, ssim_pairs

__all__ = [
    "SSIM_SETTINGS",
    "BestMatches",
    "ClassMeanNull",
    "DuplicateGroup",
    "NearDuplicates",
    "best_matches",
    "class_mean_null",
    "class_means",
    "near_duplicates",
    "ssim_matrix",
    "ssim_pairs",
]
