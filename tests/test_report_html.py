"""The HTML report: escaping, self-containment, accessibility, redaction, size."""

from __future__ import annotations

import base64
import io
import re
from datetime import date
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from leakaudit.gate.verdict import GateSettings, apply_gate
from leakaudit.report import render_html, write_outputs
from leakaudit.zoo import bundled_images
from leakaudit.report import view
from leakaudit.report.images import DIFF_GAIN, MAX_THUMB_SIDE, ImageRenderer, difference_map
from leakaudit.report.summary import format_p, summarise, tidy_numbers
from leakaudit.report.schema import load_schema, schema_errors
from tests.scenarios import leak_score_record, scenario

TODAY = date(2026, 11, 28)
HOSTILE = (
    "0",
    "1",
    "2",
    "<script>alert(1)</script>",
    "<script>document.title='pwned'</script>",
    '" onerror="alert(2)',
    "<img src=x onerror=alert(3)>",
    "7",
    "8",
    "9",
)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of the <title>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    return parser


def hostile_report(**kwargs: object) -> tuple[dict, str]:
    s = scenario(leaky=True, train_per_class=1, classes=HOSTILE)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    return doc, render_html(doc, s.arrays, **kwargs)  # type: ignore[arg-type]


def test_user_strings_are_escaped_and_no_script_exists() -> None:
    doc, html = hostile_report()
    assert {f["class"] for f in doc["findings"]} >= set(HOSTILE[3:7])
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = parse(html)
    text = "".join(page.text)
    for name in HOSTILE[3:7]:
        assert name in text  # shown as text, not interpreted
    assert all(not key.startswith("on") for _, attrs in page.tags for key in attrs)
    assert not any(tag == "img" and attrs.get("src") == "x" for tag, attrs in page.tags)


def test_report_is_self_contained() -> None:
    _, html = hostile_report()
    assert "http://" not in html and "https://" not in html
    page = parse(html)
    links = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href", "srcset", "action", "data")]
    assert all(not (v or "").startswith("//") for v in links)
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert images
    assert all((a.get("src") or "").startswith("data:image/png;base64,") for a in images)
    assert not any(tag in ("script", "link", "iframe", "object", "embed", "base") for tag, _ in page.tags)
    styles = re.findall(r"<style>(.*?)</style>", html, flags=re.S)
    assert styles and "url(" not in styles[0] and "@import" not in styles[0]


def test_accessibility_basics() -> None:
    doc, html = hostile_report()
    page = parse(html)
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert all((a.get("alt") or "").strip() for a in images)
    headers = [attrs for tag, attrs in page.tags if tag == "th"]
    assert headers and all(a.get("scope") in ("col", "row") for a in headers)
    assert "✖ FAIL" in html  # symbol and word, never colour alone
    assert 'lang="en"' in html


def _findings_body(html: str) -> str:
    return html.split('<table class="findings cards">')[1].split("</table>")[0]


def test_findings_rows_and_images_match_the_document() -> None:
    s = scenario(leaky=True)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    html = render_html(doc, s.arrays)
    body = _findings_body(html)
    assert body.count('<tr id="finding-') == len(doc["findings"])
    assert body.count('<img class="thumb"') == 3 * len(doc["findings"])  # reconstruction, training, difference
    for f in doc["findings"]:  # each enlarges without script: a link to its own :target view
        assert f'href="#zoom-{f["rank"]}"' in body and f'<div class="overlay" id="zoom-{f["rank"]}"' in html
    for f in doc["findings"]:
        assert f"{f['ssim']:.3f}" in body
        assert f["fingerprint"] in body  # whole, so it can be copied into an ignore entry
    galleries = sum(min(len(v), 12) for v in doc["inversion"]["gallery"].values())
    top = len([f for f in doc["findings"] if f["status"] in ("fail", "warn")][:5])
    assert html.count('<img class="mini"') == 2 * top
    assert html.count('<img class="thumb"') == 3 * len(doc["findings"]) + galleries
    assert (
        html.count("LPIPS unavailable") == 1 and "LPIPS is unavailable" not in html and "unavailable" not in body
    )  # said once, not per row
    assert "fail 0.70" in html and "<svg" in html and "× 4" in html


