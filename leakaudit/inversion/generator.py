"""The label-conditioned generator G(z, c) → image in [0, 1].

Images are generated at a low resolution and up-sampled bilinearly to the
model's input size: full-resolution generation (with dropout) produces speckle
that a classifier happily accepts but that looks like nothing. The output is
bounded by a sigmoid, so every candidate is a valid [0, 1] image.

Conditioning (selectable):
- "vector": a conditioning distribution P over the K classes (one-hot, or a
  softmaxed random vector whose argmax is the target) is embedded and
  concatenated with the noise z;
- "matrix": a K×K "hot" label pattern (row and column k set for class k,
  mixed by P for soft conditioning) is resized to the first up-sampling stage
  and concatenated there as an extra channel;
- "both".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def generation_size(height: int, width: int, scale: float, min_side: int) -> tuple[int, int]:
    """Side lengths at which images are generated before up-sampling to (height, width)."""
    h = min(height, max(min_side, round(height * scale)))
    w = min(width, max(min_side, round(width * scale)))
    return h, w


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) labels → (N, K) float one-hot rows, by indexing an identity matrix.

    The same numbers as ``F.one_hot(labels, K).float()``, without its range check on the host (two reads of
    the labels' values on the CPU): a step loop reads nothing back, on any device.
    """
    return torch.eye(num_classes, device=labels.device)[labels]


def hot_patterns(num_classes: int) -> torch.Tensor:
    """(K, K, K): pattern k is a K×K matrix with row k and column k set to 1."""
    eye = torch.eye(num_classes)
    rows = eye[:, :, None].expand(num_classes, num_classes, num_classes)  # row k
    cols = eye[:, None, :].expand(num_classes, num_classes, num_classes)  # column k
    return torch.maximum(rows, cols).contiguous()


def soft_conditioning(targets: torch.Tensor, num_classes: int, temperature: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) targets → (N, K) softmaxed random vectors whose argmax is the target."""
    raw = torch.randn(targets.shape[0], num_classes, generator=generator) * temperature  # (N, K)
    top = raw.max(dim=1).values
    index = targets[:, None].to(raw.device)  # the host's own copy when the caller passes host targets
    cur = raw.gather(1, index).squeeze(1)
    raw.scatter_(1, raw.argmax(dim=1, keepdim=True), cur[:, None])  # swap the largest entry ...
    raw.scatter_(1, index, top[:, None])  # ... with the target's
    return torch.softmax(raw, dim=1).to(targets.device)


class _UpBlock(nn.Module):
    """×2 up-sampling, 3×3 convolution, normalisation, LeakyReLU, channel dropout."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        out: torch.Tensor = self.drop(F.leaky_relu(self.norm(self.conv(x)), 0.2))
        return out


class ConditionalGenerator(nn.Module):
    """G(z, P) → (N, C, H, W) in [0, 1], shaped by the classifier's input."""

    def __init__(
        self,
        out_shape: tuple[int, int, int],
        num_classes: int,
        *,
        latent_dim: int = 32,
        embed_dim: int = 32,
        width: int = 64,
        conditioning: str = "both",
        dropout: float = 0.1,
        gen_scale: float = 0.25,
        min_gen_side: int = 8,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("a classifier has at least 2 classes")
        channels, height, width_px = out_shape
        self.out_shape = out_shape
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.conditioning = conditioning
        self.use_vector = conditioning in ("vector", "both")
        self.use_matrix = conditioning in ("matrix", "both")
        self.gen_size = generation_size(height, width_px, gen_scale, min_gen_side)
        gh, gw = self.gen_size
        # two ×2 stages: base (gh/4, gw/4) → mid (gh/2, gw/2) → gen (gh, gw)
        self.mid_size = (max(1, math.ceil(gh / 2)), max(1, math.ceil(gw / 2)))
        self.base_size = (max(1, math.ceil(gh / 4)), max(1, math.ceil(gw / 4)))
        self.embed = nn.Linear(num_classes, embed_dim) if self.use_vector else None
        in_dim = latent_dim + (embed_dim if self.use_vector else 0)
        bh, bw = self.base_size
        self.fc = nn.Linear(in_dim, width * bh * bw)
        self.fc_norm = nn.BatchNorm1d(width * bh * bw)
        self.width = width
        self.register_buffer("patterns", hot_patterns(num_classes), persistent=False)  # (K, K, K)
        extra = 1 if self.use_matrix else 0
        self.up1 = _UpBlock(width, width, dropout)
        self.up2 = _UpBlock(width + extra, width // 2, dropout)
        self.head = nn.Conv2d(width // 2, channels, 3, padding=1)

    def hot_matrix(self, cond: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, K) conditioning → (N, 1, h, w) label pattern, mixed by the conditioning weights."""
        mix = torch.einsum("nk,kab->nab", cond, self.patterns)[:, None]  # (N, 1, K, K)
        if size[0] < self.num_classes or size[1] < self.num_classes:
            mix = F.adaptive_avg_pool2d(mix, (min(size[0], self.num_classes), min(size[1], self.num_classes)))
        return F.interpolate(mix, size=size, mode="nearest")

    def low_res(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(N, latent), (N, K) → (N, C, gh, gw) pre-activation images at the generation size."""
        parts = [z]
        if self.embed is not None:
            parts.append(self.embed(cond))
        h = F.leaky_relu(self.fc_norm(self.fc(torch.cat(parts, dim=1))), 0.2)
        h = h.view(z.shape[0], self.width, *self.base_size)  # (N, width, bh, bw)
        h = self.up1(h, self.mid_size)  # (N, width, mh, mw)
        if self.use_matrix:
            h = torch.cat([h, self.hot_matrix(cond, self.mid_size)], dim=1)  # (N, width + 1, mh, mw)
        h = self.up2(h, self.gen_size)  # (N, width/2, gh, gw)
        pre: torch.Tensor = self.head(h)  # (N, C, gh, gw)
        return pre

    def upsample(self, pre: torch.Tensor) -> torch.Tensor:
        """Pre-activation low-resolution images → (N, C, H, W) in [0, 1]."""
        _, height, width = self.out_shape
        x = torch.sigmoid(pre)
        if x.shape[-2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(N, latent), (N, K) → (N, C, H, W) in [0, 1]."""
        return self.upsample(self.low_res(z, cond))
