"""The confined worker: the model's code cannot write, exec, connect, fork, signal or read secrets, from any thread."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from leakaudit.confine.operations import LoadRequest

from .conftest import NEEDS_CONFINEMENT, TinyReference, assert_error, confined_session, run_cli

pytestmark = NEEDS_CONFINEMENT


def _listening(hostile_dir: Path) -> socket.socket:
    """A socket on 127.0.0.1 whose port the hostile model reads: a connection to it is an escape."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    (hostile_dir / "port").write_text(str(listener.getsockname()[1]))
    return listener


def test_model_code_cannot_write_exec_connect_fork_or_signal(hostile_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    listener = _listening(hostile_dir)
    notes: list[str] = []
    session = confined_session(notes)
    try:
        info = session.load(LoadRequest(Path("weights.pth"), arch="hostile:make", shape_hint=(1, 32, 32), device="cpu"))
        assert info.num_classes == 10  # the model still loads: only what it must not do failed
    finally:
        session.close()
    shown = "\n".join(notes)
    for name in ("write", "exec", "connect", "fork", "signal", "secret-file", "parent-environ", "chmod", "fchmod",
                 "utime"):
        assert f"ATTEMPT {name}: denied (PermissionError)" in shown, shown
    assert "ATTEMPT secret-variable: denied (KeyError)" in shown, shown  # the variable is not in its environment
    assert "the-secret" not in shown
    assert list((hostile_dir / "markers").iterdir()) == []
    weights = (hostile_dir / "weights.pth").stat()
    assert weights.st_mode & 0o777 != 0o777 and weights.st_mtime > 0
    with pytest.raises(OSError):
        listener.accept()  # nobody connected
    listener.close()
    record = session.confinement
    assert record["worker"] and record["seccomp"] and record["landlock_abi"] >= 1 and record["no_new_privs"]


def test_every_thread_of_a_real_worker_is_confined_after_numpy_scipy_and_torch_ran(hostile_dir: Path) -> None:
    listener = _listening(hostile_dir)
    notes: list[str] = []
    session = confined_session(notes)
    try:
        session.load(LoadRequest(Path("weights.pth"), arch="hostile:pooled", shape_hint=(1, 32, 32), device="cpu"))
    finally:
        session.close()
    census = [n.split()[1:] for n in notes if n.startswith("model: CENSUS ")]
    assert len(census) >= 3, notes  # the main thread and the pools numpy, scipy and torch started
    assert all(row[-2:] == ["seccomp=2", "nnp=1"] for row in census), census
    shown = "\n".join(notes)
    assert "ATTEMPT pool-write: denied (PermissionError)" in shown and "ATTEMPT pool-connect: denied" in shown, shown
    assert list((hostile_dir / "markers").iterdir()) == []
    with pytest.raises(OSError):
        listener.accept()
    listener.close()
    assert session.confinement["every_thread_confined"] is True
    assert session.census and all(t["seccomp"] == 2 and t["no_new_privs"] == 1 for t in session.census)


WITHOUT_CAPABILITIES = '''
import sys, torch
from pathlib import Path
from leakaudit.confine import sandbox
from leakaudit.confine.operations import LoadRequest
from leakaudit.confine.session import ConfinedSession

torch.set_num_threads(1)
notes = []
session = ConfinedSession(sandbox.readable_paths(Path("weights.pth").resolve(), None, True), budget_s=None, seed=0,
                          threads=1, on_note=notes.append)
try:
    session.load(LoadRequest(Path("weights.pth"), arch="hostile:make", shape_hint=(1, 32, 32), device="cpu"))
finally:
    session.close()
print("\\n".join(notes))
print("CAPABILITIES", open("/proc/self/status").read().split("CapEff:")[1].split()[0])
'''


@pytest.mark.skipif(not Path("/usr/bin/setpriv").exists(), reason="setpriv (util-linux) is not installed")
def test_the_confinement_holds_for_a_user_without_capabilities(hostile_dir: Path) -> None:
    # the audit usually runs unprivileged: seccomp and Landlock must not rely on the root this suite may run as
    (hostile_dir / "port").write_text("9")  # nothing listens: only the refusal is checked here
    proc = subprocess.run(["/usr/bin/setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c",
                           WITHOUT_CAPABILITIES], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "CAPABILITIES 0000000000000000" in proc.stdout, proc.stdout + proc.stderr
    for name in ("write", "exec", "connect", "fork", "signal", "secret-file", "parent-environ", "chmod", "fchmod",
                 "utime"):
        assert f"ATTEMPT {name}: denied (PermissionError)" in proc.stdout, proc.stdout + proc.stderr
    assert list((hostile_dir / "markers").iterdir()) == []


# A thread started before the confinement runs code for whoever hands it a callback (a BLAS pool's exec_blas did):
# here a plain thread waits for work, the main thread confines itself, then hands the thread a write and a connect.
EARLY_THREAD = '''
import os, socket, sys, threading
from pathlib import Path
from leakaudit.confine import census, landlock, sandbox, seccomp

markers, port, how = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
work, done = threading.Event(), threading.Event()
outcome = {}

def pool_thread():
    work.wait()
    for name, action in (("write", lambda: (markers / "written").write_text("x")),
                         ("connect", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))):
        try:
            action()
            outcome[name] = "allowed"
        except OSError as exc:
            outcome[name] = f"denied ({type(exc).__name__})"
    done.set()

threading.Thread(target=pool_thread).start()
readable = sandbox.python_paths() + [Path(p) for p in sandbox.SYSTEM_READABLE]
if how == "main-thread-only":  # what the worker once did: each step acts on the calling thread
    seccomp.no_new_privs()
    landlock.restrict(readable)
    code, count, _ = seccomp.program(seccomp.supported_machine(), os.getpid())
    buffer = seccomp.ctypes.create_string_buffer(code, len(code))
    prog = seccomp._SockFprog(count, seccomp.ctypes.cast(buffer, seccomp.ctypes.c_void_p))
    assert seccomp.ctypes.CDLL(None).prctl(seccomp.PR_SET_SECCOMP, seccomp.SECCOMP_MODE_FILTER,
                                          seccomp.ctypes.byref(prog), 0, 0) == 0
else:
    try:
        sandbox.confine_process(readable, None, False)
    except census.CensusError as exc:
        print("REFUSED", exc)
work.set()
done.wait()
print("OUTCOME", outcome)
'''


@pytest.mark.parametrize("how", ["main-thread-only", "worker"])
def test_a_thread_started_before_the_confinement_escapes_it_unless_the_worker_refuses(how: str, tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = subprocess.run([sys.executable, "-c", EARLY_THREAD, str(markers), str(listener.getsockname()[1]), how],
                          capture_output=True, text=True, timeout=120)
    assert "OUTCOME" in proc.stdout, proc.stderr
    if how == "main-thread-only":  # the payload is live: the early thread wrote and connected
        assert "'write': 'allowed'" in proc.stdout and "'connect': 'allowed'" in proc.stdout, proc.stdout
        assert (markers / "written").exists()
        listener.accept()[0].close()
    else:  # the worker's first step refuses to confine itself beside another thread: nothing is loaded after it
        assert "REFUSED the worker had 2 threads before confining itself (it needs one)" in proc.stdout, proc.stdout
    listener.close()


def test_require_confinement_refuses_before_anything_runs(tiny: TinyReference, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LEAKAUDIT_CONFINEMENT", "off")
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--out", str(out),
                            "--require-confinement"], capsys)
    assert_error(code, err, "--require-confinement: the model cannot run confined here: confinement turned off")
    assert not out.exists()
