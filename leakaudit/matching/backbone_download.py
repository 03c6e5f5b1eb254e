"""Fetching LPIPS backbone weights into torchvision's cache, only when the user asks (``leakaudit fetch-weights``).

The audit itself never opens a connection. This module downloads the one file
torchvision would have downloaded, under the same name and into the same folder
(``$TORCH_HOME/hub/checkpoints``), so LPIPS then finds it offline. The file is
written to a temporary name, checked (sha256) and only then moved into place:
an interrupted or corrupted download leaves nothing that LPIPS would load.
No torch import here: the command starts at once and says what it does.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leakaudit.errors import LeakAuditError

CHUNK = 1 << 16
TIMEOUT_S = 30.0
URL_ENV = "LEAKAUDIT_WEIGHTS_URL"


class WeightsError(LeakAuditError):
    """A backbone download that failed or did not check out; nothing was written to the cache."""


@dataclass(frozen=True)
class Backbone:
    """An LPIPS backbone as torchvision publishes it."""

    net: str
    label: str
    filename: str
    size_mb: float

    @property
    def url(self) -> str:
        return f"https://download.pytorch.org/models/{self.filename}"

    @property
    def hash_prefix(self) -> str:
        """torchvision names each file after the first hex digits of its sha256."""
        return self.filename.rsplit("-", 1)[1].split(".", 1)[0]


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone("alex", "AlexNet", "alexnet-owt-7be5be79.pth", 233.1),
    "squeeze": Backbone("squeeze", "SqueezeNet 1.1", "squeezenet1_1-b8a52dc0.pth", 4.7),
    "vgg": Backbone("vgg", "VGG16", "vgg16-397923af.pth", 527.8),
}

Progress = Callable[[int, int | None], None]  # (bytes done, bytes in all when known)


def backbone(net: str) -> Backbone:
    """The backbone called ``net`` (alex, squeeze or vgg)."""
    if net not in BACKBONES:
        raise WeightsError(f"LPIPS net must be one of {', '.join(BACKBONES)}, not {net!r}")
    return BACKBONES[net]


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "torch" / "hub"


def cache_path(net: str) -> Path:
    """Where torchvision (and so LPIPS) looks for the backbone."""
    return torch_hub_dir() / "checkpoints" / backbone(net).filename


def fetch_hint(net: str) -> str:
    """The one sentence every 'LPIPS unavailable' message ends with."""
    b = backbone(net)
    flag = "" if net == "alex" else f" --net {net}"
    return (f"run `leakaudit fetch-weights{flag}` to download it ({b.size_mb:.0f} MB, from download.pytorch.org), "
            "or pass --lpips-weights PATH")


def _check(digest: str, expected: str | None, prefix: str) -> None:
    if expected is not None and digest != expected.lower():
        raise WeightsError(f"the download's sha256 is {digest}, expected {expected.lower()}; nothing was written")
    if expected is None and not digest.startswith(prefix):
        raise WeightsError(f"the download's sha256 {digest[:16]}… does not start with {prefix}, the hash its "
                           "file name carries; nothing was written")


def _stream(url: str, sink: "tempfile._TemporaryFileWrapper[bytes]", progress: Progress | None) -> str:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (the user's URL, http(s) only)
            length = response.headers.get("Content-Length")
            total, done = (int(length) if length and length.isdigit() else None), 0
            while chunk := response.read(CHUNK):
                sink.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WeightsError(f"could not download {url}: {getattr(exc, 'reason', exc)}") from exc
    return digest.hexdigest()


def fetch(net: str = "alex", *, url: str | None = None, sha256: str | None = None, force: bool = False,
          progress: Progress | None = None) -> tuple[Path, bool]:
    """Download the backbone into torchvision's cache; (its path, whether it was downloaded now).

    ``url`` replaces torchvision's address (a mirror); ``sha256`` is the full
    digest to insist on, else the hash prefix in the file name is checked, as
    torch.hub does. A file already in place is kept unless ``force``.
    """
    b = backbone(net)
    target = cache_path(net)
    if target.is_file() and not force:
        return target, False
    source = url or os.environ.get(URL_ENV) or b.url
    if not source.startswith(("http://", "https://")):
        raise WeightsError(f"only http(s) URLs can be fetched, not {source!r}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sink = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{b.filename}.", suffix=".part", delete=False)
    except OSError as exc:
        raise WeightsError(f"cannot write into {target.parent}: {exc.strerror or exc}") from exc
    try:
        with sink:
            digest = _stream(source, sink, progress)
        _check(digest, sha256, b.hash_prefix)
        os.replace(sink.name, target)
    finally:
        if os.path.exists(sink.name):
            os.unlink(sink.name)
    return target, True
