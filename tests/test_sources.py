"""Every input kind (folder, .npz, Parquet, shards, tensors, numpy, Dataset) gives the folder's ImageSet; each bad
input one clear error."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from leakaudit.data.arrays import LoadSpec
from leakaudit.errors import DataError
from leakaudit.zoo import split_members
from leakaudit.data.sources import ArraySource, DatasetSource, NpzSource, ParquetSource, resolve_source

from .conftest import TINY_SPEC
from .input_kinds import PairDataset, hf_table, shuffled, write_every_kind

pytest.importorskip("pyarrow")

CLASSES = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    data = split_members(TINY_SPEC)
    return shuffled(data.train_images, data.train_labels)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, arrays: tuple[np.ndarray, np.ndarray]) -> dict[str, Path]:
    images, labels = arrays
    return write_every_kind(tmp_path_factory.mktemp("kinds"), "train", images, labels, CLASSES)


def _sources(kinds: dict[str, Path], images: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    return {
        **{kind: resolve_source(path) for kind, path in kinds.items()},
        "tensors": resolve_source((torch.from_numpy(images), torch.from_numpy(labels))),
        "numpy-uint8": resolve_source((images, labels)),
        "numpy-float": resolve_source((images.astype(np.float64) / 255.0, labels)),
        "numpy-hw": resolve_source((images[:, 0], labels)),
        "dataset": resolve_source(PairDataset(images, labels)),
    }


@pytest.mark.parametrize("spec", [LoadSpec(1, (32, 32), 10), LoadSpec(3, (28, 24), 10)], ids=["native", "rgb-resized"])
def test_every_kind_gives_the_folders_image_set(kinds: dict[str, Path], arrays: tuple[np.ndarray, np.ndarray],
                                                spec: LoadSpec) -> None:
    images, labels = arrays
    sources = _sources(kinds, images, labels)
    assert {type(s).__name__ for s in sources.values()} == {"FolderSource", "NpzSource", "ParquetSource",
                                                           "ArraySource", "DatasetSource"}
    folder = sources.pop("folder").load(spec)  # type: ignore[attr-defined]
    for kind, source in sources.items():
        loaded = source.load(spec)  # type: ignore[attr-defined]
        assert torch.equal(loaded.images, folder.images), kind
        assert torch.equal(loaded.labels, folder.labels), kind
        assert loaded.classes == folder.classes, kind
        assert source.shape_hint() == (1, 32, 32), kind  # type: ignore[attr-defined]


def test_paths_name_each_image_where_its_input_holds_it(kinds: dict[str, Path],
                                                        arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    spec = LoadSpec(1, (32, 32), 10)
    loaded = resolve_source((images, labels)).load(spec)
    for i, path in enumerate(loaded.paths):
        assert np.array_equal(images[int(path[len("images["):-1])], loaded.images[i].numpy())
    shards = resolve_source(kinds["shards"]).load(spec)
    assert shards.paths[0].startswith("train-0000") and shards.paths[0].endswith("]")


def test_provenance_hashes_the_file_bytes_or_the_arrays(kinds: dict[str, Path],
                                                        arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    spec = LoadSpec(1, (32, 32), 10)
    assert NpzSource(kinds["npz"]).load(spec).manifest_sha256 == hashlib.sha256(kinds["npz"].read_bytes()).hexdigest()
    first = ArraySource(images, labels).load(spec).manifest_sha256
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert ArraySource(changed, labels).load(spec).manifest_sha256 != first
    reshaped = ArraySource(images.reshape(len(labels), 1, 16, 64), labels)
    assert reshaped.load(spec).manifest_sha256 != first  # shape counts
    one_file = ParquetSource(kinds["parquet"]).load(spec).manifest_sha256
    assert one_file != ParquetSource(kinds["shards"]).load(spec).manifest_sha256


def test_class_names_come_with_the_data(kinds: dict[str, Path], arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    spec = LoadSpec(1, (32, 32), 10)
    names = tuple(f"digit {d}" for d in range(10))
    assert ArraySource(images, labels, names).load(spec).classes == names
    assert DatasetSource(PairDataset(images, labels, names)).load(spec).classes == names  # a Dataset's .classes
    assert ArraySource(images, labels).load(spec).classes == CLASSES  # unnamed: 0 … K-1 of the model
    holdout = ArraySource(images, 9 - labels, tuple(reversed(names))).load(LoadSpec(1, (32, 32), 10, classes=names))
    assert torch.equal(holdout.labels.sort().values, torch.from_numpy(labels).sort().values)  # mapped by name


def _error(source: object, spec: LoadSpec | None = None) -> str:
    with pytest.raises(DataError) as info:
        source.check()  # type: ignore[attr-defined]
        source.load(spec or LoadSpec(1, (32, 32), 10))  # type: ignore[attr-defined]
    return str(info.value)


def test_a_bad_array_shape_is_one_clear_error(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    message = _error(resolve_source((images.transpose(0, 2, 3, 1).repeat(3, axis=3), labels)))
    assert "must be N×C×H×W" in message and "channels last?" in message
    assert "one integer label per image" in _error(resolve_source((images, labels[:-1])))
    # 0–255 as float
    assert "float images must lie in [0, 1]" in _error(resolve_source((images.astype(np.float32), labels)))
    assert "uint8 (0–255) or float" in _error(resolve_source((images.astype(np.int32), labels)))


def test_labels_outside_the_classes_are_one_clear_error(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    bad = labels.copy()
    bad[3] = 12
    assert "label 12 is outside the 10 classes" in _error(resolve_source((images, bad)))
    np.savez(tmp_path / "bad.npz", images=images, labels=bad)
    assert "label 12 is outside the 10 classes" in _error(resolve_source(tmp_path / "bad.npz"))
    import pyarrow.parquet as pq

    pq.write_table(hf_table(images, bad, CLASSES), tmp_path / "bad.parquet")
    assert "label 12 is outside the 10 classes" in _error(resolve_source(tmp_path / "bad.parquet"))


def test_a_missing_column_is_one_clear_error(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    import pyarrow.parquet as pq

    images, labels = arrays
    pq.write_table(hf_table(images, labels, None).rename_columns(["image", "target"]), tmp_path / "x.parquet")
    assert "no 'label' column (columns: image, target)" in _error(resolve_source(tmp_path / "x.parquet"))
    np.savez(tmp_path / "x.npz", images=images)
    assert "no array 'labels'" in _error(resolve_source(tmp_path / "x.npz"))


def test_a_truncated_parquet_file_is_one_clear_error(tmp_path: Path, kinds: dict[str, Path]) -> None:
    data = kinds["parquet"].read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    assert "not a readable Parquet file" in _error(resolve_source(tmp_path / "cut.parquet"))


def test_incomplete_shards_are_an_error(tmp_path: Path, kinds: dict[str, Path]) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    shard = "train-00000-of-00002.parquet"
    (folder / shard).write_bytes((kinds["shards"] / shard).read_bytes())
    assert "shards are incomplete" in _error(resolve_source(folder))


def test_nothing_in_an_npz_runs(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    np.savez(tmp_path / "objects.npz", images=images, labels=labels, classes=np.array([object()] * 10, dtype=object))
    assert "holds Python objects" in _error(resolve_source(tmp_path / "objects.npz"))


def test_an_npz_declaring_huge_images_is_refused_from_its_header(tmp_path: Path) -> None:
    np.savez(tmp_path / "wide.npz", images=np.zeros((1, 1, 1, 50_000_000), np.uint8), labels=np.zeros(1, np.int64))
    assert "images too large" in _error(resolve_source(tmp_path / "wide.npz"))


def test_without_pyarrow_the_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                             kinds: dict[str, Path]) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert "pip install 'leakaudit[parquet]'" in _error(resolve_source(kinds["parquet"]))


def _tiny_npz(path: Path, n: int = 1_000_000) -> Path:
    """``n`` images of 1×1 pixel in a few kilobytes: small on disk, model-sized each once resized."""
    np.savez_compressed(path, images=np.zeros((n, 1, 1, 1), np.uint8), labels=np.arange(n, dtype=np.int64) % 10)
    return path


def _tiny_parquet(path: Path, n: int = 2_000_000) -> Path:
    """``n`` rows that are one dictionary-encoded 1×1 PNG: tens of kilobytes for millions of images."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    image = pa.repeat(pa.scalar(buffer.getvalue(), pa.binary()), n)  # written as one dictionary page entry
    pq.write_table(pa.table({"image": image, "label": pa.array(np.arange(n) % 10)}), path, use_dictionary=True)
    return path


