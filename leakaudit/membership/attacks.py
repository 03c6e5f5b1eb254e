"""The membership attacks: per-image scores from the target's signal and the reference models' (higher = member).

Every reference model trained on a random half (or the target's training-set
size) of the pool, so for each image its IN models are those whose split held
it and its OUT models the others (the online protocol). LiRA fits Gaussians to
φ under IN and OUT (Carlini et al. 2022); its offline variant uses only OUT.
RMIA (Zarifzadeh et al. 2024) compares Pr(x | θ) / Pr(x) with the same ratio
of population samples z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

PER_IMAGE_VARIANCE_MIN = 16  # IN and OUT models each image needs before LiRA fits its own variance
RMIA_DEFAULT_A = 0.3  # the offline correction when no image has both IN and OUT models to fit it on
RMIA_GAMMA = 1.0
MIN_SIGMA = 1e-3


@dataclass(frozen=True)
class Gaussians:
    """Per-image means and standard deviations of φ under IN and OUT models."""

    mu_in: np.ndarray
    mu_out: np.ndarray
    sigma_in: np.ndarray
    sigma_out: np.ndarray
    per_image_variance: bool


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = mask.sum(0)
    total = np.where(mask, values, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def fit_gaussians(ref_phi: np.ndarray, masks: np.ndarray) -> Gaussians:
    """IN/OUT means per image; one global σ for each side (per image once R allows). Missing sides borrow the
    other side's mean shifted by the mean IN − OUT gap over images that have both."""
    mu_in, n_in = _masked_mean(ref_phi, masks)
    mu_out, n_out = _masked_mean(ref_phi, ~masks)
    both = (n_in > 0) & (n_out > 0)
    gap = float(np.mean(mu_in[both] - mu_out[both])) if both.any() else 0.0
    mu_in = np.where(n_in > 0, mu_in, mu_out + gap)
    mu_out = np.where(n_out > 0, mu_out, mu_in - gap)
    res_in = np.where(masks, ref_phi - mu_in, np.nan)
    res_out = np.where(~masks, ref_phi - mu_out, np.nan)
    pooled_in, pooled_out = _pooled_sigma(res_in, n_in), _pooled_sigma(res_out, n_out)
    spread = max(float(np.std(ref_phi)), MIN_SIGMA) if ref_phi.size > 1 else 1.0
    g_in = pooled_in or pooled_out or spread
    g_out = pooled_out or pooled_in or spread
    per_image = bool(n_in.min() >= PER_IMAGE_VARIANCE_MIN and n_out.min() >= PER_IMAGE_VARIANCE_MIN)
    if per_image:
        s_in = np.maximum(np.sqrt(np.nansum(res_in ** 2, 0) / (n_in - 1)), MIN_SIGMA)
        s_out = np.maximum(np.sqrt(np.nansum(res_out ** 2, 0) / (n_out - 1)), MIN_SIGMA)
    else:
        s_in, s_out = np.full(ref_phi.shape[1], g_in), np.full(ref_phi.shape[1], g_out)
    return Gaussians(mu_in, mu_out, s_in, s_out, per_image)


def _pooled_sigma(residuals: np.ndarray, counts: np.ndarray) -> float | None:
    """One σ pooled over images (each image's mean costs a degree of freedom); None without any to spare.

    With one model per image (R = 1 or 2) every residual is 0 by construction,
    so the caller falls back to the other side's σ, then to φ's spread over the pool.
    """
    freedom = int(counts.sum() - (counts > 0).sum())
    if freedom <= 0:
        return None
    return max(float(np.sqrt(np.nansum(residuals ** 2) / freedom)), MIN_SIGMA)


def lira_online(target_phi: np.ndarray, fit: Gaussians) -> np.ndarray:
    """log N(φ | μ_in, σ_in) − log N(φ | μ_out, σ_out): the likelihood ratio of IN over OUT."""
    log_in = norm.logpdf(target_phi, fit.mu_in, fit.sigma_in)
    return np.asarray(log_in - norm.logpdf(target_phi, fit.mu_out, fit.sigma_out))


def lira_offline(target_phi: np.ndarray, fit: Gaussians) -> np.ndarray:
    """log Φ((φ − μ_out) / σ_out): how far into OUT's upper tail the target's φ lies (one-sided)."""
    return np.asarray(norm.logcdf((target_phi - fit.mu_out) / fit.sigma_out))


def rmia_a(ref_p: np.ndarray, masks: np.ndarray) -> float:
    """The offline correction a of Pr_in ≈ a·Pr_out + (1 − a), fitted by least squares where an image has both."""
    p_in, n_in = _masked_mean(ref_p, masks)
    p_out, n_out = _masked_mean(ref_p, ~masks)
    both = (n_in > 0) & (n_out > 0)
    if not both.any():
        return RMIA_DEFAULT_A
    u, v = p_out[both] - 1.0, p_in[both] - 1.0
    denominator = float(u @ u)
    return float(np.clip((u @ v) / denominator, 0.0, 1.0)) if denominator > 0 else RMIA_DEFAULT_A


def rmia_offline(target_p: np.ndarray, ref_p: np.ndarray, masks: np.ndarray, a: float,
                 population: np.ndarray) -> np.ndarray:
    """Share of population samples z with LR(x, z) = [Pr(x|θ)/Pr(x)] / [Pr(z|θ)/Pr(z)] ≥ γ, Pr from OUT models.

    Images with no OUT model use the mean OUT probability over the pool.
    """
    ratio = rmia_ratio(target_p, ref_p, masks, a)
    z = np.sort(ratio[population])
    # LR(x, z) ≥ γ  ⇔  ratio_z ≤ ratio_x / γ
    return np.searchsorted(z, ratio / RMIA_GAMMA, side="right") / max(z.size, 1)


def rmia_ratio(target_p: np.ndarray, ref_p: np.ndarray, masks: np.ndarray, a: float) -> np.ndarray:
    """Pr(x|θ)/Pr(x), Pr(x) = ½[(1 + a)·Pr_out(x) + (1 − a)]; images with no OUT model use the pool's mean."""
    p_out, n_out = _masked_mean(ref_p, ~masks)
    fallback = float(np.nanmean(p_out)) if np.isfinite(p_out).any() else 0.5
    p_out = np.where(n_out > 0, p_out, fallback)
    return target_p / np.maximum(0.5 * ((1.0 + a) * p_out + (1.0 - a)), 1e-30)
