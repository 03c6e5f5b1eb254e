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
Symlinks are followed only when their target stays inside the data folder;
others are skipped and recorded, so a data folder cannot pull in files from
elsewhere on the machine.
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

from leakaudit.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Pillow's own limit is ~89 Mpx with a warning and 179 Mpx with an error; an
# audit never needs more than this many pixels per image, and a smaller limit
# keeps a hostile file from exhausting memory.
MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not loaded, and why."""

    path: str
    reason: str


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
    """Sorted class folder names, as torchvision's ``find_classes`` does."""
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DataError(
            f"no class folders in {root}: expected the ImageFolder layout "
            f"{root}/<class name>/<image files>"
        )
    return classes


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _list_files(root: Path, classes: Sequence[str]) -> tuple[list[tuple[Path, int]], list[SkippedFile]]:
    files: list[tuple[Path, int]] = []
    skipped: list[SkippedFile] = []
    for index, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=False):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                rel = path.relative_to(root).as_posix()
                if not filename.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if path.is_symlink() and not _inside(path, root):
                    skipped.append(SkippedFile(rel, "symlink pointing outside the data folder"))
                    continue
                files.append((path, index))
    return files, skipped


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8))
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
    height, width = size
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            try:
                with Image.open(source) as img:
                    img.load()
                    img = _to_mode(img, channels)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image too large (decompression-bomb limit {MAX_IMAGE_PIXELS} px): {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def load_image_folder(
    root: str | Path,
    *,
    channels: int,
    size: tuple[int, int],
    classes: Sequence[str] | None = None,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """Read an ImageFolder tree into an ``ImageSet``.

    ``classes`` fixes the class list (a holdout folder must use the training
    folder's classes); a class folder of the data that is not in it is an
    error. ``progress(done, total)`` is called as files are read.
    """
    root = Path(root)
    found = list_classes(root)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{root}: class folders not in the training data: {', '.join(unknown[:10])}")
    files, skipped = _list_files(root, classes)
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")

    height, width = size
    images = np.empty((len(files), channels, height, width), dtype=np.uint8)
    labels: list[int] = []
    paths: list[str] = []
    digest = hashlib.sha256()
    kept = 0
    for n, (path, label) in enumerate(files):
        rel = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            if strict:
                raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
            skipped.append(SkippedFile(rel, f"cannot read: {exc.strerror or exc}"))
            continue
        try:
            if not data:
                raise DataError("empty file (0 bytes)")
            images[kept] = decode_image(data, channels, size)
        except DataError as exc:
            if strict:
                raise DataError(f"{path}: {exc}") from None
            skipped.append(SkippedFile(rel, str(exc)))
            continue
        digest.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
        labels.append(label)
        paths.append(rel)
        kept += 1
        if progress is not None:
            progress(n + 1, len(files))
    if kept == 0:
        first = skipped[0].reason if skipped else "no files"
        raise DataError(f"none of the {len(files)} image files under {root} could be read (first: {first})")
    return ImageSet(
        root=root,
        images=torch.from_numpy(images[:kept].copy() if kept < len(files) else images),
        labels=torch.tensor(labels, dtype=torch.int64),
        paths=tuple(paths),
        classes=tuple(classes),
        manifest_sha256=digest.hexdigest(),
        skipped=tuple(sorted(skipped, key=lambda s: s.path)),
    )


def write_image_folder(root: str | Path, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> None:
    """Write (M, C, H, W) uint8 images as PNG files in the ImageFolder layout."""
    root = Path(root)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    counters = [0] * len(classes)
    for image, label in zip(images, labels.tolist()):
        arr = image.numpy()
        pil = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))
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
            with Image.open(path) as img:
                channels = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
                return channels, img.height, img.width
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            continue
    return None
