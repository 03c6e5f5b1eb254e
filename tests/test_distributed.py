"""One audit across processes: real 2-process gloo runs on the CPU.

Every multi-process test starts real processes through torch's elastic agent
(what ``torchrun`` runs), on real digits. This module doubles as the workers'
entry point: ``python -m tests.test_distributed SCENARIO OUT`` under torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from leakaudit.runtime.distributed import DistContext, DistributedError, PeerLostError, rank_prefix
from leakaudit.cli.launcher import LaunchOutcome, _outcome_of, record_failure
from leakaudit.matching.sharded import sharded_best_matches
from leakaudit.errors import LeakAuditError
from leakaudit.matching.search import best_matches

ROOT = Path(__file__).resolve().parents[1]
N_CANDIDATES = 12
N_IMAGES = 700
IMAGE_CHUNK = 192  # 4 chunks: shards of 2 chunks each, the last one short


# --- workers (run under torchrun, one per rank) -----------------------------------

def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real digits (32×32 uint8) and candidates: noisy copies of some of them; with their labels."""
    from leakaudit.zoo import bundled_images

    images, labels, _ = bundled_images("digits")
    images, labels = images[:N_IMAGES], labels[:N_IMAGES]
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(images.shape[0], generator=gen)[:N_CANDIDATES]
    noise = 0.15 * torch.rand((N_CANDIDATES, *images.shape[1:]), generator=gen)
    candidates = (images[pick].float() / 255 + noise).clamp(0, 1)
    return candidates, images, labels[pick], labels


def _worker_match(out: Path) -> None:
    ctx = DistContext.from_environment(device="cpu")
    candidates, images, cand_labels, labels = _digits()
    if ctx.rank != 0:
        candidates = torch.zeros_like(candidates)  # rank 0's candidates must be the ones matched
    every = sharded_best_matches(candidates, images, ctx, k=5, image_chunk=IMAGE_CHUNK)
    same = sharded_best_matches(candidates, images, ctx, k=3, image_chunk=IMAGE_CHUNK, same_class=True,
                                candidate_labels=cand_labels, image_labels=labels)
    torch.save({"every": every, "same": same}, out.with_suffix(f".rank{ctx.rank}.pt"))
    ctx.close()


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _worker_close(out: Path) -> None:
    """What an audit does with its process group, then how many threads are left after ``close``."""
    before = _os_threads()
    ctx = DistContext.from_environment(device="cpu")
    import leakaudit.pipeline.audit  # noqa: F401  (imported after joining, as the CLI does)

    params = [torch.nn.Parameter(torch.ones(4))]
    optimiser = torch.optim.Adam(params, lr=0.1)  # its first step imports torch._dynamo
    (params[0] * (ctx.rank + 1)).sum().backward()
    ctx.average_gradients(params, 0.5)
    optimiser.step()
    ctx.barrier()
    during = _os_threads()
    ctx.close()
    out.with_suffix(f".rank{ctx.rank}.json").write_text(json.dumps(
        {"before": before, "during": during, "after": _os_threads(), "grad": params[0].grad.tolist()}))


def _worker_fail(out: Path) -> None:
    """Rank 1 cannot read its data; rank 0 has started matching and must neither hang nor write."""
    from leakaudit.data.folders import load_image_folder

    # As in the CLI, SIGTERM (torchrun stopping the survivors) only requests a stop: what ends
    # rank 0 here must be its own collective noticing the dead peer.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    ctx = DistContext.from_environment(device="cpu")
    try:
        candidates, images, _, _ = _digits()
        if ctx.rank == 1:
            load_image_folder(out.parent / "no-such-folder", channels=1, size=(32, 32))
        result = sharded_best_matches(candidates, images, ctx, k=5, image_chunk=IMAGE_CHUNK)
        if ctx.is_main:
            out.write_text(json.dumps({"best": result.best_ssim.tolist()}))
    except LeakAuditError as exc:  # what the CLI does with an error on a rank
        print(f"leakaudit: error: {rank_prefix()}{exc}", file=sys.stderr, flush=True)
        record_failure(exc)
        sys.exit(2)
    ctx.close()


