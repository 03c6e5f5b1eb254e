"""Peak memory of loading and matching a large image folder.

Prints figures; not a test. Writes N small real-looking PNG files (digits,
tiled from scikit-learn's bundled set with random shifts) into a temporary
ImageFolder tree, loads it the way an audit does, and matches a set of
candidates against it, reporting peak RSS next to the size of the images as
uint8: memory should follow the uint8 data, not float copies of it, and the
matching must not grow with N².

    python -m bench.bench_memory                 # 50,000 images
    python -m bench.bench_memory --images 5000   # quicker
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from leakaudit.data.folders import load_image_folder, write_image_folder
from leakaudit.matching.search import auto_prefilter, best_matches
from leakaudit.zoo import bundled_images


def peak_rss_gib() -> float:
    """Peak resident set size since the last ``reset_peak`` (VmHWM; Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak() -> None:
    """Start a new peak from the current RSS, so each stage's peak is its own (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def synthetic_digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n real digits (repeated with random shifts so files differ): (n, 1, 32, 32) uint8 and labels."""
    images, labels, _ = bundled_images("digits")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(images), (n,), generator=gen)
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    out = images[idx].clone()
    for i in range(n):
        out[i] = torch.roll(out[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return out, labels[idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images, labels = synthetic_digits(args.images)
    classes = tuple(str(d) for d in range(10))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        t0 = time.perf_counter()
        write_image_folder(root, images, labels, classes)
        written = time.perf_counter() - t0
        del images
        reset_peak()
        baseline = peak_rss_gib()
        t0 = time.perf_counter()
        loaded = load_image_folder(root, channels=1, size=(32, 32))
        load_s = time.perf_counter() - t0
        after_load = peak_rss_gib()
        uint8_gib = loaded.images.numel() / 2**30
        candidates = torch.rand(args.candidates, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        prefilter = auto_prefilter(args.candidates, len(loaded))
        reset_peak()
        before_match = peak_rss_gib()
        t0 = time.perf_counter()
        best_matches(candidates, loaded.images, k=5, prefilter=prefilter)
        match_s = time.perf_counter() - t0
        after_match = peak_rss_gib()

    print(f"{args.images:,} images of 1x32x32 (PNG files written in {written:.1f} s)")
    print(f"  images as uint8:            {uint8_gib * 1024:8.1f} MiB "
          f"(as float32 they would be {uint8_gib * 4096:.1f} MiB)")
    print(f"  RSS before loading:         {baseline * 1024:8.1f} MiB")
    print(f"  peak RSS after loading:     {after_load * 1024:8.1f} MiB  (+{(after_load - baseline) * 1024:.1f} MiB, "
          f"{load_s:.1f} s, {len(loaded) / load_s:,.0f} images/s)")
    print(f"  peak RSS after matching {args.candidates} candidates (prefilter {prefilter}): "
          f"{after_match * 1024:8.1f} MiB "
          f"(+{(after_match - before_match) * 1024:.1f} MiB over the RSS before matching, {match_s:.1f} s)")


if __name__ == "__main__":
    main()
