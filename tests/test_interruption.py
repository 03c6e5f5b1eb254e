"""Ctrl-C and SIGTERM: a prompt exit 130, the checkpoint kept, no result that looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leakaudit.report.json_format import without_timings

from .conftest import TinyReference

pytestmark = pytest.mark.slow  # whole audits in subprocesses

LONG_INVERSION = """
[inversion]
width = 16
batch_per_class = 2
steps = 100000
pool_per_class = 8
candidates_per_class = 2
refine_steps = 10
kkt_steps = 10
checkpoint_every = 5
"""


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float = 300) -> None:
    """Poll until the running audit writes ``path``; fail the test if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the audit never wrote {path.name}: {proc.communicate()[1]}")
        time.sleep(0.05)


def _start(tiny: TinyReference, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    config = tmp_path / "long.toml"
    config.write_text(LONG_INVERSION)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "leakaudit"), "run", str(tiny.torchscript), "--data", str(tiny.train_dir),
         "--out", str(out), "--config", str(config), "--budget", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"},
    )
    _wait_for(out / "checkpoints" / "generator.pt", proc)
    return proc, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_promptly_with_130(tiny: TinyReference, tmp_path: Path, sig: signal.Signals) -> None:
    proc, out = _start(tiny, tmp_path)
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=120)  # seconds when idle; room for a loaded runner
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 120 s after {sig.name}")
    assert proc.returncode == 130, stderr
    assert f"stopped by {sig.name}" in stderr
    assert (out / "checkpoints" / "generator.pt").exists()
    for name in ("leakaudit.json", "report.html", "reconstructions.npz"):
        assert not (out / name).exists(), f"{name} written by an interrupted run"
    assert not list(out.glob("*.tmp")), "temporary files left behind"


RESUMABLE_INVERSION = """
[inversion]
width = 16
batch_per_class = 2
pretrain_steps = 40
finetune_steps = 400
pool_per_class = 8
candidates_per_class = 2
refine_steps = 10
kkt_steps = 10
checkpoint_every = 5
"""


def _audit_command(tiny: TinyReference, config: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "leakaudit"), "run", str(tiny.torchscript), "--data", str(tiny.train_dir),
            "--holdout", str(tiny.holdout_dir), "--out", str(out), "--config", str(config), "--budget", "600",
            "--seed", "2"]


def _comparable(out: Path, resume_record: bool = True) -> dict:
    document = without_timings(json.loads((out / "leakaudit.json").read_text()))
    if not resume_record:  # what differs between a resumed run and an uninterrupted one, by design
        document["inversion"].pop("resumed")
        document["inversion"].pop("resumed_from")
        document["summary"]["notes"] = [n for n in document["summary"]["notes"] if "resumed an interrupted" not in n]
    return document