# --- helpers ------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LEAKAUDIT_DIST_TIMEOUT"] = "60"  # a hang fails the test in a minute, not half an hour
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(*args: str, cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 --standalone ARGS`` as a subprocess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _launch_in_subprocess(program: list[str], module: str, cwd: Path = ROOT) -> tuple[LaunchOutcome, str]:
    """``leakaudit.cli.launcher.launch`` in a fresh process (the elastic agent installs signal handlers)."""
    code = ("import json, sys; from leakaudit.cli.launcher import launch; "
            f"o = launch(['--nproc-per-node', '2', '--standalone'], {program!r}, module={module!r}); "
            "print(json.dumps({'exit_code': o.exit_code, 'failed_rank': o.failed_rank, 'message': o.message}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    return LaunchOutcome(fields["exit_code"], fields["failed_rank"], fields["message"]), done.stderr


# --- without processes ----------------------------------------------------------------

@pytest.mark.parametrize("n,world,align", [(1797, 2, 256), (1797, 3, 512), (10, 4, 1), (5, 2, 8), (0, 2, 4)])
def test_shards_partition_the_images_in_aligned_blocks(n: int, world: int, align: int) -> None:
    parts = [DistContext(rank=r, world_size=world).shard(n, align) for r in range(world)]
    covered = [i for p in parts for i in range(p.start, p.stop)]
    assert covered == list(range(n))
    assert all(p.start % align == 0 for p in parts if p.stop > p.start)
    blocks = [-(-(p.stop - p.start) // align) for p in parts]  # whole blocks (the last one may be short)
    assert max(blocks) - min(blocks) <= 1


def test_batch_shares_are_class_balanced_and_partition_the_batch() -> None:
    targets = torch.arange(10).repeat(8)  # the generator's batch: 8 copies of every class
    shares = [DistContext(rank=r, world_size=2).batch_share(targets) for r in range(2)]
    assert sorted(torch.cat(shares).tolist()) == list(range(80))
    for share in shares:  # every rank sees every class, 4 times
        assert torch.bincount(targets[share], minlength=10).tolist() == [4] * 10
    with pytest.raises(DistributedError, match="cannot be shared"):
        DistContext(rank=0, world_size=4).batch_share(torch.arange(3))


def test_one_process_is_the_identity() -> None:
    ctx = DistContext.single("cpu")
    assert not ctx.is_distributed and ctx.is_main
    assert ctx.any_flags(True, False) == (True, False)
    candidates, images, _, _ = _digits()
    a = sharded_best_matches(candidates[:4], images[:200], ctx, k=2)
    b = best_matches(candidates[:4], images[:200], k=2)
    assert torch.equal(a.best_index, b.best_index) and torch.equal(a.nearest_ssim, b.nearest_ssim)


def _failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: int, exitcode: int,
             exc: BaseException | None = None) -> Any:
    """What torch's elastic agent knows of a failed rank: its exit code and the error file it left, if any."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    error_file = tmp_path / f"error-{rank}.json"
    if exc is not None:
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        record_failure(exc)
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


@pytest.mark.slow
def test_launcher_exit_codes_name_the_rank_that_failed_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from leakaudit.errors import AuditInterrupted, DataError

    def outcome(**failures: Any) -> LaunchOutcome:
        return _outcome_of(ChildFailedError("leakaudit", {int(k[1:]): f for k, f in failures.items()}))

    gate = outcome(r0=_failure(tmp_path, monkeypatch, 0, 1))
    assert (gate.exit_code, gate.failed_rank) == (1, None)  # rank 0's verdict: the gate failed
    stopped = outcome(r0=_failure(tmp_path, monkeypatch, 0, 130, AuditInterrupted("stopped by SIGINT")),
                      r1=_failure(tmp_path, monkeypatch, 1, 130, AuditInterrupted("stopped by SIGINT")))
    assert stopped.exit_code == 130
    # Same second, but rank 1 is the cause and rank 0 only lost its peer.
    cause = outcome(r0=_failure(tmp_path, monkeypatch, 0, 2, PeerLostError("lost contact with the other ranks")),
                    r1=_failure(tmp_path, monkeypatch, 1, 2, DataError("data folder not found: /x")))
    assert (cause.exit_code, cause.failed_rank) == (2, 1)
    assert cause.message == ("rank 1 (local rank 1) failed: data folder not found: /x; the run was "
                             "stopped and no report was written (other failed ranks: 0)")
    # The agent stops the ranks still alive once one has exited: the cause, still leaving the group after its
    # error, may be among them. Its reason is the same, whoever exits first.
    late = outcome(r0=_failure(tmp_path, monkeypatch, 0, 2, PeerLostError("lost contact with the other ranks")),
                   r1=_failure(tmp_path, monkeypatch, 1, -int(signal.SIGTERM), DataError("data folder not found: /x")))
    assert late.message == cause.message and (late.exit_code, late.failed_rank) == (2, 1)
    # A crash after the error is still said.
    crashed = outcome(r1=_failure(tmp_path, monkeypatch, 1, -int(signal.SIGABRT),
                                  DataError("data folder not found: /x")))
    assert crashed.message is not None
    assert crashed.message.startswith("rank 1 (local rank 1) failed: data folder not found: /x "
                                      "(then its process was killed by SIGABRT)")
    # Killed by the kernel (no error file) while the survivor was stopped by the agent.
    killed = outcome(r0=_failure(tmp_path, monkeypatch, 0, -int(signal.SIGTERM)),
                     r1=_failure(tmp_path, monkeypatch, 1, -int(signal.SIGKILL)))
    assert (killed.exit_code, killed.failed_rank) == (2, 1) and "killed by SIGKILL" in (killed.message or "")


# --- two real processes ---------------------------------------------------------------

@pytest.mark.slow
def test_sharded_matching_equals_single_process_exactly(tmp_path: Path) -> None:
    done = _torchrun("-m", "tests.test_distributed", "match", str(tmp_path / "result"))
    assert done.returncode == 0, done.stderr[-3000:]
    candidates, images, cand_labels, labels = _digits()
    expected = {
        "every": best_matches(candidates, images, k=5, image_chunk=IMAGE_CHUNK),
        "same": best_matches(candidates, images, k=3, image_chunk=IMAGE_CHUNK, same_class=True,
                             candidate_labels=cand_labels, image_labels=labels),
    }
    for rank in (0, 1):  # every rank holds the merged result
        got = torch.load(tmp_path / f"result.rank{rank}.pt", weights_only=False)
        for name, want in expected.items():
            for field in ("best_index", "topk_index", "nearest_image"):
                assert torch.equal(getattr(got[name], field), getattr(want, field)), (rank, name, field)
            for field in ("best_ssim", "topk_ssim", "nearest_ssim"):  # bitwise, NaN where no pair is allowed
                assert torch.equal(getattr(got[name], field).nan_to_num(-9),
                                   getattr(want, field).nan_to_num(-9)), (rank, name, field)
            assert got[name].pairs_scored == want.pairs_scored


@pytest.mark.slow
def test_closing_the_context_ends_the_process_groups_threads(tmp_path: Path) -> None:
    # gloo's threads left running at exit abort the process (SIGABRT) during interpreter shutdown, after
    # the report is written: a rank that succeeded must leave no communication thread behind.
    done = _torchrun("-m", "tests.test_distributed", "close", str(tmp_path / "threads"))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"threads.rank{rank}.json").read_text())
        assert seen["grad"] == [1.5] * 4  # (1 + 2) / 2: the gradients did travel between the ranks
        assert seen["during"] > seen["before"], seen  # the group's threads ran…
        assert seen["after"] == seen["before"], seen  # …and are gone once the context is closed


@pytest.mark.slow
def test_a_failed_rank_stops_the_run_with_exit_2_naming_it(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    outcome, stderr = _launch_in_subprocess(["fail", str(report)], module="tests.test_distributed")
    assert outcome.exit_code == 2 and outcome.failed_rank == 1
    assert outcome.message is not None
    assert outcome.message.startswith("rank 1 (local rank 1) failed: data folder not found")
    assert "rank 1 of 2: " in stderr and "no-such-folder" in stderr  # the failing rank's own reason
    assert "rank 0 of 2: lost contact with the other ranks during matching" in stderr  # no hang
    assert not report.exists()


# --- whole audits ------------------------------------------------------------------------

def _audit_args(tiny: Any, config: Path, out: Path, model: str | None = None, *extra: str) -> list[str]:
    return ["run", model or str(tiny.torchscript), "--data", str(tiny.train_dir), "--holdout", str(tiny.holdout_dir),
            "--prior", "none", "--config", str(config), "--seed", "3", "--top", "10", "--out", str(out), "--quiet",
            *extra]


@pytest.mark.slow
def test_two_process_audit_reaches_the_single_process_verdict(tiny: Any, quick_ranks_config: Path,
                                                              tmp_path: Path) -> None:
    from leakaudit.data.folders import load_image_folder

    single = subprocess.run([sys.executable, "-m", "leakaudit",
                             *_audit_args(tiny, quick_ranks_config, tmp_path / "one")],
                            env=_env(), capture_output=True, text=True, timeout=240)
    assert single.returncode in (0, 1), single.stderr[-3000:]
    launched = subprocess.run([sys.executable, "-m", "leakaudit", "launch", "--nproc-per-node", "2", "--standalone",
                               *_audit_args(tiny, quick_ranks_config, tmp_path / "two")],
                              env=_env(), capture_output=True, text=True, timeout=240)
    assert launched.returncode == single.returncode, launched.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "leakaudit.json").read_text())
    two = json.loads((tmp_path / "two" / "leakaudit.json").read_text())
    assert two["verdict"] == one["verdict"]
    assert any("Ran on 2 processes (gloo)" in note for note in two["summary"]["notes"])
    # The documented tolerance: the generator is trained data-parallel, so the reconstructions are another
    # draw of the same attack; the strongest findings agree, the rest of the top 10 mostly.
    top_one = [f["train_index"] for f in one["findings"]]
    top_two = [f["train_index"] for f in two["findings"]]
    assert len(set(top_one[:5]) & set(top_two[:5])) >= 3, (top_one, top_two)
    assert len(set(top_one) & set(top_two)) >= 6, (top_one, top_two)
    # Matching in the distributed run is exact: its findings are what one process finds for its reconstructions.
    arrays = np.load(tmp_path / "two" / "reconstructions.npz")
    train = load_image_folder(tiny.train_dir, channels=1, size=(32, 32))
    check = best_matches(torch.from_numpy(arrays["images"]), train.images, k=5)
    for finding in two["findings"]:
        i = finding["train_index"]
        assert finding["reconstruction_index"] == int(check.best_index[i])
        assert finding["ssim"] == float(check.best_ssim[i])


@pytest.mark.slow
def test_a_rank_failing_in_the_audit_exits_2_and_writes_no_report(tiny: Any, quick_ranks_config: Path,
                                                                  tmp_path: Path) -> None:
    """The architecture builder fails on rank 1 only (say a file missing on one node)."""
    (tmp_path / "node_arch.py").write_text(
        "import os\n"
        "from tests.conftest import tiny_architecture\n\n"
        "def build():\n"
        "    if os.environ.get('RANK') == '1':\n"
        "        raise FileNotFoundError('/models/extra-weights.bin is missing on this node')\n"
        "    return tiny_architecture()\n"
    )
    out = tmp_path / "audit"
    args = _audit_args(tiny, quick_ranks_config, out, str(tiny.state_dict), "--arch", "node_arch:build")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-m", "leakaudit", "launch", "--nproc-per-node", "2", "--standalone", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "leakaudit: error: rank 1 of 2: " in done.stderr and "missing on this node" in done.stderr
    assert "leakaudit: error: rank 1 (local rank 1) failed: --arch node_arch:build" in done.stderr
    assert not (out / "leakaudit.json").exists() and not (out / "report.html").exists()
    assert not (out / "reconstructions.npz").exists()


if __name__ == "__main__":
    scenario, target = sys.argv[1], Path(sys.argv[2])
    {"match": _worker_match, "close": _worker_close, "fail": _worker_fail}[scenario](target)
