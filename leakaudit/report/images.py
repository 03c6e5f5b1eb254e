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
DIFF_GAIN = 4.0  # difference maps are amplified by this fixed factor, the same in every row and report


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


def difference_map(reconstruction: np.ndarray, train: np.ndarray, gain: float = DIFF_GAIN) -> np.ndarray | None:
    """|reconstruction − training image| averaged over channels, times ``gain``, (H, W) uint8: black = identical.

    Unamplified, a good reconstruction's map is nearly black; one fixed gain
    keeps maps comparable across rows (white = 1/gain of the range or more).
    """
    a = to_display(reconstruction).astype(np.float32)
    b = to_display(train).astype(np.float32)
    if a.shape != b.shape:
        return None
    diff = np.abs(a - b)
    if diff.ndim == 3:
        diff = diff.mean(axis=-1)
    scaled: np.ndarray = np.clip(diff * gain, 0, 255).round().astype(np.uint8)
    return scaled


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

# A narrow canvas with large type: scaled down to a phone's 380 px, its smallest text stays ≥ 10 px.
_W, _H = 480, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 50, 12, 66, 46
_FONT = 14


@dataclass(frozen=True)
class Series:
    """One distribution of the plot, named with its group size."""

    label: str
    counts: Sequence[int] | None


@dataclass(frozen=True)
class _Frame:
    lo: float
    hi: float
    top: float

    def x(self, v: float) -> float:
        return _LEFT + (v - self.lo) / (self.hi - self.lo or 1.0) * (_W - _LEFT - _RIGHT)

    def y(self, v: float) -> float:
        plot_h = _H - _TOP - _BOTTOM
        return _TOP + plot_h - v / self.top * plot_h


def _fractions(counts: Sequence[int] | None) -> list[float] | None:
    if counts is None:
        return None
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def _step_path(bins: Sequence[float], heights: Sequence[float], f: _Frame, close: bool) -> str:
    points = [f"M{f.x(bins[0]):.1f},{f.y(0):.1f}"]
    for lo, hi, h in zip(bins[:-1], bins[1:], heights):
        points.append(f"L{f.x(lo):.1f},{f.y(h):.1f}L{f.x(hi):.1f},{f.y(h):.1f}")
    points.append(f"L{f.x(bins[-1]):.1f},{f.y(0):.1f}")
    return "".join(points) + ("Z" if close else "")


def _axes(f: _Frame) -> list[str]:
    bottom = _H - _BOTTOM
    parts = [f'<rect x="{_LEFT}" y="{_TOP}" width="{_W - _LEFT - _RIGHT}" height="{bottom - _TOP}" '
             'fill="#ffffff" stroke="#595959"/>']
    step = 0.2 if f.hi - f.lo > 0.6 else 0.1 if f.hi - f.lo > 0.3 else 0.05
    tick = float(np.ceil(f.lo / step) * step)
    while tick <= f.hi + 1e-9:
        parts.append(f'<line x1="{f.x(tick):.1f}" y1="{bottom}" x2="{f.x(tick):.1f}" y2="{bottom + 5}" stroke="#222"/>'
                     f'<text x="{f.x(tick):.1f}" y="{bottom + 19}" text-anchor="middle">{tick:.1f}</text>')
        tick += step
    for frac in (0.0, f.top / 1.1):
        parts.append(f'<text x="{_LEFT - 4}" y="{f.y(frac) + 5:.1f}" text-anchor="end">{frac:.2f}</text>')
    mid = _TOP + (bottom - _TOP) / 2
    parts.append(f'<text x="{_LEFT + (_W - _LEFT - _RIGHT) / 2}" y="{_H - 6}" text-anchor="middle">'
                 "best-match SSIM (higher = more similar)</text>"
                 f'<text x="13" y="{mid}" text-anchor="middle" transform="rotate(-90 13 {mid})">share of images</text>')
    return parts


def _markers(markers: Sequence[tuple[str, float | None, str]], f: _Frame) -> list[str]:
    parts, row = [], 0
    for label, value, dash in markers:
        if value is None or not (f.lo <= value <= f.hi):
            continue
        ty = _TOP + 16 + 17 * row
        dx = ("end", -4) if value > (f.lo + f.hi) / 2 else ("start", 4)  # labels stay inside the frame
        parts.append(f'<line x1="{f.x(value):.1f}" y1="{_TOP}" x2="{f.x(value):.1f}" y2="{_H - _BOTTOM}" '
                     f'stroke="#222" stroke-width="1.5" stroke-dasharray="{dash}"/>'
                     f'<text x="{f.x(value) + dx[1]:.1f}" y="{ty}" text-anchor="{dx[0]}" paint-order="stroke" '
                     f'stroke="#fff" stroke-width="3">{label} {value:.2f}</text>')
        row += 1
    return parts


def _legend(train: Series, holdout: Series | None) -> list[str]:
    parts = ['<rect x="8" y="7" width="18" height="11" fill="#1f5fa8" fill-opacity="0.45" stroke="#1f5fa8"/>'
             f'<text x="32" y="17">{train.label}, filled</text>']
    if holdout is not None:
        parts.append('<line x1="8" y1="36" x2="26" y2="36" stroke="#b35900" stroke-width="2.5" stroke-dasharray="6 3"/>'
                     f'<text x="32" y="41">{holdout.label}, dashed</text>')
    return parts


def ssim_distribution_svg(
    histogram: Mapping[str, Any],
    markers: Sequence[tuple[str, float | None, str]],
    names: tuple[str, str] = ("training (members)", "holdout (non-members)"),
) -> str:
    """Inline SVG of train vs holdout best-match SSIM (share per bin) with vertical markers.

    ``markers`` are (label, x, dash pattern). Train is a filled area, holdout a
    dashed outline; each series is named with its group size and every marker
    is labelled in text, so the plot does not rely on colour. Only numbers and
    fixed labels go in: never a user string.
    """
    bins = [float(b) for b in histogram["bins"]]
    train_counts, holdout_counts = histogram["train"], histogram.get("holdout")
    train = _fractions(train_counts) or []
    holdout = _fractions(holdout_counts)
    frame = _Frame(bins[0], bins[-1], max(train + (holdout or []) + [1e-9]) * 1.1)
    train_s = Series(f"{names[0]}, n = {sum(train_counts)}", train_counts)
    holdout_s = None if holdout_counts is None else Series(f"{names[1]}, n = {sum(holdout_counts)}", holdout_counts)
    desc = f"Histogram of best-match SSIM: {train_s.label}" + (f"; {holdout_s.label}" if holdout_s else "")
    parts = [f'<svg class="plot" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" font-size="{_FONT}" '
             f'role="img" aria-labelledby="plot-title"><title id="plot-title">{desc}</title>']
    parts += _axes(frame)
    parts.append(f'<path d="{_step_path(bins, train, frame, True)}" fill="#1f5fa8" fill-opacity="0.45" '
                 'stroke="#1f5fa8" stroke-width="1.5"/>')
    if holdout is not None:
        parts.append(f'<path d="{_step_path(bins, holdout, frame, False)}" fill="none" stroke="#b35900" '
                     'stroke-width="2.5" stroke-dasharray="6 3"/>')
    parts += _markers(markers, frame) + _legend(train_s, holdout_s) + ["</svg>"]
    return "".join(parts)
