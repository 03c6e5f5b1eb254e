"""Matching benchmark: SSIM throughput, its distance from the matmul limit, scale, prefilter recall.

Prints figures; not a test. Everything is measured in the same run, side by
side, because the CPU may be shared with other jobs: compare the ratios.

    python -m bench.bench_matching --quick        # a minute or two
    python -m bench.bench_matching                # fuller throughput figures
    python -m bench.bench_matching --scale        # + 2,000 candidates × 60,000 images, exact
    python -m bench.bench_matching --scale --scale-prefilter 50
    python -m bench.bench_matching --large --skip-throughput --skip-recall --threads 1   # 40 x 40 at 3x224x224
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from leakaudit.matching.search import best_matches
from leakaudit.matching.ssim import C1, C2, gaussian_filter_valid, local_stats, ssim_matrix
from leakaudit.zoo import bundled_images


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed by other jobs)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(repeat: int = 3) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    return 2 * 1024**3 / timed(lambda: a @ b, repeat) / 1e9


def kernel_flops_per_pair(c: int, h: int, w: int) -> int:
    """FLOPs of the all-pairs kernel: numerator matmul (K = 244), rank-4 denominator, divide and sum."""
    p = c * (h - 10) * (w - 10)
    return p * (2 * 244 + 2 * 4 + 2)


def products_then_filter(cands: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
    """The plain batched alternative: every pair's product image, filtered separably. (n, m)."""
    mx, vx = local_stats(cands)
    my, vy = local_stats(imgs)
    n, m = cands.shape[0], imgs.shape[0]
    out = torch.empty(n, m)
    for i in range(n):
        uxy = gaussian_filter_valid(cands[i : i + 1] * imgs)  # (m, C, Ho, Wo)
        cov = uxy - mx[i : i + 1] * my
        s = ((2 * mx[i : i + 1] * my + C1) * (2 * cov + C2)
             / ((mx[i : i + 1] ** 2 + my**2 + C1) * (vx[i : i + 1] + vy + C2)))
        out[i] = s.flatten(1).mean(1)
    return out


def skimage_pairs_per_s(c: int, h: int, w: int, pairs: int) -> float:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a, b = rng.random((pairs, c, h, w)), rng.random((pairs, c, h, w))

    def run() -> None:
        for x, y in zip(a, b, strict=True):
            structural_similarity(
                x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=0
            )

    return pairs / timed(run, 2)


def throughput(quick: bool) -> None:
    print("== SSIM all-pairs throughput (float32, 2 threads) ==")
    peak = matmul_gflops()
    print(f"plain 1024x1024 fp32 matmul: {peak:.1f} GFLOP/s")
    n, m = (128, 512) if quick else (256, 2048)
    for c, h in ((1, 28), (1, 32), (3, 32)):
        g = torch.Generator().manual_seed(0)
        cands, imgs = torch.rand(n, c, h, h, generator=g), torch.rand(m, c, h, h, generator=g)
        ssim_matrix(cands[:16], imgs[:16])  # warm-up
        t_ours = timed(lambda: ssim_matrix(cands, imgs), 2)
        ours = n * m / t_ours
        sk = skimage_pairs_per_s(c, h, h, 100 if quick else 300)
        nn_, mm = 16, 512
        alt = nn_ * mm / timed(lambda: products_then_filter(cands[:nn_].double().float(), imgs[:mm]), 2)
        gflops = ours * kernel_flops_per_pair(c, h, h) / 1e9
        print(
            f"{c}x{h}x{h}: {ours:12,.0f} pairs/s | scikit-image per pair {sk:8,.0f} pairs/s -> {ours / sk:6.0f}x"
            f" | products+separable filter {alt:10,.0f} pairs/s -> {ours / alt:4.1f}x"
            f" | kernel {gflops:6.1f} GFLOP/s = {100 * gflops / peak:4.1f}% of matmul"
        )
    print("(kernel FLOPs/pair = C*(H-10)*(W-10)*(2*244 + 2*4 + 2); the divide and the sum over positions are")
    print(" memory-bound passes, so the kernel cannot reach the plain matmul's rate)")


