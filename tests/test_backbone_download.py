"""`leakaudit fetch-weights`: a real download from a local HTTP server into torchvision's cache, checked by sha256."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

from leakaudit.matching import backbone_download
from leakaudit.cli.commands import main
from leakaudit.matching.lpips import LpipsScorer


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A SqueezeNet 1.1 state dict (random weights, torchvision's layout) served on 127.0.0.1: (URL, sha256)."""
    folder = tmp_path_factory.mktemp("mirror")
    torch.manual_seed(0)
    path = folder / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/squeezenet.pth", digest
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_names_and_addresses_are_torchvisions() -> None:
    enums = {"alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
             "squeeze": torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
             "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1}
    for net, enum in enums.items():
        assert backbone_download.backbone(net).url == enum.url
    assert backbone_download.torch_hub_dir() == Path(torch.hub.get_dir())


def test_download_lands_where_lpips_finds_it(mirror: tuple[str, str], torch_home: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url, digest = mirror
    assert not LpipsScorer.load("squeeze").available
    code, err = run_cli(["fetch-weights", "--net", "squeeze", "--url", url, "--sha256", digest], capsys)
    assert code == 0, err
    target = torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert "MB (100%)" in err and "sha256 checked" in err  # progress with units, then the check
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no partial file left
    assert LpipsScorer.load("squeeze").available
    code, err = run_cli(["fetch-weights", "--net", "squeeze", "--url", url], capsys)
    assert code == 0 and "already there" in err  # no second download


def test_a_file_that_fails_the_check_is_not_kept(mirror: tuple[str, str], torch_home: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, digest = mirror
    monkeypatch.setenv("LEAKAUDIT_WEIGHTS_URL", url)  # the environment names the mirror
    code, err = run_cli(["fetch-weights", "--net", "squeeze"], capsys)  # the name's prefix b8a52dc0 cannot match
    assert code == 2 and "does not start with b8a52dc0" in err
    code, err = run_cli(["fetch-weights", "--net", "squeeze", "--sha256", "0" * 64], capsys)
    assert code == 2 and f"sha256 is {digest}" in err
    assert [line for line in err.splitlines() if line.startswith("leakaudit: error:")] == [err.splitlines()[-1]]
    checkpoints = torch_home / "hub" / "checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []
    assert not LpipsScorer.load("squeeze").available


def test_unavailable_message_names_the_command_once(torch_home: Path) -> None:
    for net, command in (("alex", "`leakaudit fetch-weights`"), ("squeeze", "`leakaudit fetch-weights --net squeeze`")):
        reason = LpipsScorer.load(net).reason or ""
        assert reason.count("fetch-weights") == 1 and command in reason and "--lpips-weights PATH" in reason
