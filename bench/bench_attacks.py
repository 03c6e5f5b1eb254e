"""Run the reference attacks on the bundled reference models and print what they leak.

For every reference (``audits/<name>.toml``) the model is built once and cached
under ``bench/out/<name>/``, loaded back the way the tool loads a user's model
(TorchScript through ``load_model``), and attacked by each reference attack of
``bench.attacks``. Every candidate is matched (SSIM) against every member and
every non-member; a sample's score is its best match over all candidates. The
leak score is the Mann–Whitney AUC of members' against non-members' best
matches (0.5: members are matched no better than unseen images).

    python -m bench.bench_attacks [--models a,b] [--quick] [--seed N] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.attacks import class_mean_candidates, kkt_reconstruction, pixel_inversion
from leakaudit import scoring
from leakaudit.model.target import TargetModel, load_model
from leakaudit.zoo import BUNDLED, ReferenceData, build_reference, load_spec, shipped_audits, split_members

OUT = Path(__file__).resolve().parent / "out"
LADDER = ["digits-mlp-1pc", "digits-mlp-2pc", "digits-mlp-5pc", "digits-mlp-20pc"]
THRESHOLDS = (0.4, 0.5, 0.6)


def ssim_matrix(cands: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float [0, 1] × (M, C, H, W) uint8 → (N, M), the pinned definition."""
    from leakaudit.matching.ssim import ssim_matrix as pinned

    return pinned(cands, imgs)


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """The audit's Mann–Whitney AUC (``leakaudit.scoring.auc``)."""
    return scoring.auc(pos.double().numpy(), neg.double().numpy())


@dataclass
class AttackResult:
    name: str
    seconds: float
    n_candidates: int
    member_best: torch.Tensor  # (n_train,)
    holdout_best: torch.Tensor  # (n_holdout,)

    @property
    def leak_score(self) -> float:
        return auc(self.member_best, self.holdout_best)


def evaluate(name: str, images: torch.Tensor, data: ReferenceData, seconds: float) -> AttackResult:
    sims = ssim_matrix(images, torch.cat([data.train_images, data.holdout_images]))  # (N, n_train + n_holdout)
    best = sims.max(0).values
    n = len(data.train_images)
    return AttackResult(name, seconds, len(images), best[:n], best[n:])


def loss_auc(target: TargetModel, data: ReferenceData) -> float:
    """Loss-threshold membership test: lower loss → member."""
    with torch.no_grad():
        tl = target.logits(data.train_images.float() / 255)
        hl = target.logits(data.holdout_images.float() / 255)
    return scoring.membership_test(tl, data.train_labels, hl, data.holdout_labels, n_boot=0).auc


Attack = Callable[[TargetModel, ReferenceData], torch.Tensor]


def attacks(quick: bool, seed: int, is_mlp: bool, n_train: int,
            kkt_budget: float | None) -> list[tuple[str, str, Attack]]:
    """(kind, label, attack) for every reference attack; KKT only on MLPs (full-model θ, see bench.attacks)."""
    per_class = 4 if quick else 10
    pix_steps = 150 if quick else 400
    kkt_steps = 150 if quick else 800
    kkt_budget = kkt_budget if kkt_budget is not None else (30.0 if quick else 240.0)
    n_kkt = min(2 * n_train, 200)

    def class_mean(target: TargetModel, data: ReferenceData) -> torch.Tensor:
        return class_mean_candidates(data.holdout_images, data.holdout_labels, len(data.classes))[0]

    def pixel(target: TargetModel, data: ReferenceData) -> torch.Tensor:
        return pixel_inversion(target, per_class, steps=pix_steps, seed=seed)[0]

    def kkt(target: TargetModel, data: ReferenceData) -> torch.Tensor:
        return kkt_reconstruction(target, n_kkt, steps=kkt_steps, seed=seed, budget_s=kkt_budget)[0]

    out: list[tuple[str, str, Attack]] = [
        ("class-mean", "class-mean", class_mean),
        ("pixel", f"pixel-inv x{per_class}", pixel),
    ]
    if is_mlp:
        out.append(("kkt", f"kkt n={n_kkt}", kkt))
    return out


def run_model(name: str, quick: bool, seed: int, which: set[str], kkt_budget: float | None) -> list[str]:
    spec, _ = load_spec(name)
    t0, c0 = time.perf_counter(), time.process_time()
    built = build_reference(spec, OUT / name)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    data = split_members(spec)
    target = load_model(built.model_path, input_size=(spec.size, spec.size),
                        shape_hint=tuple(data.train_images.shape[1:]), device="cpu")
    m = built.metrics
    lines = [
        f"{name}: {len(data.train_images)} members, {len(data.holdout_images)} non-members, "
        f"train acc {m['train_accuracy']:.3f}, holdout acc {m['holdout_accuracy']:.3f}, "
        f"loss-threshold AUC {loss_auc(target, data):.3f} "
        f"(build {build_s:.1f} s wall, {build_cpu:.1f} s CPU; 0 when cached)"
    ]
    lines.append(
        f"  {'attack':<16} {'N':>4} {'leak':>6} {'mem>=.4':>8} {'mem>=.5':>8} {'mem>=.6':>8} "
        f"{'non>=.4':>8} {'non>=.5':>8} {'non>=.6':>8} {'mem mean':>9} {'non mean':>9} {'sec':>6}"
    )
    for kind, label, attack in attacks(quick, seed, spec.arch == "mlp", len(data.train_images), kkt_budget):
        if kind not in which:
            continue
        t = time.perf_counter()
        images = attack(target, data)
        r = evaluate(label, images, data, time.perf_counter() - t)
        fm = [float((r.member_best >= th).float().mean()) for th in THRESHOLDS]
        fn = [float((r.holdout_best >= th).float().mean()) for th in THRESHOLDS]
        lines.append(
            f"  {label:<16} {r.n_candidates:>4} {r.leak_score:>6.3f} "
            + " ".join(f"{v:>8.2f}" for v in fm + fn)
            + f" {float(r.member_best.mean()):>9.3f} {float(r.holdout_best.mean()):>9.3f} {r.seconds:>6.1f}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bundled = [n for n in shipped_audits() if load_spec(n)[0].dataset in BUNDLED]  # real data: bench_realdata.py
    parser.add_argument("--models", default=",".join(bundled), help="comma-separated audit names")
    parser.add_argument("--quick", action="store_true", help="fewer candidates and steps")
    parser.add_argument("--attacks", default="class-mean,pixel,kkt",
                        help="comma-separated subset of class-mean,pixel,kkt")
    parser.add_argument("--kkt-budget", type=float, default=None, help="seconds per KKT run (default 240, quick 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        for line in run_model(name, args.quick, args.seed, set(args.attacks.split(",")), args.kkt_budget):
            print(line, flush=True)


if __name__ == "__main__":
    main()
