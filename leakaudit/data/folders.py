"""Image folders (torchvision's ImageFolder layout) as compact uint8 tensors.

Class index = position of the class folder in sorted order, exactly as
torchvision assigns it, so labels agree with how the model was trained.

Resize policy: every image is converted to the model's channels (grayscale is
replicated to RGB; RGB is converted to luminance, ITU-R 601-2, for a 1-channel
model; alpha is composited onto black) and resized to the model's input size
with bilinear interpolation (antialiased when shrinking), without keeping the
aspect ratio, which is what ``transforms.Resize((H, W))`` does.

Unreadable files: a file with an image extension that Pillow cannot decode is
*skipped and recorded* (``ImageSet.skipped``; every output lists them), unless
``strict=True``. A folder where nothing at all is readable is an error.
What may be read at all (regular files under a size cap, symlinks only within
the data folder, UTF-8 names) is ``leakaudit.data.safe_files``'s job; an image's
pixel count and decoded size are checked from its header before it is decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from leakaudit.data.formats import IMAGE_EXTENSIONS, ImageFormatError, open_image
from leakaudit.errors import DataError
from leakaudit.loading.limits import MEMORY_SHARE, available_memory
from leakaudit.data.safe_files import (
    DEFAULT_MAX_FILE_BYTES, SkippedFile, decodable, list_image_files, open_regular_file, read_regular_file,
)
from leakaudit.sanitize import path_text, terminal_text

__all__ = ["DEFAULT_MAX_FILE_BYTES", "IMAGE_EXTENSIONS", "ImageSet", "SkippedFile", "convert_image", "decode_image",
           "list_classes", "load_image_folder", "peek_shape", "write_image_folder"]


# Pillow's own limit is ~89 Mpx with a warning and 179 Mpx with an error; an
# audit never needs more than this many pixels per image, and a smaller limit
# keeps a hostile file from exhausting memory.
MAX_IMAGE_PIXELS = 40_000_000
# Decoded size, from the header's size and mode, before any pixel is decoded
# (a 16-bit 40 Mpx PNG compresses to kilobytes and decodes to 80 MB).
MAX_DECODED_BYTES = 64 << 20
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4,
                    "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


@dataclass(frozen=True)
class ImageSet:
    """Images of one folder, stored as uint8 to keep 100k images small.

    ``images`` is (M, C, H, W) uint8; ``labels`` (M,) int64; ``paths`` are
    POSIX paths relative to ``root``; ``classes`` the sorted folder names.
    """

    root: Path
    images: torch.Tensor  # (M, C, H, W) uint8
    labels: torch.Tensor  # (M,) int64
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    manifest_sha256: str
    skipped: tuple[SkippedFile, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def float01(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images (or a subset) as float32 in [0, 1]; (m, C, H, W)."""
        chosen = self.images if index is None else self.images[index]
        return chosen.to(torch.float32).div_(255.0)

    def class_of(self, i: int) -> str:
        return self.classes[int(self.labels[i])]


