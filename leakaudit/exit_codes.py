"""Process exit codes: the CI gate contract."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """What ``leakaudit`` returns to the shell.

    ``GATE_FAILED`` is reserved for the gate: no option can turn an error into
    a pass, and no error is ever reported as 0 or 1. An attack that did not
    finish (the budget ceiling cut it short) and found nothing that fails is
    ``INCOMPLETE``, the same code as an error: it proves nothing either way.
    """

    PASSED = 0
    GATE_FAILED = 1
    ERROR = 2
    INCOMPLETE = 2
    INTERRUPTED = 130
