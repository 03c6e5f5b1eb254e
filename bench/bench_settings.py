"""Engine settings side by side on any reference, through the engine directly (prints figures; not a test).

For every reference in ``--models`` (``audits/NAME.toml``; the real-data ones
need ``python -m bench.realdata`` once) and every threat model in ``--modes``
(``data-free``, ``informed``), the inversion runs once per variant at the
default effort, with the candidates grown for the training set as an audit
grows them, seed 0, one thread. Each variant is a comma-separated list of
``InversionConfig`` overrides (``kkt_steps=0,refine_steps=200``; ``default``
for none). Its candidates are scored on the audit's own member / null split
(bench_realdata.py's ``Split``): leak score, members whose best match exceeds
SSIM 0.4, members' mean best SSIM beside the class-mean image's, the number of
candidates and the inversion's wall seconds.

    python -m bench.bench_settings --models mnist-mlp-10pc,digits-mlp-1pc --modes data-free,informed \\
        --variants kkt_steps=0 default
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import torch

from bench.bench_realdata import HEADER, OUT, Split
from leakaudit.data import load_image_folder
from leakaudit.inputs import split_holdout
from leakaudit.inversion.candidates import grown
from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.invert import invert
from leakaudit.reference import build_reference, load_spec

ROOT = Path(__file__).resolve().parents[1]


def overrides(variant: str) -> dict[str, object]:
    """``"a=1,b=x"`` → {"a": 1, "b": "x"}; ``"default"`` → {}."""
    if variant == "default":
        return {}
    values: dict[str, object] = {}
    for item in variant.split(","):
        key, _, text = item.partition("=")
        try:
            values[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key.strip()] = text
    return values


def run_variant(name: str, split: Split, prior: tuple[torch.Tensor, torch.Tensor], mode: str, variant: str) -> str:
    config = InversionConfig.for_effort("standard", prior="none" if mode == "data-free" else "auto",
                                        threads=1, **overrides(variant))
    config = grown(config, len(split.train), split.target.num_classes, None)
    started = time.monotonic()
    result = invert(split.target, config, prior=None if mode == "data-free" else prior)
    row = split.score(name, mode, result.images, time.monotonic() - started)
    return f"{row.line()}  {variant} (N={len(result.images)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist-mlp-10pc")
    parser.add_argument("--modes", default="data-free,informed")
    parser.add_argument("--variants", nargs="+", default=["default"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    print(HEADER + "  variant", flush=True)
    for name in [m for m in args.models.split(",") if m]:
        spec, _ = load_spec(ROOT / "audits" / f"{name}.toml")
        built = build_reference(spec, OUT / name / "reference")
        split = Split(built)
        shape = split.target.input_shape
        holdout = load_image_folder(built.holdout_dir, channels=shape[0], size=shape[1:], classes=split.train.classes)
        prior_set, _ = split_holdout(holdout, 0)
        for mode in [m for m in args.modes.split(",") if m]:
            for variant in args.variants:
                print(run_variant(name, split, (prior_set.images, prior_set.labels), mode, variant), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