def list_classes(root: Path) -> list[str]:
    """Sorted class folder names, as torchvision's ``find_classes`` does.

    A class folder whose name is not valid UTF-8 is an error, not a skip:
    leaving it out would shift every later class index.
    """
    shown = terminal_text(root)
    if not root.exists():
        raise DataError(f"data folder not found: {shown}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {shown}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    bad = [name for name in classes if not decodable(name)]
    if bad:
        raise DataError(f"{shown}: class folder name {path_text(bad[0])!s} is not valid UTF-8; rename it "
                        "(class indices follow the sorted names, so it cannot be skipped)")
    if not classes:
        raise DataError(
            f"no class folders in {shown}: expected the ImageFolder layout "
            f"{shown}/<class name>/<image files>"
        )
    return classes


def _list_files(root: Path, classes: Sequence[str],
                max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[list[tuple[Path, int]], list[SkippedFile]]:
    return list_image_files(root, classes, IMAGE_EXTENSIONS, max_bytes)


def _to_eight_bits(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images → 8-bit gray, in integer arithmetic where it is exact (no float64 copy)."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    peak = 65535 if arr.max(initial=0) > 255 else 255
    if arr.dtype.kind == "f":
        eight = (np.clip(arr, 0, peak) * np.float32(255.0 / peak)).astype(np.uint8)
    else:
        eight = (np.clip(arr, 0, peak).astype(np.uint32) * 255 // peak).astype(np.uint8)
    return Image.fromarray(eight)


def _check_header(img: Image.Image) -> None:
    """Refuse from the header alone what would take too much memory to decode."""
    width, height = img.size
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise DataError(f"image too large ({width}x{height} px, decompression-bomb limit {MAX_IMAGE_PIXELS} px)")
    decoded = pixels * _BYTES_PER_PIXEL.get(img.mode, 8)
    if decoded > MAX_DECODED_BYTES:
        raise DataError(f"image too large to decode ({width}x{height} px in mode {terminal_text(img.mode)} = "
                        f"{decoded >> 20} MiB, limit {MAX_DECODED_BYTES >> 20} MiB)")


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_eight_bits(img)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def decode_image(data: bytes | Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file → (C, H, W) uint8, following the module's resize policy.

    Raises ``DataError`` for anything Pillow cannot read (including images
    over ``MAX_IMAGE_PIXELS``).
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            try:
                with open_image(source) as img:
                    _check_header(img)  # Image.open has read only the header so far
                    img.load()
                    img = _to_mode(img, channels)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image too large (decompression-bomb limit {MAX_IMAGE_PIXELS} px): {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise DataError(f"not a readable image ({type(exc).__name__}: {terminal_text(exc)})") from None
    return _resized(img, size)


def convert_image(img: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """A decoded image (from an array, a dataset) → (C, H, W) uint8, exactly as a file's pixels are converted."""
    _check_header(img)
    return _resized(_to_mode(img, channels), size)


def _resized(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def check_resized_size(count: int, channels: int, size: tuple[int, int], what: str) -> None:
    """Refuse, before decoding, a set whose images at the model's input size would not fit in memory.

    A file's size says nothing of this: a million 1×1 images in a few kilobytes each become a model-sized
    image once resized.
    """
    need, limit = count * channels * size[0] * size[1], int(available_memory() * MEMORY_SHARE)
    if need > limit:
        raise DataError(f"{what}: {count} images at the model's input ({channels}x{size[0]}x{size[1]}) would take "
                        f"{need >> 20} MiB, more than the {limit >> 20} MiB the audit may use; refused before decoding")


def load_image_folder(
    root: str | Path,
    *,
    channels: int,
    size: tuple[int, int],
    classes: Sequence[str] | None = None,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    poll: Callable[[], None] | None = None,
) -> ImageSet:
    """Read an ImageFolder tree into an ``ImageSet``.

    ``classes`` fixes the class list (a holdout folder must use the training
    folder's classes); a class folder of the data that is not in it is an
    error. ``progress(done, total)`` is called as files are read, ``poll()`` before each (it raises to end the
    loading). A file over ``max_file_bytes`` is skipped and recorded (an error with ``strict``). The set at the
    model's input size must fit in memory, checked before anything is decoded.
    """
    root = Path(root)
    classes = _resolve_classes(root, classes)
    files, skipped = _listed(root, classes, max_file_bytes, strict)
    check_resized_size(len(files), channels, size, terminal_text(root))
    images = np.empty((len(files), channels, *size), dtype=np.uint8)
    labels: list[int] = []
    paths: list[str] = []
    digest = hashlib.sha256()
    for n, (path, label) in enumerate(files):
        if poll is not None:
            poll()
        rel = path.relative_to(root).as_posix()
        try:
            data = _read_one(path, max_file_bytes)
            images[len(paths)] = decode_image(data, channels, size)
        except DataError as exc:
            if strict or isinstance(exc, ImageFormatError):
                raise type(exc)(f"{terminal_text(path)}: {exc}") from None
            skipped.append(SkippedFile(terminal_text(rel), str(exc)))
            continue
        digest.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
        labels.append(label)
        paths.append(rel)
        if progress is not None:
            progress(n + 1, len(files))
    if not paths:
        first = skipped[0].reason if skipped else "no files"
        raise DataError(f"none of the {len(files)} image files under {terminal_text(root)} could be read "
                        f"(first: {first})")
    kept = len(paths)
    return ImageSet(
        root=root,
        images=torch.from_numpy(images[:kept].copy() if kept < len(files) else images),
        labels=torch.tensor(labels, dtype=torch.int64),
        paths=tuple(paths),
        classes=tuple(classes),
        manifest_sha256=digest.hexdigest(),
        skipped=tuple(sorted(skipped, key=lambda s: s.path)),
    )


def _listed(root: Path, classes: Sequence[str], max_file_bytes: int,
            strict: bool) -> tuple[list[tuple[Path, int]], list[SkippedFile]]:
    """The image files to read and those skipped; an error when none is left (or, with ``strict``, any skipped)."""
    files, skipped = _list_files(root, classes, max_file_bytes)
    if strict and skipped:
        raise DataError(f"{terminal_text(root)}/{skipped[0].path}: {skipped[0].reason}")
    if not files:
        first = f" ({skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {terminal_text(root)}{first}")
    return files, skipped


def _resolve_classes(root: Path, classes: Sequence[str] | None) -> Sequence[str]:
    found = list_classes(root)
    if classes is None:
        return found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{terminal_text(root)}: class folders not in the training data: "
                        f"{terminal_text(', '.join(unknown[:10]))}")
    return classes


def _read_one(path: Path, max_file_bytes: int) -> bytes:
    try:
        data = read_regular_file(path, max_file_bytes)
    except OSError as exc:
        raise DataError(f"cannot read: {terminal_text(exc.strerror or exc)}") from None
    if not data:
        raise DataError("empty file (0 bytes)")
    return data


def write_image_folder(root: str | Path, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> None:
    """Write (M, C, H, W) uint8 images as PNG files in the ImageFolder layout."""
    root = Path(root)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    counters = [0] * len(classes)
    for image, label in zip(images, labels.tolist()):
        arr = image.numpy()
        pil = (Image.fromarray(arr[0]) if arr.shape[0] == 1
               else Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0))))
        pil.save(root / classes[label] / f"{counters[label]:05d}.png")
        counters[label] += 1


def peek_shape(root: str | Path) -> tuple[int, int, int] | None:
    """(C, H, W) of the first readable image under ``root``: a hint of what the model takes.

    Returns None when nothing can be read; ``load_image_folder`` then reports
    the real problem with the folder.
    """
    root = Path(root)
    try:
        classes = list_classes(root)
    except DataError:
        return None
    files, _ = _list_files(root, classes)
    for path, _label in files[:20]:
        try:
            with open_regular_file(path, DEFAULT_MAX_FILE_BYTES) as fh, open_image(fh) as img:  # header only
                channels = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
                return channels, img.height, img.width
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            continue
    return None
