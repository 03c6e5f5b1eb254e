"""The power map: for every reference audit, its verdict beside what the attack can see on that architecture.

For each reference in ``audits/`` (the ``leakaudit demo --list`` set; the
real-data ones only when ``python -m bench.realdata`` has filled its cache,
else a line says they were skipped), builds the reference under
``bench/out/`` on first use and runs the default audit as a user would (a
fresh process, ``leakaudit run MODEL --data … --holdout …``). Prints the
model's verdict and exposure, its images per class, the positive control's
K ladder with each rung's leak score and members at SSIM ≥ 0.4, whether
power is shown, the membership column (the strongest membership attack at
``--reference-models R``, default 4: its TPR at the FPR the gate reads and its
AUC, beside the loss threshold's: where membership gives power that
reconstruction does not), and the seconds of every stage (the control is
``power``, the reference models ``membership``), then one Markdown table of it
all (what ``bench/README.md`` keeps).

    python bench/bench_power.py                                   # every reference
    python bench/bench_power.py --models digits-mlp-1pc,digits-mlp-2pc --effort quick --reference-models 2
    python bench/bench_power.py --models fashion-resnet18-5k --effort quick --reference-models 2 --budget 5400
    python bench/bench_power.py --tabulate                        # the table of the audits already written
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_verdict import audit_built  # noqa: E402
from leakaudit.record.membership import AttackResult, ReferenceMembership  # noqa: E402
from leakaudit.zoo import REAL, build_reference, load_spec, realdata_cache, shipped_audits  # noqa: E402

OUT = ROOT / "bench" / "out"


def available(name: str) -> str | None:
    """Why a reference cannot run here (its real data is not cached), or None."""
    spec, _ = load_spec(name)
    if spec.dataset in REAL and not (realdata_cache() / f"{spec.dataset}.npz").exists():
        return f"{spec.dataset} is not cached at {realdata_cache()} (python -m bench.realdata)"
    return None


def audit(name: str, out: Path, extra: list[str]) -> tuple[int, dict[str, Any] | None, float, float]:
    """One default audit of a reference in a fresh process: exit code, document, build and audit seconds."""
    spec, _ = load_spec(name)
    started = time.monotonic()
    built = build_reference(spec, OUT / name)
    build_s = time.monotonic() - started
    code, document, wall = audit_built(name, built, out, extra)
    return code, document, build_s, wall


def _num(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def _attack(attack: AttackResult, fpr: float) -> str:
    """"RMIA ×4: TPR 35.0% at 1% FPR, AUC 0.72": the TPR the gate reads (at the lowest FPR the non-members resolve)."""
    rate = attack.gate_rate(fpr)
    tpr = "TPR –" if rate is None else f"TPR {rate.tpr:.1%} at {rate.fpr:.1%} FPR"
    models = f" ×{attack.reference_models}" if attack.reference_models else ""
    return f"{attack.name.split(' with ')[0]}{models}: {tpr}, AUC {attack.auc:.2f}"


def membership_columns(doc: dict[str, Any]) -> dict[str, str]:
    """The strongest membership attack and the loss threshold, each at the FPR the gate reads."""
    data = doc.get("membership_attacks")
    if not data:
        test = doc["summary"].get("membership") or {}
        loss = "–" if not test else f"loss threshold: AUC {float(test['auc']):.2f} (no reference models)"
        return {"membership (strongest)": "–", "membership (loss)": loss}
    attacks = ReferenceMembership.from_dict(data)
    loss = next((a for a in attacks.attacks if a.attack == "loss"), attacks.attacks[0])
    return {"membership (strongest)": _attack(attacks.strongest, attacks.gate_fpr),
            "membership (loss)": _attack(loss, attacks.gate_fpr)}


def row(name: str, doc: dict[str, Any]) -> dict[str, str]:
    """One line of the power map."""
    power = doc.get("power") or {}
    rungs = power.get("rungs") or []
    stages = doc["provenance"].get("stage_seconds") or {}
    inversion, control = stages.get("inversion"), stages.get("power")
    ratio = f"{control / inversion:.2f}" if inversion and control is not None else "–"
    per_class = power.get("model_images_per_class")
    return {
        "reference": name,
        "verdict": doc["verdict"],
        "exposure": doc["exposure"]["statement"],
        "model leak": _num((doc["summary"].get("leak_score") or {}).get("value")),
        "N/class": "–" if per_class is None else f"{per_class:g}",
        "K ladder": ", ".join(str(r["k"]) for r in rungs) or "–",
        "control leak": ", ".join(_num((r.get("leak_score") or {}).get("value")) for r in rungs) or "–",
        "≥ 0.4": ", ".join(f"{r['members_at_ssim_0_4']}/{r['n_members']}" for r in rungs) or "–",
        "power": power.get("status", "–") + (f" (K ≤ {power['largest_k_shown']})"
                                             if power.get("largest_k_shown") else ""),
        **membership_columns(doc),
        "inversion s": f"{inversion:.0f}" if inversion is not None else "–",
        "power s": f"{control:.0f}" if control is not None else "–",
        "power / inversion": ratio,
        "stages": " ".join(f"{k} {v:.0f}" for k, v in stages.items()),
    }


def written_rows(out: Path, names: list[str]) -> list[dict[str, str]]:
    """The rows of the audits an earlier run left under ``out`` (``OUT/NAME/leakaudit.json``), in ``names`` order."""
    rows = []
    for name in names:
        path = out / name / "leakaudit.json"
        if path.is_file():
            rows.append(row(name, json.loads(path.read_text())))
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(shipped_audits()))
    parser.add_argument("--effort", default=None, help="--effort of every audit (default: the tool's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-models", type=int, default=4,
                        help="R of every audit, for the membership column (default 4; 0: the loss threshold only)")
    parser.add_argument("--budget", type=float, default=None,
                        help="--budget of every audit in seconds (default: the tool's; a large model's reference "
                             "models need more)")
    parser.add_argument("--out", type=Path, default=OUT / "power", help="where each audit writes (one folder each)")
    parser.add_argument("--tabulate", action="store_true",
                        help="run nothing: the table of the documents under --out (runs split over sessions)")
    args = parser.parse_args()
    if args.tabulate:
        print(markdown(written_rows(args.out, [m for m in args.models.split(",") if m])))
        return
    extra = ["--seed", str(args.seed), "--reference-models", str(args.reference_models)]
    extra += ["--effort", args.effort] if args.effort else []
    extra += ["--budget", str(args.budget)] if args.budget else []
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        missing = available(name)
        if missing:
            print(f"{name}: skipped: {missing}")
            continue
        code, doc, build_s, wall = audit(name, args.out / name, extra)
        if doc is None:
            continue
        rows.append(row(name, doc))
        power = doc.get("power") or {}
        print(f"{name}: exit {code}, {doc['verdict']}, {doc['exposure']['statement']}; {power.get('statement')} "
              f"(build {build_s:.0f} s, audit {wall:.0f} s)", flush=True)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
