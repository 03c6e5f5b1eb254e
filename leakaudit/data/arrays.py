"""Images held as arrays (N×C×H×W or N×H×W, uint8 or float in [0, 1]) → the same ``ImageSet`` a folder gives.

Every array image goes through the folder's conversion (``data.convert_image``:
channels, alpha onto black, bilinear resize), so an array and a folder of the
same pixels give the same tensors. Images are put in class order (stable, by
label), the order an ImageFolder tree is read in, so that the holdout's
prior/null split and every index agree with the folder's. Paths name each image
by its place in the source (``images[17]``), which is what a user looks up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from leakaudit.data.folders import (
    MAX_DECODED_BYTES, MAX_IMAGE_PIXELS, ImageSet, SkippedFile, check_resized_size, convert_image,
)
from leakaudit.errors import DataError
from leakaudit.sanitize import terminal_text

ALLOWED_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class LoadSpec:
    """What the model asks of every image, and the classes the labels must fall in."""

    channels: int
    size: tuple[int, int]  # (H, W)
    num_classes: int  # the model's outputs: unnamed labels are named "0" … "K-1"
    classes: tuple[str, ...] | None = None  # the training data's classes, when loading a holdout
    strict: bool = False
    max_file_bytes: int = 64 << 20
    progress: Callable[[int, int], None] | None = None
    poll: Callable[[], None] | None = None  # called for every image read: raises to end the loading (budget, stop)

    def tick(self) -> None:
        if self.poll is not None:
            self.poll()

    def check_capacity(self, count: int, what: str) -> None:
        """``count`` images at this size must fit in memory (``folders.check_resized_size``)."""
        check_resized_size(count, self.channels, self.size, what)


def as_numpy(value: Any, what: str) -> np.ndarray:
    """A tensor or array-like as a numpy array, without copying where it can."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise DataError(f"{what} must be a torch tensor or a numpy array, not {type(value).__name__}")


def check_image_shape(shape: Sequence[int], dtype: np.dtype, what: str) -> None:
    """N×C×H×W or N×H×W, C in 1/3/4, uint8 or float, within the per-image limits of a file (from shape alone)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[1] not in ALLOWED_CHANNELS):
        hint = ""
        if len(shape) == 4 and shape[-1] in ALLOWED_CHANNELS:
            hint = " (channels last? transpose to N×C×H×W: .permute(0, 3, 1, 2) / .transpose(0, 3, 1, 2))"
        raise DataError(f"{what} must be N×C×H×W (C = 1, 3 or 4) or N×H×W, not shape {shape}{hint}")
    if dtype != np.uint8 and dtype.kind != "f":
        raise DataError(f"{what} must be uint8 (0–255) or float in [0, 1], not {dtype}")
    if shape[0] == 0:
        raise DataError(f"{what} holds no images (shape {shape})")
    height, width = shape[-2], shape[-1]
    channels = shape[1] if len(shape) == 4 else 1
    if height * width > MAX_IMAGE_PIXELS:
        raise DataError(f"{what}: images too large ({width}x{height} px, limit {MAX_IMAGE_PIXELS} px)")
    if height * width * channels * dtype.itemsize > MAX_DECODED_BYTES:
        raise DataError(f"{what}: each image takes more than {MAX_DECODED_BYTES >> 20} MiB "
                        f"({width}x{height}x{channels} {dtype}); the limit of an image file applies")


def to_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 as given; float in [0, 1] rounded to the nearest of 256 levels (NaN or out of range: an error)."""
    if images.dtype == np.uint8:
        return images
    if not np.isfinite(images).all():
        raise DataError(f"{what}: float images hold NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{what}: float images must lie in [0, 1] (found {low:g} … {high:g}); pass uint8 for 0–255")
    pixels: np.ndarray = np.rint(images.astype(np.float32) * np.float32(255.0)).astype(np.uint8)
    return pixels


def check_labels(labels: np.ndarray, n_images: int, what: str) -> np.ndarray:
    """One integer label per image, as int64."""
    if labels.ndim != 1 or labels.shape[0] != n_images:
        raise DataError(f"{what}: labels must be one integer per image ({n_images}), not shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integers (class indices), not {labels.dtype}")
    return labels.astype(np.int64)


