"""Report writers: JSON (the source of truth), HTML, JUnit XML and Markdown.

Each format is one module with a pure ``render_*``/``dumps`` function; this
module writes them atomically into the output folder. Nothing here prints:
warnings (e.g. a very large HTML file) come back to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leakaudit.record import as_record, dump
from leakaudit.report.atomic import atomic_write_text
from leakaudit.report.html import render_html
from leakaudit.report.images import Redaction
from leakaudit.report.json_format import (
    ARRAYS_NAME,
    JSON_NAME,
    dumps,
    load_outputs,
    write_arrays,
)
from leakaudit.report.junit import render_junit
from leakaudit.report.markdown import render_markdown
from leakaudit.report.summary import Readable

HTML_NAME = "report.html"
DEFAULT_SIZE_WARN_BYTES = 20_000_000

__all__ = [
    "ARRAYS_NAME",
    "HTML_NAME",
    "JSON_NAME",
    "WrittenOutputs",
    "dumps",
    "load_outputs",
    "render_html",
    "render_report_file",
    "render_junit",
    "render_markdown",
    "write_outputs",
]


@dataclass(frozen=True)
class WrittenOutputs:
    """What ``write_outputs`` wrote, the HTML size, and warnings for the caller to show."""

    paths: tuple[Path, ...]
    html_path: Path
    html_bytes: int
    warnings: tuple[str, ...]
    stopped: bool = False  # should_stop said so before every file was written: ``paths`` is what was


def _size_warnings(path: Path, size: int, limit: int) -> list[str]:
    if size <= limit:
        return []
    return [
        f"{path} is {size / 1e6:.1f} MB (above {limit / 1e6:.0f} MB); "
        "show fewer findings (--top) or leave images out (--no-images)."
    ]


def render_report_file(
    readable: Readable,
    arrays: Mapping[str, np.ndarray],
    target: str | Path,
    *,
    redact: Redaction = "none",
    include_images: bool = True,
    size_warn_bytes: int = DEFAULT_SIZE_WARN_BYTES,
) -> tuple[Path, list[str]]:
    """Re-render only the HTML report (``leakaudit report``): the written path and any warnings."""
    path = atomic_write_text(target, render_html(readable, arrays, redact=redact, include_images=include_images))
    return path, _size_warnings(path, path.stat().st_size, size_warn_bytes)


def write_outputs(
    readable: Readable,
    arrays: Mapping[str, np.ndarray],
    out_dir: str | Path,
    *,
    redact: Redaction = "none",
    include_images: bool = True,
    junit_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    size_warn_bytes: int = DEFAULT_SIZE_WARN_BYTES,
    write_array_file: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> WrittenOutputs:
    """Write arrays, leakaudit.json, report.html and the optional JUnit/Markdown files of a record, each atomically.

    Everything is rendered before anything is written, so a rendering error
    leaves the folder as it was. ``write_array_file=False`` keeps an existing
    reconstructions.npz (re-rendering with ``leakaudit report``).
    ``should_stop`` is asked before each file: once it says stop (a signal),
    no further file is started, and ``stopped`` says the set is partial.
    """
    out = Path(out_dir)
    record = as_record(readable)
    json_text = dumps(dump(record))
    html_text = render_html(record, arrays, redact=redact, include_images=include_images)
    junit_text = render_junit(record) if junit_path is not None else None
    markdown_text = render_markdown(record) if markdown_path is not None else None

    stop = should_stop or (lambda: False)
    jobs: list[tuple[Path, Callable[[], Path]]] = []
    if write_array_file and arrays:
        jobs.append((out / ARRAYS_NAME, lambda: write_arrays(arrays, out)))
    jobs.append((out / JSON_NAME, lambda: atomic_write_text(out / JSON_NAME, json_text)))
    jobs.append((out / HTML_NAME, lambda: atomic_write_text(out / HTML_NAME, html_text)))
    if junit_text is not None and junit_path is not None:
        jobs.append((Path(junit_path), lambda: atomic_write_text(junit_path, junit_text)))
    if markdown_text is not None and markdown_path is not None:
        jobs.append((Path(markdown_path), lambda: atomic_write_text(markdown_path, markdown_text)))
    paths: list[Path] = []
    for _, write in jobs:
        if stop():
            return WrittenOutputs(tuple(paths), out / HTML_NAME, 0, (), stopped=True)
        paths.append(write())

    html_path = out / HTML_NAME
    html_bytes = html_path.stat().st_size
    warnings = _size_warnings(html_path, html_bytes, size_warn_bytes)
    return WrittenOutputs(tuple(paths), html_path, html_bytes, tuple(warnings))
