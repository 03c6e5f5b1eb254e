"""Parquet files in the Hugging Face layout: an ``image`` column of encoded images, a ``label`` column.

The image column holds ``{bytes, path}`` structs (what ``datasets`` writes for
an ``Image`` feature) or the encoded bytes themselves; only the bytes are
read, never a path they name. Class names come from the ``ClassLabel`` names
that ``datasets`` stores in the schema's ``huggingface`` metadata, when
present. A folder is read as the shards of one split
(``train-00000-of-00003.parquet`` …, all of them present), in name order.

Each image is decoded exactly as an image file is (``data.decode_image``: size
cap, header checks before decoding, the same conversion), so a Parquet file
and a folder of the same PNGs give the same tensors. Before a row group is
read its declared size is checked against the memory this machine has.
Needs pyarrow (``pip install leakaudit[parquet]``); nothing in the file runs
(pyarrow ≥ 14.0.1 never unpickles extension types, and no pandas metadata is
used).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leakaudit.data.folders import ImageSet, SkippedFile, decode_image
from leakaudit.data.formats import ImageFormatError, open_image
from leakaudit.data.arrays import LoadSpec, class_names, in_class_order, resolve_labels
from leakaudit.errors import DataError
from leakaudit.loading.limits import MEMORY_SHARE, available_memory
from leakaudit.runtime.digest import file_sha256
from leakaudit.sanitize import terminal_text

INSTALL_HINT = "reading Parquet needs pyarrow: pip install 'leakaudit[parquet]'"
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"
SAFE_PYARROW = (14, 0, 1)  # the first release that never unpickles an extension type from a file
SHARD = re.compile(r"^(?P<split>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.parquet$")


def _pyarrow() -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, or the error that names the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    if _version(pyarrow.__version__) < SAFE_PYARROW:
        raise DataError(f"pyarrow {pyarrow.__version__} unpickles extension types found in a file (CVE-2023-47248); "
                        "reading Parquet needs pyarrow ≥ 14.0.1: pip install -U 'leakaudit[parquet]'")
    return pyarrow, pyarrow.parquet


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def is_parquet(path: Path) -> bool:
    """A ``.parquet`` file, or a folder whose files are (a Hugging Face split's shards)."""
    if path.suffix == ".parquet":
        return True
    return path.is_dir() and any(p.suffix == ".parquet" for p in path.iterdir() if p.is_file())


def shard_files(path: Path) -> list[Path]:
    """The files of one split: the file itself, or a folder's ``*.parquet`` with every shard present."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
    shown = terminal_text(path)
    matched = [SHARD.match(p.name) for p in files]
    if any(m is None for m in matched):
        return files
    splits = sorted({m["split"] for m in matched if m is not None})
    if len(splits) > 1:
        raise DataError(f"{shown} holds the shards of several splits ({terminal_text(', '.join(splits))}); point at "
                        "a folder with one split's shards, or at one .parquet file")
    counts = {int(m["count"]) for m in matched if m is not None}
    present = {int(m["index"]) for m in matched if m is not None}
    if len(counts) != 1 or present != set(range(counts.pop())):
        raise DataError(f"{shown}: the shards are incomplete or inconsistent "
                        f"({terminal_text(', '.join(p.name for p in files))}); every -NNNNN-of-NNNNN file is needed")
    return files


def _hf_features(schema: Any) -> dict[str, Any]:
    """The ``datasets`` features stored in the schema's metadata (empty when absent or unreadable)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    try:
        features = json.loads(raw.decode("utf-8")).get("info", {}).get("features", {})
    except (ValueError, AttributeError, UnicodeDecodeError):
        return {}
    return features if isinstance(features, dict) else {}


def _feature_type(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


def _pick(names: list[str], wanted: str, features: dict[str, Any], feature_type: str) -> str | None:
    """The column named ``wanted``, else the one column ``datasets`` marks with ``feature_type``."""
    if wanted in names:
        return wanted
    typed = [n for n in names if _feature_type(features.get(n)) == feature_type]
    return typed[0] if len(typed) == 1 else None


@dataclass(frozen=True)
class Layout:
    """Which columns hold the images and labels, and the class names the schema carries."""

    image: str
    label: str
    classes: tuple[str, ...] | None


def _layout(schema: Any, shown: str) -> Layout:
    pa, _ = _pyarrow()
    names = list(schema.names)
    features = _hf_features(schema)
    image = _pick(names, IMAGE_COLUMN, features, "Image")
    label = _pick(names, LABEL_COLUMN, features, "ClassLabel")
    for column, wanted in ((image, IMAGE_COLUMN), (label, LABEL_COLUMN)):
        if column is None:
            raise DataError(f"{shown}: no {wanted!r} column (columns: {terminal_text(', '.join(names))}); the "
                            f"Hugging Face layout has {IMAGE_COLUMN!r} (encoded images) and {LABEL_COLUMN!r} "
                            "(class indices)")
    assert image is not None and label is not None
    image_type = schema.field(image).type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
            or (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0)):
        raise DataError(f"{shown}: column {terminal_text(image)!r} is {image_type}, not encoded image bytes "
                        "(a {bytes, path} struct or binary)")
    if not pa.types.is_integer(schema.field(label).type):
        raise DataError(f"{shown}: column {terminal_text(label)!r} is {schema.field(label).type}, not integer labels")
    feature = features.get(label)
    names_list = feature.get("names") if isinstance(feature, dict) and _feature_type(feature) == "ClassLabel" else None
    try:
        classes = class_names(names_list, shown) if names_list else None
    except DataError:
        classes = None  # malformed metadata: the labels still index the model's classes
    return Layout(image, label, classes)


def _open(path: Path) -> Any:
    _, pq = _pyarrow()
    shown = terminal_text(path)
    if not path.is_file():
        raise DataError(f"data file not found: {shown}")
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid / OSError: a truncated or foreign file
        raise DataError(f"{shown}: not a readable Parquet file ({terminal_text(exc)})") from None


def _encoded(value: Any) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, bytes) else None


