"""Can the span's extreme images single out members? Free directions on dark pixels, per reference (prints figures).

For each dense-first MNIST MLP reference (built once under ``bench/out/realdata``
as ``bench_realdata`` builds it; fetch the data once with ``python -m
bench.realdata``): the first layer's update span, how many pixels it reaches,
how many pixels a member lights, and ``free_directions`` on the dark pixels of
every member beside what the audit reports from 32 public images of its prior
split (``span_faces``). A count of 1 for members means each is an
isolated extreme point; more, and a face of that dimension shares its zeros.

    python -m bench.bench_spanfaces [--models mnist-mlp-10pc,mnist-mlp-50pc]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.bench_realdata import Split, built_reference
from leakaudit.data.folders import load_image_folder
from leakaudit.inversion.initaware import first_layer_update, load_initial_state, update_span
from leakaudit.inversion.spanfaces import DARK_LEVEL, free_directions, span_faces
from leakaudit.matching.ssim import to_float01
from leakaudit.pipeline.inputs import split_holdout

MODELS = ("mnist-mlp-10pc", "mnist-mlp-50pc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("model                rank reached lit(member) members' free (median, min-max)  public free (median)  note s")
    for name in [m for m in args.models.split(",") if m]:
        _, built = built_reference(name)
        split = Split(built)
        target = split.target
        span, why = update_span(first_layer_update(target, load_initial_state(built.init_path)), target)
        if span is None:
            print(f"{name:20s} no span: {why}")
            continue
        shape = target.input_shape
        holdout = load_image_folder(built.holdout_dir, channels=shape[0], size=shape[1:], classes=split.train.classes)
        prior, _ = split_holdout(holdout, 0)  # the audit's own prior split at its default seed
        members = to_float01(split.train.images).flatten(1)
        free = free_directions(span.basis, members)  # every member, for a stable figure
        started = time.monotonic()
        faces = span_faces(span.basis, to_float01(prior.images).flatten(1))
        seconds = time.monotonic() - started
        assert faces is not None
        lit = float((members > DARK_LEVEL).sum(1).double().median())  # every pixel a member lights is reached
        print(f"{name:20s} {faces.rank:4d} {faces.reached:7d} {lit:11.0f} {float(free.double().median()):14.0f} "
              f"({int(free.min())}-{int(free.max())}) {faces.median_free:21.0f} {seconds:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
