"""The paper's own levers on the real-data ladder (prints figures; not a test).

Network inversion (Suhail, Tang & Sethi 2024) names three knobs of its
label-conditioned generator: how the label reaches it (a soft vector, a hot
label matrix as an extra channel, or both), dropout in the generator, and the
diversity losses among a class's candidates (cosine similarity and
orthogonality of their penultimate features). For every real-data reference in
``--models`` (built as ``bench/bench_realdata.py`` builds them, cached under
``bench/out/realdata/NAME/reference``; fetch the data once with
``python -m bench.realdata``) and every threat model in ``--modes`` (data-free:
``--prior none``; informed: the default with ``--holdout``) the audit runs as a
user runs it, ``leakaudit run`` in a child process at the default effort and
budget, once per variant. A variant is a comma-separated list of
``InversionConfig`` fields and values: ``conditioning`` is given with its own
flag (``--conditioning``, a run-level key), every other field in the
``[tool.leakaudit.inversion]`` table of a ``--config`` file written beside the
audit's output (``bench/out/levers/NAME/MODE/``). Printed per row: the leak
score and its change from the ``default`` row of the same reference and mode,
members whose best match exceeds SSIM 0.4, members' mean best-match SSIM beside
the class-mean image's (the prototype null), wall time and the verdict (with
the share of the planned steps done, and a mark where the engine skipped the
diversity losses because the model's penultimate features were not reached).

    python -m bench.bench_levers [--models mnist-mlp-10pc,mnist-mlp-50pc,fashion-cnn-bn-50pc]
        [--modes data-free,informed] [--variants "default;conditioning=vector;dropout=0;w_cos=1,w_orth=1"]
        [--threads 1]

Variants are separated by semicolons; the default list is every lever in turn:
default, conditioning=vector, conditioning=matrix, dropout=0, dropout=0.5,
w_cos=1, w_orth=1 and w_cos=1,w_orth=1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from bench.bench_realdata import MODES as REALDATA_MODES
from bench.bench_realdata import ROOT, built_reference, member_figures, run_cli
from leakaudit.config import RUN_LEVEL_INVERSION_KEYS
from leakaudit.inversion.config import InversionConfig
from leakaudit.zoo import BuiltReference

OUT = ROOT / "bench" / "out" / "levers"
MODELS = ("mnist-mlp-10pc", "mnist-mlp-50pc", "fashion-cnn-bn-50pc")
MODES = ("data-free", "informed")
VARIANTS = ("default", "conditioning=vector", "conditioning=matrix", "dropout=0", "dropout=0.5", "w_cos=1",
            "w_orth=1", "w_cos=1,w_orth=1")
FIELDS = {f.name for f in fields(InversionConfig)} - set(RUN_LEVEL_INVERSION_KEYS)
HEADER = (f"{'model':20s} {'mode':9s} {'variant':19s} {'leak':>5s} {'dLeak':>6s} {'mem>.4':>7s} {'mMem':>5s} "
          f"{'mean':>5s} {'wall_s':>6s}  verdict")


@dataclass(frozen=True)
class Variant:
    """One setting of the levers: the CLI arguments and the engine table that give it."""

    name: str
    conditioning: str | None
    table: dict[str, str]  # field → TOML literal

    @classmethod
    def parse(cls, name: str) -> "Variant":
        if name == "default":
            return cls(name, None, {})
        conditioning, table = None, {}
        for item in name.split(","):
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not value:
                raise SystemExit(f"variant {name!r}: {item!r} is not FIELD=VALUE")
            if key == "conditioning":
                conditioning = value
            elif key in FIELDS:
                table[key] = value if _is_literal(value) else f'"{value}"'
            else:
                raise SystemExit(f"variant {name!r}: {key!r} is no InversionConfig field the table may set")
        return cls(name, conditioning, table)

    def args(self, out: Path) -> list[str]:
        """The extra ``leakaudit run`` arguments; writes the config file to ``out`` when the table is not empty."""
        argv = ["--conditioning", self.conditioning] if self.conditioning else []
        if self.table:
            out.parent.mkdir(parents=True, exist_ok=True)
            path = out.with_suffix(".toml")
            path.write_text("[tool.leakaudit.inversion]\n" + "".join(f"{k} = {v}\n" for k, v in self.table.items()))
            argv += ["--config", str(path)]
        return argv


def _is_literal(value: str) -> bool:
    try:
        tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError:
        return False
    return True


@dataclass
class Row:
    """One audit of one reference under one variant, as printed."""

    model: str
    mode: str
    variant: str
    leak: float
    above: int
    n_members: int
    member_mean: float
    class_mean: float
    wall_s: float
    verdict: str
    d_leak: float | None = None

    def line(self) -> str:
        d = f"{self.d_leak:+6.3f}" if self.d_leak is not None else f"{'-':>6s}"
        return (f"{self.model:20s} {self.mode:9s} {self.variant:19s} {self.leak:5.3f} {d} "
                f"{self.above:>3d}/{self.n_members:<3d} {self.member_mean:5.3f} {self.class_mean:5.3f} "
                f"{self.wall_s:6.1f}  {self.verdict}")


def audit(name: str, mode: str, variant: Variant, built: BuiltReference, threads: int) -> Row:
    out = OUT / name / mode / re.sub(r"[^A-Za-z0-9_.-]+", "_", variant.name)
    shutil.rmtree(out, ignore_errors=True)  # a left-over checkpoint would resume instead of running afresh
    doc, wall, _ = run_cli(built, mode, out, threads, variant.args(out))
    inv = doc["inversion"]
    verdict = f"{doc['verdict']} ({inv['completed_fraction']:.0%} of the planned steps)"
    if any(note.startswith("feature diversity losses skipped") for note in inv["notes"]):
        verdict += ", diversity losses skipped"
    return Row(name, mode, variant.name, *member_figures(doc), wall, verdict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="semicolon-separated; each 'default' or FIELD=VALUE[,FIELD=VALUE...]")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in MODES:
            parser.error(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
    assert set(MODES) <= set(REALDATA_MODES)
    variants = [Variant.parse(v.strip()) for v in args.variants.split(";") if v.strip()]
    print(HEADER, flush=True)
    started_all = time.monotonic()
    for name in [m for m in args.models.split(",") if m]:
        _, built = built_reference(name)
        for mode in modes:
            default: float | None = None
            for variant in variants:
                row = audit(name, mode, variant, built, args.threads)
                if variant.name == "default":
                    default = row.leak
                elif default is not None:
                    row.d_leak = row.leak - default
                print(row.line(), flush=True)
    print(f"# {time.monotonic() - started_all:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
