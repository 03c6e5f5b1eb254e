"""The image formats leakaudit reads, and the one place images are opened: Pillow is told which formats to try.

Pillow otherwise picks a decoder by content among every format it knows, some
of which hand the file to another program (EPS runs Ghostscript) or parse
rarely exercised layouts. ``IMAGE_FORMATS`` is the list the README documents;
a file in another format that we can name is refused by that name, whatever
its file name says; bytes no format claims stay an unreadable file.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from leakaudit.errors import DataError

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF")  # Pillow's names; the README lists the same
SHOWN_FORMATS = "PNG, JPEG, BMP, WebP and TIFF"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Leading bytes of formats Pillow (or a plug-in) could decode but leakaudit does not read.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "PostScript (EPS)"), (b"\xc5\xd0\xd3\xc6", "PostScript (EPS)"), (b"%PDF", "PDF"),
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"), (b"icns", "ICNS"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x01\xda", "SGI"), (b"DDS ", "DDS"), (b"SIMPLE  =", "FITS"), (b"/* XPM */", "XPM"), (b"#define", "XBM"),
    (b"\x59\xa6\x6a\x95", "Sun raster"), (b"qoif", "QOI"), (b"\x0a\x05\x01", "PCX"), (b"P1", "PNM"), (b"P2", "PNM"),
    (b"P3", "PNM"), (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"), (b"P7", "PAM"), (b"FORM", "IFF"),
    (b"\x89HDF", "HDF5"), (b"<svg", "SVG"), (b"<?xml", "XML"), (b"RIFF", "RIFF (not WebP)"),
)


class ImageFormatError(DataError):
    """An image file in a format leakaudit does not read: the audit stops rather than guess."""


def other_format(head: bytes) -> str | None:
    """The name of a format outside ``IMAGE_FORMATS`` that ``head`` (a file's first bytes) starts, or None."""
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    return None


def open_image(source: BinaryIO | Path) -> Image.Image:
    """``Image.open`` restricted to ``IMAGE_FORMATS`` (header only); ``ImageFormatError`` for a named other format.

    Pillow's own ``UnidentifiedImageError`` is left for bytes nobody can name (a corrupt file).
    """
    try:
        return Image.open(source, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        if isinstance(source, Path):
            with source.open("rb") as fh:
                head = fh.read(16)
        else:
            source.seek(0)
            head = source.read(16)
        name = other_format(head)
        if name is not None:
            raise ImageFormatError(f"a {name} file; leakaudit reads only {SHOWN_FORMATS} images") from None
        raise
