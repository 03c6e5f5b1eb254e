"""The same images written as every input kind leakaudit reads: a PNG folder, .npz, Parquet, Parquet shards."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from leakaudit.data.folders import write_image_folder


def png_bytes(image: np.ndarray) -> bytes:
    """(C, H, W) uint8 → PNG bytes, as ``write_image_folder`` writes them."""
    plane = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(plane).save(buffer, format="PNG")
    return buffer.getvalue()


def hf_table(images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None) -> Any:
    """A table as ``datasets`` writes it: ``image`` {bytes, path} structs, ``label``, ClassLabel names in the
    metadata."""
    import pyarrow as pa

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": png_bytes(x), "path": None} for x in images], type=image_type),
                      "label": pa.array(labels.astype(np.int64), type=pa.int64())})
    if classes is None:
        return table
    features = {"image": {"_type": "Image"}, "label": {"names": list(classes), "_type": "ClassLabel"}}
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def write_every_kind(root: Path, name: str, images: np.ndarray, labels: np.ndarray,
                     classes: Sequence[str]) -> dict[str, Path]:
    """``images`` (N, C, H, W) uint8 in every on-disk kind; the path of each."""
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    paths = {"folder": root / name, "npz": root / f"{name}.npz", "parquet": root / f"{name}.parquet",
             "shards": root / f"{name}-shards"}
    write_image_folder(paths["folder"], torch.from_numpy(images), torch.from_numpy(labels), classes)
    np.savez(paths["npz"], images=images, labels=labels, classes=np.array(classes))
    table = hf_table(images, labels, classes)
    pq.write_table(table, paths["parquet"])
    paths["shards"].mkdir()
    half = len(labels) // 2
    pq.write_table(table.slice(0, half), paths["shards"] / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(half), paths["shards"] / "train-00001-of-00002.parquet")
    return paths


class PairDataset(torch.utils.data.Dataset):
    """A map-style dataset of (float image in [0, 1], int label), as ``transforms.ToTensor()`` gives."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None) -> None:
        self.images, self.labels = images, labels
        if classes is not None:
            self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]).float() / 255.0, int(self.labels[i])


def shuffled(images: torch.Tensor, labels: torch.Tensor, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Out of class order, as a training script holds its data."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    return images.numpy()[perm], labels.numpy()[perm]
