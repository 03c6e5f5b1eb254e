"""Start one audit on several processes under torch's elastic agent, keeping leakaudit's exit codes.

Imported only by the CLI: ``torchrun`` exits 1 for any failed worker, so a
crashed rank and a failed gate would look alike; ``launch`` maps the workers'
codes back (0 passed, 1 gate failed, 2 error naming the rank, 130 interrupted).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args
from torch.distributed.run import run as elastic_run

from leakaudit.runtime.distributed import DistributedError, PeerLostError
from leakaudit.errors import AuditInterrupted

_ROLE_KEY = "leakaudit_role"  # in the error file's extraInfo: "cause" or "consequence"


def record_failure(exc: BaseException) -> None:
    """Leave this rank's failure where torch's elastic agent reads it (``TORCHELASTIC_ERROR_FILE``).

    torchrun then shows the message in its failure summary, and ``launch``
    can tell the rank that failed first (a cause) from ranks that only lost
    their peers (consequences) even when all exit within the same second.
    Does nothing outside torchrun.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    # Lost peers and stops (torchrun stops the survivors of a failure) are consequences.
    role = "consequence" if isinstance(exc, (PeerLostError, AuditInterrupted)) else "cause"
    data = {"message": {"message": str(exc) or type(exc).__name__, "extraInfo": {
        "py_callstack": "".join(traceback.format_exception(exc)), "timestamp": str(int(time.time())), _ROLE_KEY: role,
    }}}
    with contextlib.suppress(OSError):
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(data, fp)

@dataclass(frozen=True)
class LaunchOutcome:
    """What a distributed run came to: leakaudit's exit code and, on failure, which rank failed first."""

    exit_code: int
    failed_rank: int | None = None
    message: str | None = None
    exit_codes: dict[int, int] = field(default_factory=dict)  # failed ranks' own exit codes


def split_launch_args(argv: Sequence[str], command: str = "run") -> tuple[list[str], list[str]]:
    """``[torchrun options…, "run", run options…]`` → (torchrun options, leakaudit arguments)."""
    args = list(argv)
    if command not in args:
        raise DistributedError(f"expected torchrun options, then `{command}` and its arguments")
    i = args.index(command)
    return args[:i], args[i:]


def launch(torchrun_args: Sequence[str], program_args: Sequence[str], module: str = "leakaudit") -> LaunchOutcome:
    """Run ``python -m module program_args…`` on every rank under torch's elastic agent (what torchrun runs).

    ``torchrun`` exits 1 whenever a worker exits non-zero, which would make a
    crashed rank look like a failed gate; here the workers' codes are mapped
    back: 0 passed, 1 gate failed (rank 0 alone exits 1), 130 interrupted,
    anything else — an error, a signal, a lost peer — is 2 with the rank that
    failed first.
    """
    try:
        # torch.distributed.run leaves parse_args and run unannotated
        args = parse_args([*torchrun_args, "--module", module, *program_args])  # type: ignore[no-untyped-call]
    except SystemExit as exc:  # argparse: bad torchrun options
        raise DistributedError(f"invalid torchrun options: {' '.join(torchrun_args)}") from exc
    try:
        elastic_run(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as exc:
        return _outcome_of(exc)
    return LaunchOutcome(exit_code=0)


def _outcome_of(exc: Any) -> LaunchOutcome:
    failures = dict(exc.failures)
    codes = {int(rank): int(f.exitcode) for rank, f in failures.items()}
    if set(codes) == {0} and codes[0] in (1, 130):  # rank 0's verdict, or a stop seen by rank 0 alone
        return LaunchOutcome(exit_code=codes[0], exit_codes=codes)
    if all(code in (130, -signal.SIGINT) for code in codes.values()):  # Ctrl-C reaches every rank
        return LaunchOutcome(exit_code=130, exit_codes=codes)
    real = {r: f for r, f in failures.items() if not (r == 0 and f.exitcode in (1, 130))} or failures
    rank, failure = min(real.items(), key=lambda item: (_cause_order(item[1]), item[1].timestamp, item[0]))
    code = int(failure.exitcode)
    if isinstance(failure.message, dict) and failure.message.get("extraInfo", {}).get(_ROLE_KEY) == "cause":
        # The rank's own error is the story. The agent stops every rank once one has exited, so a rank still
        # on its way out after reporting (leaving the group, closing its model worker) may be the one it
        # terminates: that SIGTERM says nothing about the failure, any other end of the process does.
        how = f"failed: {failure.message.get('message')}"
        if code < 0 and code != -signal.SIGTERM:
            how += f" (then its process {_exit_description(code)})"
    else:
        how = _exit_description(code)
    others = ", ".join(str(r) for r in sorted(codes) if r != rank)
    message = (f"rank {rank} (local rank {failure.local_rank}) {how}; the run was stopped and no report was written"
               + (f" (other failed ranks: {others})" if len(codes) > 1 else ""))
    return LaunchOutcome(exit_code=2, failed_rank=int(rank), message=message, exit_codes=codes)


def _exit_description(code: int) -> str:
    """``exited with code 2``, ``was killed by SIGKILL``: how a worker process ended."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _cause_order(failure: Any) -> int:
    """Which failure is the root cause: recorded causes, then unrecorded crashes, then the agent's stops,
    then ranks that only lost their peers. (Timestamps have one-second resolution: not enough.)"""
    info = failure.message.get("extraInfo", {}) if isinstance(failure.message, dict) else {}
    role = info.get(_ROLE_KEY)
    if role == "cause":
        return 0
    if role == "consequence":
        return 3
    return 2 if failure.exitcode == -signal.SIGTERM else 1
