"""SSIM agrees with scikit-image's Wang et al. settings, and the batched kernel with the paired one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import structural_similarity

from leakaudit.errors import DataError
from leakaudit.matching.ssim import SSIM_SETTINGS, ssim_matrix, ssim_pairs
from leakaudit.zoo import bundled_images


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The outside reference, with the settings DESIGN pins: (C, H, W) float64 images."""
    return float(
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=0
        )
    )


def check_parity(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> None:
    """a, b: (N, C, H, W) float64 in [0, 1]."""
    ref = np.array([skimage_ssim(x, y) for x, y in zip(a, b, strict=True)])
    ours = ssim_pairs(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(ours, ref, atol=tol, rtol=0)


@pytest.mark.parametrize("shape", [(1, 11, 11), (1, 28, 28), (1, 32, 32), (1, 25, 40), (3, 32, 32), (3, 17, 23)])
def test_parity_random_images(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    a = rng.random((6, *shape))
    b = np.clip(a + rng.normal(0, 0.15, a.shape), 0, 1)  # related pairs: SSIM well above 0
    b[0] = rng.random(shape)  # and one unrelated pair: SSIM near 0
    check_parity(a, b)


def test_parity_real_digits() -> None:
    images, labels, _ = bundled_images("digits", 32)
    x = images.double().numpy() / 255.0
    # same class, different class, and a shifted copy of itself
    a = x[[0, 1, 2, 3]]
    same = [int(np.flatnonzero(labels.numpy() == labels[i])[1]) for i in range(4)]
    b = x[same]
    check_parity(a, b)
    check_parity(a, x[[4, 5, 6, 7]])
    check_parity(a, np.roll(a, 2, axis=3))


def test_parity_real_photographs() -> None:
    cam = skdata.camera().astype(np.float64) / 255.0  # (512, 512) gray
    a = np.stack([cam[100:140, 200:240], cam[300:340, 50:90]])[:, None]  # (2, 1, 40, 40)
    b = np.stack([cam[102:142, 203:243], cam[300:340, 52:92]])[:, None]  # overlapping crops
    check_parity(a, b)
    check_parity(a[:, :, :28, :28], b[:, :, :28, :28])
    astro = skdata.astronaut().astype(np.float64).transpose(2, 0, 1) / 255.0  # (3, 512, 512)
    check_parity(astro[None, :, 50:82, 150:182], astro[None, :, 53:85, 149:181])  # 32×32 RGB
    check_parity(astro[None, :, 200:225, 300:340], astro[None, :, 204:229, 301:341])  # 25×40 RGB


def test_parity_real_faces() -> None:
    faces = skdata.lfw_subset()[:, None].astype(np.float64)  # (200, 1, 25, 25) in [0, 1]
    check_parity(faces[:10], faces[10:20])
    check_parity(faces[:5], faces[100:105])  # faces vs non-faces


def test_identical_images_score_one_and_uint8_is_accepted() -> None:
    images, _, _ = bundled_images("digits", 28)
    s = ssim_pairs(images[:5], images[:5])
    torch.testing.assert_close(s, torch.ones(5, dtype=torch.float64))
    assert ssim_pairs(images[:5], images[5:10]).lt(0.99).all()
    np.testing.assert_allclose(
        ssim_pairs(images[:3], images[3:6]).numpy(),
        ssim_pairs(images[:3].double() / 255, images[3:6].double() / 255).numpy(),
        atol=1e-12,
    )


@pytest.mark.parametrize("shape,chunk", [((1, 32, 32), 4), ((3, 20, 26), 3), ((1, 11, 11), 100)])
def test_matrix_equals_pairs(shape: tuple[int, int, int], chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    cands = torch.rand(7, *shape, generator=g)
    imgs = (cands[torch.arange(9) % 7] + 0.2 * torch.randn(9, *shape, generator=g)).clamp(0, 1)
    mat = ssim_matrix(cands, imgs, chunk=chunk)
    assert mat.shape == (7, 9)
    ref = torch.stack([ssim_pairs(cands[i : i + 1].expand(9, -1, -1, -1), imgs) for i in range(7)])
    torch.testing.assert_close(mat.double(), ref, atol=1e-5, rtol=0)
    mat64 = ssim_matrix(cands, imgs, chunk=chunk, dtype=torch.float64)
    torch.testing.assert_close(mat64, ref, atol=1e-10, rtol=0)


def test_matrix_on_real_digits_matches_skimage() -> None:
    images, _, _ = bundled_images("digits", 32)
    mat = ssim_matrix(images[:6], images[6:14])
    x = images.double().numpy() / 255.0
    ref = np.array([[skimage_ssim(x[i], x[6 + j]) for j in range(8)] for i in range(6)])
    np.testing.assert_allclose(mat.numpy(), ref, atol=1e-5, rtol=0)


def test_matrix_float32_is_exact_in_flat_bright_regions() -> None:
    """The camera's sky: near-constant bright crops, where E[xy] - μxμy in float32 would lose ~1e-3."""
    cam = skdata.camera().astype(np.float64) / 255.0
    crops = np.stack([cam[r : r + 32, c : c + 32] for r in range(0, 60, 12) for c in range(0, 60, 12)])[:, None]
    mat = ssim_matrix(torch.from_numpy(crops).float(), torch.from_numpy(crops).float())
    ref = np.array([[skimage_ssim(x, y) for y in crops] for x in crops])
    assert ref.min() > 0.9  # they really are flat and alike
    np.testing.assert_allclose(mat.numpy(), ref, atol=1e-5, rtol=0)


def test_small_images_are_upsampled_to_the_window() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 1, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    up = torch.nn.functional.interpolate
    ref = ssim_pairs(up(a, size=(11, 11), mode="bilinear"), up(b, size=(11, 11), mode="bilinear"))
    torch.testing.assert_close(ssim_pairs(a, b), ref, atol=1e-6, rtol=0)  # ref upsampled in float32
    torch.testing.assert_close(ssim_matrix(a, b).diagonal().double(), ref, atol=1e-5, rtol=0)
    # only the short side grows
    c, d = torch.rand(2, 1, 6, 30, generator=g), torch.rand(2, 1, 6, 30, generator=g)
    ref = ssim_pairs(up(c, size=(11, 30), mode="bilinear"), up(d, size=(11, 30), mode="bilinear"))
    torch.testing.assert_close(ssim_pairs(c, d), ref, atol=1e-6, rtol=0)


def test_shape_errors_and_settings() -> None:
    with pytest.raises(DataError):
        ssim_pairs(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 17))
    with pytest.raises(DataError):
        ssim_pairs(torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 16))
    with pytest.raises(DataError):
        ssim_matrix(torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16))
    assert SSIM_SETTINGS == {
        "window": "gaussian", "sigma": 1.5, "taps": 11, "k1": 0.01, "k2": 0.03, "region": "valid",
        "covariance": "population", "data_range": 1.0, "channels": "mean",
    }
