"""The confined worker's ceilings: budget watchdog, memory limit, bounded output, endless or failing forward passes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leakaudit.confine.operations import LoadRequest
from leakaudit.errors import ModelError

from .conftest import NEEDS_CONFINEMENT, TinyReference, confined_session

pytestmark = NEEDS_CONFINEMENT


@pytest.mark.slow
def test_a_membership_pass_slow_batch_by_batch_ends_at_the_budget(hostile_dir: Path) -> None:
    started = time.monotonic()
    session = confined_session([], budget_s=20)
    try:
        session.load(LoadRequest(Path("weights.pth"), arch="hostile:sleepy", shape_hint=(1, 32, 32), device="cpu"))
        with pytest.raises(ModelError, match="ran past the budget's ceiling .* during the membership pass; stopped it: "
                                             "the audit is incomplete"):
            session.logits(torch.zeros(40 * 256, 1, 32, 32, dtype=torch.uint8))  # 40 batches of 8 s each
    finally:
        session.close()
    assert time.monotonic() - started < 20 + 60


@pytest.mark.slow
def test_a_load_that_keeps_sending_progress_ends_at_the_budget(hostile_dir: Path) -> None:
    started = time.monotonic()
    session = confined_session([], budget_s=20)
    try:
        with pytest.raises(ModelError, match="ran past the budget's ceiling .* during loading the model"):
            session.load(LoadRequest(Path("weights.pth"), arch="hostile:keepalive", shape_hint=(1, 32, 32),
                                     device="cpu"))
    finally:
        session.close()
    assert time.monotonic() - started < 20 + 60


HOSTILE_WORKER_PEAK = '''
import resource, sys, torch
from pathlib import Path
from leakaudit.confine import sandbox
from leakaudit.confine.operations import LoadRequest
from leakaudit.confine.session import ConfinedSession
from leakaudit.errors import ModelError

torch.set_num_threads(1)
session = ConfinedSession(sandbox.readable_paths(Path("weights.pth").resolve(), None, True), budget_s=None, seed=0,
                          threads=1)
try:
    session.load(LoadRequest(Path("weights.pth"), arch="hostile:flooding", shape_hint=(1, 32, 32), device="cpu"))
    session.logits(torch.zeros(8, 1, 32, 32, dtype=torch.uint8))
except ModelError as exc:
    print("ERROR", exc)
finally:
    session.close()
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
'''


@pytest.mark.slow
def test_a_hostile_workers_output_leaves_the_parents_memory_bounded(hostile_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", HOSTILE_WORKER_PEAK], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:5] in ("ERROR", "PEAK "))
    assert "is over the limit" in lines.get("ERROR", ""), proc.stdout + proc.stderr  # refused from its header
    assert int(lines["PEAK"]) < 2 << 30, lines  # a 1 GiB line and a 1 GiB reply, read or refused in bounded memory


def test_a_failing_forward_is_a_clear_error_that_carries_the_workers_traceback(hostile_dir: Path) -> None:
    session = confined_session([])
    try:
        session.load(LoadRequest(Path("weights.pth"), arch="hostile:flaky", shape_hint=(1, 32, 32), device="cpu"))
        with pytest.raises(ModelError, match="the model's worker failed during the membership pass: RuntimeError: "
                                             "seven is not a batch size") as caught:
            session.logits(torch.zeros(7, 1, 32, 32, dtype=torch.uint8))
    finally:
        session.close()
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert notes.startswith("the worker's traceback:") and "hostile.py" in notes and "raise RuntimeError" in notes


def test_memory_limit_is_a_clear_error(hostile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKAUDIT_WORKER_MEMORY_GIB", "1.5")
    session = confined_session([])
    try:
        with pytest.raises(ModelError, match=r"the model's worker ran out of memory \(limit 1.5 GiB\)"):
            session.load(LoadRequest(Path("weights.pth"), arch="hostile:hog", shape_hint=(1, 32, 32), device="cpu"))
    finally:
        session.close()


class Endless(torch.nn.Module):
    """A forward pass that never returns (TorchScript ignores SIGTERM inside it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.flatten(1)[:, :10]
        while bool(y.sum() > -1.0):
            y = y + 1.0
        return y


@pytest.mark.slow
def test_endless_forward_ends_within_its_bound(tiny: TinyReference, tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(Endless()), str(tmp_path / "endless.pt"))
    started = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "leakaudit"), "run", str(tmp_path / "endless.pt"), "--data",
         str(tiny.train_dir), "--out", str(tmp_path / "out"), "--budget", "30", "--input-size", "32", "32"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "1"})
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert took < 30 + 60, took
    lines = [line for line in proc.stderr.splitlines() if "made no progress" in line]
    assert len(lines) == 1 and "for 30 s during loading the model; stopped it" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
