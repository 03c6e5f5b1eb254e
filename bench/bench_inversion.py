"""Benchmark of the inversion engine on the reference audits (prints figures; not a test).

For every reference model (built here from bundled real data, see audits/):
the member-vs-non-member leak score (AUC of best-match SSIM, members vs the
evaluation non-members), the fractions of members / non-members whose best
match reaches SSIM 0.4 / 0.5 / 0.6, mean best-match SSIM, wall time and
steps/s, for leakaudit's informed and data-free inversions and, in the same
run, the reference attacks: class-mean images, the simple pixel inversion (MIFace
style), the multiclass KKT reconstruction, and (informed) the pre-trained
generator alone, before the classifier is consulted. Informed runs also report the paired gain test
(each image's gain in best-match SSIM over the pre-trained generator, members
vs non-members, AUC and permutation p-value). Optional: an ablation table
(each loss term / stage switched off in turn) and the generator step cost
relative to one classifier forward+backward on the same batch.

    python bench/bench_inversion.py                       # all models, default settings
    python bench/bench_inversion.py --models digits-mlp-1pc,digits-mlp-2pc --ablation digits-mlp-1pc
    python bench/bench_inversion.py --models digits-mlp-2pc --kkt-budget 0 --set candidates_per_class=4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import attacks  # noqa: E402
from leakaudit.pipeline.inputs import prior_split  # noqa: E402
from leakaudit.inversion import InversionConfig, InversionResult, invert  # noqa: E402
from leakaudit.matching.search import best_matches  # noqa: E402
from leakaudit.model.target import TargetModel, load_model  # noqa: E402
from leakaudit.zoo import build_reference, load_spec, split_members  # noqa: E402
from leakaudit import scoring  # noqa: E402

MODELS = (
    "digits-mlp-1pc", "digits-mlp-2pc", "digits-mlp-5pc", "digits-mlp-20pc",
    "digits-cnn-20pc", "digits-cnn-robust", "lfw-cnn", "digits-mlp-haim",
)
THRESHOLDS = (0.4, 0.5, 0.6)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """The audit's Mann-Whitney AUC (``leakaudit.scoring.auc``); NaN when a group is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return scoring.auc(np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64))


def best_ssim(cands: torch.Tensor, images_u8: torch.Tensor) -> np.ndarray:
    """(M,) best SSIM of each image over all candidates (every candidate vs every image)."""
    return best_matches(cands, images_u8, k=1).best_ssim.double().numpy()


@dataclasses.dataclass
class Row:
    model: str
    method: str
    leak: float
    members: np.ndarray
    nonmembers: np.ndarray
    seconds: float
    steps_per_s: float | None
    extra: str = ""

    def line(self) -> str:
        fr_m = "/".join(f"{(self.members >= t).mean():.2f}" for t in THRESHOLDS)
        fr_n = "/".join(f"{(self.nonmembers >= t).mean():.2f}" for t in THRESHOLDS)
        p99 = np.quantile(self.nonmembers, 0.99)
        above = int((self.members > p99).sum())
        sps = f"{self.steps_per_s:7.1f}" if self.steps_per_s is not None else "      -"
        return (f"{self.model:18s} {self.method:22s} {self.leak:5.3f}  {fr_m:14s} {fr_n:14s} "
                f"{self.members.mean():5.3f} {self.nonmembers.mean():5.3f} {above:3d}/{len(self.members):<3d} "
                f"{self.seconds:6.1f} {sps}  {self.extra}")


HEADER = (f"{'model':18s} {'method':22s} {'leak':5s}  {'mem>=.4/.5/.6':14s} {'non>=.4/.5/.6':14s} "
          f"{'mMem':5s} {'mNon':5s} {'>p99':7s} {'wall_s':>6s} {'step/s':>7s}  notes")


