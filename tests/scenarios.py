"""Hand-built audit documents for the report and gate tests, from bundled digits.

Training images, holdout images and candidate reconstructions are real
handwritten digits (scikit-learn's set, upsampled to 32×32). A *leaky* model is
stood in for by candidates that are lightly noised copies of training images
(what a memorising model gives back); every scenario also has real other
digits of each class as candidates (what any good model of the class gives
back). SSIM comes from the project's own pinned implementation.
"""

from __future__ import annotations

import copy
import hashlib
import platform
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from leakaudit.gate.verdict import GateSettings, apply_gate
from leakaudit.matching.ssim import ssim_matrix
from leakaudit.zoo import bundled_images
from leakaudit.power.control import RECIPE
from leakaudit.power.verdict import RungResult, decide, not_measured
from leakaudit.membership.evaluate import evaluate
from leakaudit.membership.recipe import DEFAULT_RECIPE
from leakaudit.record import LeakScore

TOP_K = 12
QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Scenario:
    document: dict[str, Any]  # without gate, verdict, exit_code, thresholds
    arrays: dict[str, np.ndarray]
    train_best: np.ndarray
    holdout_best: np.ndarray | None
    train_best_index: np.ndarray | None = None  # each member's best reconstruction
    train_images: np.ndarray | None = None  # (M, C, H, W) uint8


def _distribution(values: np.ndarray) -> dict[str, Any]:
    return {
        "mean": float(values.mean()),
        "quantiles": {**{f"{q:g}": float(np.quantile(values, q)) for q in QUANTILES}, "max": float(values.max())},
        "fraction_above": {f"{t:g}": float((values > t).mean()) for t in (0.4, 0.5, 0.6)},
    }