@pytest.mark.parametrize(
    ("leaky", "settings", "shown"),
    [
        (True, GateSettings(), "✖ FAIL"),
        (False, GateSettings(), "✔ PASS"),
        (True, GateSettings(fail_ssim=None, fail_leak_score=None), "⚠ WARN"),
    ],
)
def test_verdict_is_shown_as_symbol_and_word(leaky: bool, settings: GateSettings, shown: str) -> None:
    s = scenario(leaky=leaky)
    html = render_html(apply_gate(s.document, settings, today=TODAY), s.arrays)
    assert shown in html


def _training_thumb(html: str) -> np.ndarray:
    match = re.search(r'<img class="thumb" src="data:image/png;base64,([^"]+)" alt="Training image', html)
    assert match, "no training image in the report"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(match.group(1)))))


def test_redact_blur_changes_pixels_and_none_keeps_them() -> None:
    s = scenario(leaky=True)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    original = s.arrays["finding_train_images"][0, 0]
    plain = _training_thumb(render_html(doc, s.arrays, redact="none"))
    blurred_html = render_html(doc, s.arrays, redact="blur")
    blurred = _training_thumb(blurred_html)
    assert np.array_equal(plain, original)
    assert blurred.shape == original.shape
    assert np.abs(blurred.astype(int) - original.astype(int)).mean() > 10
    assert "blurred" in blurred_html


def test_omit_removes_every_image() -> None:
    s = scenario(leaky=True)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    html = render_html(doc, s.arrays, include_images=False)
    assert "<img" not in html and "data:image" not in html
    assert "Images are left out of this report" in html
    assert "This report contains training images." not in html
    assert "This report contains training images." in render_html(doc, s.arrays)


def test_large_images_are_downscaled() -> None:
    faces, _, _ = bundled_images("lfw", 256)
    uri = ImageRenderer().uri(faces[0].numpy())
    assert uri is not None
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(thumb.size) == MAX_THUMB_SIDE


def test_writer_reports_size_and_warns_above_the_limit(tmp_path) -> None:
    s = scenario(leaky=True)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    quiet = write_outputs(doc, s.arrays, tmp_path / "a")
    assert quiet.html_bytes == (tmp_path / "a" / "report.html").stat().st_size
    assert quiet.warnings == ()
    loud = write_outputs(doc, s.arrays, tmp_path / "b", size_warn_bytes=10_000)
    assert len(loud.warnings) == 1 and "report.html" in loud.warnings[0]


