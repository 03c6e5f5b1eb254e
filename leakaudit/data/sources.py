"""Where an audit's images come from, behind one interface: every kind ends in the same ``ImageSet``.

A path is a folder in the ImageFolder layout, an ``.npz`` file, or Parquet
(a file, or a folder of one split's shards); in memory, a pair
``(images, labels)`` of tensors or numpy arrays, or a ``torch.utils.data.Dataset``
yielding ``(image, label)``. The CLI and the Python API resolve their inputs
here, so both read each kind the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from leakaudit.data.folders import ImageSet, list_classes, load_image_folder, peek_shape
from leakaudit.data.arrays import (
    LoadSpec, array_digest, as_numpy, check_image_shape, class_names, image_pixels, in_class_order, load_arrays,
    resolve_labels, to_uint8,
)
from leakaudit.data.npz import NpzSource
from leakaudit.data.parquet import ParquetSource, is_parquet
from leakaudit.errors import DataError
from leakaudit.sanitize import terminal_text

__all__ = ["ArraySource", "DatasetSource", "FolderSource", "ImageSource", "LoadSpec", "NpzSource", "ParquetSource",
           "resolve_source"]


@runtime_checkable
class ImageSource(Protocol):
    """One input of an audit, before the model says what shape its images must have."""

    @property
    def kind(self) -> str:
        """folder | npz | parquet | arrays | dataset (read-only: the sources are frozen dataclasses)."""

    @property
    def count_noun(self) -> str:
        """What a class is called in messages ("class folders", "class names")."""

    @property
    def path(self) -> Path | None:
        """Where it lies on disk (kept apart from --out), or None in memory."""

    def check(self) -> None:
        """Cheap checks before the model is touched (missing folder, unreadable header)."""

    def shape_hint(self) -> tuple[int, int, int] | None:
        """(C, H, W) of its first image: what the model probably takes."""

    def load(self, spec: LoadSpec) -> ImageSet:
        """Every image at the model's shape, in class order."""


@dataclass(frozen=True)
class FolderSource:
    """An ImageFolder tree: ``DIR/<class>/<image>``."""

    path: Path
    kind: str = "folder"
    count_noun: str = "class folders"

    def __str__(self) -> str:
        return str(self.path)

    def check(self) -> None:
        list_classes(self.path)

    def shape_hint(self) -> tuple[int, int, int] | None:
        return peek_shape(self.path)

    def load(self, spec: LoadSpec) -> ImageSet:
        return load_image_folder(self.path, channels=spec.channels, size=spec.size, classes=spec.classes,
                                 strict=spec.strict, max_file_bytes=spec.max_file_bytes, progress=spec.progress,
                                 poll=spec.poll)


@dataclass(frozen=True, eq=False)
class ArraySource:
    """A pair (images, labels) of tensors or numpy arrays, with optional class names."""

    images: Any
    labels: Any
    classes: tuple[str, ...] | None = None
    name: str = "arrays"
    kind: str = "arrays"
    count_noun: str = "class names"
    path: Path | None = None

    def __str__(self) -> str:
        return f"<{self.name}>"

    def check(self) -> None:
        images = as_numpy(self.images, f"{self} images")
        check_image_shape(images.shape, images.dtype, f"{self} images")
        labels = as_numpy(self.labels, f"{self} labels")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{self}: {images.shape[0]} images but labels of shape {tuple(labels.shape)}; "
                            "one integer label per image is needed")
        class_names(self.classes, str(self))

    def shape_hint(self) -> tuple[int, int, int] | None:
        shape = as_numpy(self.images, str(self)).shape
        return (shape[1], shape[2], shape[3]) if len(shape) == 4 else (1, shape[1], shape[2])

    def load(self, spec: LoadSpec) -> ImageSet:
        return load_arrays(self.images, self.labels, spec, what=str(self), root=Path(str(self)), classes=self.classes)


