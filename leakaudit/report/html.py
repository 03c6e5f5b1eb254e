"""The HTML report: one self-contained file, no JavaScript, every user string escaped.

Every ``{{ }}`` passes ``_control_free`` (the environment's ``finalize``) and then HTML escaping, so no raw
control character from a folder or file name reaches the page.

Templates come from the ``leakaudit.templates`` resource package (the repository's
top-level ``templates/`` folder, shipped inside the wheel); when the package is
run from a checkout without being installed, from that folder directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from leakaudit.record import AuditRecord, as_record
from leakaudit.report import view
from leakaudit.report.membership_view import membership_view
from leakaudit.report.images import ImageRenderer, Redaction, ssim_distribution_svg
from leakaudit.report.summary import SYMBOLS, Readable, format_p, summarise, tidy_numbers
from leakaudit.sanitize import document_text

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

VERDICT_WORDS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "incomplete": "INCOMPLETE"}
STATUS_SYMBOLS = SYMBOLS


def _resource_loader() -> jinja2.BaseLoader:
    """Templates from the installed package, or from the checkout's templates/ folder."""
    try:
        root = resources.files("leakaudit.templates")
        if root.joinpath(TEMPLATE).is_file():

            def load(name: str) -> str | None:
                if not _SAFE_NAME.match(name):
                    return None
                entry = root.joinpath(name)
                return entry.read_text(encoding="utf-8") if entry.is_file() else None

            return jinja2.FunctionLoader(load)
    except ModuleNotFoundError:
        pass
    return jinja2.FileSystemLoader(Path(__file__).resolve().parents[2] / "templates")


def _control_free(value: Any) -> Any:
    """What a ``{{ }}`` prints, with control characters shown as escapes (before autoescaping; Markup stays Markup)."""
    if isinstance(value, Markup):
        return Markup(document_text(str(value)))
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return document_text(value)  # any other object prints as its str()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=_resource_loader(),
        autoescape=True,  # every {{ }} is HTML-escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_control_free,  # every {{ }}: no raw control character reaches the page
    )
    env.filters["num"] = view.num
    env.filters["p"] = format_p
    env.filters["tidy"] = tidy_numbers
    env.filters["symbol"] = lambda status: STATUS_SYMBOLS.get(str(status), "")
    return env


def _banner(include_images: bool, redact: Redaction, have_arrays: bool) -> tuple[str, str]:
    if not include_images:
        return "omitted", "Images are left out of this report (no training images or reconstructions are shown)."
    if not have_arrays:
        return "omitted", "No images: reconstructions.npz was not found beside the findings document."
    if redact == "blur":
        return "blurred", "This report contains training images, blurred (--redact blur). Handle it as sensitive."
    return "contains", "This report contains training images. Handle and share it like the training data itself."


def _plot(record: AuditRecord) -> Markup | None:
    summary, thresholds = record.summary, record.thresholds
    histogram = summary.histogram
    if not histogram or not histogram.get("bins"):
        return None
    q = thresholds.holdout_quantile
    prototype = summary.prototype_train_mean
    markers: Sequence[tuple[str, float | None, str]] = (
        ("fail", thresholds.fail_ssim, ""),
        ("warn", thresholds.warn_ssim, "6 4"),
        (f"holdout q{q:g}", record.holdout_reference, "2 3"),
        ("class mean", prototype, "10 3 2 3"),
    )
    # the SVG holds numbers and fixed labels only, never a user string
    return Markup(ssim_distribution_svg(histogram, markers))


def _lpips_reason(record: AuditRecord) -> str | None:
    return None if record.lpips_available else record.lpips_reason


def report_context(
    readable: Readable,
    arrays: Mapping[str, np.ndarray],
    *,
    redact: Redaction = "none",
    include_images: bool = True,
) -> dict[str, Any]:
    """Everything the template needs, with images already turned into data URIs.

    The template lays out the record (``doc``, ``summary``); every choice is made in ``view``.
    """
    record = as_record(readable)
    images = ImageRenderer(redact=redact, include=include_images and bool(arrays))
    plain = summarise(record)
    banner_kind, banner_text = _banner(include_images, redact, bool(arrays))
    rows = view.finding_rows(record, arrays, images)
    return {
        "doc": record,
        "summary": record.summary,
        "verdict": {"key": plain.verdict, "symbol": SYMBOLS.get(plain.verdict, ""),
                    "word": VERDICT_WORDS.get(plain.verdict, plain.verdict.upper()), "plain": plain},
        "banner": {"kind": banner_kind, "text": banner_text, "npz": bool(arrays)},
        "images": images.include,
        "rows": rows,
        "top": view.top_leaked(record, rows, arrays, images),
        "leak": view.leak_facts(record),
        "galleries": view.galleries(record, arrays, images),
        "power": view.power_view(record, arrays, images),
        "membership": membership_view(record, arrays, images),
        "plot": _plot(record),
        "notes": view.notes(record),
        "lpips_reason": _lpips_reason(record),
        "diff_scale": view.diff_scale(),
        "reference": record.holdout_reference,
    }


def render_html(
    readable: Readable,
    arrays: Mapping[str, np.ndarray],
    *,
    redact: Redaction = "none",
    include_images: bool = True,
) -> str:
    """The complete report page as a string."""
    env = _environment()
    context = report_context(readable, arrays, redact=redact, include_images=include_images)
    assert env.loader is not None
    context["css"] = Markup(env.loader.get_source(env, STYLESHEET)[0])  # our own stylesheet, inlined
    return env.get_template(TEMPLATE).render(**context)
