"""Process-wide numeric settings do not leak out of an audit."""

from __future__ import annotations

import copy

import torch

from leakaudit.inversion import InversionConfig, invert
from leakaudit.model.target import TargetModel
from leakaudit.runtime.numerics import denormals_flushed, flush_denormals

from .conftest import TinyReference


def test_flush_denormals_restores_the_callers_setting() -> None:
    assert not denormals_flushed()
    with flush_denormals():
        assert denormals_flushed()
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
    assert not denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        with flush_denormals():
            pass
        assert denormals_flushed(), "a caller who flushes keeps flushing"
    finally:
        torch.set_flush_denormal(False)


def test_an_inversion_leaves_ieee_floats_as_it_found_them(tiny: TinyReference) -> None:
    target = TargetModel.from_module(copy.deepcopy(tiny.module), (1, 32, 32), device="cpu")
    config = InversionConfig(width=16, batch_per_class=2, steps=3, pool_per_class=2, candidates_per_class=1,
                             refine_steps=1, kkt_steps=1)
    invert(target, config)
    assert not denormals_flushed()