def class_names(value: Any, what: str) -> tuple[str, ...] | None:
    """Class names given with the data (strings, unique), or None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
    names = list(value)
    if not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{what}: class names must be a non-empty list of strings")
    if len(set(names)) != len(names):
        raise DataError(f"{what}: class names repeat")
    return tuple(names)


def resolve_labels(labels: np.ndarray, own: tuple[str, ...] | None, spec: LoadSpec,
                   what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as indices into the audit's classes, and those classes.

    A training set's classes are its own names, else ``0 … K-1`` for the
    model's K outputs. A holdout's labels index its own names, mapped to the
    training data's by name, or the training data's classes directly.
    """
    classes = spec.classes if spec.classes is not None else own or tuple(str(i) for i in range(spec.num_classes))
    named = own if own is not None else classes
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= len(named):
            bad = low if low < 0 else high
            raise DataError(f"{what}: label {bad} is outside the {len(named)} classes (0 … {len(named) - 1})"
                            + ("" if own is not None else "; pass the class names if the labels are not 0 … K-1"))
    if spec.classes is None or own is None or own == spec.classes:
        return labels, classes
    index = {name: i for i, name in enumerate(spec.classes)}
    unknown = [name for name in own if name not in index]
    if unknown:
        raise DataError(f"{what}: classes not in the training data: {terminal_text(', '.join(unknown[:10]))}")
    mapping = np.array([index[name] for name in own], dtype=np.int64)
    return mapping[labels], classes


def image_pixels(image: np.ndarray, spec: LoadSpec) -> np.ndarray:
    """One (C, H, W) or (H, W) uint8 image → (C, H, W) uint8 at the model's shape, as a file's pixels would be."""
    if image.ndim == 2:
        image = image[None]
    if image.shape[0] == spec.channels and tuple(image.shape[1:]) == spec.size and spec.channels in (1, 3):
        return np.ascontiguousarray(image)  # what the conversion would give back unchanged
    channels = image.shape[0]
    plane = image[0] if channels == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
    return convert_image(Image.fromarray(np.ascontiguousarray(plane)), spec.channels, spec.size)  # L, RGB or RGBA


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 over each array's shape, dtype and bytes: the provenance of in-memory images."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{tuple(array.shape)}|{array.dtype.str}\0".encode("ascii"))
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def in_class_order(root: Path, images: np.ndarray, labels: np.ndarray, paths: Sequence[str], classes: tuple[str, ...],
                   digest: str, skipped: Sequence[SkippedFile] = ()) -> ImageSet:
    """The ``ImageSet`` in an ImageFolder's order: by class, the source's order within a class."""
    order = np.argsort(labels, kind="stable")
    return ImageSet(root=root, images=torch.from_numpy(np.ascontiguousarray(images[order])),
                    labels=torch.from_numpy(labels[order].astype(np.int64)),
                    paths=tuple(paths[i] for i in order.tolist()), classes=classes, manifest_sha256=digest,
                    skipped=tuple(sorted(skipped, key=lambda s: s.path)))


def load_arrays(images: Any, labels: Any, spec: LoadSpec, *, what: str, root: Path,
                classes: Sequence[str] | None = None, digest: str | None = None,
                name: str = "images") -> ImageSet:
    """Arrays of images and labels → ``ImageSet``; ``digest`` defaults to the arrays' own hash."""
    array = as_numpy(images, f"{what} images")
    check_image_shape(array.shape, array.dtype, f"{what} images")
    label_array = check_labels(as_numpy(labels, f"{what} labels"), int(array.shape[0]), what)
    mapped, audit_classes = resolve_labels(label_array, class_names(classes, what), spec, what)
    spec.check_capacity(int(array.shape[0]), what)
    pixels = to_uint8(array, f"{what} images")
    out = np.empty((pixels.shape[0], spec.channels, *spec.size), dtype=np.uint8)
    for i in range(pixels.shape[0]):
        spec.tick()
        out[i] = image_pixels(pixels[i], spec)
        if spec.progress is not None:
            spec.progress(i + 1, int(pixels.shape[0]))
    paths = [f"{name}[{i}]" for i in range(pixels.shape[0])]
    return in_class_order(root, out, mapped, paths, audit_classes,
                          digest or array_digest(np.asarray(array), label_array))
