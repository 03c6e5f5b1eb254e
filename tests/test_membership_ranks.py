"""The reference models under ``leakaudit launch``: each rank trains its share, rank 0 gathers them.

Real 2-process gloo runs on the CPU (torch's elastic agent, as ``torchrun``), one thread per process on both
sides, on the tiny reference of real digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from leakaudit.report.json_format import without_timings

ROOT = Path(__file__).resolve().parents[1]

RECIPE = 'optimizer = "adam"\nlr = 0.003\nbatch_size = 16\nepochs = 40\nuntil_train_accuracy = 1.0\n'


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LEAKAUDIT_DIST_TIMEOUT"] = "120"  # a hang fails the test in minutes, not half an hour
    env["LEAKAUDIT_THREADS"] = "1"  # the same thread count on both sides: the same sums
    env["OMP_NUM_THREADS"] = "1"
    return env


def _args(tiny: Any, config: Path, tmp_path: Path, out: Path) -> list[str]:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return ["run", str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout", str(tiny.holdout_dir),
            "--prior", "none", "--config", str(config), "--no-power-check", "--seed", "3", "--out", str(out),
            "--quiet", "--reference-models", "3", "--recipe", str(recipe)]


def _membership(out: Path) -> dict[str, Any]:
    document = without_timings(json.loads((out / "leakaudit.json").read_text()))
    section = dict(document["membership_attacks"])
    section.pop("seconds_per_model", None)  # a timing (without_timings may have taken it)
    # each exposed member's best reconstruction comes from the inversion, which ranks train data-parallel
    # (another draw of the same attack: docs/distributed.md); its membership score is the phase's own
    section["exposed"] = [(e["index"], e["score"]) for e in section["exposed"]]
    return section


def _worker_release(out: Path) -> None:
    """Rank 0 stopped before the membership phase (``release_ranks``) while rank 1 waits for its share."""
    import time
    from types import SimpleNamespace

    import torch

    from leakaudit import api
    from leakaudit.confine.session import InProcessSession
    from leakaudit.model.target import TargetModel
    from leakaudit.pipeline.membership_run import membership_share, release_ranks
    from leakaudit.pipeline.provenance import StageTimer
    from leakaudit.pipeline.run_context import RunContext
    from leakaudit.runtime.distributed import DistContext
    from leakaudit.runtime.progress import SilentObserver
    from leakaudit.zoo import bundled_images

    ctx = DistContext.from_environment(device="cpu")
    torch.set_num_threads(1)
    images, labels, _ = bundled_images("digits", 16)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    settings = api.build_settings(module, (images[:40], labels[:40]), (images[40:80], labels[40:80]),
                                  reference_models=4)
    run = RunContext(settings, SilentObserver(), lambda: False, ctx, StageTimer(), 1)
    sets = SimpleNamespace(train=SimpleNamespace(images=images[:40], labels=labels[:40]),
                           null=SimpleNamespace(images=images[40:80], labels=labels[40:80]))
    target = TargetModel.from_module(module, (1, 16, 16), 10, device="cpu")
    started = time.monotonic()
    if ctx.is_main:
        release_ranks(run, sets)  # type: ignore[arg-type]
    else:
        membership_share(run, SimpleNamespace(model=InProcessSession("test", target)), sets)  # type: ignore[arg-type]
    ctx.barrier()  # the next collective pairs: no rank is left inside the membership exchange
    out.with_suffix(f".rank{ctx.rank}.json").write_text(json.dumps({"seconds": time.monotonic() - started}))
    ctx.close()


@pytest.mark.slow
def test_a_rank_0_stopped_before_the_phase_releases_the_others(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "tests.test_membership_ranks", "release", str(tmp_path / "release")]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        seconds = json.loads((tmp_path / f"release.rank{rank}.json").read_text())["seconds"]
        assert seconds < 100  # an empty share, never a wait for the process group's timeout (120 s)


@pytest.mark.slow
def test_two_ranks_train_the_reference_models_of_one_process(tiny: Any, quick_ranks_config: Path,
                                                              tmp_path: Path) -> None:
    single = subprocess.run([sys.executable, "-m", "leakaudit", *_args(tiny, quick_ranks_config, tmp_path,
                                                                        tmp_path / "one")],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode in (0, 1), single.stderr[-3000:]
    launched = subprocess.run([sys.executable, "-m", "leakaudit", "launch", "--nproc-per-node", "2", "--standalone",
                               *_args(tiny, quick_ranks_config, tmp_path, tmp_path / "two")],
                              env=_env(), capture_output=True, text=True, timeout=300)
    assert launched.returncode in (0, 1), launched.stderr[-3000:]
    one, two = _membership(tmp_path / "one"), _membership(tmp_path / "two")
    assert two["reference_models"] == 3 and two["complete"]  # models 0 and 2 on rank 0, model 1 on rank 1
    assert two == one
    assert not (tmp_path / "two" / "checkpoints").exists()


if __name__ == "__main__":
    {"release": _worker_release}[sys.argv[1]](Path(sys.argv[2]))