def _ended_within(seconds: float) -> Callable[[], None]:
    deadline = time.monotonic() + seconds

    def poll() -> None:
        if time.monotonic() > deadline:
            raise DataError("the budget ended the loading")

    return poll


@pytest.mark.parametrize("build", [_tiny_npz, _tiny_parquet], ids=["npz", "parquet"])
def test_a_tiny_file_of_many_tiny_images_is_refused_before_decoding(build: Callable[[Path], Path],
                                                                   tmp_path: Path) -> None:
    source = resolve_source(build(tmp_path / ("tiny.npz" if build is _tiny_npz else "tiny.parquet")))
    assert source.path.stat().st_size < 128 << 10  # type: ignore[union-attr]
    started = time.monotonic()
    message = _error(source, LoadSpec(3, (224, 224), 10))  # 150,528 bytes per image at a 3x224x224 input
    assert "would take" in message and "refused before decoding" in message, message
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("build", [_tiny_npz, _tiny_parquet], ids=["npz", "parquet"])
def test_a_tiny_file_of_many_tiny_images_stops_at_the_budget(build: Callable[[Path], Path], tmp_path: Path) -> None:
    source = resolve_source(build(tmp_path / ("tiny.npz" if build is _tiny_npz else "tiny.parquet")))
    started = time.monotonic()
    assert "the budget ended the loading" in _error(source, LoadSpec(1, (32, 32), 10, poll=_ended_within(3.0)))
    assert time.monotonic() - started < 3.0 + 60  # the poll is reached image by image, not after the whole set
