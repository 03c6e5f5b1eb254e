"""Every scenario's gated document and its renderings, written to a folder: diff two checkouts' folders.

    python -m tests.golden_outputs OUT [DOCUMENT.json]

For each scenario (leaky, clean, uncalibrated, three per class, require_power; each also re-gated against
itself as a baseline) it writes the JSON document, the HTML report (with and without images), Markdown, JUnit
and the terminal summary. DOCUMENT.json (an audit's ``leakaudit.json``, with ``reconstructions.npz`` beside it)
is rendered the same way. Run it from two checkouts into two folders (copy this file into the older one) and
``cmp`` the files: the renderings of the same documents must be byte-identical.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leakaudit.cli.console import summary_lines
from leakaudit.gate.settings import GateSettings
from leakaudit.gate.verdict import apply_gate
from leakaudit.report import dumps, render_html, render_junit, render_markdown
from leakaudit.report.json_format import load_outputs
from tests.scenarios import TODAY, gated

try:
    from leakaudit.record import dump
except ModuleNotFoundError:  # a checkout from before the audit record: documents are plain dicts there
    dump = None  # type: ignore[assignment]

VARIANTS: dict[str, dict[str, Any]] = {
    "leaky": {"leaky": True}, "clean": {"leaky": False}, "uncal-leaky": {"leaky": True, "calibrated": False},
    "uncal-clean": {"leaky": False, "calibrated": False}, "leaky-3": {"leaky": True, "train_per_class": 3, "seed": 1},
    "req-power": {"leaky": False, "settings": GateSettings(require_power=True)},
}


def render(out: Path, name: str, document: Any, arrays: dict[str, np.ndarray]) -> None:
    as_dict = document if isinstance(document, dict) else dump(document)
    (out / f"{name}.json").write_text(dumps(as_dict), encoding="utf-8")
    (out / f"{name}.html").write_text(render_html(document, arrays), encoding="utf-8")
    (out / f"{name}.noimg.html").write_text(render_html(document, arrays, include_images=False), encoding="utf-8")
    (out / f"{name}.md").write_text(render_markdown(document), encoding="utf-8")
    (out / f"{name}.xml").write_text(render_junit(document), encoding="utf-8")
    (out / f"{name}.console").write_text("\n".join(summary_lines(as_dict, [Path("x/leakaudit.json")])),
                                         encoding="utf-8")


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, kwargs in VARIANTS.items():
        document, arrays = gated(**kwargs)
        render(out, name, document, arrays)
        again = apply_gate(document, kwargs.get("settings") or GateSettings(), today=TODAY, previous=document,
                           baseline_path="before.json")
        render(out, f"{name}-baseline", again, arrays)
    if len(argv) > 1:
        document, arrays = load_outputs(argv[1])
        render(out, "audit", document, arrays)


if __name__ == "__main__":
    main(sys.argv[1:])
