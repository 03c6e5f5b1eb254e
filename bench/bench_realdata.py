"""The real-data ladder, side by side in one run (prints figures; not a test).

For every real-data reference (``audits/mnist-*``, ``audits/fashion-*``; fetch
the data once with ``python -m bench.realdata``) the audit runs as a user runs
it, ``leakaudit run`` in a child process at the default effort and budget, in
three threat models: data-free (``--prior none``), informed (the default with
``--holdout``) and init-aware (``--init``, the classifier's initial weights or
the checkpoint it was fine-tuned from). Printed per row: the leak score, members whose best match exceeds SSIM
0.4, members' mean best-match SSIM beside the class-mean image's (the
prototype null), the loss-threshold membership AUC, wall time, peak RSS of the
process and the sizes of ``leakaudit.json`` and ``report.html``. In the same
run, on the same member / null split as the audit, the baselines of
``bench/attacks.py``: the pixel inversion and (MLPs) the multiclass KKT
reconstruction.

    python -m bench.bench_realdata [--models mnist-mlp-10pc,...] [--modes data-free,informed,init-aware]
        [--baselines pixel,kkt] [--kkt-budget 240|match] [--threads 1]

``--kkt-budget match`` gives the KKT baseline the wall time of the model's
data-free audit in the same run: the peer and our data-free attack at equal
CPU time (both on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.attacks import kkt_reconstruction, pixel_inversion
from leakaudit.pipeline.inputs import split_holdout
from leakaudit.data.folders import load_image_folder, peek_shape
from leakaudit.matching.null import class_mean_null
from leakaudit.scoring import leak_score
from leakaudit.matching.search import auto_prefilter, best_matches
from leakaudit.model.target import load_model
from leakaudit.zoo import BuiltReference, ReferenceSpec, build_reference, load_spec

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "realdata"
MODELS = ("mnist-mlp-10pc", "mnist-mlp-50pc", "fashion-cnn-bn-50pc", "fashion-cnn-60k", "fashion-resnet18-5k",
          "mnist-cnn-ft-1pc", "mnist-cnn-ft-2pc", "mnist-cnn-ft-10pc", "mnist-cnn-ft-2pc-head", "mnist-cnn-ft-2pc-sgd",
          "mnist-cnn-ft-2pc-adam", "mnist-cnn-bn-ft-2pc", "mnist-resnet18-ft-2pc")
# With ``--kkt-budget match`` the clock ends the KKT run, not a step count (its
# learning rates decay along the budget), so the peer uses all of its time.
KKT_UNCAPPED_STEPS = 10**7
MODES = {"data-free": ["--prior", "none"], "informed": [], "init-aware": None}
HEADER = (f"{'model':20s} {'method':14s} {'leak':>5s} {'mem>.4':>7s} {'mMem':>5s} {'mean':>5s} {'lossAUC':>7s} "
          f"{'wall_s':>6s} {'RSS_MiB':>7s} {'json_kB':>7s} {'html_kB':>7s}  verdict")


@dataclass
class Row:
    """One attack on one reference, as printed."""

    model: str
    method: str
    leak: float
    above: int
    n_members: int
    member_mean: float
    class_mean: float
    loss_auc: float | None
    wall_s: float
    rss_mib: float | None = None
    json_kb: float | None = None
    html_kb: float | None = None
    verdict: str = ""

    def line(self) -> str:
        def opt(v: float | None, fmt: str) -> str:
            return format(v, fmt) if v is not None else "-"

        return (f"{self.model:20s} {self.method:14s} {self.leak:5.3f} {self.above:>3d}/{self.n_members:<3d} "
                f"{self.member_mean:5.3f} {self.class_mean:5.3f} {opt(self.loss_auc, '7.3f'):>7s} {self.wall_s:6.1f} "
                f"{opt(self.rss_mib, '7.0f'):>7s} {opt(self.json_kb, '7.1f'):>7s} {opt(self.html_kb, '7.1f'):>7s}  "
                f"{self.verdict}")


def run_cli(built: BuiltReference, mode: str, out: Path, threads: int,
            args: Sequence[str] = ()) -> tuple[dict, float, float]:
    """``leakaudit run`` in a child process: (the JSON document, wall seconds, peak RSS in MiB).

    ``args``: further command-line arguments after the mode's (``--config FILE``, ``--conditioning …``).
    """
    extra = MODES[mode] if MODES[mode] is not None else ["--init", str(built.init_path)]
    argv = [sys.executable, "-m", "leakaudit", "run", str(built.model_path), "--data", str(built.train_dir),
            "--holdout", str(built.holdout_dir), "--out", str(out), "--quiet", *extra, *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise RuntimeError(f"{' '.join(argv)} exited {code}")
    return json.loads((out / "leakaudit.json").read_text()), wall, usage.ru_maxrss / 1024


def member_figures(doc: dict) -> tuple[float, int, int, float, float]:
    """From an audit document: leak score, members above SSIM 0.4, members, their mean best SSIM, the class mean's."""
    s = doc["summary"]
    return (s["leak_score"]["value"], round(s["train"]["fraction_above"]["0.4"] * s["n_train"]), s["n_train"],
            s["train"]["mean"], s["class_mean_null"]["train_mean"])