@dataclass(frozen=True)
class ParquetSource:
    """One Parquet file, or a folder of one split's shards."""

    path: Path
    kind: str = "parquet"
    count_noun: str = "class names"

    def __str__(self) -> str:
        return str(self.path)

    def _files(self) -> list[tuple[Path, Any, Layout]]:
        _pyarrow()
        if not self.path.exists():
            raise DataError(f"data path not found: {terminal_text(self.path)}")
        opened = []
        for path in shard_files(self.path):
            handle = _open(path)
            opened.append((path, handle, _layout(handle.schema_arrow, terminal_text(path))))
        if not opened:
            raise DataError(f"no .parquet files in {terminal_text(self.path)}")
        return opened

    def check(self) -> None:
        self._files()

    def shape_hint(self) -> tuple[int, int, int] | None:
        try:
            for _path, handle, layout in self._files()[:1]:
                for batch in handle.iter_batches(batch_size=1, columns=[layout.image]):
                    data = _encoded(batch.column(0).to_pylist()[0])
                    if data is not None:
                        with open_image(io.BytesIO(data)) as img:  # the header only
                            return (1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3), img.height, img.width
                    break
        except Exception:  # load() reports the real problem
            return None
        return None

    def _rows(self, path: Path, handle: Any, layout: Layout) -> Iterator[tuple[int, Any, Any]]:
        """(row, image value, label) of one file, a row group at a time, each checked before it is read."""
        shown = terminal_text(path)
        limit = int(available_memory() * MEMORY_SHARE)
        row = 0
        for group in range(handle.metadata.num_row_groups):
            declared = handle.metadata.row_group(group).total_byte_size
            if declared > limit:
                raise DataError(f"{shown}: row group {group} declares {declared >> 20} MiB, more than half the "
                                f"available memory; refused before reading")
            try:
                table = handle.read_row_group(group, columns=[layout.image, layout.label])
            except Exception as exc:  # corrupt pages
                raise DataError(f"{shown}: row group {group} cannot be read ({terminal_text(exc)})") from None
            for value, label in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
                yield row, value, label
                row += 1

    def load(self, spec: LoadSpec) -> ImageSet:
        files = self._files()
        own = files[0][2].classes
        total = sum(handle.metadata.num_rows for _, handle, _ in files)
        spec.check_capacity(total, terminal_text(self.path))  # rows, not bytes: dictionary pages compress anything
        pixels: list[np.ndarray] = []
        labels: list[int] = []
        paths: list[str] = []
        skipped: list[SkippedFile] = []
        digest = hashlib.sha256()
        done = 0
        for path, handle, layout in files:
            name = path.name
            digest.update(name.encode("utf-8") + b"\0" + bytes.fromhex(file_sha256(path)))
            for row, value, label in self._rows(path, handle, layout):
                spec.tick()
                done += 1
                where = f"{name}[{row}]"
                if label is None:
                    raise DataError(f"{terminal_text(path)}: row {row} has no label")
                try:
                    problem = self._decode(value, spec, pixels)
                except ImageFormatError as exc:
                    raise ImageFormatError(f"{terminal_text(path)}: row {row}: {exc}") from None
                if problem is not None:
                    if spec.strict:
                        raise DataError(f"{terminal_text(path)}: row {row}: {problem}")
                    skipped.append(SkippedFile(terminal_text(where), problem))
                    continue
                labels.append(int(label))
                paths.append(where)
                if spec.progress is not None:
                    spec.progress(done, total)
        if not pixels:
            first = f" (first: {skipped[0].reason})" if skipped else ""
            raise DataError(f"no readable images in {terminal_text(self.path)}{first}")
        mapped, classes = resolve_labels(np.asarray(labels, dtype=np.int64), own, spec, terminal_text(self.path))
        return in_class_order(self.path, np.stack(pixels), mapped, paths, classes, digest.hexdigest(), skipped)

    @staticmethod
    def _decode(value: Any, spec: LoadSpec, pixels: list[np.ndarray]) -> str | None:
        """Append the decoded image; or why it was skipped, as for an unreadable file."""
        data = _encoded(value)
        if data is None:
            return "no image bytes (a path reference alone is never followed)"
        if not data:
            return "empty image (0 bytes)"
        if len(data) > spec.max_file_bytes:
            return f"image of {len(data)} bytes is over the {spec.max_file_bytes}-byte limit (--max-image-mb)"
        try:
            pixels.append(decode_image(data, spec.channels, spec.size))
        except ImageFormatError:
            raise
        except DataError as exc:
            return str(exc)
        return None

