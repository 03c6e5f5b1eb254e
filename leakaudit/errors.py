"""Every failure a user can cause, as one small hierarchy.

The library raises these; only the CLI turns them into one line on stderr and
exit code 2. Anything else escaping the library is a bug (also exit 2, with a
hint to re-run with ``--debug``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known key, or '': every "unknown key" message offers it."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class LeakAuditError(Exception):
    """Base class: a problem the user can fix, reported as one clear line."""


class UsageError(LeakAuditError):
    """Flags or arguments that contradict each other or are out of range."""


class ConfigError(LeakAuditError):
    """A configuration file that cannot be read or holds invalid values."""


class ModelError(LeakAuditError):
    """A model file that cannot be loaded safely or does not fit the data."""


class BudgetCeiling(ModelError):
    """The model's worker ran past the ceiling ``--budget`` sets on one of its operations, and was ended."""


class UnsafeModelError(ModelError):
    """A model file that would run code when loaded (a pickled module)."""


class DataError(LeakAuditError):
    """An image folder that is missing, empty, unreadable or inconsistent."""


class OutputError(LeakAuditError):
    """An output folder or file that cannot be written."""


class AuditInterrupted(LeakAuditError):
    """The audit was stopped by SIGINT/SIGTERM; partial state is checkpointed."""
