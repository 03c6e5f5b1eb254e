"""Best-match search: equals brute force, independent of chunking, and the prefilter's recall on real digits."""

from __future__ import annotations

import pytest
import torch

from leakaudit.errors import DataError
from leakaudit.matching.search import auto_prefilter, best_matches
from leakaudit.matching.ssim import ssim_pairs
from leakaudit.zoo import bundled_images


def brute_force(cands: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
    """(N, M) SSIM by the paired float64 reference, every pair listed explicitly."""
    n, m = len(cands), len(imgs)
    a = cands[:, None].expand(n, m, *cands.shape[1:]).reshape(n * m, *cands.shape[1:])
    b = imgs[None].expand(n, m, *imgs.shape[1:]).reshape(n * m, *imgs.shape[1:])
    return ssim_pairs(a, b).reshape(n, m)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = bundled_images("digits", 32)
    return images, labels


@pytest.fixture(scope="module")
def small_case(digits: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """30 noisy real digits as candidates, 80 real digits as images, with brute-force SSIM."""
    images, labels = digits
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(images), generator=g)
    cands = images[pick[:30]].float() / 255
    cands = (cands + 0.15 * torch.randn(cands.shape, generator=g)).clamp(0, 1)
    imgs = images[pick[20:100]]  # 10 of the images are the candidates' clean originals
    return {
        "cands": cands,
        "imgs": imgs,
        "cand_labels": labels[pick[:30]],
        "img_labels": labels[pick[20:100]],
        "ssim": brute_force(cands, imgs),
    }


def test_equals_brute_force(small_case: dict[str, torch.Tensor]) -> None:
    s = small_case["ssim"]  # (N, M)
    r = best_matches(small_case["cands"], small_case["imgs"], k=5)
    assert r.exact and r.pairs_scored == s.numel()
    torch.testing.assert_close(r.best_ssim.double(), s.max(0).values, atol=1e-5, rtol=0)
    assert torch.equal(r.best_index, s.argmax(0))
    ref_val, ref_idx = torch.topk(s.T, 5, dim=1)
    torch.testing.assert_close(r.topk_ssim.double(), ref_val, atol=1e-5, rtol=0)
    assert torch.equal(r.topk_index, ref_idx)
    assert torch.equal(r.nearest_image, s.argmax(1))
    torch.testing.assert_close(r.nearest_ssim.double(), s.max(1).values, atol=1e-5, rtol=0)
    # a noisy copy is the best match of its clean original
    for j in range(10):
        assert r.best_index[j] == 20 + j


@pytest.mark.parametrize("n,m,image_chunk,max_bytes", [(5, 12, 1, 1), (30, 80, 7, 1_000_000), (30, 80, 33, 10**9)])
def test_chunking_does_not_change_results(
    small_case: dict[str, torch.Tensor], n: int, m: int, image_chunk: int, max_bytes: int
) -> None:
    """A tiny chunk (one image, one candidate per group) gives the same answer as one big block."""
    cands, imgs = small_case["cands"][:n], small_case["imgs"][:m]
    ref = best_matches(cands, imgs, k=4)
    r = best_matches(cands, imgs, k=4, image_chunk=image_chunk, max_prepared_bytes=max_bytes)
    assert torch.equal(r.topk_index, ref.topk_index)
    torch.testing.assert_close(r.topk_ssim, ref.topk_ssim, atol=1e-6, rtol=0)
    assert torch.equal(r.nearest_image, ref.nearest_image)


def test_progress_reports_every_image(small_case: dict[str, torch.Tensor]) -> None:
    calls: list[tuple[int, int]] = []
    best_matches(small_case["cands"], small_case["imgs"], image_chunk=16, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (80, 80) and len(calls) == 5
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_same_class_restriction(small_case: dict[str, torch.Tensor]) -> None:
    s = small_case["ssim"].clone()
    cl, il = small_case["cand_labels"], small_case["img_labels"]
    r = best_matches(small_case["cands"], small_case["imgs"], k=3, candidate_labels=cl, image_labels=il,
                     same_class=True)
    allowed = cl[:, None] == il[None, :]
    s[~allowed] = float("-inf")
    for j in range(s.shape[1]):
        n_allowed = int(allowed[:, j].sum())
        if n_allowed == 0:
            assert r.best_index[j] == -1 and torch.isnan(r.best_ssim[j])
            continue
        assert r.best_index[j] == s[:, j].argmax()
        assert cl[r.best_index[j]] == il[j]
        if n_allowed < 3:
            assert (r.topk_index[j, n_allowed:] == -1).all() and torch.isnan(r.topk_ssim[j, n_allowed:]).all()
    # default: all candidates
    r_all = best_matches(small_case["cands"], small_case["imgs"], k=3, candidate_labels=cl, image_labels=il)
    assert torch.equal(r_all.best_index, small_case["ssim"].argmax(0))


def test_k_is_clipped_and_inputs_checked(small_case: dict[str, torch.Tensor]) -> None:
    r = best_matches(small_case["cands"][:3], small_case["imgs"][:5], k=10)
    assert r.topk_index.shape == (5, 3)
    with pytest.raises(DataError):
        best_matches(small_case["cands"], small_case["imgs"][:, :, :16])
    with pytest.raises(DataError):
        best_matches(small_case["cands"], small_case["imgs"], same_class=True)
    with pytest.raises(DataError):
        best_matches(small_case["cands"][:0], small_case["imgs"])


def test_prefilter_recall_on_real_digits(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Candidates: other real digits with noise; the prefilter must find most exact best matches."""
    images, _ = digits
    g = torch.Generator().manual_seed(3)
    pick = torch.randperm(len(images), generator=g)
    cands = images[pick[:200]].float() / 255
    cands = (cands + 0.1 * torch.randn(cands.shape, generator=g)).clamp(0, 1)
    imgs = images[pick[150:550]]  # 50 originals of candidates among 400 images
    exact = best_matches(cands, imgs, k=1)
    pre = best_matches(cands, imgs, k=1, prefilter=20)
    assert not pre.exact and pre.pairs_scored < exact.pairs_scored
    recall = (pre.best_index == exact.best_index).float().mean().item()
    assert recall >= 0.9
    # every score it reports is an exact SSIM, so it can only be lower or equal
    assert (pre.best_ssim <= exact.best_ssim + 1e-5).all()
    # the noisy copies are never missed
    assert torch.equal(pre.best_index[:50], torch.arange(150, 200))
    # with every candidate kept, the prefilter is exact
    full = best_matches(cands[:40], imgs[:60], k=3, prefilter=40)
    ref = best_matches(cands[:40], imgs[:60], k=3)
    assert torch.equal(full.topk_index, ref.topk_index) and torch.equal(full.nearest_image, ref.nearest_image)


def test_auto_prefilter_policy() -> None:
    assert auto_prefilter(200, 50_000) is None  # 10M pairs: still exact
    assert auto_prefilter(201, 50_000) == 50
    assert auto_prefilter(2000, 60_000) == 50
