"""Inversion losses: each a pure function with its formula.

Notation: a batch of N images x_i in [0, 1] with target labels y_i and
conditioning distributions P_i; Q_i = softmax(f(x_i)) the classifier's
prediction; φ(x) its penultimate features; θ its weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_EPS = 1e-8


def kl_loss(cond: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """L_KL = 1/N Σ_i KL(P_i ‖ Q_i) = 1/N Σ_i Σ_k P_ik (log P_ik − log Q_ik).

    The classifier should reproduce the conditioning distribution; terms with
    P_ik = 0 contribute 0 (so for one-hot P this equals the cross-entropy).
    """
    log_q = F.log_softmax(logits, dim=1)  # (N, K)
    log_p = torch.log(cond.clamp_min(_EPS))
    return (cond * (log_p - log_q)).sum(dim=1).mean()


def ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_CE = −1/N Σ_i log Q_i[y_i]."""
    return F.cross_entropy(logits, targets)


def cosine_loss(features: torch.Tensor) -> torch.Tensor:
    """L_cos = 1/(N(N−1)) Σ_{i≠j} cos(φ_i, φ_j): penalises samples the classifier sees alike."""
    n = features.shape[0]
    if n < 2:
        return features.sum() * 0.0
    unit = F.normalize(features, dim=1, eps=_EPS)  # (N, D)
    sim = unit @ unit.T  # (N, N)
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


def orthogonality_loss(features: torch.Tensor) -> torch.Tensor:
    """L_orth = ‖Φ̂ Φ̂ᵀ − I‖²_F / N², Φ̂ the row-normalised (N, D) feature matrix."""
    n = features.shape[0]
    unit = F.normalize(features, dim=1, eps=_EPS)
    gram = unit @ unit.T  # (N, N)
    eye = torch.eye(n, device=features.device, dtype=features.dtype)
    return ((gram - eye) ** 2).sum() / (n * n)


def logit_margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """f_y − max_{k≠y} f_k per row: (N, K) logits, (N,) labels → (N,)."""
    own = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf")).max(dim=1).values
    return own - others


def margin_loss(logits: torch.Tensor, targets: torch.Tensor, target_margin: float) -> torch.Tensor:
    """L_margin = 1/N Σ_i max(0, m* − (f_{y_i}(x_i) − max_{k≠y_i} f_k(x_i))).

    Training points of a network trained to near-zero loss sit at a large
    logit margin; pushing candidates to (not beyond) m* avoids the saturated
    patterns that unbounded confidence maximisation produces.
    """
    return F.relu(target_margin - logit_margins(logits, targets)).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """L_TV = mean_{n,c,h,w} (x[h+1,w] − x[h,w])² + mean (x[h,w+1] − x[h,w])² (anisotropic, squared)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
    return dh + dw


def range_loss(pre: torch.Tensor, limit: float = 6.0) -> torch.Tensor:
    """L_range = mean max(0, |u| − u_max)² over pre-sigmoid pixels u.

    The sigmoid bounds every pixel to [0, 1]; this keeps the pre-activations
    out of its flat tails (|u| ≤ u_max), where gradients vanish and pixels
    saturate at pure black or white.
    """
    return F.relu(pre.abs() - limit).pow(2).mean()


def l2_prior(x_normalised: torch.Tensor) -> torch.Tensor:
    """L_l2 = 1/N Σ_i ‖x̃_i‖² / (C·H·W), x̃ the image in the classifier's normalised input space.

    The minimum-norm prior of the implicit-bias view: among inputs reaching a
    margin, training points are the small-norm ones.
    """
    return x_normalised.pow(2).mean()


def bn_stats_loss(stats: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """L_BN = Σ_l ‖μ_l(x) − μ̂_l‖₂ + ‖σ²_l(x) − σ̂²_l‖₂ (DeepInversion).

    μ_l, σ²_l are the batch statistics of the input of BatchNorm layer l,
    μ̂_l, σ̂²_l its running statistics (what the training data looked like).
    """
    total = stats[0][0].new_zeros(()) if stats else torch.zeros(())
    for mean, var, running_mean, running_var in stats:
        total = total + torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)
    return total


def gradient_norm_loss(ce: torch.Tensor, parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_grad = ‖∇_θ L_CE(f(x), y)‖² (double backprop: the graph of the gradient is kept).

    Training points sit at near-stationary loss; the prior prefers candidates
    whose gradient with respect to the classifier's weights is small. The
    parameters must have ``requires_grad`` set for the call.
    """
    grads = torch.autograd.grad(ce, list(parameters), create_graph=True, allow_unused=True)
    total = ce.new_zeros(())
    for g in grads:
        if g is not None:
            total = total + g.pow(2).sum()
    return total


def perturb(x: torch.Tensor, sigma: float, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + ε with ε ~ N(0, σ²) and a random circular shift of up to max_shift pixels, clamped to [0, 1].

    The classifier is robust around its training points, so candidates are
    asked to keep their label and confidence under such perturbations too.
    """
    noise = torch.randn(x.shape, generator=generator).to(x.device) * sigma
    out = x + noise
    if max_shift > 0:
        shift = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)  # (dy, dx)
        out = circular_shift(out, shift.to(x.device))
    return out.clamp(0.0, 1.0)


def circular_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``torch.roll(x, shifts=(dy, dx), dims=(2, 3))`` with the shifts as a tensor: the same pixels, moved by
    indexing, so the shift is never read back on the host (on a GPU that read would wait for the device)."""
    height, width = x.shape[-2:]
    rows = (torch.arange(height, device=x.device) - shift[0]).remainder(height)
    cols = (torch.arange(width, device=x.device) - shift[1]).remainder(width)
    return x.index_select(2, rows).index_select(3, cols)


def vae_loss(recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float) -> torch.Tensor:
    """L_VAE = 1/N Σ_i [ Σ_p BCE(x̂_ip, x_ip) + β · KL(N(μ_i, σ_i²) ‖ N(0, I)) ], in nats per image."""
    n = target.shape[0]
    rec = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), target, reduction="sum") / n
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / n
    return rec + beta * kl
