"""What the HTML template shows, computed from the findings document and its arrays.

The template only lays things out; every decision (which rule decided a row,
what the baseline changed, which images are the top leaked ones, which notes
are worth a line) is made here, in small functions over the document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from leakaudit.report.images import DIFF_GAIN, ImageRenderer
from leakaudit.report.summary import format_p, power_of

TOP_LEAKED = 5
GALLERY_PER_CLASS = 12
GALLERY_MAX_CLASSES = 40
GALLERY_THUMB_SIDE = 64


def num(value: Any, digits: int = 3) -> str:
    """A number as the report prints it: fixed digits, ``–`` when missing."""
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


def holdout_reference(document: Mapping[str, Any]) -> float | None:
    """The holdout quantile a finding must exceed to count (only when calibrated)."""
    if not document.get("calibrated"):
        return None
    summary = document.get("summary") or {}
    q = float((document.get("thresholds") or {}).get("holdout_quantile", 0.99))
    quantiles = (summary.get("holdout") or {}).get("quantiles") or {}
    value = quantiles.get(f"{q:g}")  # the audit records the gate's own quantile, whatever it is set to
    return None if value is None else float(value)


def decided_by(finding: Mapping[str, Any], document: Mapping[str, Any]) -> str:
    """The rule that gave the row its status: the gate's own words when it wrote them."""
    if finding.get("status_rule"):
        return str(finding["status_rule"])
    t = document.get("thresholds") or {}
    ssim, status = float(finding["ssim"]), finding.get("status")
    fail, warn, ref = t.get("fail_ssim"), t.get("warn_ssim"), holdout_reference(document)
    q = float(t.get("holdout_quantile", 0.99))
    if status == "ignored":
        return "accepted by an ignore entry"
    persisting = finding.get("baseline_status") == "persisting"
    if status == "warn" and persisting and fail is not None and ssim >= fail:
        return f"SSIM ≥ fail_ssim {num(fail, 2)}, but in the previous audit and not worse: a warning, not a failure"
    if status in ("fail", "warn"):
        bar = fail if status == "fail" and fail is not None else warn
        above = f" and above the holdout's q{q:g} ({num(ref)})" if ref is not None else ""
        return f"SSIM ≥ {status}_ssim {num(bar, 2)}{above}"
    if persisting and warn is not None and ssim >= warn:
        return "in the previous audit and not worse: with a baseline only new or worse findings count"
    if ref is not None and ssim <= ref and (warn is None or ssim >= warn):
        return f"at or below the holdout's q{q:g} ({num(ref)}): matched no better than non-members"
    if warn is not None and ssim < warn:
        return f"below warn_ssim {num(warn, 2)}"
    return "not significant: this many images above the holdout quantile is consistent with chance"


def _previous_ssim(finding: Mapping[str, Any]) -> float | None:
    for key in ("previous_ssim", "baseline_ssim"):
        if finding.get(key) is not None:
            return float(finding[key])
    return None


