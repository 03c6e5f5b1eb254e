"""Informed inversion: a generator pre-trained on non-member images.

Threat model: an attacker holding public images from the training
distribution. The generator first learns that distribution from the prior
images alone (a conditional VAE, or an autoencoder whose codes are modelled by
a Gaussian afterwards); optimising its candidates against the frozen
classifier then adds only what the weights say. Training images are never seen here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leakaudit.errors import DataError
from leakaudit.inversion.generator import ConditionalGenerator, one_hot
from leakaudit.inversion.losses import vae_loss


def prepare_prior(images: torch.Tensor, labels: torch.Tensor, shape: tuple[int, int, int], num_classes: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 or float (M, C', H', W') prior images → float (M, C, H, W) in [0, 1] at the model's shape."""
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise DataError("prior images must be (M, C, H, W) with one label each")
    if images.shape[0] < 2:
        raise DataError("informed inversion needs at least 2 prior (non-member) images")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(f"prior labels must lie in [0, {num_classes - 1}]")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
    channels, height, width = shape
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1) if channels in (1, 3) else x[:, :channels]
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.contiguous().to(device), labels.long().to(device)


class Encoder(nn.Module):
    """q(z | x, y): two stride-2 convolutions and a linear head, label appended as one-hot."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, latent_dim: int, width: int = 32) -> None:
        super().__init__()
        channels, height, width_px = in_shape
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d((4, 4)),
            nn.Flatten(),
        )
        self.num_classes = num_classes
        self.head = nn.Linear(2 * width * 16 + num_classes, 2 * latent_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W), (N,) → μ (N, latent), log σ² (N, latent)."""
        h = torch.cat([self.net(x), one_hot(labels, self.num_classes)], dim=1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


class LatentGaussian:
    """Where the pre-trained generator's latents live: N(μ, diag σ²) (standard normal for a VAE)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean = mean  # (latent,)
        self.std = std  # (latent,)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, self.mean.shape[0], generator=generator).to(self.mean.device)
        return self.mean + self.std * eps  # (n, latent)

    def standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std


def pretrain_step(
    gen: ConditionalGenerator,
    enc: Encoder,
    images: torch.Tensor,  # (B, C, H, W) in [0, 1]
    labels: torch.Tensor,  # (B,)
    *,
    variational: bool,
    beta: float,
    rng: torch.Generator,
    at_generation_size: bool = False,
) -> torch.Tensor:
    """The VAE (or autoencoder) loss of one prior batch; the decoder is the conditioned generator.

    ``at_generation_size``: ``images`` are at the generator's generation size and are compared with its
    output before the up-sampling (large inputs, scale.py).
    """
    mu, logvar = enc(images, labels)
    if variational:
        eps = torch.randn(mu.shape, generator=rng).to(mu.device)
        z = mu + eps * (0.5 * logvar).exp()
    else:
        z, logvar = mu, torch.zeros_like(mu)
    cond = one_hot(labels, gen.num_classes)
    recon = torch.sigmoid(gen.low_res(z, cond)) if at_generation_size else gen(z, cond)  # (B, C, H, W) or (.., gh, gw)
    return vae_loss(recon, images, mu, logvar, beta if variational else 0.0)


@torch.no_grad()
def fit_latents(enc: Encoder, images: torch.Tensor, labels: torch.Tensor, variational: bool) -> LatentGaussian:
    """The latent distribution to sample from: N(0, I) for a VAE, the codes' Gaussian for an autoencoder."""
    enc.eval()
    mu, _ = enc(images, labels)
    enc.train()
    if variational:
        return LatentGaussian(torch.zeros(mu.shape[1], device=mu.device), torch.ones(mu.shape[1], device=mu.device))
    return LatentGaussian(mu.mean(0), mu.std(0).clamp_min(1e-3))


def split_prior(labels: torch.Tensor, fraction: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class split of non-member indices into (prior, evaluation): (P,), (E,) int64.

    The prior part trains the informed generator; the evaluation part is the
    null the members are compared with. Every class keeps at least one image
    on each side when it has two or more.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError("the prior fraction must lie strictly between 0 and 1")
    gen = torch.Generator().manual_seed(seed)
    prior_idx: list[torch.Tensor] = []
    eval_idx: list[torch.Tensor] = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n = idx.numel()
        take = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
        prior_idx.append(idx[:take])
        eval_idx.append(idx[take:])
    return torch.cat(prior_idx).sort().values, torch.cat(eval_idx).sort().values
