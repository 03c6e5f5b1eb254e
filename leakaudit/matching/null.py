"""The prototype null: how well plain class-mean images match, as if they were reconstructions.

Reconstructions resemble class prototypes, so a best-match SSIM is only
evidence once it beats what a class mean reaches on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leakaudit.errors import DataError
from leakaudit.matching.search import best_matches
from leakaudit.matching.ssim import to_float01
from leakaudit.scoring import finite_values

CLASS_MEAN_SAMPLE = 5000  # images per set matched against the class means (only their mean is reported)


def class_means(images: torch.Tensor, labels: torch.Tensor,
                num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain mean image of each class present: (K, C, H, W) float [0, 1] and their class indices (K,)."""
    x = to_float01(images)
    classes = torch.unique(labels) if num_classes is None else torch.arange(num_classes)
    present = [int(c) for c in classes if bool((labels == c).any())]
    if not present:
        raise DataError("no images to average into class means")
    means = torch.stack([x[labels == c].mean(0) for c in present])  # (K, C, H, W)
    return means, torch.tensor(present, dtype=torch.int64)


@dataclass(frozen=True)
class ClassMeanNull:
    """Best-match SSIM that class-mean prototypes alone reach: the prototype null."""

    train_best: torch.Tensor  # (M_train,)
    holdout_best: torch.Tensor | None  # (M_holdout,)
    source: str  # "holdout" or "train"

    @property
    def train_mean(self) -> float:
        return float(finite_values(self.train_best).mean())

    @property
    def holdout_mean(self) -> float | None:
        return None if self.holdout_best is None else float(finite_values(self.holdout_best).mean())

    def to_dict(self) -> dict[str, float | None]:
        return {"train_mean": self.train_mean, "holdout_mean": self.holdout_mean}


@torch.no_grad()
def class_mean_null(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    holdout_images: torch.Tensor | None = None,
    holdout_labels: torch.Tensor | None = None,
    *,
    same_class: bool = False,
    max_images: int = CLASS_MEAN_SAMPLE,
) -> ClassMeanNull:
    """Match the per-class mean images, as if they were the reconstructions, to train and holdout.

    The prototypes are averaged from the holdout when there is one (so they
    carry no member information), otherwise from the training data itself.
    Scoring the holdout against prototypes that include it biases its value
    up by about 1/(images per class); negligible beyond a few dozen per class.
    ``same_class`` matches each image only to its own class mean. Only the
    means are reported, so beyond ``max_images`` a seeded sample of each set
    is matched (the standard error of a mean SSIM over 5,000 images is ~0.002).
    """
    if (holdout_images is None) != (holdout_labels is None):
        raise DataError("holdout images and holdout labels must be given together")
    if holdout_images is not None and holdout_labels is not None:
        means, mean_labels = class_means(holdout_images, holdout_labels)
    else:
        means, mean_labels = class_means(train_images, train_labels)
    train_images, train_labels = _sample(train_images, train_labels, max_images)
    train_best = best_matches(
        means, train_images, k=1, candidate_labels=mean_labels, image_labels=train_labels, same_class=same_class
    ).best_ssim
    holdout_best = None
    if holdout_images is not None and holdout_labels is not None:
        holdout_images, holdout_labels = _sample(holdout_images, holdout_labels, max_images)
        holdout_best = best_matches(
            means, holdout_images, k=1, candidate_labels=mean_labels, image_labels=holdout_labels, same_class=same_class
        ).best_ssim
    return ClassMeanNull(train_best, holdout_best, "train" if holdout_best is None else "holdout")


def _sample(images: torch.Tensor, labels: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images up to ``limit``, else a seeded sample of ``limit`` of them (sorted indices)."""
    if images.shape[0] <= limit:
        return images, labels
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return images[keep], labels[keep]
