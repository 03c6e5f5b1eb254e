"""Shared fixtures and helpers: a tiny classifier trained once per session on real digits, CLI runners, the clean
export and the hostile working directory of the security tests, the inversion tests' short run."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# No test may find (or fetch) LPIPS backbone weights by accident: point
# torchvision's cache at an empty folder for the whole session.
os.environ["TORCH_HOME"] = str(Path(__file__).parent / ".torch-home-empty")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
# One torch thread in the test process, whatever the machine: a model a fixture trains is the same on any core
# count, and under `make test` each of the two workers keeps to one of the two cores (two threads per worker
# contend there and run several times slower). Tests that need another count set it (``_restore_torch_threads``).
torch.set_num_threads(1)

from leakaudit.cli.commands import main  # noqa: E402
from leakaudit.exit_codes import ExitStatus  # noqa: E402
from leakaudit.zoo import ReferenceSpec, build_classifier, bundled_images, split_members, train_classifier  # noqa: E402
from leakaudit.data.folders import write_image_folder  # noqa: E402
from leakaudit.confine import sandbox  # noqa: E402
from leakaudit.confine.operations import LoadRequest, ReferenceRequest  # noqa: E402
from leakaudit.confine.session import ConfinedSession, InProcessSession  # noqa: E402
from leakaudit.inversion import InversionCallbacks, InversionConfig  # noqa: E402
from leakaudit.membership.references import ReferenceRun  # noqa: E402

from . import payloads  # noqa: E402
from .payloads.arch import HOSTILE_ARCH  # noqa: E402


# The files that take longest, longest first. `make test` hands whole files to two workers in collection order
# (``--dist loadfile --no-loadscope-reorder``): started first, they do not leave one worker busy at the end while
# the other waits. Measured with ``--durations``; a file not named here runs after them, in its usual order.
LONGEST_FIRST = (
    "test_interruption.py", "test_initaware.py", "test_confinement_limits.py", "test_security_pt2.py",
    "test_power_audit.py", "test_verdict.py", "test_membership_ranks.py", "test_membership_pipeline.py", "test_api.py",
    "test_distributed.py", "test_security_torchscript.py", "test_security_pickles.py", "test_inversion.py",
    "test_cli.py", "test_audit_end_to_end.py", "test_membership_audit.py", "test_budget_phases.py", "test_formats.py",
    "test_security_folders.py", "test_typing.py", "test_record.py", "test_confinement_results.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first; the sort is stable, so each file's tests stay together and in their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@dataclass(frozen=True)
class Pool:
    """Real digits as (images, labels) of members and of non-members, for the membership tests."""

    members: tuple[torch.Tensor, torch.Tensor]
    nonmembers: tuple[torch.Tensor, torch.Tensor]


def digits_pool(side: int, members: int = 100, nonmembers: int = 100) -> Pool:
    """A seeded draw of the bundled digits at ``side``: the first ``members`` as members, the next as non-members."""
    images, labels, _ = bundled_images("digits", side)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    inside, outside = order[:members], order[members:members + nonmembers]
    return Pool((images[inside], labels[inside]), (images[outside], labels[outside]))


def references_confined_and_in_process(path: Path, request: ReferenceRequest, shape: tuple[int, int, int], *,
                                       callbacks: InversionCallbacks | None = None,
                                       code_from_cwd: bool = False) -> tuple[ReferenceRun, ReferenceRun]:
    """The same reference models trained in the confined worker (one thread; ``callbacks`` see its progress) and in
    this process, from the same model file and torch seed: the two runs to compare."""
    load = LoadRequest(path, shape_hint=shape, device="cpu")
    confined = ConfinedSession(sandbox.readable_paths(path.resolve(), None, code_from_cwd), budget_s=None, seed=0,
                               threads=1)
    try:
        confined.load(load)
        there = confined.train_references(request, callbacks or InversionCallbacks(), lambda: False)
    finally:
        confined.close()
    here = InProcessSession("test")
    torch.manual_seed(0)
    here.load(load)
    return there, here.train_references(request, InversionCallbacks(), lambda: False)


@dataclass(frozen=True)
class TinyReference:
    """A classifier trained here on a few real digits, with its image folders."""

    module: torch.nn.Sequential
    train_dir: Path
    holdout_dir: Path
    torchscript: Path
    state_dict: Path
    spec: ReferenceSpec


TINY_SPEC = ReferenceSpec(name="tiny", dataset="digits", train_per_class=3, holdout_per_class=4, arch="mlp",
                          hidden=64, optimizer="adam", lr=3e-3, epochs=60, batch_size=30, seed=0)


def tiny_architecture() -> torch.nn.Module:
    """What ``--arch tests.conftest:tiny_architecture`` builds for the tiny state_dict."""
    return build_classifier(TINY_SPEC, in_channels=1, num_classes=10)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyReference:
    root = tmp_path_factory.mktemp("tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data = split_members(TINY_SPEC)
        module, _ = train_classifier(TINY_SPEC, data)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(module, torch.nn.Sequential)  # an MLP: the tests slice it for its penultimate features
    write_image_folder(root / "train", data.train_images, data.train_labels, data.classes)
    write_image_folder(root / "holdout", data.holdout_images, data.holdout_labels, data.classes)
    torch.jit.save(torch.jit.script(module), str(root / "model.pt"))
    torch.save(module.state_dict(), root / "weights.pth")
    return TinyReference(module, root / "train", root / "holdout", root / "model.pt", root / "weights.pth", TINY_SPEC)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Whatever thread count a test sets, the next test starts from the session's."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> None:
    """One torch thread for the test (restored after it): both sides of a comparison sum in the same order,
    whatever the machine's core count."""
    torch.set_num_threads(1)


