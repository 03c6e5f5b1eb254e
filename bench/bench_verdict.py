"""Is the verdict a function of the model alone? The default audit of each reference, idle and under load.

For every reference model in ``audits/`` (built on first use under
``bench/out/``), runs ``leakaudit run MODEL --data … --holdout …`` as a user
would (a fresh process, the default effort and budget) twice: once on its own
and once beside CPU-saturating processes (one per usable CPU unless
``--load``). Prints each run's verdict, exposure, whether the attack finished,
the time of every stage and inversion phase, and the differences between the
two JSON documents once timings are left out (``identical`` is the bar).

    python bench/bench_verdict.py                                  # every reference
    python bench/bench_verdict.py --models digits-mlp-1pc,digits-mlp-20pc --load 2
    python bench/bench_verdict.py --device cuda     # the CPU's document against a GPU's (float noise allowed)

With ``--device``, the second run is on that device instead of under load
(the first with ``--device cpu``): the same verdict is the bar, the leading
figures are printed side by side, and the JSON paths that differ are listed
(a GPU's floats differ in their last bits, which may move a score, never a
verdict that is not at its threshold).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakaudit.runtime.cpus import usable_cpus  # noqa: E402
from leakaudit.zoo import build_reference, load_spec  # noqa: E402
from leakaudit.report.json_format import without_timings  # noqa: E402

MODELS = (
    "digits-mlp-1pc", "digits-mlp-2pc", "digits-mlp-5pc", "digits-mlp-20pc",
    "digits-mlp-haim", "digits-cnn-20pc", "digits-cnn-robust", "lfw-cnn",
)
OUT = ROOT / "bench" / "out"
BUSY = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True:\n    pass\n"


@contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """``processes`` busy loops for the duration of the block (ended by their ids afterwards)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(processes)]
    try:
        time.sleep(1.0)  # let them reach the scheduler's run queue
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def audit(name: str, out: Path, extra: list[str]) -> tuple[int, dict[str, Any] | None, float]:
    """One default audit of a reference, in a fresh process: exit code, document, wall seconds."""
    spec, _ = load_spec(name)
    return audit_built(name, build_reference(spec, OUT / name), out, extra)


def audit_built(name: str, built: Any, out: Path, extra: list[str]) -> tuple[int, dict[str, Any] | None, float]:
    """``leakaudit run`` on a built reference in a fresh process, as a user runs it: exit code, document, wall
    seconds."""
    command = [sys.executable, "-m", "leakaudit", "run", str(built.model_path), "--data", str(built.train_dir),
               "--holdout", str(built.holdout_dir), "--out", str(out), "--quiet", *extra]
    shutil.rmtree(out, ignore_errors=True)  # a fresh folder: nothing to resume, nothing left from before
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CI": "1"}, cwd=ROOT)
    wall = time.monotonic() - started
    path = out / "leakaudit.json"
    if proc.returncode not in (0, 1, 2) or not path.exists():
        print(f"  {name}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return proc.returncode, None, wall
    return proc.returncode, json.loads(path.read_text()), wall


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """JSON paths at which two documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b)) for p in differences(a.get(k), b.get(k), f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in differences(x, y, f"{where}/{i}")]
    return [] if a == b else [where or "/"]


def describe(label: str, code: int, doc: dict[str, Any] | None, wall: float) -> str:
    if doc is None:
        return f"  {label:>6}: exit {code}, no document ({wall:.0f} s)"
    inv, prov = doc["inversion"], doc["provenance"]
    stages = " ".join(f"{k} {v:.1f}" for k, v in (prov.get("stage_seconds") or {}).items())
    phases = " ".join(f"{k} {v:.1f}" for k, v in (inv.get("phase_seconds") or {}).items())
    return (f"  {label:>6}: {doc['verdict']:<10} exit {code}  {doc['exposure']['statement']:<24} "
            f"steps {inv['steps']}/{inv['planned_steps']} threads {prov.get('threads')}  wall {wall:.1f} s  "
            f"| stages: {stages} | inversion phases: {phases}")


def leading(doc: dict[str, Any]) -> str:
    """The figures a reader compares first: verdict, leak score, findings, power, membership's loss AUC."""
    summary = doc["summary"]
    leak = summary.get("leak_score") or {}
    score = leak.get("value") if isinstance(leak, dict) else leak
    power = (doc.get("power") or {}).get("status")
    return (f"verdict {doc['verdict']}, leak score {score}, findings {len(doc.get('findings') or [])}, "
            f"power {power}, loss AUC {summary.get('membership_loss_auc')}")


def against_device(models: list[str], extra: list[str], device: str) -> None:
    """Each reference audited on the CPU and on ``device``: the verdicts, the leading figures, what differs."""
    same = 0
    for name in models:
        print(name)
        cpu = audit(name, OUT / "device" / name / "cpu", [*extra, "--device", "cpu"])
        print(describe("cpu", *cpu))
        dev = audit(name, OUT / "device" / name / device.replace(":", "-"), [*extra, "--device", device])
        print(describe(device, *dev))
        if cpu[1] is None or dev[1] is None:
            continue
        same += cpu[1]["verdict"] == dev[1]["verdict"]
        print(f"    cpu: {leading(cpu[1])}\n    {device}: {leading(dev[1])}")
        diff = differences(without_timings(cpu[1]), without_timings(dev[1]))
        print(f"    JSON apart from timings: {len(diff)} difference(s): " + ", ".join(diff[:12]))
    print(f"{same} of {len(models)} references: the same verdict on the CPU and on {device}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--load", type=int, default=None,
                        help="busy processes in the loaded run (default: usable CPUs)")
    parser.add_argument("--effort", default=None, help="--effort of both runs (default: the tool's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="compare the CPU's run with one on this device (cuda)")
    args = parser.parse_args()
    load = usable_cpus() if args.load is None else args.load
    extra = ["--seed", str(args.seed)] + (["--effort", args.effort] if args.effort else [])
    models = [m for m in args.models.split(",") if m]
    if args.device:
        against_device(models, extra, args.device)
        return
    print(f"usable CPUs {usable_cpus()}, loaded runs beside {load} busy process(es), extra flags: {' '.join(extra)}")
    identical = 0
    for name in models:
        print(name)
        idle = audit(name, OUT / "verdict" / name / "idle", extra)
        print(describe("idle", *idle))
        with cpu_load(load):
            loaded = audit(name, OUT / "verdict" / name / "loaded", extra)
        print(describe("loaded", *loaded))
        if idle[1] is None or loaded[1] is None:
            continue
        diff = differences(without_timings(idle[1]), without_timings(loaded[1]))
        identical += not diff
        print("    JSON apart from timings: " + ("identical" if not diff else f"{len(diff)} difference(s): "
                                                  + ", ".join(diff[:8])))
    print(f"{identical} of {len(models)} references: identical documents idle and loaded")


if __name__ == "__main__":
    main()
