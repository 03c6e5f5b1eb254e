"""OUT/leakaudit.json and OUT/reconstructions.npz: writing them, and reading them back.

The JSON is the source of truth for every other format, and with the arrays
beside it a report can be re-rendered from the output folder alone.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leakaudit.errors import OutputError
from leakaudit.record import AuditRecord, load
from leakaudit.report.atomic import atomic_write

JSON_NAME = "leakaudit.json"
ARRAYS_NAME = "reconstructions.npz"
ARRAY_KEYS = ("images", "targets", "confidence", "finding_train_images")


# Fields that measure the run rather than the model: left out when two audits are compared.
TIMING_FIELDS = {
    "provenance": ("elapsed_s", "started_at", "command", "stage_seconds"),
    "inversion": ("seconds", "phase_seconds"),
    "power": ("seconds", "rung_seconds"),
    "membership_attacks": ("seconds_per_model",),
}


def without_timings(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` without its timings: what must be identical for the same inputs, seed and effort."""
    copy: dict[str, Any] = json.loads(json.dumps(document))
    for section, keys in TIMING_FIELDS.items():
        for key in keys:
            (copy.get(section) or {}).pop(key, None)
    return copy


def _non_finite_paths(value: Any, where: str = "") -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [where or "<root>"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite_paths(v, f"{where}/{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_finite_paths(v, f"{where}/{i}")]
    return []


def dumps(document: Mapping[str, Any]) -> str:
    """The document as JSON text; NaN or infinity is an error, never silently written."""
    bad = _non_finite_paths(document)
    if bad:
        raise OutputError(f"findings document holds non-finite numbers at {', '.join(bad[:5])}")
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_arrays(arrays: Mapping[str, np.ndarray], out_dir: str | Path) -> Path:
    """Atomically write OUT/reconstructions.npz (compressed)."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez_compressed(buffer, **named)
    return atomic_write(Path(out_dir) / ARRAYS_NAME, lambda stream: stream.write(buffer.getvalue()))


def load_document(json_path: str | Path) -> dict[str, Any]:
    """Read a findings document; a missing or malformed file is an ``OutputError``."""
    path = Path(json_path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OutputError(f"no findings document at {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise OutputError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise OutputError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(document, dict) or "findings" not in document:
        raise OutputError(f"{path} is not a leakaudit findings document")
    return document


def load_arrays(npz_path: str | Path) -> dict[str, np.ndarray]:
    """Read the arrays beside a document; pickled objects are refused."""
    path = Path(npz_path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError as exc:
        raise OutputError(f"no arrays at {path}") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OutputError(f"cannot read {path}: {exc}") from exc


def load_outputs(json_path: str | Path) -> tuple[AuditRecord, dict[str, np.ndarray]]:
    """The audit's record (its document checked and read) and, when ``reconstructions.npz`` lies beside it, its
    arrays (else ``{}``).

    Without the arrays the report is still rendered, with its images left out.
    """
    document = load(load_document(json_path))
    npz = Path(json_path).with_name(ARRAYS_NAME)
    arrays = load_arrays(npz) if npz.exists() else {}
    return document, arrays