def _item_image(image: Any, where: str) -> np.ndarray:
    """One dataset image (tensor, array or PIL image) as (C, H, W) uint8."""
    from PIL import Image

    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGBA") if image.mode in ("P", "PA") else image)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if array.dtype != np.uint8:
            raise DataError(f"{where}: {image.mode} images are not read from a dataset; convert them to 8 bits")
    else:
        array = as_numpy(image, where)
    if array.ndim not in (2, 3):
        raise DataError(f"{where}: an image must be C×H×W or H×W, not shape {tuple(array.shape)}")
    check_image_shape((1, *array.shape), array.dtype, where)
    return to_uint8(array, where)


def _item_label(label: Any, where: str) -> int:
    if hasattr(label, "item") and getattr(label, "ndim", 0) == 0:
        label = label.item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise DataError(f"{where}: the label must be an integer class index, not {type(label).__name__}")
    return int(label)


@dataclass(frozen=True, eq=False)
class DatasetSource:
    """A map-style ``torch.utils.data.Dataset`` whose items are ``(image, label)``."""

    dataset: Any
    classes: tuple[str, ...] | None = None
    name: str = "dataset"
    kind: str = "dataset"
    count_noun: str = "class names"
    path: Path | None = None

    def __str__(self) -> str:
        return f"<{self.name} {type(self.dataset).__name__}>"

    def _length(self) -> int:
        try:
            return len(self.dataset)
        except TypeError:
            raise DataError(f"{self}: the dataset needs len() and indexing (a map-style Dataset)") from None

    def _item(self, i: int) -> tuple[np.ndarray, int]:
        where = f"{self.name}[{i}]"
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"{where}: an item must be (image, label), not {type(item).__name__}")
        return _item_image(item[0], where), _item_label(item[1], where)

    def _names(self) -> tuple[str, ...] | None:
        given = self.classes if self.classes is not None else getattr(self.dataset, "classes", None)
        return class_names(given, str(self)) if given is not None else None

    def check(self) -> None:
        if self._length() == 0:
            raise DataError(f"{self}: the dataset is empty")
        self._item(0)
        self._names()

    def shape_hint(self) -> tuple[int, int, int] | None:
        image, _ = self._item(0)
        return (int(image.shape[0]), int(image.shape[1]), int(image.shape[2])) if image.ndim == 3 else None

    def load(self, spec: LoadSpec) -> ImageSet:
        n = self._length()
        spec.check_capacity(n, str(self))
        pixels = np.empty((n, spec.channels, *spec.size), dtype=np.uint8)
        labels = np.empty(n, dtype=np.int64)
        digests: list[np.ndarray] = []
        for i in range(n):
            spec.tick()
            image, labels[i] = self._item(i)
            digests.append(np.frombuffer(array_digest(image).encode("ascii"), dtype=np.uint8))
            pixels[i] = image_pixels(image, spec)
            if spec.progress is not None:
                spec.progress(i + 1, n)
        mapped, classes = resolve_labels(labels, self._names(), spec, str(self))
        paths = [f"{self.name}[{i}]" for i in range(n)]
        return in_class_order(Path(str(self)), pixels, mapped, paths, classes, array_digest(*digests, labels))


def resolve_source(value: Any, *, classes: Sequence[str] | None = None, name: str = "data") -> ImageSource:
    """The source ``value`` names: a path (folder, ``.npz``, Parquet), a pair of arrays, a Dataset, or a source."""
    if isinstance(value, ImageSource):
        return value
    if isinstance(value, (str, Path)):
        return path_source(Path(value))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return ArraySource(value[0], value[1], tuple(classes) if classes is not None else None, name=name)
    if hasattr(value, "__getitem__") and hasattr(value, "__len__"):
        return DatasetSource(value, tuple(classes) if classes is not None else None, name=name)
    raise DataError(f"{name}: give a folder, an .npz or Parquet file, a pair (images, labels) of tensors or arrays, "
                    f"or a Dataset of (image, label); not {type(value).__name__}")


def path_source(path: Path) -> ImageSource:
    """The kind a path's name and content say: ``.npz``, Parquet, else an image folder."""
    if path.suffix == ".npz":
        return NpzSource(path)
    if path.exists() and is_parquet(path):
        return ParquetSource(path)
    if path.suffix == ".parquet":
        return ParquetSource(path)
    if path.is_file():
        raise DataError(f"{terminal_text(path)} is a file, not an image folder, an .npz or a .parquet file")
    return FolderSource(path)
