"""A NumPy ``.npz`` file of training or holdout images: arrays ``images``, ``labels`` and optional ``classes``.

Nothing in the file runs: ``np.load(allow_pickle=False)`` reads plain arrays
only. Before any array is read, every entry's ``.npy`` header (shape and
dtype) is checked: the images' shape and per-image size as for image files,
the declared bytes against the entry's size in the archive and the memory this
machine has. The manifest hash is the sha256 of the file's bytes, which are
read once, so what is hashed is what is loaded.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leakaudit.data.folders import ImageSet
from leakaudit.data.arrays import LoadSpec, check_image_shape, load_arrays
from leakaudit.errors import DataError
from leakaudit.loading.limits import MEMORY_SHARE, available_memory
from leakaudit.data.safe_files import read_regular_file
from leakaudit.sanitize import terminal_text

REQUIRED = ("images", "labels")
KNOWN = (*REQUIRED, "classes")


@dataclass(frozen=True)
class NpyHeader:
    """What one ``.npy`` entry declares, read without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str) -> NpyHeader:
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{shown}: entry {terminal_text(info.filename)} is not a readable .npy array "
                        f"({terminal_text(exc)})") from None
    if dtype.hasobject:
        raise DataError(f"{shown}: {terminal_text(info.filename)} holds Python objects; only plain arrays are read "
                        "(allow_pickle is off)")
    return NpyHeader(tuple(int(s) for s in shape), dtype)


def _headers(data: bytes | Path, shown: str) -> dict[str, NpyHeader]:
    """Each known entry's header, after checking names and declared sizes; nothing decoded yet."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"{shown}: not a readable .npz archive ({terminal_text(exc)})") from None
    with archive:
        names = archive.namelist()
        if len(set(names)) != len(names):
            raise DataError(f"{shown}: an entry appears twice; refused (zip readers differ on which one counts)")
        entries = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        missing = [key for key in REQUIRED if key not in entries]
        if missing:
            raise DataError(f"{shown}: no array {' or '.join(repr(m) for m in missing)} (found: "
                            f"{terminal_text(', '.join(sorted(entries)) or 'none')}); an .npz needs 'images' "
                            "(N×C×H×W or N×H×W) and 'labels' (N integers), optionally 'classes' (names)")
        headers = {key: _read_header(archive, entries[key], shown) for key in KNOWN if key in entries}
        for key, header in headers.items():
            if header.nbytes > entries[key].file_size:
                raise DataError(f"{shown}: {key} declares {header.nbytes} bytes but its entry holds "
                                f"{entries[key].file_size}; a damaged or forged file")
    total = sum(h.nbytes for h in headers.values())
    limit = int(available_memory() * MEMORY_SHARE)
    if total > limit:
        raise DataError(f"{shown}: the arrays declare {total >> 20} MiB, more than half the available memory "
                        f"({limit >> 19} MiB); refused before reading")
    check_image_shape(headers["images"].shape, headers["images"].dtype, f"{shown}: images")
    return headers


@dataclass(frozen=True)
class NpzSource:
    """An ``.npz`` file of images and labels."""

    path: Path
    kind: str = "npz"
    count_noun: str = "class names"

    def __str__(self) -> str:
        return str(self.path)

    def _bytes(self) -> bytes:
        limit = int(available_memory() * MEMORY_SHARE)
        try:
            return read_regular_file(self.path, limit)
        except OSError as exc:
            raise DataError(f"cannot read {terminal_text(self.path)}: {terminal_text(exc.strerror or exc)}") from None

    def check(self) -> None:
        if not self.path.is_file():
            raise DataError(f"data file not found: {terminal_text(self.path)}")

    def shape_hint(self) -> tuple[int, int, int] | None:
        try:
            shape = _headers(self.path, terminal_text(self.path))["images"].shape  # headers only
        except DataError:
            return None  # load() reports the problem
        return (shape[1], shape[2], shape[3]) if len(shape) == 4 else (1, shape[1], shape[2])

    def load(self, spec: LoadSpec) -> ImageSet:
        shown = terminal_text(self.path)
        data = self._bytes()
        headers = _headers(data, shown)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                images, labels = arrays["images"], arrays["labels"]
                classes = arrays["classes"] if "classes" in headers else None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{shown}: cannot read the arrays ({terminal_text(exc)})") from None
        if classes is not None and (classes.ndim != 1 or classes.dtype.kind not in "US"):
            raise DataError(f"{shown}: 'classes' must be a 1-D array of strings, not {classes.dtype} of shape "
                            f"{classes.shape}")
        return load_arrays(images, labels, spec, what=shown, root=self.path, classes=classes,
                           digest=hashlib.sha256(data).hexdigest())