def synthetic_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Digit-like uint8 images (count, 1, size, size): real digits shifted, rescaled in contrast, with noise."""
    base, _, _ = bundled_images("digits", size)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(count, 1, size, size, dtype=torch.uint8)
    for s in range(0, count, 4096):
        k = min(4096, count - s)
        x = base[torch.randint(0, len(base), (k,), generator=g)].float()
        dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(x, (dy, dx), (2, 3)) * (0.7 + 0.3 * torch.rand(k, 1, 1, 1, generator=g))
        x = x + 12 * torch.randn(x.shape, generator=g)
        out[s : s + k] = x.clamp(0, 255).round().to(torch.uint8)
    return out


def blurry_candidates(count: int, size: int, seed: int) -> torch.Tensor:
    """Reconstruction-like candidates: blurred, noisy digits in [0, 1], (count, 1, size, size)."""
    x = synthetic_images(count, size, seed + 1).float() / 255
    x = F.avg_pool2d(x, 3, 1, 1)
    g = torch.Generator().manual_seed(seed + 2)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def scale(n_cands: int, n_images: int, size: int, prefilter: int | None) -> None:
    label = "exact" if prefilter is None else f"prefilter={prefilter}"
    print(f"== scale: {n_cands:,} candidates x {n_images:,} synthetic {size}x{size} gray images, {label} ==")
    images = synthetic_images(n_images, size, seed=0)  # uint8, as stored data sets are
    cands = blurry_candidates(n_cands, size, seed=10)
    rss0 = peak_rss_gib()
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  ... {done:,}/{total:,} images", flush=True)

    t0 = time.perf_counter()
    r = best_matches(cands, images, k=5, prefilter=prefilter, progress=progress)
    dt = time.perf_counter() - t0
    print(
        f"time {dt:.1f} s ({r.pairs_scored / dt:,.0f} pairs/s scored) | peak RSS {peak_rss_gib():.2f} GiB"
        f" (before search {rss0:.2f} GiB) | mean best SSIM {r.best_ssim.mean():.4f}"
    )


def prefilter_recall(quick: bool) -> None:
    print("== prefilter recall on real digits (32x32) ==")
    images, _, _ = bundled_images("digits", 32)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(images), generator=g)
    n_c = 300 if quick else 800
    # candidates: blurred, noisy real digits (reconstruction-like); images: the other digits
    cands = F.avg_pool2d(images[perm[:n_c]].float() / 255, 3, 1, 1)
    cands = (cands + 0.05 * torch.randn(cands.shape, generator=g)).clamp(0, 1)
    imgs = images[perm[n_c:]]
    # plus exact copies of 50 images among the candidates: the leaks the search must not miss
    cands = torch.cat([cands, imgs[:50].float() / 255])
    t0 = time.perf_counter()
    exact = best_matches(cands, imgs, k=1)
    t_exact = time.perf_counter() - t0
    print(f"{len(cands)} candidates x {len(imgs)} images; exact search {t_exact:.1f} s")
    for keep in (10, 20, 50):
        t0 = time.perf_counter()
        pre = best_matches(cands, imgs, k=1, prefilter=keep)
        dt = time.perf_counter() - t0
        same = (pre.best_ssim >= exact.best_ssim - 1e-5).float().mean().item()
        loss = (exact.best_ssim - pre.best_ssim).clamp_min(0)
        copies = (pre.best_ssim[:50] > 0.9999).float().mean().item()
        near = (pre.nearest_ssim >= exact.nearest_ssim - 1e-5).float().mean().item()
        print(
            f"top-{keep:>2}: recall of the exact best match {100 * same:5.1f}% (images),"
            f" {100 * near:5.1f}% (candidates' nearest) | planted copies found {100 * copies:.0f}%"
            f" | mean / max SSIM lost {loss.mean():.4f} / {loss.max():.4f} | {dt:.1f} s ({t_exact / dt:.1f}x faster)"
        )


def large(n: int, m: int, side: int, kernel_pairs: int) -> None:
    """Large images: the pairwise path of ``best_matches`` on n × m pairs, against the all-pairs kernel on a few."""
    print(f"== large images: {n} candidates x {m} images at 3x{side}x{side} ==")
    g = torch.Generator().manual_seed(0)
    cands = torch.rand(n, 3, side, side, generator=g)
    imgs = (torch.rand(m, 3, side, side, generator=g) * 255).to(torch.uint8)
    t0 = time.perf_counter()
    best_matches(cands, imgs, k=5)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"best_matches (pairwise above 64x64): {dt:.1f} s, {n * m / dt:.0f} pairs/s, peak RSS {peak:.0f} MB")
    k = kernel_pairs
    t0 = time.perf_counter()
    kernel = ssim_matrix(cands[:k], imgs[:k])
    dk = time.perf_counter() - t0
    pairwise = best_matches(cands[:k], imgs[:k], k=k).topk_ssim  # (k, k), best first per image
    agree = float((kernel.T.sort(dim=1, descending=True).values - pairwise).abs().max())
    print(f"all-pairs kernel on {k} x {k}: {dk:.1f} s, {k * k / dk:.1f} pairs/s "
          f"(the pairwise path is {dk / (k * k) / (dt / (n * m)):.0f}x faster a pair); "
          f"largest difference in SSIM {agree:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a minute or two")
    parser.add_argument("--scale", action="store_true", help="2,000 candidates x 60,000 images end to end")
    parser.add_argument("--scale-candidates", type=int, default=2000)
    parser.add_argument("--scale-images", type=int, default=60000)
    parser.add_argument("--scale-size", type=int, default=28)
    parser.add_argument("--scale-prefilter", type=int, default=None, help="prefilter P for the scale run")
    parser.add_argument("--large", action="store_true", help="40 candidates x 40 images at 3x224x224")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-recall", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.scale:  # first, so the peak RSS it prints is its own
        scale(args.scale_candidates, args.scale_images, args.scale_size, args.scale_prefilter)
    if args.large:
        large(40, 40, 224, kernel_pairs=4)
    if not args.skip_throughput:
        throughput(args.quick)
    if not args.skip_recall:
        prefilter_recall(args.quick)


if __name__ == "__main__":
    main()
