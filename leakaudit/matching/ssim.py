"""SSIM pinned to Wang et al. (2004), batched for all-pairs matching.

Definition (it must agree with ``skimage.metrics.structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
channel_axis=0)``): an 11-tap Gaussian window with σ = 1.5, local statistics
only where the window fits inside the image (the "valid" region: scikit-image
filters with reflection and then crops the 5-pixel border, which leaves exactly
these positions), K1 = 0.01, K2 = 0.03, population covariance, data range 1 on
[0, 1] pixels, and the mean over positions and channels. A gate threshold only
means something with one fixed definition, which is why every setting is pinned
here and exported as ``SSIM_SETTINGS``.

Images smaller than the window: a side below 11 pixels is upsampled
bilinearly (``align_corners=False``) to 11 pixels before anything is computed,
for both images of a pair alike; larger sides are left alone. Without this no
window fits and SSIM is undefined. ``SSIM_SETTINGS`` stays exactly the
contract's block.

All-pairs kernel: with windows centred on their local mean (x̃ = x - μx), the
covariance at position p is Σ w·x̃·ỹ, so the whole SSIM numerator
``(2μxμy + C1)(2σxy + C2) = 4μxμy·σxy + 2C1·σxy + 2C2·μxμy + C1C2`` is a sum of
products of one term per image: one batched matmul ``(P, n, K) @ (P, K, m)``
with K = 2·121 + 2. The denominator ``(μx² + μy² + C1)(σx² + σy² + C2)`` is a
rank-4 product, a second, tiny matmul. Only a divide and the mean over
positions remain elementwise; those passes over (P, n, m) are memory-bound,
which is why folding everything into matmuls pays (``bench/bench_matching.py``
compares it with filtering every pair's product image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import torch
import torch.nn.functional as F

from leakaudit.errors import DataError

SIGMA: Final = 1.5
TAPS: Final = 11
RADIUS: Final = TAPS // 2
K1: Final = 0.01
K2: Final = 0.03
DATA_RANGE: Final = 1.0
C1: Final = (K1 * DATA_RANGE) ** 2
C2: Final = (K2 * DATA_RANGE) ** 2
MIN_SIDE: Final = TAPS

SSIM_SETTINGS: Final[dict[str, object]] = {
    "window": "gaussian",
    "sigma": SIGMA,
    "taps": TAPS,
    "k1": K1,
    "k2": K2,
    "region": "valid",
    "covariance": "population",
    "data_range": DATA_RANGE,
    "channels": "mean",
}
"""The contract's ``metrics.ssim`` block, for provenance in every output."""

# Elements of one (P, n, m) block of the all-pairs kernel (32 MB in float32,
# ~128×128 pairs at 32×32 gray). Measured on an earlier form of this kernel:
# batched matmuls of small matrices are dominated by per-matrix overhead, so
# blocks of 2M elements ran at half the pairs per CPU-second of 8M; beyond 8M
# nothing more was gained.
_BLOCK_ELEMENTS: Final = 8_000_000


