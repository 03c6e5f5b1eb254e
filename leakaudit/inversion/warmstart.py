"""Reuse of the informed generator's pre-training between inversions that share it.

Pre-training (``informed.py``) learns the prior images alone: it depends on
the seed, the generator's settings, the prior and the model's input shape and
class count, never on the model's weights. The positive controls attack fresh
copies of the audited architecture with the audit's own settings and prior,
so each would repeat, step for step, the pre-training the audit's attack
already ran (about three quarters of an informed attack on the digits MLPs: 39 of 52 s). The
cache keeps the state at the end of that phase (both generators' weights,
both random streams, the fitted latents) under a key of everything it depends
on; a later inversion with the same key starts from it. Because the state is
exactly what the inversion would have computed, a hit and a miss give the same
candidates: only the time differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from leakaudit.inversion.config import InversionConfig

# Settings that change later phases (how many candidates, the ceiling) but not what pre-training computes.
_NOT_IN_KEY = ("budget_s", "checkpoint_every", "candidates_per_class", "pool_per_class")


def pretrain_key(config: InversionConfig, input_shape: tuple[int, int, int], num_classes: int,
                 prior: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> str:
    """Identity of one pre-training: settings (seed among them), shapes, the prior's pixels and labels, device."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_KEY}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(repr((tuple(input_shape), num_classes, str(device))).encode())
    for tensor in prior:
        t = tensor.detach().cpu().contiguous()
        digest.update(repr((t.dtype, tuple(t.shape))).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _copied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in state.items()}


@dataclass(frozen=True)
class Pretrained:
    """Everything the phases after pre-training read: the state an uninterrupted run holds at that point."""

    key: str
    generator: dict[str, torch.Tensor]
    encoder: dict[str, torch.Tensor]
    rng: torch.Tensor  # the run's own generator
    torch_rng: torch.Tensor  # torch's global CPU stream (dropout, initialisation)
    cuda_rng: torch.Tensor | None  # the device's stream, on a GPU
    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    steps: int  # the clock's steps when pre-training ended

    @classmethod
    def capture(cls, key: str, gen: torch.nn.Module, enc: torch.nn.Module, rng: torch.Generator,
                latent_mean: torch.Tensor, latent_std: torch.Tensor, steps: int, device: torch.device) -> Pretrained:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(key, _copied(gen.state_dict()), _copied(enc.state_dict()), rng.get_state(), torch.get_rng_state(),
                   cuda, latent_mean.detach().clone(), latent_std.detach().clone(), steps)

    def restore(self, gen: torch.nn.Module, enc: torch.nn.Module, rng: torch.Generator, device: torch.device) -> None:
        """Load the weights and both random streams; the latents and steps are the caller's to take."""
        gen.load_state_dict(self.generator)
        enc.load_state_dict(self.encoder)
        rng.set_state(self.rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None and device.type == "cuda":
            torch.cuda.set_rng_state(self.cuda_rng, device)


class PretrainCache:
    """The last pre-training an owner ran (one entry: the audit's attack, then its controls, read it)."""

    def __init__(self) -> None:
        self._entry: Pretrained | None = None
        self.hits = 0  # how many inversions started from the entry

    def get(self, key: str) -> Pretrained | None:
        if self._entry is None or self._entry.key != key:
            return None
        self.hits += 1
        return self._entry

    def put(self, entry: Pretrained) -> None:
        self._entry = entry
