"""The ResNet-18 audits of docs/performance.md (3×224×224, and smaller with --side): model file, image folders.

Writes ``OUT/r18.pt`` (torchvision's resnet18, random weights, 10 classes,
``torch.jit.script``) and ``OUT/train`` / ``OUT/holdout`` (the first 4 and the
next 8 Fashion-MNIST images of each class, upsampled to 224×224 RGB PNGs or to ``--side``), from
the real-data cache (``python -m bench.realdata``). Then, as measured:

    python bench/resnet224_inputs.py --out /tmp/r18
    /usr/bin/time -v leakaudit run /tmp/r18/r18.pt --data /tmp/r18/train --holdout /tmp/r18/holdout \\
        --effort quick --out /tmp/r18-out
    python bench/resnet224_inputs.py --out /tmp/r18-64 --side 64     # the same audit at 3×64×64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakaudit.zoo import realdata_cache  # noqa: E402

MEMBERS, NONMEMBERS = 4, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--side", type=int, default=224, help="the images' side in pixels (default 224)")
    args = parser.parse_args()
    out, side = args.out, args.side
    data = np.load(realdata_cache() / "fashion-mnist.npz")
    images, labels = data["images"], data["labels"]
    for c in range(10):
        chosen = np.flatnonzero(labels == c)[:MEMBERS + NONMEMBERS]
        for split, picked in (("train", chosen[:MEMBERS]), ("holdout", chosen[MEMBERS:])):
            folder = out / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in picked:
                gray = Image.fromarray(images[i].reshape(28, 28).astype(np.uint8))
                gray.convert("RGB").resize((side, side), Image.BILINEAR).save(folder / f"{i}.png")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    torch.jit.save(torch.jit.script(model), out / "r18.pt")
    print(f"wrote {out / 'r18.pt'}, {out / 'train'} ({10 * MEMBERS} images), {out / 'holdout'} ({10 * NONMEMBERS})")


if __name__ == "__main__":
    main()
