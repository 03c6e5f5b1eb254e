"""What the confined worker costs: the same audit confined and in-process, and whether the documents agree.

For each bundled reference (built on first use under ``bench/out/``), runs
``leakaudit run MODEL --data … --holdout … --effort quick`` as a user would
(a fresh process), once confined and once with ``LEAKAUDIT_CONFINEMENT=off``.
Prints each run's exit code and wall time, and whether the two JSON documents
are identical once timings, the confinement record and the unconfined note
are left out (``identical`` is the bar).

    python bench/bench_confinement.py
    python bench/bench_confinement.py --models digits-mlp-1pc --effort standard
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakaudit.zoo import build_reference, load_spec  # noqa: E402
from leakaudit.report.json_format import without_timings  # noqa: E402

DEFAULT_MODELS = "digits-mlp-1pc,digits-mlp-20pc,digits-cnn-20pc"
LEAKAUDIT = str(Path(sys.executable).parent / "leakaudit")


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """The document less timings and what differs by design between the two modes."""
    document["provenance"].pop("confinement")
    notes = document["summary"]["notes"]
    document["summary"]["notes"] = [n for n in notes if not n.startswith("The model ran unconfined")]
    return without_timings(document)


def audit(reference: Path, out: Path, effort: str, confined: bool) -> tuple[int, float, dict[str, Any]]:
    """One audit in a fresh process: exit code, wall seconds, the comparable document."""
    env = {**os.environ, "CI": "1"}
    if not confined:
        env["LEAKAUDIT_CONFINEMENT"] = "off"
    started = time.monotonic()
    proc = subprocess.run([LEAKAUDIT, "run", str(reference / "model.pt"), "--data", str(reference / "train"),
                           "--holdout", str(reference / "holdout"), "--out", str(out), "--effort", effort, "-q"],
                          capture_output=True, text=True, env=env)
    took = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{out}: exit {proc.returncode}: {proc.stderr}")
    return proc.returncode, took, comparable(json.loads((out / "leakaudit.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--effort", default="quick")
    args = parser.parse_args()
    for name in args.models.split(","):
        spec, _ = load_spec(name)
        built = build_reference(spec, ROOT / "bench" / "out" / name)
        reference = built.model_path.parent
        runs = {mode: audit(reference, ROOT / "bench" / "out" / f"confinement-{name}-{mode}", args.effort,
                            mode == "confined") for mode in ("confined", "in-process")}
        (code_c, took_c, doc_c), (code_i, took_i, doc_i) = runs["confined"], runs["in-process"]
        print(f"{name}: confined exit {code_c} in {took_c:.1f} s, in-process exit {code_i} in {took_i:.1f} s, "
              f"documents {'identical' if doc_c == doc_i else 'DIFFER'}", flush=True)


if __name__ == "__main__":
    main()