class Bench:
    """One reference model: its classifier, members, prior and evaluation non-members."""

    def __init__(self, name: str, out: Path, seed: int) -> None:
        self.name = name
        self.seed = seed
        spec, _ = load_spec(ROOT / "audits" / f"{name}.toml")
        built = build_reference(spec, out / name)
        self.metrics = built.metrics
        data = split_members(spec)
        self.target: TargetModel = load_model(built.model_path, input_size=(spec.size, spec.size), device="cpu")
        prior_idx, eval_idx = prior_split(data.holdout_labels, seed)  # the audit's own split
        self.members = data.train_images  # (M, C, H, W) uint8
        self.member_labels = data.train_labels
        self.prior = (data.holdout_images[prior_idx], data.holdout_labels[prior_idx])
        self.evalset = (data.holdout_images[eval_idx], data.holdout_labels[eval_idx])
        self.rows: list[Row] = []

    def loss_auc(self) -> float:
        """Loss-threshold membership AUC of the model itself (lower loss → member)."""
        with torch.no_grad():
            lm = self.target.logits(self.members.float() / 255)
            ln = self.target.logits(self.evalset[0].float() / 255)
        return scoring.membership_test(lm, self.member_labels, ln, self.evalset[1], n_boot=0).auc

    def score(self, method: str, cands: torch.Tensor, seconds: float, steps_per_s: float | None = None,
              extra: str = "") -> Row:
        mem = best_ssim(cands, self.members)
        non = best_ssim(cands, self.evalset[0])
        row = Row(self.name, method, auc(mem, non), mem, non, seconds, steps_per_s, extra)
        self.rows.append(row)
        print(row.line(), flush=True)
        return row

    def run_engine(self, method: str, config: InversionConfig, informed: bool) -> tuple[InversionResult, Row]:
        t0 = time.monotonic()
        result = invert(self.target, config, prior=self.prior if informed else None)
        seconds = time.monotonic() - t0
        extra = f"steps {result.steps}/{result.planned_steps} conf {result.confidence.mean():.3f}"
        if result.notes:
            extra += " | " + "; ".join(result.notes)
        row = self.score(method, result.images, seconds, result.steps / max(seconds, 1e-9), extra)
        return result, row


def paired_gain(b: Bench, result: InversionResult) -> str:
    """Per-image gain in best-match SSIM over the pre-trained generator: the audit's ``weights_gain``."""
    assert result.pretrained_images is not None
    gain = scoring.weights_gain(
        torch.from_numpy(best_ssim(result.images, b.members)), torch.from_numpy(best_ssim(result.images, b.evalset[0])),
        torch.from_numpy(best_ssim(result.pretrained_images, b.members)),
        torch.from_numpy(best_ssim(result.pretrained_images, b.evalset[0])), seed=b.seed,
    )
    return (f"paired gain AUC {gain.gain.value:.3f} p {gain.gain.p_value:.4f} "
            f"(mean gain mem {gain.train_mean_gain:+.3f} non {gain.holdout_mean_gain:+.3f})")


def bench_model(name: str, out: Path, config: InversionConfig, seeds: list[int], kkt_budget: float) -> Bench:
    b = Bench(name, out, seeds[0])
    print(f"# {name}: train acc {b.metrics['train_accuracy']:.2f} holdout acc {b.metrics['holdout_accuracy']:.2f} "
          f"members {len(b.members)} prior {len(b.prior[0])} eval non-members {len(b.evalset[0])} "
          f"loss-membership AUC {b.loss_auc():.3f}", flush=True)
    k = config.candidates_per_class
    t0 = time.monotonic()
    cm, _ = attacks.class_mean_candidates(b.prior[0], b.prior[1], b.target.num_classes)
    b.score("class-mean (prior)", cm, time.monotonic() - t0)
    t0 = time.monotonic()
    pix, _ = attacks.pixel_inversion(b.target, k, steps=400, seed=seeds[0])
    dt = time.monotonic() - t0
    b.score("pixel inversion", pix, dt, 400 / dt)
    if kkt_budget > 0:
        t0 = time.monotonic()
        kkt, _ = attacks.kkt_reconstruction(b.target, max(len(b.members), b.target.num_classes * k), seed=seeds[0],
                                            budget_s=kkt_budget)
        b.score("KKT", kkt, time.monotonic() - t0)
    for seed in seeds:
        result, _ = b.run_engine(f"informed s{seed}", dataclasses.replace(config, seed=seed), informed=True)
        assert result.pretrained_images is not None
        b.score(f"  pretrained s{seed}", result.pretrained_images, 0.0)
        print(f"{'':18s}   {paired_gain(b, result)}", flush=True)
    b.run_engine("data-free", config, informed=False)
    return b


ABLATIONS: dict[str, Callable[[InversionConfig], InversionConfig]] = {
    "no KL": lambda c: dataclasses.replace(c, w_kl=0.0),
    "no CE": lambda c: dataclasses.replace(c, w_ce=0.0),
    "no margin": lambda c: dataclasses.replace(c, w_margin=0.0),
    "no perturbed": lambda c: dataclasses.replace(c, w_perturbed=0.0),
    "no TV": lambda c: dataclasses.replace(c, w_tv=0.0),
    "no range": lambda c: dataclasses.replace(c, w_range=0.0),
    "no BN stats": lambda c: dataclasses.replace(c, w_bn=0.0),
    "+ gradient norm": lambda c: dataclasses.replace(c, w_gradnorm=1.0),
    "+ cos/orth": lambda c: dataclasses.replace(c, w_cos=1.0, w_orth=1.0),
    "+ fine-tuning, no anchor": lambda c: dataclasses.replace(c, finetune_steps=150, w_anchor=0.0),
    "+ fine-tuning (150)": lambda c: dataclasses.replace(c, finetune_steps=150),
    "no span pull": lambda c: dataclasses.replace(c, w_span=0.0),
    "no row space": lambda c: dataclasses.replace(c, rowspace=False),
    "no refinement": lambda c: dataclasses.replace(c, refine_steps=0),
    "no selection": lambda c: dataclasses.replace(c, pool_per_class=c.candidates_per_class),
    "pretrain ae": lambda c: dataclasses.replace(c, pretrain="ae"),
}


