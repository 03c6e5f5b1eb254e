"""The images the zoo trains on, all real: bundled digits and faces, cached MNIST / Fashion-MNIST.

The bundled sets need no download: the digits come with scikit-learn (1,797
real 8×8 handwritten digits, upsampled to 32×32) and the faces with
scikit-image (``lfw_subset``: 100 face and 100 non-face 25×25 crops, upsampled
to 32×32). Real 28×28 MNIST and Fashion-MNIST are read from the cache that
``python -m bench.realdata`` fills once (``realdata_cache()``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leakaudit.errors import ConfigError
from leakaudit.zoo.spec import REAL, ReferenceData, ReferenceSpec


def realdata_cache() -> Path:
    """Where ``bench/realdata.py`` caches real MNIST / Fashion-MNIST: ``$LEAKAUDIT_REALDATA`` or ``.cache/realdata``."""
    override = os.environ.get("LEAKAUDIT_REALDATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / ".cache" / "realdata"


def real_images(dataset: str, size: int = 28) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """A cached real dataset: (N, 1, size, size) uint8, labels, class names; ConfigError when not fetched."""
    npz = realdata_cache() / f"{dataset}.npz"
    if not npz.exists():
        raise ConfigError(f"{dataset} is not cached at {npz}; fetch it once with `python -m bench.realdata` in a "
                          "source checkout, or point $LEAKAUDIT_REALDATA at a folder holding such a cache")
    with np.load(npz) as arrays:
        images = torch.from_numpy(arrays["images"].copy())
        labels = torch.from_numpy(arrays["labels"].astype(np.int64))
        classes = tuple(str(c) for c in arrays["classes"])
    if images.shape[-1] != size:
        images = _upsample(images[:, 0].numpy() / 255.0, size)
    return images, labels, classes


def _upsample(images01: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images01.astype(np.float32))[:, None]  # (N, 1, h, w)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def bundled_images(dataset: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """All images of a dataset: (N, 1, size, size) uint8, labels, class names."""
    if dataset in REAL:
        return real_images(dataset, size)
    if dataset == "digits":
        from sklearn.datasets import load_digits  # scikit-learn is slow to import: only for the digits

        digits = load_digits()
        images = _upsample(digits.images / 16.0, size)
        return images, torch.from_numpy(digits.target.astype(np.int64)), tuple(str(d) for d in range(10))
    if dataset == "lfw":
        from skimage.data import lfw_subset  # scikit-image is slow to import: only for the faces

        # (200, 25, 25) float in [0, 1]; first 100 faces
        faces = lfw_subset()  # type: ignore[no-untyped-call]  # scikit-image leaves it unannotated
        labels = np.array([0] * 100 + [1] * 100, dtype=np.int64)
        return _upsample(faces, size), torch.from_numpy(labels), ("face", "non-face")
    raise ConfigError(f"unknown bundled dataset {dataset!r}")


def split_members(spec: ReferenceSpec) -> ReferenceData:
    """Deterministic per-class split into members and non-members."""
    images, labels, classes = bundled_images(spec.dataset, spec.size)
    rng = np.random.default_rng(spec.seed)
    train_idx: list[int] = []
    holdout_idx: list[int] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        need = spec.train_per_class + spec.holdout_per_class
        if len(idx) < need:
            raise ConfigError(f"class {classes[c]} has {len(idx)} images, the spec needs {need}")
        train_idx.extend(idx[: spec.train_per_class].tolist())
        holdout_idx.extend(idx[spec.train_per_class : need].tolist())
    tr, ho = torch.tensor(train_idx), torch.tensor(holdout_idx)
    return ReferenceData(images[tr], labels[tr], images[ho], labels[ho], classes)


def pretrained_images(spec: ReferenceSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The public pre-training set: ``pretrain_per_class`` images of each class of ``pretrain_dataset``, seeded."""
    images, labels, classes = bundled_images(spec.pretrain_dataset, spec.size)
    rng = np.random.default_rng(spec.seed + 1)
    chosen: list[int] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        chosen.extend(idx[: spec.pretrain_per_class].tolist())
    order = torch.tensor(chosen)
    return images[order], labels[order]