def _auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    diff = members[:, None] - nonmembers[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def leak_score_record(members: np.ndarray, nonmembers: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    value = _auc(members, nonmembers)
    boots = [
        _auc(rng.choice(members, members.size), rng.choice(nonmembers, nonmembers.size)) for _ in range(200)
    ]
    pooled = np.concatenate([members, nonmembers])
    perms = 0
    for _ in range(300):
        rng.shuffle(pooled)
        perms += _auc(pooled[: members.size], pooled[members.size :]) >= value
    return {
        "value": value,
        "ci_low": float(np.quantile(boots, 0.025)),
        "ci_high": float(np.quantile(boots, 0.975)),
        "ci_level": 0.95,
        "p_value": (perms + 1) / 301,
        "n_members": int(members.size),
        "n_nonmembers": int(nonmembers.size),
        "method": "AUC of member vs non-member best-match SSIM; bootstrap CI, permutation p-value",
    }


def _best_same_class(sim: torch.Tensor, cand_labels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masked = sim.numpy().astype(np.float64).copy()  # (candidates, images)
    masked[cand_labels[:, None] != labels[None, :]] = -np.inf
    return masked.max(axis=0), masked.argmax(axis=0)


@lru_cache(maxsize=8)
def _build(*key: object) -> Scenario:
    # one thread: on a shared 2-core machine, two threads contend and run ~10× slower here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_unthreaded(*key)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)


def _build_unthreaded(
    leaky: bool,
    calibrated: bool,
    train_per_class: int,
    holdout_per_class: int,
    classes: tuple[str, ...] | None,
    seed: int,
) -> Scenario:
    images, labels_t, default_classes = bundled_images("digits", 32)
    names = classes or default_classes
    all_labels = labels_t.numpy()
    rng = np.random.default_rng(seed)
    train_idx, holdout_idx, proto_idx = [], [], []
    for c in range(len(default_classes)):
        idx = np.flatnonzero(all_labels == c)
        rng.shuffle(idx)
        train_idx += idx[:train_per_class].tolist()
        holdout_idx += idx[train_per_class : train_per_class + holdout_per_class].tolist()
        proto_idx += idx[-4:].tolist()  # real other digits: what any good model of the class draws
    train_u8 = images[train_idx].numpy()
    train_labels = all_labels[train_idx]
    cands = images[proto_idx].float() / 255.0
    cand_labels = all_labels[proto_idx]
    if leaky:
        noise = torch.from_numpy(rng.normal(0, 0.04, size=train_u8.shape).astype(np.float32))
        copies = (torch.from_numpy(train_u8).float() / 255.0 + noise).clamp(0, 1)
        cands = torch.cat([cands, copies])
        cand_labels = np.concatenate([cand_labels, train_labels])
    cands_np = cands.numpy().astype(np.float32)

    train_best, train_arg = _best_same_class(ssim_matrix(cands, torch.from_numpy(train_u8)), cand_labels, train_labels)
    holdout_best = None
    if calibrated:
        holdout_u8 = images[holdout_idx].numpy()
        holdout_labels = all_labels[holdout_idx]
        holdout_best, _ = _best_same_class(
            ssim_matrix(cands, torch.from_numpy(holdout_u8)), cand_labels, holdout_labels
        )

    paths = [f"{names[c]}/{i:05d}.png" for c, i in zip(train_labels, train_idx)]
    fingerprints = [
        hashlib.sha256(p.encode() + train_u8[k].tobytes()).hexdigest() for k, p in enumerate(paths)
    ]
    p95 = float(np.quantile(holdout_best, 0.95)) if holdout_best is not None else None
    p99 = float(np.quantile(holdout_best, 0.99)) if holdout_best is not None else None
    order = np.argsort(-train_best, kind="stable")[: min(TOP_K, len(train_best))]
    findings = []
    for rank, t in enumerate(order, start=1):
        shared = [int(o) for o in np.flatnonzero(train_arg == train_arg[t]) if o != t]
        findings.append(
            {
                "rank": rank,
                "fingerprint": fingerprints[t],
                "path": paths[t],
                "class": names[train_labels[t]],
                "class_index": int(train_labels[t]),
                "train_index": int(t),
                "reconstruction_index": int(train_arg[t]),
                "ssim": float(train_best[t]),
                "lpips": None,
                "excess_over_holdout_p95": None if p95 is None else float(train_best[t] - p95),
                "above_holdout_p99": None if p99 is None else bool(train_best[t] > p99),
                "shares_reconstruction_with": shared[:10],
                "shares_reconstruction_count": len(shared),
                "status": "ok",
                "baseline_status": None,
            }
        )
    bins = np.linspace(0.0, 1.0, 41)
    per_class = []
    for c, name in enumerate(names):
        tm = train_labels == c
        per_class.append(
            {
                "class": name,
                "class_index": c,
                "n_train": int(tm.sum()),
                "n_holdout": holdout_per_class if calibrated else None,
                "train_mean_best_ssim": float(train_best[tm].mean()),
                "holdout_mean_best_ssim": (
                    float(holdout_best[all_labels[holdout_idx] == c].mean()) if holdout_best is not None else None
                ),
                "n_flagged": 0,
            }
        )
    class_means = np.stack([train_u8[train_labels == c].mean(axis=0) / 255.0 for c in range(len(names))])
    null = ssim_matrix(torch.from_numpy(class_means.astype(np.float32)), torch.from_numpy(train_u8)).numpy()
    model_bytes = cands_np.tobytes()
    document = {
        "schema_version": "1.2",
        "tool": {"name": "leakaudit", "version": "0.1.0"},
        "mode": "informed" if calibrated else "data-free",
        "threat_model": "An attacker holding the weights and images of the same kind, but none of the training images.",
        "calibrated": calibrated,
        "metrics": {
            "ssim": {"window": "gaussian", "sigma": 1.5, "taps": 11, "k1": 0.01, "k2": 0.03, "region": "valid",
                     "covariance": "population", "data_range": 1.0, "channels": "mean"},
            "lpips": {"available": False, "reason": "AlexNet backbone weights are not in the torch cache (offline)",
                      "net": "alex", "version": "0.1"},
        },
        "summary": {
            "n_train": len(train_idx),
            "n_holdout": len(holdout_idx) if calibrated else None,
            "n_candidates": int(len(cands_np)),
            "leak_score": leak_score_record(train_best, holdout_best, rng) if holdout_best is not None else None,
            "membership_loss_auc": None,
            "membership": None,  # no classifier here: the membership test has nothing to read
            "train": _distribution(train_best),
            "holdout": _distribution(holdout_best) if holdout_best is not None else None,
            "holdout_ssim_p95": p95,
            "holdout_ssim_p99": p99,
            "class_mean_null": {"train_mean": float(null.max(axis=0).mean()), "holdout_mean": None},
            "per_class": per_class,
            "histogram": {
                "bins": bins.tolist(),
                "train": np.histogram(train_best, bins)[0].tolist(),
                "holdout": np.histogram(holdout_best, bins)[0].tolist() if holdout_best is not None else None,
            },
            "weights_gain": None,
            "notes": ["LPIPS is unavailable offline; SSIM alone ranks the findings."],
        },
        "findings": findings,
        "inversion": {
            "mode": "reconstruction", "effort": "standard", "complete": True, "incomplete_reason": None,
            "resumed": False, "resumed_from": None, "steps": 2000, "planned_steps": 2000, "seconds": 91.5,
            "completed_fraction": 1.0, "phase_seconds": {"pretrain": 40.0, "finetune": 0.0, "refine": 31.5,
                                                     "stationarity": 20.0},
            "candidates_per_class": int(len(cands_np) // len(names)),
            "notes": [],
            "gallery": {str(c): np.flatnonzero(cand_labels == c).tolist() for c in range(len(names))},
        },
        "provenance": {
            "model": {"path": "models/digits-mlp.pt", "sha256": hashlib.sha256(model_bytes).hexdigest(),
                      "format": "torchscript", "input_shape": [1, 32, 32], "num_classes": len(names),
                      "features": "penultimate features reached"},
            "data": {"path": "data/train", "manifest_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
                     "n_images": len(train_idx), "skipped": [{"path": "3/broken.png", "reason": "not an image"}]},
            "holdout": (
                {"path": "data/holdout", "manifest_sha256": hashlib.sha256(b"holdout").hexdigest(),
                 "n_images": len(holdout_idx), "skipped": []}
                if calibrated else None
            ),
            "seed": seed, "budget_s": 120.0, "elapsed_s": 97.25, "started_at": "2026-11-28T10:00:00+00:00",
            "versions": {"leakaudit": "0.1.0", "python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": None, "lpips": None, "scikit-image": None, "numpy": np.__version__},
            "device": "cpu",
            "command": ["leakaudit", "run", "models/digits-mlp.pt", "--data", "data/train"],
            "nondeterminism": None, "threads": 1,
            "stage_seconds": {"loading": 1.5, "inversion": 91.5, "matching": 3.0, "power": 60.0, "membership": 4.0,
                              "statistics": 1.0,
                              "writing": 0.25},
            "confinement": {"worker": True, "landlock_abi": 7, "seccomp": True, "no_new_privs": True,
                            "rlimits": {"nofile": 1024, "data": 12 << 30, "core": 0, "fsize": 0},
                            "seccomp_allowed": ["read", "write", "mmap", "futex", "openat (read-only)"],
                            "seccomp_denied": ["every other system call (EPERM)"], "every_thread_confined": True},
        },
        "power": power_record(calibrated, len(names), len(train_idx) / len(names)),
    }
    arrays = {
        "images": cands_np,
        "targets": cand_labels.astype(np.int64),
        "confidence": np.ones(len(cands_np), dtype=np.float32),  # no classifier here: real images stand in
        "finding_train_images": train_u8[order],
    }
    return Scenario(document, arrays, train_best, holdout_best, np.asarray(train_arg), train_u8)


def power_record(calibrated: bool, num_classes: int, per_class: float) -> dict[str, Any]:
    """The ``power`` object: one shown rung at K = 1 when calibrated, "not measured" without a holdout."""
    if not calibrated:
        return not_measured("no holdout, so no non-members to plant in a control", per_class).to_dict()
    members = list(range(0, 4 * num_classes, 4))
    rung = RungResult(k=1, n_members=num_classes, n_null=3 * num_classes,
                      leak=LeakScore(value=0.96, ci_low=0.9, ci_high=0.99, ci_level=0.95, p_value=0.001,
                                     n_members=num_classes, n_nonmembers=3 * num_classes, method="AUC"),
                      above_quantile=num_classes - 2, quantile_value=0.62, at_seen=num_classes, shown=True,
                      reason="leak_score: Leak score 0.960 reaches 0.70 with p < 0.01.", memorised=True, steps=20,
                      final_loss=1e-4, accuracy=1.0, complete=True, seconds=30.0, members=members,
                      null=[i for i in range(4 * num_classes) if i not in members],
                      member_best_ssim=[0.8] * num_classes, member_best_index=list(range(num_classes)))
    return decide([rung], per_class, "reset", RECIPE.to_dict(), 30.0).to_dict()


def scenario(
    *,
    leaky: bool,
    calibrated: bool = True,
    train_per_class: int = 2,
    holdout_per_class: int = 20,
    classes: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Scenario:
    """A fresh copy of a (cached) real-data scenario."""
    built = _build(leaky, calibrated, train_per_class, holdout_per_class, classes, seed)
    return Scenario(copy.deepcopy(built.document), dict(built.arrays), built.train_best, built.holdout_best,
                    built.train_best_index, built.train_images)


def reference_rows(s: Scenario, models: int = 8) -> dict[str, Any]:
    """A ``membership_attacks`` object of ``models`` reference models, evaluated on the scenario's own figures.

    The members' and non-members' best-match SSIM stand in for each attack's scores (sharpened for the
    reference-model attacks, as a stronger test sharpens them); the rows come from the engine's ``evaluate``.
    """
    pos, neg = s.train_best.astype(np.float64), s.holdout_best.astype(np.float64)
    rows = [evaluate("loss", 0, pos, neg, (0.01, 0.001), 0)]
    for i, (name, power) in enumerate((("lira-online", 4.0), ("lira-offline", 2.0), ("rmia-offline", 3.0))):
        rows.append(evaluate(name, models, pos * power, neg * power - 0.01 * i, (0.01, 0.001), 0))
    check = {"target": {"in_loss": 0.01, "in_accuracy": 1.0, "out_loss": 0.9, "out_accuracy": 0.8, "loss_gap": 0.89},
             "references": {"in_loss": 0.02, "in_accuracy": 1.0, "out_loss": 0.8, "out_accuracy": 0.8,
                            "loss_gap": 0.78}, "warning": None}
    attacks = [r.to_dict() for r in rows]
    best = max(rows, key=lambda r: (r.tpr(0.001), r.auc))
    order = np.argsort(-np.asarray(best.member_scores))[:12]
    return {"attacks": attacks, "strongest": best.attack, "gate_fpr": 0.001, "reference_models": models,
            "planned_models": models, "recipe": DEFAULT_RECIPE.to_dict(), "recipe_given": False,
            "recipe_check": check, "splits": {"seed": 0, "subset_size": len(pos), "models": models,
                                              "pool": len(pos) + len(neg), "masks_sha256": "0" * 64},
            "seconds_per_model": 0.5, "method": "full", "complete": True,
            "notes": ["the training recipe was not given: the reference models used the default (guessed) recipe"],
            "exposed": [{"index": int(i), "score": float(best.member_scores[i]),
                         "reconstruction_index": None if s.train_best_index is None else int(s.train_best_index[i]),
                         "ssim": float(s.train_best[i])} for i in order]}


TODAY = date(2026, 11, 28)  # the gate's "today" in every scenario test: ignore entries expire against it


def gated(leaky: bool = True, settings: GateSettings | None = None,
          **kwargs: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A scenario's document after the gate, with its arrays."""
    references = int(kwargs.pop("references", 0))
    s = scenario(leaky=leaky, **kwargs)
    if references:
        with_references(s, references)
    return apply_gate(s.document, settings or GateSettings(), today=TODAY), s.arrays


def with_references(s: Scenario, references: int = 8) -> Scenario:
    """The scenario with ``references`` reference models' attack rows, and its loss test beside them (in place)."""
    if references:
        s.document["membership_attacks"] = attacks = reference_rows(s, references)
        loss = attacks["attacks"][0]
        p_value = float(mannwhitneyu(s.train_best, s.holdout_best, alternative="greater").pvalue)
        s.document["summary"]["membership"] = {
            "auc": loss["auc"], "ci_low": loss["ci_low"], "ci_high": loss["ci_high"], "ci_level": 0.95,
            "p_value": p_value, "tpr_at_fpr": {f"{r['fpr']:g}": r["tpr"] for r in loss["tpr_at_fpr"]},
            "fpr_resolution": loss["fpr_resolution"], "n_members": loss["n_members"],
            "n_nonmembers": loss["n_nonmembers"], "method": "loss threshold (stand-in scores)"}
        s.document["summary"]["membership_loss_auc"] = loss["auc"]
        if s.train_images is not None:
            s.arrays["membership_train_images"] = s.train_images[[e["index"] for e in attacks["exposed"]]]
    return s
