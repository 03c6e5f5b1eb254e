"""A forward pass and a mode switch that work on a module of any loaded format.

Every loop that trains or scores a copy of the audited module (the positive
control's copy, each membership reference model) needs the same two things,
whatever format the model came in: an exported program traced with a static
batch runs only on that batch, and an exported program refuses ``train()``.
"""

from __future__ import annotations

import torch
from torch import nn


def set_mode(module: nn.Module, training: bool) -> None:
    """``module.train(training)``, left as it is where the format cannot switch (exported programs are traced in
    eval mode)."""
    try:
        module.train(training)
    except (NotImplementedError, RuntimeError):
        pass


def forward(module: nn.Module, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    """The module's logits of ``x``; a program traced with a static ``batch`` runs chunk by chunk, the last one
    padded with copies of its first image and the padding's logits dropped."""
    if batch is None:
        logits: torch.Tensor = module(x)
        return logits
    outs = []
    for start in range(0, x.shape[0], batch):
        chunk = x[start : start + batch]
        n = chunk.shape[0]
        if n < batch:
            chunk = torch.cat([chunk, chunk[:1].expand(batch - n, *chunk.shape[1:])])
        outs.append(module(chunk)[:n])
    return torch.cat(outs)
