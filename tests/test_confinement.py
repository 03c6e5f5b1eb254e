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
# The worker's environment holds none of the test's variables: the module finds its markers next to itself.
HOSTILE_ARCH = '''
import os, socket, sys
from pathlib import Path
from tests.conftest import tiny_architecture

HERE = Path(__file__).resolve().parent
MARKERS = str(HERE / "markers")

def attempt(name, action):
    try:
        action()
        print(f"ATTEMPT {name}: allowed", file=sys.stderr, flush=True)
    except BaseException as exc:
        print(f"ATTEMPT {name}: denied ({type(exc).__name__})", file=sys.stderr, flush=True)

def write():
    with open(MARKERS + "/written", "w") as fh:
        fh.write("x")

def run_program():
    os.execv("/bin/sh", ["/bin/sh", "-c", "touch " + MARKERS + "/executed"])

def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", int((HERE / "port").read_text())))

def fork():
    pid = os.fork()
    if pid == 0:
        open(MARKERS + "/forked", "w").close()
        os._exit(0)

def signal_parent():
    os.kill(os.getppid(), 0)

def read_secret_file():
    print("SECRET FILE " + (HERE.parent / "secret.txt").read_text(), file=sys.stderr, flush=True)

def read_secret_variable():
    print("SECRET VARIABLE " + os.environ["LEAKAUDIT_TEST_SECRET"], file=sys.stderr, flush=True)

def read_parent_environment():
    print("PARENT ENVIRONMENT " + open(f"/proc/{os.getppid()}/environ", "rb").read().decode("latin-1"),
          file=sys.stderr, flush=True)

def change_mode():
    os.chmod(HERE / "weights.pth", 0o777)

def change_mode_of_open_file():
    with open(HERE / "weights.pth", "rb") as fh:
        os.fchmod(fh.fileno(), 0o777)

def change_times():
    os.utime(HERE / "weights.pth", (0, 0))

def make():
    for name, action in (("write", write), ("exec", run_program), ("connect", connect), ("fork", fork),
                         ("signal", signal_parent), ("secret-file", read_secret_file),
                         ("secret-variable", read_secret_variable), ("parent-environ", read_parent_environment),
                         ("chmod", change_mode), ("fchmod", change_mode_of_open_file), ("utime", change_times)):
        attempt(name, action)
    return tiny_architecture()

def pooled():
    """Work that starts every thread pool the worker has (OpenBLAS through numpy and scipy, torch's OpenMP), then
    the census of /proc/self/task as the model's own code sees it, and a write and a connect from a pool thread."""
    import concurrent.futures
    import numpy, scipy.linalg, torch
    torch.set_num_threads(2)
    a = numpy.random.default_rng(0).random((300, 300))
    scipy.linalg.inv(a @ a.T + numpy.eye(300))
    net = torch.nn.Sequential(*tiny_architecture())
    net(torch.rand(64, 1, 32, 32)).sum().backward()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for name, action in (("pool-write", write), ("pool-connect", connect)):
            pool.submit(attempt, name, action).result()
    for entry in sorted(os.listdir("/proc/self/task")):
        try:  # a thread of a pool may end between the listing and the read
            text = open(f"/proc/self/task/{entry}/status").read()
        except FileNotFoundError:
            continue
        status = dict(line.split(":", 1) for line in text.splitlines())
        print(f"CENSUS {entry} {status['Name'].strip()} seccomp={status['Seccomp'].strip()} "
              f"nnp={status['NoNewPrivs'].strip()}", file=sys.stderr, flush=True)
    return tiny_architecture()

def flaky():
    import torch

    class Flaky(torch.nn.Sequential):  # fails on a batch of exactly 7, which loading never sends
        def forward(self, x):
            if x.shape[0] == 7:
                raise RuntimeError("seven is not a batch size this model takes")
            return super().forward(x)

    return Flaky(*tiny_architecture())

def sleepy():
    """Slow only where the membership pass runs (no gradients, batches over 2): each batch just inside the stall
    bound."""
    import time
    import torch

    class Sleepy(torch.nn.Sequential):
        def forward(self, x):
            if not torch.is_grad_enabled() and x.shape[0] > 2:
                time.sleep(8)
            return super().forward(x)

    return Sleepy(*tiny_architecture())

def keepalive():
    """Loading that never ends but keeps telling the parent it is alive, through the worker's own channel."""
    import gc
    import time

    relay = next(o for o in gc.get_objects() if type(o).__name__ == "Relay")
    while True:
        relay.channel.send({"kind": "event", "name": "alive"})
        time.sleep(1)

def flooding():
    """A membership pass that writes a 1 GiB line to stderr, then announces a 1 GiB reply and sends it."""
    import gc
    import struct
    import torch

    class Flooding(torch.nn.Sequential):
        def forward(self, x):
            if not torch.is_grad_enabled() and x.shape[0] > 2:
                chunk = b"x" * (1 << 20)
                for _ in range(1024):
                    os.write(2, chunk)
                os.write(2, b"\\n")
                relay = next(o for o in gc.get_objects() if type(o).__name__ == "Relay")
                os.write(relay.channel.write_fd, struct.pack(">cQ", b"T", 1 << 30))
                for _ in range(1024):
                    os.write(relay.channel.write_fd, chunk)
            return super().forward(x)

    return Flooding(*tiny_architecture())

def hog():
    import torch
    torch.ones(2 << 30, dtype=torch.uint8)  # 2 GiB, over the test's limit
    return tiny_architecture()
'''


