"""The HTML report: one self-contained file, no JavaScript, every user string escaped.

Templates come from the ``leakaudit.templates`` resource package (the repository's
top-level ``templates/`` folder, shipped inside the wheel); when the package is
run from a checkout without being installed, from that folder directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from dataclasses import replace
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from leakaudit.report.images import ImageRenderer, Redaction, ssim_distribution_svg

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"
GALLERY_PER_CLASS = 12
GALLERY_MAX_CLASSES = 40
GALLERY_THUMB_SIDE = 64
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

VERDICTS = {
    "pass": ("✔", "PASS", "The gate passed: no condition failed and nothing needs a look."),
    "warn": ("⚠", "WARN", "The gate passed with warnings: look at the flagged samples below."),
    "fail": ("✖", "FAIL", "The gate failed: at least one condition below failed."),
    "incomplete": ("◌", "INCOMPLETE", "The attack did not finish within the budget and found nothing that fails: "
                                      "an unfinished attack cannot pass."),
}
STATUS_SYMBOLS = {"pass": "✔", "ok": "✔", "warn": "⚠", "fail": "✖", "skipped": "–", "ignored": "⊘"}


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


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=_resource_loader(),
        autoescape=True,  # every {{ }} is HTML-escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["symbol"] = lambda status: STATUS_SYMBOLS.get(str(status), "")
    return env


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def _pick(array: np.ndarray | None, index: int) -> np.ndarray | None:
    if array is None or not (0 <= index < len(array)):
        return None
    return array[index]


def _finding_rows(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> list[dict]:
    recon, train = arrays.get("images"), arrays.get("finding_train_images")
    rows = []
    for k, finding in enumerate(document.get("findings") or []):
        r, t = _pick(recon, int(finding["reconstruction_index"])), _pick(train, k)
        rows.append(
            {
                "f": finding,
                "recon": images.uri(r),
                "train": images.uri(t),
                "diff": images.diff_uri(r, t),
                "lpips": _num(finding.get("lpips")) if finding.get("lpips") is not None else "unavailable",
            }
        )
    return rows


def _galleries(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> list[dict]:
    gallery = (document.get("inversion") or {}).get("gallery")
    recon = arrays.get("images")
    if not gallery or recon is None or not images.include:
        return []
    names = {int(c["class_index"]): c["class"] for c in document["summary"].get("per_class") or []}
    small = replace(images, max_side=GALLERY_THUMB_SIDE)  # galleries grow with the class count: keep them light
    out = []
    for key in sorted(gallery, key=int)[:GALLERY_MAX_CLASSES]:
        uris = [small.uri(_pick(recon, int(i))) for i in gallery[key][:GALLERY_PER_CLASS]]
        out.append({"class_index": int(key), "name": names.get(int(key), str(key)), "images": [u for u in uris if u]})
    return out


def _banner(include_images: bool, redact: Redaction, have_arrays: bool) -> tuple[str, str]:
    if not include_images:
        return "omitted", "Images are left out of this report (no training images or reconstructions are shown)."
    if not have_arrays:
        return "omitted", "No images: reconstructions.npz was not found beside the findings document."
    if redact == "blur":
        return "blurred", "This report contains training images, blurred (--redact blur). Handle it as sensitive."
    return "contains", "This report contains training images. Handle and share it like the training data itself."


def _plot(document: Mapping[str, Any]) -> Markup | None:
    summary, thresholds = document["summary"], document.get("thresholds") or {}
    histogram = summary.get("histogram")
    if not histogram or not histogram.get("bins"):
        return None
    q = thresholds.get("holdout_quantile", 0.99)
    markers: Sequence[tuple[str, float | None, str]] = (
        ("fail_ssim", thresholds.get("fail_ssim"), ""),
        ("warn_ssim", thresholds.get("warn_ssim"), "6 4"),
        (f"holdout q{q:g}", summary.get("holdout_ssim_p99") if abs(q - 0.99) < 1e-9 else None, "2 3"),
    )
    # the SVG holds numbers and fixed labels only, never a user string
    return Markup(ssim_distribution_svg(histogram, markers))


def report_context(
    document: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    redact: Redaction = "none",
    include_images: bool = True,
) -> dict[str, Any]:
    """Everything the template needs, with images already turned into data URIs."""
    images = ImageRenderer(redact=redact, include=include_images and bool(arrays))
    verdict = document.get("verdict", "fail")
    symbol, word, sentence = VERDICTS.get(verdict, VERDICTS["fail"])
    banner_kind, banner_text = _banner(include_images, redact, bool(arrays))
    summary = document["summary"]
    lpips_info = document["metrics"].get("lpips") or {}
    lpips_reason = None if lpips_info.get("available") else str(lpips_info.get("reason") or "no reason given")
    notes = list(summary.get("notes") or []) + list((document.get("inversion") or {}).get("notes") or [])
    return {
        "doc": document,
        "summary": summary,
        "verdict": {"key": verdict, "symbol": symbol, "word": word, "sentence": sentence},
        "banner": {"kind": banner_kind, "text": banner_text, "npz": bool(arrays)},
        "rows": _finding_rows(document, arrays, images),
        "galleries": _galleries(document, arrays, images),
        "galleries_total": len((document.get("inversion") or {}).get("gallery") or {}),
        "plot": _plot(document),
        "notes": notes,
        "lpips_reason": lpips_reason,
    }


def render_html(
    document: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    redact: Redaction = "none",
    include_images: bool = True,
) -> str:
    """The complete report page as a string."""
    env = _environment()
    context = report_context(document, arrays, redact=redact, include_images=include_images)
    assert env.loader is not None
    context["css"] = Markup(env.loader.get_source(env, STYLESHEET)[0])  # our own stylesheet, inlined
    return env.get_template(TEMPLATE).render(**context)