def gaussian_taps(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalised 1-D window, (11,): exp(-x²/2σ²) for x = -5..5, summing to 1."""
    x = torch.arange(-RADIUS, RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * SIGMA**2))
    return (g / g.sum()).to(dtype)


def to_float01(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (0..255) or float [0, 1] images (N, C, H, W) as ``dtype`` in [0, 1].

    Float input outside [0, 1] is refused rather than guessed at: SSIM's
    constants assume a data range of 1, so 0..255 floats would give wrong numbers.
    """
    if images.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(dtype).div_(255.0)
    if not images.is_floating_point():
        raise DataError(f"images must be uint8 or floating point, got {images.dtype}")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise DataError("float images must be in [0, 1] (pass uint8 for 0..255 data)")
    return images.to(dtype)


def ensure_min_side(images: torch.Tensor) -> torch.Tensor:
    """Apply the small-image rule: sides below 11 px upsampled bilinearly to 11 px."""
    h, w = images.shape[-2:]
    if h >= MIN_SIDE and w >= MIN_SIDE:
        return images
    size = (max(h, MIN_SIDE), max(w, MIN_SIDE))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def prepare(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images as ``dtype`` in [0, 1] with the small-image rule applied; (N, C, H', W')."""
    return ensure_min_side(to_float01(images, dtype))


def filter_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The valid-region Gaussian filter along one axis as a banded matrix, (n - 10, n)."""
    rows = n - 2 * RADIUS
    cols = torch.arange(rows)[:, None] + torch.arange(TAPS)[None, :]  # (rows, 11)
    return torch.zeros(rows, n, dtype=dtype).scatter_(1, cols, gaussian_taps(dtype).expand(rows, TAPS))


def gaussian_filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region only: (B, C, H, W) -> (B, C, H-10, W-10).

    Written as two matmuls with banded matrices: on CPU this is over ten times
    faster than single-channel ``conv2d`` for small images.
    """
    h, w = x.shape[-2:]
    fh = filter_matrix(h, x.dtype).to(x.device)  # (H-10, H)
    fw = filter_matrix(w, x.dtype).to(x.device)  # (W-10, W)
    # both passes as right-multiplications: one large GEMM each, no broadcast batch of tiny ones
    return ((x @ fw.T).transpose(-1, -2) @ fh.T).transpose(-1, -2)


def local_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local mean and population variance maps, each (B, C, H-10, W-10)."""
    mu = gaussian_filter_valid(x)
    var = gaussian_filter_valid(x * x) - mu * mu
    return mu, var


def _check_pair_shapes(a: torch.Tensor, b: torch.Tensor, paired: bool) -> None:
    if a.ndim != 4 or b.ndim != 4:
        raise DataError(f"images must be (N, C, H, W); got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1:] != b.shape[1:]:
        raise DataError(f"image shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])} (C, H, W)")
    if paired and a.shape[0] != b.shape[0]:
        raise DataError(f"paired SSIM needs equal counts, got {a.shape[0]} and {b.shape[0]}")


@torch.no_grad()
def ssim_map(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-position SSIM of paired images: (N, C, H-10, W-10), after the small-image rule."""
    _check_pair_shapes(a, b, paired=True)
    x, y = prepare(a, dtype), prepare(b, dtype)
    return ssim_map_from_stats(x, y, *local_stats(x), *local_stats(y))


def ssim_map_from_stats(
    x: torch.Tensor, y: torch.Tensor, mx: torch.Tensor, vx: torch.Tensor, my: torch.Tensor, vy: torch.Tensor
) -> torch.Tensor:
    """Per-position SSIM of prepared pairs (B, C, H, W) given their local stats (B, C, H-10, W-10).

    Lets a caller compute each image's mean and variance maps once and reuse
    them across many pairs. Use float64: E[xy] - μxμy cancels badly in float32.
    """
    mxy = mx * my
    cs = gaussian_filter_valid(x * y).sub_(mxy).mul_(2).add_(C2)  # 2·cov + C2
    cs.mul_(mxy.mul_(2).add_(C1))  # × (2μxμy + C1)
    den = torch.addcmul(my * my, mx, mx).add_(C1).mul_(vx + vy + C2)
    return cs.div_(den)


@torch.no_grad()
def ssim_pairs(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """SSIM of paired images a[i] vs b[i]: (N, C, H, W) x2 -> (N,), in float64 by default.

    Accepts uint8 (0..255) or float [0, 1] images; mean over positions and channels.
    Keep float64 here: this direct form (E[xy] - μxμy) loses up to ~1e-3 of SSIM
    in float32 on flat, bright regions; ``ssim_matrix`` is exact in float32.
    """
    return ssim_map(a, b, dtype).flatten(1).mean(1)


@dataclass(frozen=True)
class SsimOperand:
    """One side of the all-pairs kernel, precomputed for a block of images.

    ``window`` is (P, n, K) on the candidate side and (P, K, n) on the image
    side, P = C·(H-10)·(W-10) positions; ``denom`` the rank-4 factor of the
    denominator, (P, n, 4) or (P, 4, n).
    """

    window: torch.Tensor
    denom: torch.Tensor
    is_left: bool

    @property
    def count(self) -> int:
        return int(self.window.shape[1] if self.is_left else self.window.shape[2])

    def nbytes(self) -> int:
        return self.window.numel() * self.window.element_size() + self.denom.numel() * self.denom.element_size()


def _window_view(x: torch.Tensor) -> torch.Tensor:
    """Every 11×11 window of every channel as a strided view: (n, C, H, W) -> (C, Ho, Wo, n, 11, 11).

    ``F.unfold`` (im2col) is tens of times slower on CPU for single-channel
    images; the views are copied exactly once, straight into the operand.
    """
    xt = x.permute(1, 2, 3, 0).contiguous()  # (C, H, W, n)
    return xt.unfold(1, TAPS, 1).unfold(2, TAPS, 1)


def _position_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local mean and variance per position, (C·P, n) each, from float64 for accuracy."""
    mu, var = local_stats(x.double())  # (n, C, Ho, Wo)
    n = x.shape[0]
    return mu.reshape(n, -1).T.to(x.dtype), var.reshape(n, -1).T.to(x.dtype)


# Windows are centred on their own local mean (x̃ = x - μx) as they are copied.
# The matmul then yields the covariance directly instead of E[xy] - μxμy: in
# float32 that difference loses up to 1e-3 of SSIM in flat, bright regions (a
# sky), where the centred form stays within ~1e-6 of float64.


@torch.no_grad()
def prepare_left(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> SsimOperand:
    """Candidate side of the all-pairs kernel for images (n, C, H, W)."""
    x = prepare(images, dtype)
    mu, var = _position_stats(x)  # (P, n)
    v = _window_view(x)  # (C, Ho, Wo, n, 11, 11)
    c, ho, wo, n = v.shape[:4]
    p, k = c * ho * wo, TAPS * TAPS
    w2 = torch.outer(gaussian_taps(dtype), gaussian_taps(dtype))  # (11, 11)
    # numerator = 4μxμy·cov + 2C1·cov + 2C2·μxμy + C1C2: a sum of (x-term)·(y-term)
    window = torch.empty(p, n, 2 * k + 2, dtype=dtype)  # (P, n, 244)
    cen = window[:, :, k : 2 * k]  # (P, n, 121)
    torch.sub(v, mu.view(c, ho, wo, n, 1, 1), out=cen.view(c, ho, wo, n, TAPS, TAPS))
    cen.view(p, n, TAPS, TAPS).mul_(w2)  # w·(x - μx)
    torch.mul(cen, (4 * mu)[:, :, None], out=window[:, :, :k])
    cen.mul_(2 * C1)
    window[:, :, 2 * k] = 2 * C2 * mu
    window[:, :, 2 * k + 1] = C1 * C2
    mu2 = mu * mu
    denom = torch.stack([mu2 * var, mu2, var, torch.ones_like(mu)], 2)  # (P, n, 4)
    return SsimOperand(window, denom, is_left=True)


@torch.no_grad()
def prepare_right(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> SsimOperand:
    """Image side of the all-pairs kernel for images (m, C, H, W)."""
    y = prepare(images, dtype)
    mu, var = _position_stats(y)  # (P, m)
    v = _window_view(y).permute(0, 1, 2, 4, 5, 3)  # (C, Ho, Wo, 11, 11, m)
    c, ho, wo, m = v.shape[0], v.shape[1], v.shape[2], v.shape[5]
    p, k = c * ho * wo, TAPS * TAPS
    window = torch.empty(p, 2 * k + 2, m, dtype=dtype)  # (P, 244, m)
    cen = window[:, k : 2 * k]  # (P, 121, m)
    torch.sub(v, mu.view(c, ho, wo, 1, 1, m), out=cen.view(c, ho, wo, TAPS, TAPS, m))  # y - μy
    torch.mul(cen, mu[:, None, :], out=window[:, :k])
    window[:, 2 * k] = mu
    window[:, 2 * k + 1] = 1.0
    # denominator = (μx² + μy² + C1)(σx² + σy² + C2) as a rank-4 product
    lum = mu * mu + C1
    con = var + C2
    denom = torch.stack([torch.ones_like(mu), con, lum, lum * con], 1)  # (P, 4, m)
    return SsimOperand(window, denom, is_left=False)


def _block(left: SsimOperand, right: SsimOperand) -> torch.Tensor:
    """Mean SSIM of every pair of two prepared blocks: (n, m)."""
    num = torch.bmm(left.window, right.window)  # (P, n, m)
    num.div_(torch.bmm(left.denom, right.denom))
    return num.sum(0).div_(num.shape[0])


def block_ssim(left: SsimOperand, right: SsimOperand) -> torch.Tensor:
    """All-pairs SSIM of prepared operands, (n, m), in sub-blocks of bounded size."""
    if not left.is_left or right.is_left:
        raise DataError("block_ssim needs a prepare_left operand and a prepare_right operand")
    if left.window.shape[0] != right.window.shape[0]:
        raise DataError("SSIM operands come from images of different shapes")
    p, n, m = left.window.shape[0], left.count, right.count
    out = torch.empty(n, m, dtype=left.window.dtype)
    sub = max(1, int(math.sqrt(_BLOCK_ELEMENTS / p)))
    for i in range(0, n, sub):
        li = SsimOperand(left.window[:, i : i + sub], left.denom[:, i : i + sub], is_left=True)
        for j in range(0, m, sub):
            rj = SsimOperand(right.window[:, :, j : j + sub], right.denom[:, :, j : j + sub], is_left=False)
            out[i : i + sub, j : j + sub] = _block(li, rj)
    return out


@torch.no_grad()
def ssim_matrix(
    cands: torch.Tensor,
    imgs: torch.Tensor,
    *,
    chunk: int = 256,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """SSIM of every candidate against every image: (N, C, H, W), (M, C, H, W) -> (N, M).

    ``chunk`` bounds how many images of either side are prepared at once (each
    prepared image takes about 248·C·(H-10)·(W-10) numbers). For bounded
    memory over very many images, use ``search.best_matches``, which keeps
    only the best matches instead of the whole matrix.
    """
    _check_pair_shapes(cands, imgs, paired=False)
    if chunk < 1:
        raise DataError("chunk must be at least 1")
    n, m = cands.shape[0], imgs.shape[0]
    out = torch.empty(n, m, dtype=dtype)
    lefts = [prepare_left(cands[i : i + chunk], dtype) for i in range(0, n, chunk)]
    for j in range(0, m, chunk):
        right = prepare_right(imgs[j : j + chunk], dtype)
        for k, left in enumerate(lefts):
            i = k * chunk
            out[i : i + left.count, j : j + right.count] = block_ssim(left, right)
        if progress is not None:
            progress(min(j + chunk, m), m)
    return out
