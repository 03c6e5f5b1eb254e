"""Pictures inside the report: PNG data URIs, difference maps, redaction, the SSIM plot.

Everything is inlined (``data:image/png;base64`` and inline SVG) so the report
is one self-contained file that opens offline and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter

Redaction = Literal["none", "blur"]
MAX_THUMB_SIDE = 128  # px; larger images are downscaled, smaller ones are scaled up by CSS only


def to_display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] or uint8 → (H, W) or (H, W, 3) uint8."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def difference_map(reconstruction: np.ndarray, train: np.ndarray) -> np.ndarray | None:
    """|reconstruction − training image| averaged over channels, (H, W) uint8: black = identical."""
    a = to_display(reconstruction).astype(np.float32)
    b = to_display(train).astype(np.float32)
    if a.shape != b.shape:
        return None
    diff = np.abs(a - b)
    if diff.ndim == 3:
        diff = diff.mean(axis=-1)
    return diff.round().astype(np.uint8)


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array))  # (H, W) → "L", (H, W, 3) → "RGB"


def prepare(array: np.ndarray, redact: Redaction, max_side: int = MAX_THUMB_SIDE) -> Image.Image:
    """Downscale to ``max_side`` and, with ``redact='blur'``, blur beyond recognition of detail."""
    picture = _pil(array)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if redact == "blur":
        radius = max(2.0, min(picture.size) / 8.0)
        picture = picture.filter(ImageFilter.GaussianBlur(radius))
    return picture


def png_data_uri(picture: Image.Image) -> str:
    """A PNG as ``data:image/png;base64,...``."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class ImageRenderer:
    """Turns arrays into data URIs, or into nothing when images are left out."""

    redact: Redaction = "none"
    include: bool = True
    max_side: int = MAX_THUMB_SIDE

    def uri(self, image: np.ndarray | None) -> str | None:
        if not self.include or image is None:
            return None
        return png_data_uri(prepare(to_display(image), self.redact, self.max_side))

    def diff_uri(self, reconstruction: np.ndarray | None, train: np.ndarray | None) -> str | None:
        if not self.include or reconstruction is None or train is None:
            return None
        diff = difference_map(reconstruction, train)
        return None if diff is None else png_data_uri(prepare(diff, self.redact, self.max_side))


# --------------------------------------------------------------------------- SSIM plot

_W, _H = 640, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 40, 48


def _fractions(counts: Sequence[int] | None) -> list[float] | None:
    if counts is None:
        return None
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def _step_path(bins: Sequence[float], heights: Sequence[float], x: Any, y: Any, close: bool) -> str:
    points = [f"M{x(bins[0]):.1f},{y(0):.1f}"]
    for lo, hi, h in zip(bins[:-1], bins[1:], heights):
        points.append(f"L{x(lo):.1f},{y(h):.1f}L{x(hi):.1f},{y(h):.1f}")
    points.append(f"L{x(bins[-1]):.1f},{y(0):.1f}")
    return "".join(points) + ("Z" if close else "")


def ssim_distribution_svg(
    histogram: Mapping[str, Any],
    markers: Sequence[tuple[str, float | None, str]],
) -> str:
    """Inline SVG of train vs holdout best-match SSIM (fraction per bin) with vertical markers.

    ``markers`` are (label, x, dash pattern). Train is a filled area, holdout a
    dashed outline, and every series and marker is also named in text, so the
    plot does not rely on colour.
    """
    bins = [float(b) for b in histogram["bins"]]
    train = _fractions(histogram["train"]) or []
    holdout = _fractions(histogram.get("holdout"))
    lo, hi = bins[0], bins[-1]
    top = max(train + (holdout or []) + [1e-9]) * 1.1
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(v: float) -> float:
        return _LEFT + (v - lo) / (hi - lo or 1.0) * plot_w

    def y(v: float) -> float:
        return _TOP + plot_h - v / top * plot_h

    desc = "Histogram of best-match SSIM for training images" + (
        " and holdout images" if holdout is not None else ""
    )
    parts = [
        f'<svg class="plot" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-labelledby="plot-title"><title id="plot-title">{desc}</title>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#595959"/>',
    ]
    step = 0.1 if hi - lo > 0.3 else 0.05
    tick = np.ceil(lo / step) * step
    while tick <= hi + 1e-9:
        parts.append(
            f'<line x1="{x(tick):.1f}" y1="{_TOP + plot_h}" x2="{x(tick):.1f}" y2="{_TOP + plot_h + 5}" stroke="#222"/>'
            f'<text x="{x(tick):.1f}" y="{_TOP + plot_h + 18}" text-anchor="middle" font-size="12">{tick:.1f}</text>'
        )
        tick += step
    for frac in (0.0, top / 1.1):
        parts.append(
            f'<text x="{_LEFT - 4}" y="{y(frac) + 4:.1f}" text-anchor="end" font-size="11">{frac:.2f}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 8}" text-anchor="middle" font-size="13">'
        "best-match SSIM (higher is more similar)</text>"
        f'<text x="14" y="{_TOP + plot_h / 2}" text-anchor="middle" font-size="13" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2})">fraction of images</text>'
    )
    parts.append(f'<path d="{_step_path(bins, train, x, y, True)}" fill="#1f5fa8" fill-opacity="0.45" stroke="#1f5fa8" stroke-width="1.5"/>')
    if holdout is not None:
        parts.append(
            f'<path d="{_step_path(bins, holdout, x, y, False)}" fill="none" stroke="#b35900" '
            'stroke-width="2.5" stroke-dasharray="6 3"/>'
        )
    for i, (label, value, dash) in enumerate(markers):
        if value is None or not (lo <= value <= hi):
            continue
        ty = _TOP + 14 + 14 * i
        parts.append(
            f'<line x1="{x(value):.1f}" y1="{_TOP}" x2="{x(value):.1f}" y2="{_TOP + plot_h}" stroke="#222" '
            f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
            f'<text x="{x(value) - 4:.1f}" y="{ty}" text-anchor="end" font-size="11" '
            f'paint-order="stroke" stroke="#fff" stroke-width="3">{label} {value:.2f}</text>'
        )
    legend_y = 16
    parts.append(
        f'<rect x="{_LEFT}" y="{legend_y - 9}" width="18" height="10" fill="#1f5fa8" fill-opacity="0.45" stroke="#1f5fa8"/>'
        f'<text x="{_LEFT + 24}" y="{legend_y}" font-size="12">training (members), filled</text>'
    )
    if holdout is not None:
        parts.append(
            f'<line x1="{_LEFT + 230}" y1="{legend_y - 4}" x2="{_LEFT + 250}" y2="{legend_y - 4}" stroke="#b35900" '
            'stroke-width="2.5" stroke-dasharray="6 3"/>'
            f'<text x="{_LEFT + 256}" y="{legend_y}" font-size="12">holdout (non-members), dashed outline</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
