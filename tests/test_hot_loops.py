"""The inversion's step loops read nothing back from the device beyond the progress line.

On a GPU every value read on the host (``.item()``, ``float(t)``, ``bool(t)``,
``.tolist()``, ``.cpu()``, ``.numpy()``) waits for the device's queue to drain, so a
read in a step loop serialises every step. The device is not needed to see them:
on the CPU a dispatch mode sees every scalar read (``aten._local_scalar_dense``)
and a wrapper sees the copies, each with the line that asked for it. Reads the
engine makes once per phase (checking the prior, choosing the pool) are allowed;
a read that repeats with every step is not, except the one conversion of a
step's losses for the progress callback (``Clock.tick``).
"""

from __future__ import annotations

import copy
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from leakaudit.inversion import InversionCallbacks, InversionConfig, invert
from leakaudit.model.target import TargetModel
from leakaudit.zoo import split_members

from tests.conftest import TinyReference

PACKAGE = Path(__file__).resolve().parents[1] / "leakaudit"
HOST_COPIES = ("item", "tolist", "cpu", "numpy")
MACHINERY = ("torch/_dynamo/", "torch/_compile.py", "torch/utils/_python_dispatch.py")


def _ours(frame: FrameType | None) -> str | None:
    """``file:line`` of the frame when it is the package's own code, else None (torch's, the test's)."""
    if frame is None:
        return None
    path = Path(frame.f_code.co_filename)
    return f"{path.relative_to(PACKAGE.parent)}:{frame.f_lineno}" if path.is_relative_to(PACKAGE) else None


def _machinery(filename: str) -> bool:
    return filename == __file__ or any(part in filename for part in MACHINERY)


def _in_progress(frame: FrameType | None) -> bool:
    """Whether the read happens inside ``Clock.tick``: the step's losses converted for the progress callback."""
    while frame is not None:
        if frame.f_code.co_name == "tick" and frame.f_code.co_filename.endswith("engine.py"):
            return True
        frame = frame.f_back
    return False


class _ScalarReads(TorchDispatchMode):
    """Records every scalar read (``item``, ``float``, ``int``, ``bool`` of a tensor) asked for by the package."""

    def __init__(self, seen: Counter[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            _record(self.seen, sys._getframe(1))
        return func(*args, **(kwargs or {}))


def _record(seen: Counter[str], frame: FrameType | None) -> None:
    # the first frame of Python code that asked, past this recorder and torch's dispatch machinery: a torch
    # function's own reads are torch's (e.g. Adam's step count, which lives on the host by design)
    while frame is not None and _machinery(frame.f_code.co_filename):
        frame = frame.f_back
    where = _ours(frame)
    if where is not None and not _in_progress(frame):
        seen[where] += 1


@contextmanager
def host_reads() -> Iterator[Counter[str]]:
    """Every read of a tensor's value on the host the package asks for, by line, the progress callback's left out."""
    seen: Counter[str] = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_COPIES}

    def wrap(name: str) -> Callable[..., Any]:
        original = originals[name]

        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            _record(seen, sys._getframe(1))
            return original(self, *args, **kwargs)
        return counted

    for name in HOST_COPIES:
        setattr(torch.Tensor, name, wrap(name))
    try:
        with _ScalarReads(seen):
            yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _reads(tiny: TinyReference, steps: int, **settings: Any) -> Counter[str]:
    """The package's host reads over a run of ``steps`` steps in every phase."""
    data = split_members(tiny.spec)
    target = TargetModel.from_module(copy.deepcopy(tiny.module), (1, 32, 32), 10, device="cpu")
    config = InversionConfig.for_effort("quick", pretrain_steps=steps, finetune_steps=steps, refine_steps=steps,
                                        kkt_steps=steps, steps=steps, pool_per_class=4, threads=1, seed=0,
                                        **settings)
    prior = (data.holdout_images, data.holdout_labels)
    informed = settings.get("prior", "auto") != "none"
    steps_seen: list[int] = []
    callbacks = InversionCallbacks(on_step=lambda step, planned, losses: steps_seen.append(step))
    with host_reads() as seen:
        invert(target, config, prior=prior if informed else None, callbacks=callbacks, should_stop=lambda: False)
    assert steps_seen, "the run took no step"
    return seen


@pytest.mark.parametrize("settings", [
    {},  # informed: pretrain, finetune, refine, stationarity (the MLP has a dense first layer, no BatchNorm)
    {"prior": "none", "mode": "diverse"},  # data-free training with soft conditioning, then the galleries
    {"rowspace": True},  # refinement projected onto the first layer's row space
], ids=["informed", "data-free-diverse", "rowspace"])
def test_no_host_read_repeats_with_the_steps(tiny: TinyReference, settings: dict[str, Any], one_thread: None) -> None:
    """Twice the steps, the same reads: nothing in a step loop reads the device, only the phases' set-up."""
    few, more = _reads(tiny, 2, **settings), _reads(tiny, 5, **settings)
    grown = {where: (few[where], more[where]) for where in more if more[where] > few[where]}
    assert not grown, f"host reads that repeat with every step (2 steps → 5 steps): {grown}"


def test_the_recorder_sees_a_read_in_the_package(one_thread: None) -> None:
    """The recorder is not blind: a scalar read and a host copy in the package's own code are seen by line."""
    from leakaudit.inversion.informed import prepare_prior

    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with host_reads() as seen:
        prepare_prior(images, torch.tensor([0, 1, 0, 1]), (1, 8, 8), 2, torch.device("cpu"))  # checks its labels
        float(torch.ones(()))  # the test's own read: not the package's
    assert seen and all(where.startswith("leakaudit/inversion/informed.py:") for where in seen), seen


def test_the_progress_losses_are_the_floats_of_the_terms_in_one_read(one_thread: None) -> None:
    """The clock's one read gives each loss term exactly ``float(term)``, in the order the step reported them."""
    from leakaudit.inversion.engine import host_floats

    terms = {"ce": torch.tensor(0.1), "anchor": 2.5, "kkt": torch.tensor(1 / 3, dtype=torch.float64),
             "confidence": torch.tensor([0.7])}
    with host_reads() as seen:
        out = host_floats(terms)
    assert list(out) == list(terms)
    assert out == {name: float(value) for name, value in terms.items()}
    assert sum(seen.values()) == 1  # one copy for every tensor
