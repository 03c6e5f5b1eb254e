"""The report in a real browser: headless Chromium loads it from disk, runs no script, shows the findings."""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leakaudit.gate.verdict import GateSettings, apply_gate
from leakaudit.report import write_outputs
from tests.scenarios import scenario, with_references

pytestmark = pytest.mark.slow  # a headless browser

CHROMIUM = Path("/usr/bin/chromium")
TODAY = date(2026, 11, 28)
PWN = "<script>document.title='pwned'</script>"
CLASSES = ("0", "1", "2", PWN, "<img src=x onerror=\"document.title='pwned'\">", "5", "6", "7", "8", "9")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.skip(f"chromium not installed: {CHROMIUM} is missing")
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


class Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.title = ""
        self.images: list[dict[str, str | None]] = []
        self.finding_rows = 0
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "tr" and "findings-body" in self.stack:
            self.finding_rows += 1
        marker = "findings-body" if tag == "tbody" and self.stack and self.stack[-1] == "findings" else tag
        if tag == "table" and "findings" in (dict(attrs).get("class") or "").split():
            marker = "findings"
        if tag not in ("img", "br", "meta", "link", "input"):
            self.stack.append(marker)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("img", "br", "meta", "link", "input") and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "title":
            self.title += data


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    s = with_references(scenario(leaky=True, train_per_class=2, classes=CLASSES), 8)  # the membership section too
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    out = tmp_path_factory.mktemp("browser-report")
    write_outputs(doc, s.arrays, out)
    return doc, out / "report.html"


def test_chromium_renders_findings_and_runs_no_script(report: tuple[dict, Path], tmp_path: Path) -> None:
    doc, path = report
    dom_text = chromium(tmp_path / "profile", "--dump-dom", path.resolve().as_uri()).stdout
    dom = Dom()
    dom.feed(dom_text)
    assert dom.scripts == 0
    assert dom.title.startswith("leakaudit report")  # a class name's <script> did not set it
    assert "pwned" not in dom.title
    assert dom.finding_rows == len(doc["findings"]) > 0
    shown_classes = {f["class"] for f in doc["findings"]}
    assert PWN in shown_classes
    assert re.search(r"&lt;script&gt;document\.title='pwned'&lt;/script&gt;", dom_text)
    assert len(dom.images) >= 3 * len(doc["findings"])
    assert all((img.get("src") or "").startswith("data:image/png;base64,") for img in dom.images)


def test_chromium_screenshot_shows_the_page(report: tuple[dict, Path], tmp_path: Path) -> None:
    _, path = report
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600", path.resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1280)
    assert pixels.std() > 20  # text, tables and thumbnails, not a blank or error page
    top = pixels[:300]
    assert (top < 80).mean() > 0.01  # the dark verdict badge and heading are drawn near the top


PROBE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>probe</title></head><body>
<pre id="result">pending</pre>
<iframe id="frame" src="report.html" width="{width}" height="{height}" style="border:0"></iframe>
<script>
document.getElementById("frame").addEventListener("load", () => {{
  const win = document.getElementById("frame").contentWindow, doc = win.document;
  let printRules = 0;
  if ({print}) {{  // lay the page out as it prints: the report's print rules apply to the screen too
    for (const sheet of doc.styleSheets) for (const rule of sheet.cssRules)
      if (rule.media && rule.media.mediaText === "print") {{ rule.media.mediaText = "all"; printRules += 1; }}
  }}
  const box = (sel) => {{ const el = doc.querySelector(sel); return el ? el.getBoundingClientRect().bottom : null; }};
  const texts = Array.from(doc.querySelectorAll("svg.plot text")).map((t) => t.getBoundingClientRect().height);
  document.getElementById("result").textContent = JSON.stringify({{
    scrollWidth: doc.documentElement.scrollWidth, innerWidth: win.innerWidth, printRules,
    verdict: box(".verdict"), firstFinding: box("#first-finding"), conditions: box("ul.conditions"),
    smallestPlotText: texts.length ? Math.min(...texts) : null,
  }});
}});
</script></body></html>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(report: tuple[dict, Path]) -> Iterator[tuple[Path, str]]:
    """The report's folder on a local HTTP server, so a probe page may read the report's layout."""
    folder = report[1].parent
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def layout(served: tuple[Path, str], tmp_path: Path, width: int, height: int = 900, print_rules: bool = False) -> dict:
    folder, base = served
    name = f"probe-{width}x{height}-{int(print_rules)}.html"
    page = PROBE.format(width=width, height=height, print="true" if print_rules else "false")
    (folder / name).write_text(page, encoding="utf-8")
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", f"--window-size={width + 40},{height + 200}",
                   "--dump-dom", f"{base}/{name}").stdout
    match = re.search(r'<pre id="result">(\{.*?\})</pre>', dom)
    assert match, "the probe page did not measure the report"
    return json.loads(html.unescape(match.group(1)))


@pytest.mark.parametrize("width", [1400, 420])
def test_no_horizontal_scroll_and_readable_plot_text(served: tuple[Path, str], tmp_path: Path, width: int) -> None:
    measured = layout(served, tmp_path, width)
    assert measured["innerWidth"] == width
    assert measured["scrollWidth"] <= measured["innerWidth"], measured  # nothing runs off the side
    assert measured["smallestPlotText"] is not None and measured["smallestPlotText"] >= 10, measured


def test_verdict_and_first_finding_are_above_the_fold_on_a_desktop(served: tuple[Path, str], tmp_path: Path) -> None:
    measured = layout(served, tmp_path, 1400, 900)
    assert measured["verdict"] is not None and measured["verdict"] <= 900, measured
    assert measured["conditions"] is not None and measured["conditions"] <= 900, measured
    assert measured["firstFinding"] is not None and measured["firstFinding"] <= 900, measured


def test_printed_page_keeps_tables_within_the_margins(served: tuple[Path, str], tmp_path: Path) -> None:
    measured = layout(served, tmp_path, 718, 1100, print_rules=True)  # A4 at 96 dpi, less 1 cm margins
    assert measured["printRules"] >= 1
    assert measured["scrollWidth"] <= measured["innerWidth"], measured
