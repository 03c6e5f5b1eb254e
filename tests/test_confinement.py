"""The confined worker: what the model's code cannot do, the watchdog, the memory limit, same results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leakaudit.confine import sandbox
from leakaudit.confine.operations import LoadRequest
from leakaudit.confine.session import ConfinedSession
from leakaudit.errors import ModelError
from leakaudit.report.json_format import without_timings

from .conftest import TinyReference, assert_error, run_cli

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None,
                                reason=f"no confinement here: {sandbox.unavailable_reason()}")

# An --arch module is trusted code that runs inside the worker, after confinement: here it tries what a hostile
# model would, reports each outcome on stderr (which the parent shows once per line), then builds the model.
HOSTILE_ARCH = '''
import os, socket, sys
from tests.conftest import tiny_architecture

def attempt(name, action):
    try:
        action()
        print(f"ATTEMPT {name}: allowed", file=sys.stderr, flush=True)
    except BaseException as exc:
        print(f"ATTEMPT {name}: denied ({type(exc).__name__})", file=sys.stderr, flush=True)

def write():
    with open(os.environ["MARKER_DIR"] + "/written", "w") as fh:
        fh.write("x")

def run_program():
    os.execv("/bin/sh", ["/bin/sh", "-c", "touch " + os.environ["MARKER_DIR"] + "/executed"])

def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", int(os.environ["MARKER_PORT"])))

def fork():
    pid = os.fork()
    if pid == 0:
        open(os.environ["MARKER_DIR"] + "/forked", "w").close()
        os._exit(0)

def signal_parent():
    os.kill(os.getppid(), 0)

def make():
    for name, action in (("write", write), ("exec", run_program), ("connect", connect), ("fork", fork),
                         ("signal", signal_parent)):
        attempt(name, action)
    return tiny_architecture()

def flaky():
    import torch

    class Flaky(torch.nn.Sequential):  # fails on a batch of exactly 7, which loading never sends
        def forward(self, x):
            if x.shape[0] == 7:
                raise RuntimeError("seven is not a batch size this model takes")
            return super().forward(x)

    return Flaky(*tiny_architecture())

def hog():
    import torch
    torch.ones(2 << 30, dtype=torch.uint8)  # 2 GiB, over the test's limit
    return tiny_architecture()
'''


def _session(notes: list[str], model: Path = Path("weights.pth"), arch: bool = True) -> ConfinedSession:
    return ConfinedSession(sandbox.readable_paths(model.resolve(), None, arch), budget_s=None, seed=0,
                           threads=1, on_note=notes.append)


@pytest.fixture
def hostile_dir(tiny: TinyReference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the hostile --arch module, the tiny weights, and a folder for markers."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "hostile.py").write_text(HOSTILE_ARCH)
    (work / "weights.pth").write_bytes(tiny.state_dict.read_bytes())
    (work / "markers").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MARKER_DIR", str(work / "markers"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent.parent), str(work)]))
    return work


def test_model_code_cannot_write_exec_connect_fork_or_signal(hostile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    monkeypatch.setenv("MARKER_PORT", str(listener.getsockname()[1]))
    notes: list[str] = []
    session = _session(notes)
    try:
        info = session.load(LoadRequest(Path("weights.pth"), arch="hostile:make", shape_hint=(1, 32, 32), device="cpu"))
        assert info.num_classes == 10  # the model still loads: only what it must not do failed
    finally:
        session.close()
    shown = "\n".join(notes)
    for name in ("write", "exec", "connect", "fork", "signal"):
        assert f"ATTEMPT {name}: denied" in shown, shown
    assert list((hostile_dir / "markers").iterdir()) == []
    with pytest.raises(OSError):
        listener.accept()  # nobody connected
    listener.close()
    record = session.confinement
    assert record["worker"] and record["seccomp"] and record["landlock_abi"] >= 1 and record["no_new_privs"]


def test_a_failing_forward_is_a_clear_error_that_carries_the_workers_traceback(hostile_dir: Path) -> None:
    session = _session([])
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
    session = _session([])
    try:
        with pytest.raises(ModelError, match=r"the model's worker ran out of memory \(limit 1.5 GiB\)"):
            session.load(LoadRequest(Path("weights.pth"), arch="hostile:hog", shape_hint=(1, 32, 32), device="cpu"))
    finally:
        session.close()


def test_require_confinement_refuses_before_anything_runs(tiny: TinyReference, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LEAKAUDIT_CONFINEMENT", "off")
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(out),
                            "--require-confinement"], capsys)
    assert_error(code, err, "--require-confinement: the model cannot run confined here: confinement turned off")
    assert not out.exists()


def _audit(tiny: TinyReference, quick_config: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout",
                            str(tiny.holdout_dir), "--out", str(out), "--config", str(quick_config), "-q"], capsys)
    assert code in (0, 1), err
    return json.loads((out / "leakaudit.json").read_text())


def test_same_document_confined_and_in_process(tiny: TinyReference, quick_config: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    confined = _audit(tiny, quick_config, tmp_path / "confined", capsys)
    monkeypatch.setenv("LEAKAUDIT_CONFINEMENT", "off")
    in_process = _audit(tiny, quick_config, tmp_path / "in-process", capsys)
    assert confined["provenance"]["confinement"]["worker"] is True
    assert in_process["provenance"]["confinement"] == {"worker": False,
                                                       "reason": "confinement turned off (LEAKAUDIT_CONFINEMENT=off)"}
    unconfined_notes = [n for n in in_process["summary"]["notes"] if n.startswith("The model ran unconfined")]
    assert len(unconfined_notes) == 1
    for doc in (confined, in_process):
        doc["provenance"].pop("confinement")
        doc["summary"]["notes"] = [n for n in doc["summary"]["notes"] if n not in unconfined_notes]
    assert without_timings(confined) == without_timings(in_process)


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


def test_worker_replies_are_checked(tiny: TinyReference) -> None:
    from leakaudit.confine import results
    from leakaudit.confine.operations import ModelInfo

    info = ModelInfo((1, 32, 32), 10, "torchscript", None, None, torch.device("cpu"), ())
    with pytest.raises(results.ReplyError):
        results.logits(torch.zeros(3, 9), 3, 10)
    with pytest.raises(results.ReplyError):
        results.inversion_result({"images": torch.zeros(2, 3, 32, 32)}, info)


def test_a_membership_pass_over_many_batches_runs_confined_and_agrees(tiny: TinyReference) -> None:
    # past 16 batches the pass hands freed memory back to the system (leakaudit/runtime/memory.py): that must
    # work under the worker's confinement too (it once needed a temporary file there)
    from leakaudit.confine.operations import LOGITS_BATCH, logits
    from leakaudit.model.target import load_model

    images = torch.randint(0, 256, (17 * LOGITS_BATCH, 1, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    session = _session([], tiny.torchscript, arch=False)
    try:
        session.load(LoadRequest(tiny.torchscript))
        confined = session.logits(images)
    finally:
        session.close()
    assert torch.equal(confined, logits(load_model(tiny.torchscript), images))
