"""Distributed audit: matching throughput and inversion steps/s for 1 and 2 processes, side by side.

    python -m bench.bench_distributed                 # 1 process vs 2 (data-parallel), 3 seeds each
    python -m bench.bench_distributed --steps 40 --repeats 1   # quicker

Each configuration runs under torch's elastic launcher (``torchrun``) with
the gloo backend on the CPU, on real digits: matching scores candidates
against all 1,797 bundled digits; the inversion trains the generator against
the ``digits-mlp-1pc`` reference (one member per class, where reconstruction
leaks), and the quality columns say how close its candidates come to the
members and to non-members (best-match SSIM). Threads are split evenly
(cores / processes), so on a 2-core machine the 2-process figures show the
overhead of distribution, not a speed-up. ``allreduce`` compares one flat
all-reduce of the generator's gradients with one call per tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "digits-mlp-1pc"


def _worker(args: argparse.Namespace) -> None:
    from leakaudit.data.folders import load_image_folder, peek_shape
    from leakaudit.runtime.distributed import DistContext
    from leakaudit.inversion import InversionCallbacks, InversionConfig, invert
    from leakaudit.inversion.generator import ConditionalGenerator
    from leakaudit.matching.search import best_matches
    from leakaudit.matching.sharded import sharded_best_matches
    from leakaudit.model.target import load_model
    from leakaudit.zoo import build_reference, bundled_images, load_spec

    torch.set_num_threads(args.threads)
    ctx = DistContext.from_environment(device="cpu")
    row: dict[str, Any] = {"processes": ctx.world_size, "threads": args.threads}

    # matching: N candidates against every bundled digit, images sharded over the ranks
    images, _, _ = bundled_images("digits")
    gen = torch.Generator().manual_seed(0)
    candidates = (images[torch.randperm(images.shape[0], generator=gen)[: args.candidates]].float() / 255
                  + 0.1 * torch.rand((args.candidates, *images.shape[1:]), generator=gen)).clamp(0, 1)
    sharded_best_matches(candidates[:2], images[:64], ctx, k=5)  # warm-up (first collective, allocator)
    ctx.barrier()
    start = time.perf_counter()
    sharded_best_matches(candidates, images, ctx, k=5)
    ctx.barrier()
    seconds = time.perf_counter() - start
    row["match_pairs_per_s"] = candidates.shape[0] * images.shape[0] / seconds
    row["match_s"] = seconds

    # inversion: a data-free run with a fixed number of steps
    if "dist" not in __import__("inspect").signature(invert).parameters:
        row["inversion"] = "invert() takes no DistContext in this build"
    else:
        spec, _ = load_spec(REFERENCE)
        folder = Path(args.reference_dir)
        built = build_reference(spec, folder) if ctx.is_main else None  # reused when already built there
        ctx.barrier()
        built = build_reference(spec, folder) if built is None else built
        target = load_model(built.model_path, device="cpu", shape_hint=peek_shape(built.train_dir))
        config = InversionConfig(seed=args.seed, prior="none", steps=args.steps, batch_per_class=8,
                                 pool_per_class=16, candidates_per_class=4, refine_steps=args.refine_steps,
                                 threads=args.threads, budget_s=None)
        times: dict[str, list[float]] = {}
        phase = {"name": ""}

        def on_phase(name: str) -> None:
            phase["name"] = name

        def on_step(step: int, planned: int, losses: dict[str, float]) -> None:
            times.setdefault(phase["name"], []).append(time.perf_counter())

        result = invert(target, config, callbacks=InversionCallbacks(on_step=on_step, on_phase=on_phase), dist=ctx)
        for name, stamps in times.items():  # steps/s between the phase's first and last step
            if len(stamps) > 2:
                row[f"{name}_steps_per_s"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        row["loss"] = result.losses.get("ce", float("nan"))
        if ctx.is_main:
            train = load_image_folder(built.train_dir, channels=1, size=(32, 32))
            holdout = load_image_folder(built.holdout_dir, channels=1, size=(32, 32))
            row["member_ssim"] = float(best_matches(result.images, train.images, k=1).best_ssim.mean())
            row["nonmember_ssim"] = float(best_matches(result.images, holdout.images, k=1).best_ssim.mean())
            row["confidence"] = float(result.confidence.mean())
        # gradient all-reduce: one flat buffer vs one call per tensor, on the generator's shapes
        if ctx.is_distributed:
            import torch.distributed as tdist

            g = ConditionalGenerator(target.input_shape, target.num_classes)
            params = list(g.parameters())
            for p in params:
                p.grad = torch.randn_like(p)
            for label, step in (("flat", lambda: ctx.average_gradients(params, 0.5)),
                                ("per_tensor", lambda: [tdist.all_reduce(p.grad) for p in params])):
                step()
                ctx.barrier()
                start = time.perf_counter()
                for _ in range(30):
                    step()
                row[f"allreduce_{label}_ms"] = (time.perf_counter() - start) / 30 * 1000
            row["generator_tensors"] = len(params)
            row["generator_params"] = sum(p.numel() for p in params)
    if ctx.is_main:
        Path(args.out).write_text(json.dumps(row))
    ctx.close()


def _run(processes: int, threads: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "bench.bench_distributed", "--worker", "--out", str(out),
               "--threads", str(threads), "--steps", str(args.steps),
               "--refine-steps", str(args.refine_steps), "--candidates", str(args.candidates), "--seed", str(seed),
               "--reference-dir", str(args.reference_dir)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the speeds (robust to a neighbour's load spike), mean of the quality over the seeds."""
    import statistics

    row: dict[str, Any] = dict(runs[0])
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), float)]
        if len(values) == len(runs):
            row[key] = statistics.median(values) if key.endswith(("_per_s", "_ms")) else statistics.fmean(values)
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("processes", "processes", "{}"), ("threads", "threads/proc", "{}"),
        ("match_pairs_per_s", "match pairs/s", "{:,.0f}"), ("train_steps_per_s", "train steps/s", "{:.2f}"),
        ("refine_steps_per_s", "refine steps/s", "{:.2f}"), ("member_ssim", "member SSIM", "{:.3f}"),
        ("nonmember_ssim", "non-member SSIM", "{:.3f}"), ("confidence", "confidence", "{:.3f}"),
        ("allreduce_flat_ms", "allreduce flat ms", "{:.2f}"), ("allreduce_per_tensor_ms", "per-tensor ms", "{:.2f}"),
    ]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=80, help="generator training steps")
    parser.add_argument("--refine-steps", type=int, default=40, help="candidate refinement steps")
    parser.add_argument("--candidates", type=int, default=64, help="candidates matched against the 1,797 digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (seeds seed..seed+repeats-1)")
    parser.add_argument("--reference-dir", default=str(ROOT / "bench" / "out" / REFERENCE),
                        help="where the reference is built (reused when already there)")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    cores = os.cpu_count() or 1
    configs = [(1, cores), (1, 1), (2, max(1, cores // 2))]
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    for repeat in range(args.repeats):  # interleaved, so a neighbour's load spike hits every configuration alike
        for config in configs:
            runs[config].append(_run(*config, seed=args.seed + repeat, args=args))
    rows = [_summarise(runs[c]) for c in configs]
    print(f"machine: {cores} cores, torch {torch.__version__}, gloo on CPU; reference {REFERENCE}, "
          f"{args.steps} train + {args.refine_steps} refine steps, {args.candidates} × 1,797 matching pairs; "
          f"median speed and mean quality of {args.repeats} run(s) (seeds {args.seed}..{args.seed + args.repeats - 1})")
    print(_table(rows))
    if "inversion" in rows[0]:
        print(f"inversion: {rows[0]['inversion']}")
    speeds = ("match_pairs_per_s", "train_steps_per_s", "refine_steps_per_s")
    best_single = {key: max(r[key] for r in rows[:2]) for key in speeds if all(key in r for r in rows[:2])}
    for row in rows[2:]:  # against the faster single-process configuration, metric by metric
        print("2 processes / best single process: "
              + ", ".join(f"{key.replace('_per_s', '')} ×{row[key] / base:.2f}" for key, base in best_single.items()))


if __name__ == "__main__":
    main()
