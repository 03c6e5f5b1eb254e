"""Matching large images: every pair scored from local statistics gives the all-pairs kernel's matches.

Above 64×64 pixels ``best_matches`` scores one image at a time against the
candidates (``PAIRWISE_ABOVE_PIXELS``) instead of preparing the all-pairs
kernel's operands (≈134 MB per 3×224×224 image). Both compute the one pinned
SSIM, so the matches must agree with ``ssim_matrix`` (the kernel) on real
images, and with scikit-image's definition.
"""

from __future__ import annotations

import pytest
import torch

from leakaudit.matching.search import PAIRWISE_ABOVE_PIXELS, best_matches
from leakaudit.matching.ssim import ssim_matrix, ssim_pairs
from leakaudit.zoo import bundled_images

SIDE = 72  # above 64×64: the pairwise path


@pytest.fixture(scope="module")
def large_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real digits at 3×72×72: candidates (a noisy copy of image 3 and other digits), images, their labels."""
    images, labels, _ = bundled_images("digits", SIDE)
    rgb = images[:40].expand(-1, 3, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(0)
    cands = rgb[20:32].float() / 255
    cands[0] = (rgb[3].float() / 255 + 0.05 * torch.randn(3, SIDE, SIDE, generator=gen)).clamp(0, 1)
    cand_labels = labels[20:32].clone()
    cand_labels[0] = labels[3]
    return cands, rgb[:12], cand_labels, labels[:12]


def test_the_size_takes_the_pairwise_path() -> None:
    assert SIDE * SIDE > PAIRWISE_ABOVE_PIXELS >= 64 * 64


def test_large_images_get_the_all_pairs_kernels_matches(
        large_digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], one_thread: None) -> None:
    cands, images, _, _ = large_digits
    found = best_matches(cands, images, k=3)
    kernel = ssim_matrix(cands, images)  # (N, M), the all-pairs kernel
    assert found.exact and found.pairs_scored == cands.shape[0] * images.shape[0]
    assert torch.allclose(found.topk_ssim, kernel.T.topk(3, dim=1).values, atol=1e-5)
    assert torch.equal(found.best_index, kernel.argmax(0))
    assert torch.equal(found.nearest_image, kernel.argmax(1))
    assert int(found.best_index[3]) == 0  # the noisy copy is image 3's best match ...
    direct = ssim_pairs(cands[:1], images[3:4])
    assert abs(float(found.best_ssim[3]) - float(direct[0])) < 1e-6  # ... at the pinned SSIM of that pair
    assert int(found.nearest_image[0]) == 3  # and the copy's nearest image is its original


def test_large_images_same_class_and_progress(
        large_digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], one_thread: None) -> None:
    cands, images, cand_labels, image_labels = large_digits
    seen: list[tuple[int, int]] = []
    found = best_matches(cands, images, k=2, candidate_labels=cand_labels, image_labels=image_labels,
                         same_class=True, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (images.shape[0], images.shape[0])
    for j in range(images.shape[0]):
        for i, s in zip(found.topk_index[j].tolist(), found.topk_ssim[j].tolist()):
            if i < 0:
                assert s != s  # NaN where the class has too few candidates
            else:
                assert int(cand_labels[i]) == int(image_labels[j])