def finding_rows(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> list[dict]:
    """One row per finding: numbers, the deciding rule, the baseline change, and its three pictures."""
    recon, train = arrays.get("images"), arrays.get("finding_train_images")
    rows = []
    for k, finding in enumerate(document.get("findings") or []):
        r, t = _pick(recon, int(finding["reconstruction_index"])), _pick(train, k)
        previous = _previous_ssim(finding)
        rows.append({
            "f": finding, "recon": images.uri(r), "train": images.uri(t), "diff": images.diff_uri(r, t),
            "lpips": num(finding.get("lpips")), "rule": decided_by(finding, document),
            "previous": num(previous), "change": None if previous is None else f"{float(finding['ssim']) - previous:+.3f}",
        })
    return rows


def top_leaked(rows: Sequence[dict], limit: int = TOP_LEAKED) -> list[dict]:
    """The rows a reviewer should see first: flagged ones, else the best-matched ones."""
    flagged = [r for r in rows if r["f"].get("status") in ("fail", "warn")]
    return list(flagged or rows)[:limit]


def _gallery_source(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[str, dict[int, list[int]]]:
    """Diverse-mode galleries when the inversion made them, else the candidates grouped by target class."""
    gallery = (document.get("inversion") or {}).get("gallery")
    if gallery:
        return "diverse", {int(k): [int(i) for i in v] for k, v in gallery.items()}
    targets = arrays.get("targets")
    if targets is None:
        return "none", {}
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(np.asarray(targets).tolist()):
        groups.setdefault(int(label), []).append(index)
    return "candidates", groups


def galleries(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> dict[str, Any]:
    """Per-class pictures of what the inversion produced, and which kind they are."""
    kind, groups = _gallery_source(document, arrays)
    recon = arrays.get("images")
    if not groups or recon is None or not images.include:
        return {"kind": kind, "classes": [], "total": len(groups)}
    names = {int(c["class_index"]): c["class"] for c in (document.get("summary") or {}).get("per_class") or []}
    small = replace(images, max_side=GALLERY_THUMB_SIDE)  # galleries grow with the class count: keep them light
    out = []
    for key in sorted(groups)[:GALLERY_MAX_CLASSES]:
        uris = [small.uri(_pick(recon, i)) for i in groups[key][:GALLERY_PER_CLASS]]
        out.append({"class_index": key, "name": names.get(key, str(key)), "images": [u for u in uris if u],
                    "n": len(groups[key])})
    return {"kind": kind, "classes": out, "total": len(groups)}


def _about_missing_lpips(note: str) -> bool:
    lowered = note.lower()
    return "lpips" in lowered and "unavailable" in lowered


def notes(document: Mapping[str, Any]) -> list[str]:
    """The audit's notes once each (the inversion's are also in the summary's); LPIPS's reason is shown elsewhere."""
    lpips_missing = not ((document.get("metrics") or {}).get("lpips") or {}).get("available")
    raw = list((document.get("summary") or {}).get("notes") or []) + list((document.get("inversion") or {}).get("notes") or [])
    seen: list[str] = []
    for note in map(str, raw):
        if note not in seen and not (lpips_missing and _about_missing_lpips(note)):
            seen.append(note)
    return seen


def leak_facts(document: Mapping[str, Any]) -> dict[str, str] | None:
    """The leak score with its interval and p-value, as short strings."""
    leak = (document.get("summary") or {}).get("leak_score")
    if not leak:
        return None
    level = round(float(leak.get("ci_level", 0.95)) * 100)
    return {"value": num(leak["value"]), "ci": f"{level}% CI {num(leak['ci_low'])}–{num(leak['ci_high'])}",
            "p": format_p(leak.get("p_value")), "members": str(leak.get("n_members", "–")),
            "nonmembers": str(leak.get("n_nonmembers", "–"))}


def diff_scale() -> str:
    """The stated scale of the difference maps."""
    return (f"|reconstruction − training image| × {DIFF_GAIN:g}: black = identical, "
            f"white = a difference of {100 / DIFF_GAIN:.0f}% of the pixel range or more")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def power_view(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> dict | None:
    """The positive control: its status, one row per rung, and its members beside their reconstructions."""
    power = document.get("power")
    if not isinstance(power, Mapping):
        return None
    rungs = []
    for r in power.get("rungs") or []:
        leak = r.get("leak_score") or {}
        rungs.append({"k": r["k"], "leak": num(leak.get("value")),
                      "ci": f"{num(leak.get('ci_low'))}–{num(leak.get('ci_high'))}" if leak else "–",
                      "above": f"{r['members_above_quantile']}/{r['n_members']}",
                      "seen": f"{r['members_at_ssim_0_4']}/{r['n_members']}", "shown": bool(r["shown"]),
                      "memorised": bool(r["memorised"]), "steps": r["training_steps"],
                      "n_null": r["n_null"], "reason": r.get("reason") or ""})
    members, recon = arrays.get("power_member_images"), arrays.get("power_reconstructions")
    order = arrays.get("power_pair_order")
    shown_rung = next((r for r in power.get("rungs") or [] if r["k"] == power.get("images_k")), None)
    pairs = []
    if members is not None and recon is not None and order is not None and shown_rung is not None:
        best = shown_rung.get("member_best_ssim") or []
        for i, index in enumerate(order.tolist()):
            ssim = best[index] if 0 <= index < len(best) else None
            pairs.append({"member": images.uri(_pick(members, i)), "recon": images.uri(_pick(recon, i)),
                          "ssim": num(ssim)})
    status, statement = power_of(document)
    reason = str(power.get("reason") or "")
    return {"status": status, "slug": str(status).replace(" ", "-"), "statement": _sentence(statement or ""),
            "reason": _sentence(reason), "rungs": rungs, "pairs": [p for p in pairs if p["member"]],
            "images_k": power.get("images_k"), "recipe": power.get("recipe"), "copy": power.get("copy")}