def _session(notes: list[str], model: Path = Path("weights.pth"), arch: bool = True,
             budget_s: float | None = None) -> ConfinedSession:
    return ConfinedSession(sandbox.readable_paths(model.resolve(), None, arch), budget_s=budget_s, seed=0,
                           threads=1, on_note=notes.append)


@pytest.fixture
def hostile_dir(tiny: TinyReference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the hostile --arch module, the tiny weights, and a folder for markers."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "hostile.py").write_text(HOSTILE_ARCH)
    (work / "weights.pth").write_bytes(tiny.state_dict.read_bytes())
    (work / "markers").mkdir()
    (tmp_path / "secret.txt").write_text("the-secret-in-a-file")
    monkeypatch.setenv("LEAKAUDIT_TEST_SECRET", "the-secret-in-the-environment")
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent.parent), str(work)]))
    return work


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
    session = _session(notes)
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
    session = _session(notes)
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


@pytest.mark.slow
def test_a_membership_pass_slow_batch_by_batch_ends_at_the_budget(hostile_dir: Path) -> None:
    started = time.monotonic()
    session = _session([], budget_s=20)
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
    session = _session([], budget_s=20)
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


@pytest.mark.slow
def test_a_hostile_workers_output_leaves_the_parents_memory_bounded(hostile_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", HOSTILE_WORKER_PEAK], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:5] in ("ERROR", "PEAK "))
    assert "is over the limit" in lines.get("ERROR", ""), proc.stdout + proc.stderr  # refused from its header
    assert int(lines["PEAK"]) < 2 << 30, lines  # a 1 GiB line and a 1 GiB reply, read or refused in bounded memory


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
                            str(tiny.holdout_dir), "--out", str(out), "--config", str(quick_config),
                            "--reference-models", "2", "-q"], capsys)
    assert code in (0, 1), err
    return json.loads((out / "leakaudit.json").read_text())


def _membership_rows(document: dict) -> list[tuple[str, int, float, list[float]]]:
    return [(a["attack"], a["reference_models"], a["auc"], [r["tpr"] for r in a["tpr_at_fpr"]])
            for a in document["membership_attacks"]["attacks"]]


@pytest.mark.slow
def test_same_document_confined_and_in_process(tiny: TinyReference, quick_config: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The same audit, reference models (R = 2) included, confined and in-process on one thread each."""
    monkeypatch.setenv("LEAKAUDIT_THREADS", "1")
    confined = _audit(tiny, quick_config, tmp_path / "confined", capsys)
    monkeypatch.setenv("LEAKAUDIT_CONFINEMENT", "off")
    in_process = _audit(tiny, quick_config, tmp_path / "in-process", capsys)
    assert confined["provenance"]["confinement"]["worker"] is True
    assert in_process["provenance"]["confinement"] == {"worker": False,
                                                       "reason": "confinement turned off (LEAKAUDIT_CONFINEMENT=off)"}
    here, there = _membership_rows(in_process), _membership_rows(confined)
    assert [r[:2] for r in there] == [r[:2] for r in here] and [r[1] for r in here] == [0, 2, 2, 2]
    for (_, _, auc_there, tpr_there), (_, _, auc_here, tpr_here) in zip(there, here):
        assert auc_there == pytest.approx(auc_here, abs=1e-9) and tpr_there == pytest.approx(tpr_here, abs=1e-9)
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
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the session's thread count: float sums agree only at the same one
    try:
        in_process = logits(load_model(tiny.torchscript), images)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(confined, in_process)
