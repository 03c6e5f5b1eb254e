"""The findings document's JSON Schema, shipped inside the package.

Validation needs ``jsonschema`` (a test dependency); at runtime it is optional,
so ``validate`` raises ``ModuleNotFoundError`` only when asked to validate.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from leakaudit.errors import OutputError

SCHEMA_RESOURCE = ("leakaudit", "schema/leakaudit.schema.json")


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The draft 2020-12 schema of ``leakaudit.json``."""
    package, name = SCHEMA_RESOURCE
    text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(document: Any) -> list[str]:
    """Every schema violation of ``document`` as 'path: message' lines (empty when valid)."""
    import jsonschema  # a test extra, not a dependency: only validation needs it

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def validate(document: Any) -> None:
    """Raise ``leakaudit.errors.OutputError`` listing every violation, if any."""
    problems = schema_errors(document)
    if problems:
        raise OutputError("findings document does not match its schema: " + "; ".join(problems))