def config_file(tmp_path_factory: pytest.TempPathFactory, name: str, text: str) -> Path:
    """A session's config file ``name`` holding ``text``, in a folder of its own."""
    path = tmp_path_factory.mktemp("config") / name
    path.write_text(text)
    return path


# An inversion of a few dozen steps: whole audits of the tiny reference take seconds. The positive control
# is off here (the config-file twin of --no-power-check); the power tests turn it on with ``QUICK_WITH_POWER``.
QUICK_INVERSION = """
power_check = false

[inversion]
width = 16
batch_per_class = 2
steps = 30
pool_per_class = 8
candidates_per_class = 2
refine_steps = 10
kkt_steps = 10
pretrain_steps = 60
finetune_steps = 20
checkpoint_every = 10
"""


@pytest.fixture(scope="session")
def quick_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config file holding ``QUICK_INVERSION``."""
    return config_file(tmp_path_factory, "quick.toml", QUICK_INVERSION)


QUICK_WITH_POWER = QUICK_INVERSION.replace("power_check = false", "power_check = true")


@pytest.fixture(scope="session")
def quick_power_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``QUICK_INVERSION`` with the positive control on, as every audit runs by default."""
    return config_file(tmp_path_factory, "quick-power.toml", QUICK_WITH_POWER)


# The quick inversion of the audits run on several processes (``launch``) and of the single process they are held
# to: one torch thread in every process, so each sums in the same order.
QUICK_ON_RANKS = """
[inversion]
steps = 20
batch_per_class = 4
pool_per_class = 8
candidates_per_class = 2
refine_steps = 10
kkt_steps = 10
threads = 1
"""


@pytest.fixture(scope="session")
def quick_ranks_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config file holding ``QUICK_ON_RANKS``."""
    return config_file(tmp_path_factory, "quick-ranks.toml", QUICK_ON_RANKS)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``leakaudit ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def assert_error(code: int, err: str, message: str) -> None:
    """A usage or input error: exit 2, the message on stderr, no traceback."""
    assert code == ExitStatus.ERROR, err
    assert message in err, err
    assert "Traceback" not in err


def assert_no_result(out_dir: Path) -> None:
    """A failed run leaves no result files behind."""
    for name in ("leakaudit.json", "report.html", "reconstructions.npz"):
        assert not (out_dir / name).exists(), f"{name} written by a failed run"


# --- hostile inputs and the confined worker --------------------------------------------------------------------

@pytest.fixture(scope="session")
def clean_pt2(tiny: TinyReference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny classifier exported to a ``.pt2`` file: the clean archive the hostile ones are edited from."""
    return payloads.exported(tiny.module, tmp_path_factory.mktemp("pt2") / "clean.pt2")


# The confinement tests run only where the worker can be confined.
NEEDS_CONFINEMENT = pytest.mark.skipif(sandbox.unavailable_reason() is not None,
                                       reason=f"no confinement here: {sandbox.unavailable_reason()}")


def confined_session(notes: list[str], model: Path = Path("weights.pth"), arch: bool = True,
             budget_s: float | None = None) -> ConfinedSession:
    """A confined session for the model in the working directory, its notes appended to ``notes``."""
    return ConfinedSession(sandbox.readable_paths(model.resolve(), None, arch), budget_s=budget_s, seed=0,
                           threads=1, on_note=notes.append)


@pytest.fixture
def hostile_dir(tiny: TinyReference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the hostile --arch module, the tiny weights, and a folder for markers."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "hostile.py").write_text(HOSTILE_ARCH)
    (work / "weights.pth").write_bytes(tiny.state_dict.read_bytes())
    (work / "markers").mkdir()
    (tmp_path / "secret.txt").write_text("the-secret-in-a-file")
    monkeypatch.setenv("LEAKAUDIT_TEST_SECRET", "the-secret-in-the-environment")
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent.parent), str(work)]))
    return work


# --- the inversion tests ---------------------------------------------------------------------------------------

# A short run of the inversion engine: every phase runs, a few seconds each.
QUICK = InversionConfig(
    threads=1, steps=20, pretrain_steps=20, finetune_steps=10, refine_steps=10, kkt_steps=10, pool_per_class=4,
    candidates_per_class=2, batch_per_class=2, pretrain_batch=16, width=16, latent_dim=8, embed_dim=8,
)