def ablation(name: str, out: Path, config: InversionConfig, informed: bool) -> None:
    b = Bench(name, out, config.seed)
    label = "informed" if informed else "data-free"
    b.run_engine(f"{label} default", config, informed)
    for what, change in ABLATIONS.items():
        if not informed and what in ("+ fine-tuning, no anchor", "+ fine-tuning (150)", "pretrain ae"):
            continue
        if what == "no BN stats" and not b.target.has_batchnorm:
            continue  # identical to the default on a model without BatchNorm
        b.run_engine(f"{label} {what}", change(config), informed)


def step_cost(name: str, out: Path, config: InversionConfig) -> None:
    """Seconds of one generator training step over one classifier forward+backward on the same batch."""
    from leakaudit.inversion.generator import ConditionalGenerator
    from leakaudit.inversion.objective import Batch, objective, resolve_weights

    b = Bench(name, out, config.seed)
    t = b.target
    k = t.num_classes
    gen = ConditionalGenerator(t.input_shape, k, latent_dim=config.latent_dim, embed_dim=config.embed_dim,
                               width=config.width, conditioning=config.conditioning, dropout=config.dropout,
                               gen_scale=config.gen_scale)
    weights = resolve_weights(config, t, [])
    targets = torch.arange(k).repeat(config.batch_per_class)
    cond = F.one_hot(targets, k).float()
    rng = torch.Generator().manual_seed(0)
    x_fixed = torch.rand(len(targets), *t.input_shape, requires_grad=True)

    def classifier_step() -> None:
        F.cross_entropy(t.logits(x_fixed), targets).backward(inputs=[x_fixed])

    def generator_step() -> None:
        z = torch.randn(len(targets), config.latent_dim, generator=rng)
        pre = gen.low_res(z, cond)
        loss, _ = objective(t, weights, config, Batch(gen.upsample(pre), pre, cond, targets), rng)
        loss.backward(inputs=list(gen.parameters()))

    def timed(fn: Callable[[], None], reps: int = 20) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    c, g = timed(classifier_step), timed(generator_step)
    print(f"step cost on {name} (batch {len(targets)}): classifier fwd+bwd {c * 1e3:.2f} ms, "
          f"generator step {g * 1e3:.2f} ms, ratio {g / c:.2f}", flush=True)


def _overrides(pairs: list[str]) -> dict[str, object]:
    """``FIELD=VALUE`` strings → InversionConfig fields, each VALUE read as a TOML value."""
    import tomllib

    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set needs FIELD=VALUE, not {pair!r}")
        out[name.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "inversion"))
    parser.add_argument("--budget", type=float, default=150.0, help="seconds per inversion run (the bar allows 180)")
    parser.add_argument("--kkt-budget", type=float, default=120.0, help="seconds for the KKT attack (0: skip)")
    parser.add_argument("--seeds", default="0,1", help="informed-mode seeds (replication of the paired gain)")
    parser.add_argument("--ablation", default="", help="model for the ablation table (empty: none)")
    parser.add_argument("--ablation-budget", type=float, default=90.0, help="seconds per ablation run")
    parser.add_argument("--step-cost", default="digits-mlp-1pc", help="model for the step cost ratio (empty: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change one InversionConfig default, VALUE as in TOML (e.g. w_span=0, rowspace=false); "
                             "repeatable")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    config = dataclasses.replace(InversionConfig(budget_s=args.budget, threads=args.threads), **_overrides(args.set))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"config: {config}", flush=True)
    if args.step_cost:
        step_cost(args.step_cost, out, config)
    names = [m for m in args.models.split(",") if m]
    if names:
        print(HEADER, flush=True)
    for name in names:
        bench_model(name, out, config, seeds, args.kkt_budget)
    if args.ablation:
        print("\n# ablation (informed, then data-free)\n" + HEADER, flush=True)
        short = dataclasses.replace(config, budget_s=args.ablation_budget)
        ablation(args.ablation, out, short, informed=True)
        ablation(args.ablation, out, short, informed=False)


if __name__ == "__main__":
    main()