def _killed_after_first_phase(command: list[str], out: Path) -> None:
    """Start the audit and SIGKILL it as soon as its first phase saved the resumable state."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CI": "1"})
    _wait_for(out / "checkpoints" / "resume.pt", proc)
    proc.kill()
    proc.communicate()


def test_killed_run_resumes_and_ends_with_the_same_findings(tiny: TinyReference, tmp_path: Path) -> None:
    config = tmp_path / "resumable.toml"
    config.write_text(RESUMABLE_INVERSION)
    env = {**os.environ, "CI": "1"}
    # The reference: one uninterrupted run.
    whole = subprocess.run(_audit_command(tiny, config, tmp_path / "whole"), capture_output=True, text=True, env=env,
                           timeout=600)
    assert whole.returncode in (0, 1), whole.stderr
    # SIGKILL as soon as pre-training is done (the resumable state appears), mid fine-tuning.
    out = tmp_path / "killed"
    _killed_after_first_phase(_audit_command(tiny, config, out), out)
    assert not (out / "leakaudit.json").exists()
    again = subprocess.run(_audit_command(tiny, config, out), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == whole.returncode, again.stderr
    assert "resumed from the checkpoint, at finetune" in again.stderr
    resumed = json.loads((out / "leakaudit.json").read_text())
    assert resumed["inversion"]["resumed"] is True and resumed["inversion"]["resumed_from"] == "finetune"
    assert any("resumed an interrupted run" in note for note in resumed["summary"]["notes"])
    assert "resumed an interrupted run at its finetune phase" in (out / "report.html").read_text()
    assert json.loads((tmp_path / "whole" / "leakaudit.json").read_text())["inversion"]["resumed"] is False
    assert _comparable(out, resume_record=False) == _comparable(tmp_path / "whole", resume_record=False)
    assert not (out / "checkpoints").exists(), "a finished run leaves no checkpoint folder"


def test_state_from_other_inputs_is_not_reused(tiny: TinyReference, tmp_path: Path) -> None:
    config = tmp_path / "resumable.toml"
    config.write_text(RESUMABLE_INVERSION.replace("finetune_steps = 400", "finetune_steps = 20"))
    out = tmp_path / "out"
    command = _audit_command(tiny, config, out)
    _killed_after_first_phase(command, out)
    # Another seed is another inversion: the saved state must be ignored.
    other = subprocess.run([*command[:-1], "3"], capture_output=True, text=True, env={**os.environ, "CI": "1"},
                           timeout=600)
    assert other.returncode in (0, 1), other.stderr
    assert "resumed" not in other.stderr
    assert json.loads((out / "leakaudit.json").read_text())["inversion"]["resumed"] is False


def test_another_effort_does_not_resume(tiny: TinyReference, tmp_path: Path) -> None:
    config = tmp_path / "resumable.toml"
    config.write_text(RESUMABLE_INVERSION.replace("finetune_steps = 400", "finetune_steps = 20"))
    out = tmp_path / "out"
    command = _audit_command(tiny, config, out)
    _killed_after_first_phase(command, out)
    # the engine table pins the step counts, so only the effort label differs: still another attack
    other = subprocess.run([*command, "--effort", "thorough"], capture_output=True, text=True,
                           env={**os.environ, "CI": "1"}, timeout=600)
    assert other.returncode in (0, 1), other.stderr
    assert "resumed" not in other.stderr
    assert not (out / "checkpoints").exists()


def test_a_second_audit_on_the_same_out_exits_2_at_once(tiny: TinyReference, tmp_path: Path) -> None:
    proc, out = _start(tiny, tmp_path)
    try:
        second = subprocess.run(
            [str(Path(sys.executable).parent / "leakaudit"), "run", str(tiny.torchscript), "--data",
             str(tiny.train_dir), "--out", str(out)], capture_output=True, text=True,
            timeout=120)  # a second audit that waited for the lock would run into this
        assert second.returncode == 2, second.stderr
        assert f"another leakaudit audit is writing to {out} (process {proc.pid})" in second.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert (out / "checkpoints" / "generator.pt").exists(), "the first audit's checkpoint is untouched"


def test_a_signal_after_the_attack_writes_nothing_it_did_not_finish_and_says_so(tiny: TinyReference, quick_config: Path,
                                                                               tmp_path: Path) -> None:
    config = quick_config
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "leakaudit"), "run", str(tiny.torchscript), "--data", str(tiny.train_dir),
         "--holdout", str(tiny.holdout_dir), "--out", str(out), "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"},
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # progress lines: one per phase
        seen.append(line)
        if "matching reconstructions against training images" in line:
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    outputs = [out / name for name in ("reconstructions.npz", "leakaudit.json", "report.html")]
    if "no result was written" in stderr:
        assert not any(p.exists() for p in outputs), stderr
    else:  # the signal came while writing: exactly the files it names are there, each complete
        claimed = stderr.split("complete before the stop: ")[1].split(";")[0].split(", ")
        assert sorted(str(p) for p in outputs if p.exists()) == sorted(claimed), stderr
    assert "no saved inversion state" in stderr  # the inversion had finished: nothing to resume


def test_sigterm_while_the_data_loads_stops_within_seconds(tiny: TinyReference, tmp_path: Path) -> None:
    import numpy as np

    import re

    n = 1_000_000  # 1x1 images: each is resized to the model's 32x32 input, minutes of work in all
    np.savez_compressed(tmp_path / "many.npz", images=np.zeros((n, 1, 1, 1), np.uint8),
                        labels=np.arange(n, dtype=np.int64) % 10)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "leakaudit"), "run", str(tiny.torchscript), "--data",
         str(tmp_path / "many.npz"), "--out", str(tmp_path / "out"), "--budget", "3000", "--input-size", "32", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"})
    assert proc.stderr is not None
    for line in proc.stderr:  # the progress display counts the images as they are read
        counted = re.search(r"loading model and data: (\d+)/\d+ ", line)
        if counted and int(counted.group(1)) > 0:
            break
    else:
        pytest.fail(f"the audit ended before loading its data: {proc.wait()}")
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert time.monotonic() - sent < 10
