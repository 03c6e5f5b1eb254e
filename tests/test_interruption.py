"""Ctrl-C and SIGTERM: a prompt exit 130, the checkpoint kept, no result that looks complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import TinyReference

LONG_INVERSION = """
[inversion]
width = 16
batch_per_class = 2
steps = 100000
pool_per_class = 8
candidates_per_class = 2
refine_steps = 10
checkpoint_every = 5
"""


def _start(tiny: TinyReference, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    config = tmp_path / "long.toml"
    config.write_text(LONG_INVERSION)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "leakaudit"), "run", str(tiny.torchscript), "--data", str(tiny.train_dir),
         "--out", str(out), "--config", str(config), "--budget", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"},
    )
    checkpoint = out / "checkpoints" / "generator.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the audit never wrote a checkpoint: {proc.communicate()[1]}")
        time.sleep(0.2)
    return proc, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_promptly_with_130(tiny: TinyReference, tmp_path: Path, sig: signal.Signals) -> None:
    proc, out = _start(tiny, tmp_path)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 30 s after {sig.name}")
    waited = time.monotonic() - sent
    assert proc.returncode == 130, stderr
    # A few seconds on an idle machine; the bound leaves room for a loaded CI runner.
    assert waited < 20, f"took {waited:.1f} s to stop"
    assert f"stopped by {sig.name}" in stderr
    assert (out / "checkpoints" / "generator.pt").exists()
    for name in ("leakaudit.json", "report.html", "reconstructions.npz"):
        assert not (out / name).exists(), f"{name} written by an interrupted run"
    assert not list(out.glob("*.tmp")), "temporary files left behind"