def _only_required(value: object, schema: dict, root: dict) -> object:
    """``value`` stripped of every key its schema does not require."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    for key in ("oneOf", "anyOf"):
        if key in schema and value is not None:
            branch = next(s for s in schema[key] if s.get("type") != "null")
            return _only_required(value, branch, root)
    if isinstance(value, dict) and "properties" in schema:
        required = set(schema.get("required", [])) | set(schema.get("then", {}).get("required", []))
        return {
            k: _only_required(v, schema["properties"].get(k, {}), root)
            for k, v in value.items()
            if k in required
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_only_required(v, schema["items"], root) for v in value]
    return value


def test_a_minimal_valid_document_renders() -> None:
    s = scenario(leaky=True)
    schema = load_schema()
    doc = _only_required(apply_gate(s.document, GateSettings(), today=TODAY), schema, schema)
    assert isinstance(doc, dict) and schema_errors(doc) == []
    assert "directions" not in doc["thresholds"] and "format" not in doc["provenance"]["model"]
    html = render_html(doc, s.arrays)
    assert "✖ FAIL" in html and "<script" not in html


def test_weights_gain_is_shown_when_present() -> None:
    before, after = scenario(leaky=False), scenario(leaky=True)  # same members and non-members, other candidates
    assert before.holdout_best is not None and after.holdout_best is not None
    gain = leak_score_record(after.train_best - before.train_best, after.holdout_best - before.holdout_best,
                       np.random.default_rng(0))
    doc = after.document
    doc["summary"]["weights_gain"] = {
        "paired_auc": gain["value"], "ci_low": gain["ci_low"], "ci_high": gain["ci_high"], "p_value": gain["p_value"],
        "leak_score_pretrained": before.document["summary"]["leak_score"]["value"],
    }
    gated = apply_gate(doc, GateSettings(), today=TODAY)
    assert schema_errors(gated) == []
    html = render_html(gated, after.arrays)
    assert "What the weights added" in html
    assert f"{gain['value']:.3f}" in html
    assert f"{before.document['summary']['leak_score']['value']:.3f}" in html


def test_without_images_no_empty_picture_boxes_remain() -> None:
    s = scenario(leaky=True)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    html = render_html(doc, s.arrays, include_images=False)
    assert "noimg" not in html and "image left out" not in html
    assert (
        "Reconstruction · training image" not in html
        and 'class="zoom"' not in html
        and "overlay" not in html.split("</style>")[1]
    )
    assert _findings_body(html).count('<tr id="finding-') == len(doc["findings"])  # the numbers stay


def test_difference_maps_are_amplified_by_the_stated_gain() -> None:
    train = np.full((1, 8, 8), 100, dtype=np.uint8)
    recon = train.copy()
    recon[0, :4] = 110  # 10 grey levels apart in the top half
    diff = difference_map(recon, train)
    assert diff is not None
    assert int(diff[0, 0]) == round(10 * DIFF_GAIN) and int(diff[-1, -1]) == 0
    assert f"× {DIFF_GAIN:g}" in view.diff_scale()


def test_rows_state_their_rule_and_the_change_since_the_previous_audit() -> None:
    s = scenario(leaky=True)
    before = apply_gate(s.document, GateSettings(), today=TODAY)
    before["findings"][0]["ssim"] += 0.25  # the previous audit matched the top image better
    after = apply_gate(s.document, GateSettings(), today=TODAY, previous=before, baseline_path="old.json")
    assert after["findings"][0]["previous_ssim"] == before["findings"][0]["ssim"]
    assert schema_errors(after) == []
    body = _findings_body(render_html(after, s.arrays))
    assert "Previous SSIM (change)" in body and "(-0.250)" in body and "(+0.000)" in body
    assert "persisting from the baseline: reported as a warning" in body  # why a high SSIM does not fail now
    assert "≥ fail_ssim 0.70" in _findings_body(render_html(before, s.arrays))
    after["findings"][0]["status_rule"] = "the gate's own words for this row"
    assert "the gate&#39;s own words for this row" in render_html(after, s.arrays)


def test_summary_names_what_holds_and_counts_leaked_members() -> None:
    s = scenario(leaky=True)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    doc["inversion"]["completed_fraction"] = 1.0
    plain = summarise(doc)
    assert plain.exposure == "reconstruction" and plain.headline == "Reconstructs training images"
    members = sum(c["n_flagged"] for c in doc["summary"]["per_class"])
    assert plain.leaked == max(members, sum(bool(f["above_holdout_p99"]) for f in doc["findings"])) > 0
    assert {c.name for c in plain.conditions} == {c["name"] for c in doc["gate"]["conditions"] if c["status"] == "fail"}
    html = render_html(doc, s.arrays)
    top = html.split('id="verdict-headline"')[1].split("</section>")[0]
    assert "Reconstructs training images" in top and f"{plain.leaked} of {doc['summary']['n_train']}" in top
    clean = apply_gate(scenario(leaky=False).document, GateSettings(), today=TODAY)
    clean["inversion"]["completed_fraction"] = 1.0
    assert summarise(clean).exposure == "neither"
    conditions = [{**c, "status": "warn"} if c["name"] == "membership" else c for c in clean["gate"]["conditions"]]
    membership_only = {**clean, "gate": {**clean["gate"], "conditions": conditions}}
    assert summarise(membership_only).exposure == "membership"  # what holds follows the gate's conditions
    unfinished = {**clean, "inversion": {**clean["inversion"], "completed_fraction": 0.4}}
    assert summarise(unfinished).exposure == "incomplete"


def test_p_values_below_a_thousandth_are_written_as_such() -> None:
    assert format_p(0.000999) == "p < 0.001" and format_p(0.0123) == "p = 0.012"
    message = "Leak score 0.987 (p = 0.000999); binomial p = 4.42e-15; observed 0.97062087059021; p = 0.392"
    assert tidy_numbers(message) == "Leak score 0.987 (p < 0.001); binomial p < 0.001; observed 0.971; p = 0.392"


def test_galleries_are_shown_even_without_diverse_mode() -> None:
    s = scenario(leaky=True)
    doc = apply_gate(s.document, GateSettings(), today=TODAY)
    doc["inversion"]["gallery"] = None  # a reconstruction-mode audit
    html = render_html(doc, s.arrays)
    assert "Class galleries" in html and "grouped by the class it was generated for" in html
    assert "they are not training images" in html
