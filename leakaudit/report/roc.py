"""ROC curves of the membership attacks on log–log axes, as inline SVG (numbers and fixed labels only, no script).

Log–log axes show what matters for membership: the true-positive rate at the
lowest false-positive rates, where a random guess is the diagonal TPR = FPR.
"""

from __future__ import annotations

import math

from leakaudit.record.membership import AttackResult

_W, _H, _PAD_L, _PAD_B, _PAD_T, _PAD_R = 300, 220, 46, 34, 10, 10
_DECADES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _x(fpr: float, low: float) -> float:
    span = -math.log10(low)
    return _PAD_L + (math.log10(max(fpr, low)) + span) / span * (_W - _PAD_L - _PAD_R)


def _y(tpr: float, low: float) -> float:
    span = -math.log10(low)
    return _H - _PAD_B - (math.log10(max(tpr, low)) + span) / span * (_H - _PAD_B - _PAD_T)


def _path(fpr: tuple[float, ...], tpr: tuple[float, ...], low: float) -> str:
    points = [(f, t) for f, t in zip(fpr, tpr) if f > 0]
    return " ".join(f"{'M' if i == 0 else 'L'}{_x(f, low):.1f},{_y(t, low):.1f}" for i, (f, t) in enumerate(points))


def _axes(low: float) -> list[str]:
    parts = [f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{_W - _PAD_L - _PAD_R}" height="{_H - _PAD_B - _PAD_T}" '
             'fill="none" stroke="#888"/>']
    for d in (d for d in _DECADES if d >= low):
        x, y = _x(d, low), _y(d, low)
        label = f"{d:g}"
        parts.append(f'<line x1="{x:.1f}" y1="{_PAD_T}" x2="{x:.1f}" y2="{_H - _PAD_B}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{_H - _PAD_B + 12}" text-anchor="middle">{label}</text>')
        parts.append(f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{_PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end">{label}</text>')
    parts.append(f'<text x="{(_W + _PAD_L) / 2:.0f}" y="{_H - 4}" text-anchor="middle">false-positive rate</text>')
    parts.append(f'<text x="12" y="{(_H - _PAD_B) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(_H - _PAD_B) / 2:.0f})">true-positive rate</text>')
    return parts


def roc_svg(row: AttackResult, reference: AttackResult | None, index: int) -> str:
    """One attack's ROC (solid) with the loss threshold's (dashed) and chance (dotted), log–log from 1 / n."""
    low = min(row.fpr_resolution, 1e-2)
    title = (f"ROC of {row.name} on log-log axes, AUC {row.auc:.3f}"
             + ("; dashed: the loss threshold; dotted: chance" if reference is not None else "; dotted: chance"))
    parts = [f'<svg class="roc" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" font-size="10" role="img" '
             f'aria-labelledby="roc-title-{index}"><title id="roc-title-{index}">{title}</title>']
    parts += _axes(low)
    parts.append(f'<path d="M{_x(low, low):.1f},{_y(low, low):.1f} L{_x(1, low):.1f},{_y(1, low):.1f}" '
                 'stroke="#999" stroke-dasharray="2 3" fill="none"/>')
    if reference is not None and reference is not row:
        parts.append(f'<path d="{_path(reference.roc_fpr, reference.roc_tpr, low)}" stroke="#b35900" '
                     'stroke-width="1.5" stroke-dasharray="6 3" fill="none"/>')
    parts.append(f'<path d="{_path(row.roc_fpr, row.roc_tpr, low)}" stroke="#1f5fa8" stroke-width="2" fill="none"/>')
    parts.append("</svg>")
    return "".join(parts)
