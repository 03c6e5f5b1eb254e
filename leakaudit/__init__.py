"""leakaudit: audit an image classifier's weights for training-data leakage.

``leakaudit.audit(model, train, holdout)`` is the one call a Python user
needs; it returns an ``AuditReport``. The names are imported on first use,
so ``import leakaudit`` (and the CLI's ``--help``) stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leakaudit.version import __version__

__all__ = ["AuditReport", "Finding", "LeakScore", "Membership", "ProgressEvent", "__version__", "audit", "errors"]

_LAZY = {"audit": "leakaudit.api", "ProgressEvent": "leakaudit.api", "AuditReport": "leakaudit.results",
         "Finding": "leakaudit.results", "LeakScore": "leakaudit.results", "Membership": "leakaudit.results"}

if TYPE_CHECKING:
    from leakaudit import errors
    from leakaudit.api import ProgressEvent, audit
    from leakaudit.results import AuditReport, Finding, LeakScore, Membership


def __getattr__(name: str) -> Any:
    if name == "errors":
        import importlib

        return importlib.import_module("leakaudit.errors")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'leakaudit' has no attribute {name!r}")

