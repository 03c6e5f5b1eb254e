"""The hostile --arch module the confinement tests run in the worker: each function tries what a hostile model would."""

from __future__ import annotations


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