def built_reference(name: str) -> tuple[ReferenceSpec, BuiltReference]:
    """A shipped reference (``audits/NAME.toml``), built once under ``OUT``; prints its accuracies."""
    spec, _ = load_spec(ROOT / "audits" / f"{name}.toml")
    started = time.monotonic()
    built = build_reference(spec, OUT / name / "reference")
    m = built.metrics
    print(f"# {name}: train acc {m['train_accuracy']:.3f}, holdout acc {m['holdout_accuracy']:.3f} "
          f"(built in {time.monotonic() - started:.0f} s; 0 when cached)", flush=True)
    return spec, built


def audit_row(name: str, mode: str, built: BuiltReference, threads: int) -> Row:
    out = OUT / name / mode
    doc, wall, rss = run_cli(built, mode, out, threads)
    return Row(name, doc["mode"] if mode != "init-aware" or doc["mode"] == "init-aware" else f"{mode}?",
               *member_figures(doc), doc["summary"]["membership_loss_auc"], wall, rss,
               (out / "leakaudit.json").stat().st_size / 1024, (out / "report.html").stat().st_size / 1024,
               f"{doc['verdict']} ({doc['inversion']['completed_fraction']:.0%} of the planned steps)")


class Split:
    """The audit's own member / null split of a reference, for the baselines."""

    def __init__(self, built: BuiltReference, seed: int = 0) -> None:
        self.target = load_model(built.model_path, device="cpu", shape_hint=peek_shape(built.train_dir))
        shape = self.target.input_shape
        self.train = load_image_folder(built.train_dir, channels=shape[0], size=shape[1:])
        holdout = load_image_folder(built.holdout_dir, channels=shape[0], size=shape[1:], classes=self.train.classes)
        _, self.null = split_holdout(holdout, seed)
        self.prototype = class_mean_null(self.train.images, self.train.labels, self.null.images, self.null.labels)

    def score(self, name: str, method: str, cands: torch.Tensor, wall: float) -> Row:
        prefilter = auto_prefilter(len(cands), len(self.train) + len(self.null))
        mem = best_matches(cands, self.train.images, k=1, prefilter=prefilter).best_ssim.double()
        non = best_matches(cands, self.null.images, k=1, prefilter=prefilter).best_ssim.double()
        return Row(name, method, leak_score(mem, non, n_boot=0, n_perm=0).value, int((mem > 0.4).sum()), len(mem),
                   float(mem.mean()), self.prototype.train_mean, None, wall)


def baseline_rows(name: str, built: BuiltReference, which: set[str], kkt_budget: float, is_mlp: bool,
                  kkt_steps: int = 800) -> list[Row]:
    if not which or ("pixel" not in which and not is_mlp):
        return []
    split = Split(built)
    rows = []
    if "pixel" in which:
        started = time.monotonic()
        cands, _ = pixel_inversion(split.target, 10, steps=400, seed=0)
        rows.append(split.score(name, "pixel-inv x10", cands, time.monotonic() - started))
    if "kkt" in which and is_mlp:
        n = min(2 * len(split.train), 1000)
        started = time.monotonic()
        cands, _ = kkt_reconstruction(split.target, n, steps=kkt_steps, seed=0, budget_s=kkt_budget)
        rows.append(split.score(name, f"kkt n={n}", cands, time.monotonic() - started))
    return rows


def kkt_budget(option: str, walls: dict[str, float]) -> float:
    """Seconds for the KKT baseline: the option's, or the data-free audit's wall time (``match``)."""
    if option != "match":
        return float(option)
    if "data-free" not in walls:
        raise SystemExit("--kkt-budget match needs the data-free mode in --modes")
    return walls["data-free"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--baselines", default="pixel,kkt")
    parser.add_argument("--kkt-budget", default="240",
                        help="seconds of the KKT baseline per model, or 'match': the data-free audit's wall time")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(HEADER, flush=True)
    for name in [m for m in args.models.split(",") if m]:
        spec, built = built_reference(name)
        walls: dict[str, float] = {}
        for mode in [m for m in args.modes.split(",") if m]:
            row = audit_row(name, mode, built, args.threads)
            walls[mode] = row.wall_s
            print(row.line(), flush=True)
        for row in baseline_rows(name, built, set(args.baselines.split(",")) - {""},
                                 kkt_budget(args.kkt_budget, walls), spec.arch == "mlp",
                                 KKT_UNCAPPED_STEPS if args.kkt_budget == "match" else 800):
            print(row.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
