"""The stationarity stage's residual: its hand-written gradient is autograd's, bit for bit.

The stage's ‖θ − Σ λ ∇_θ m‖² has its own backward (one weight-sized multiply
instead of autograd's four passes) and holds ‖θ‖² for the whole stage. Both are
claimed to leave every candidate unchanged; these tests hold the claim against
the plain autograd formula on a classifier of the kind the stage runs on.
"""

from __future__ import annotations

import torch
from torch import nn

from leakaudit.inversion.losses import logit_margins
from leakaudit.inversion.stationarity import Stationarity, differentiable, fit_error, squared_norm
from leakaudit.model.target import TargetModel


def _classifier() -> TargetModel:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return TargetModel.from_module(module, (1, 8, 8), 10, device="cpu")


def _autograd_residual(target: TargetModel, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The formula as autograd differentiates it, with ‖θ‖² recomputed each time."""
    params = target.parameters()
    with differentiable(params):
        weighted = (lam * logit_margins(target.logits(x), y)).sum()
        grads = torch.autograd.grad(weighted, params, create_graph=True)
        diff = sum(((p - g) ** 2).sum() for p, g in zip(params, grads))
        return diff / sum((p.detach() ** 2).sum() for p in params)


def test_the_residual_and_its_gradients_equal_autograds_bit_for_bit() -> None:
    target = _classifier()
    y = torch.arange(20) % 10
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    kkt = Stationarity(target, x.detach(), y, floor=0.1)
    ours = kkt(x)
    ours.backward(inputs=[x, kkt.lam])
    x_grad, lam_grad = x.grad.clone(), kkt.lam.grad.clone()
    x.grad = None
    lam = kkt.lam.detach().clone().requires_grad_(True)
    theirs = _autograd_residual(target, x, y, lam)
    theirs.backward(inputs=[x, lam])
    assert torch.equal(ours.detach(), theirs.detach())
    assert torch.equal(x_grad, x.grad) and torch.equal(lam_grad, lam.grad)
    assert x_grad.abs().sum() > 0 and lam_grad.abs().sum() > 0  # a gradient that could have differed


def test_the_norm_held_for_the_stage_is_the_one_computed_each_time() -> None:
    target = _classifier()
    params = target.parameters()
    grads = [torch.randn_like(p) for p in params]
    assert torch.equal(fit_error(params, grads), fit_error(params, grads, squared_norm(params)))
    # and the held norm is the one used: twice the norm, half the error (an exact scaling)
    assert torch.equal(fit_error(params, grads, 2 * squared_norm(params)), fit_error(params, grads) / 2)
