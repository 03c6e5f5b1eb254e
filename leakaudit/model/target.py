"""Load a classifier safely and expose what the inversion needs from it.

Safe by default: ``leakaudit.loading`` checks each format before its
deserialiser runs, so TorchScript archives, ``torch.export`` programs,
safetensors and state_dicts never run code from the file. A pickled
``nn.Module`` can only be loaded with ``unsafe_pickle=True``.

``TargetModel`` wraps any of these behind one interface: images in [0, 1]
pixel space go in (the model's own normalisation is applied inside), logits
come out, and ``probe`` also returns the penultimate features (the input of the
last linear layer) and BatchNorm batch statistics where they can be reached.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from leakaudit.errors import ModelError
from leakaudit.loading import (FORMATS, detect_format, import_arch, load_export, load_safetensors, load_torch_save,
                               load_torchscript)
from leakaudit.model.features import Tap, instrument
from leakaudit.model.passes import set_mode
from leakaudit.model.shape import infer_shape, telling
from leakaudit.runtime.digest import file_sha256
from leakaudit.sanitize import terminal_text

UNSAFE_NOTE = ("--unsafe-pickle: {path} was unpickled, so code from the file ran in this process; this audit is only "
               "as trustworthy as the file")

__all__ = ["FORMATS", "Probe", "TargetModel", "detect_format", "file_sha256", "import_arch", "load_model",
           "wrap_module"]


@dataclass
class Probe:
    """One forward pass with everything the inversion losses look at."""

    logits: torch.Tensor  # (N, K)
    features: torch.Tensor | None  # (N, D) penultimate features, or None
    bn_stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # each: (batch mean (C,), batch var (C,), running mean (C,), running var (C,))


class TargetModel:
    """The frozen classifier under audit, in [0, 1] pixel space."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        parameters: Sequence[torch.Tensor],
        *,
        input_shape: tuple[int, int, int],
        num_classes: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        device: torch.device,
        fmt: str,
        tap: Tap,
        feature_note: str | None,
        path: Path | None = None,
        sha256: str | None = None,
    ) -> None:
        self._forward = forward
        self._parameters = list(parameters)
        self._tap = tap
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.device = device
        self.format = fmt
        self.path = path
        self.sha256 = sha256
        self.feature_note = feature_note  # why features are unavailable, or None
        self.load_notes: list[str] = []  # what every output must say about how the file was loaded
        self.module: nn.Module | None = None  # the loaded module itself: the positive control copies it
        self.arch: str | None = None  # --arch, when the file's architecture came from it
        channels = input_shape[0]
        self.mean = torch.tensor(list(mean) if mean is not None else [0.0] * channels, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std) if std is not None else [1.0] * channels, device=device).view(1, -1, 1, 1)

    @property
    def has_features(self) -> bool:
        return self.feature_note is None

    @functools.cached_property
    def has_batchnorm(self) -> bool:
        """Whether BatchNorm statistics are reachable (one probe pass, then remembered: the model is frozen)."""
        return bool(self.probe(torch.zeros(2, *self.input_shape, device=self.device)).bn_stats)

    def parameters(self) -> list[torch.Tensor]:
        """The classifier's weights (frozen: requires_grad is off unless asked)."""
        return self._parameters

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] → (N, K) logits."""
        return self._forward(self.normalise(x01))

    def probe(self, x01: torch.Tensor) -> Probe:
        """Logits plus penultimate features and BatchNorm statistics."""
        self._tap.reset()
        self._tap.active = True
        try:
            logits = self._forward(self.normalise(x01))
        finally:
            self._tap.active = False
        features = self._tap.features if self.has_features else None
        stats = self._tap.stats()
        self._tap.reset()
        return Probe(logits=logits, features=features, bn_stats=stats)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: torch.device | str | None = None,
        fmt: str = "module",
    ) -> TargetModel:
        """Wrap an in-memory module (plain, TorchScript or exported), taking it over: ``module`` itself is changed.

        Its weights are frozen, it moves to ``device`` and into eval mode, and the feature taps are set on it
        (forward hooks on a plain module, which then no longer pickles; graph nodes on an exported program); it is
        ``target.module`` afterwards. Pass a module nothing else uses: a copy of the caller's (``copy_module``),
        or ``wrap_module``, which copies and checks a caller's module. It does not copy itself because every
        caller in the audit hands it a module it owns (just loaded, or just copied for the positive control),
        where a second deep copy would double a large model's memory, and not every module can be deep-copied.
        """
        dev = torch.device(device) if device is not None else _default_device()
        _freeze(module)  # first: moving a module reads each weight's .grad, which warns on a non-leaf
        module = module.to(dev)
        set_mode(module, False)
        forward, tap, note = instrument(module, input_shape, dev)
        k = num_classes if num_classes is not None else _count_classes(forward, input_shape, dev)
        target = cls(forward, list(module.parameters()), input_shape=input_shape, num_classes=k, mean=mean, std=std,
                     device=dev, fmt=fmt, tap=tap, feature_note=note)
        target.module = module
        return target


def _freeze(module: nn.Module) -> None:
    """Turn every weight into a leaf that needs no gradient.

    A parameter that is not a leaf (a deep copy of a TorchScript module whose
    weights require gradients clones them through autograd) cannot have its
    ``requires_grad`` flag changed, so it is detached in place: the module
    keeps the same tensor, now cut from the graph it was computed in.
    """
    for p in module.parameters():
        if p.is_leaf:
            p.requires_grad_(False)
            continue
        try:
            p.detach_()
        except RuntimeError as exc:  # a view of another tensor cannot be detached in place
            raise ModelError(f"cannot freeze the model's weights for the audit ({terminal_text(exc)})") from None


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _count_classes(forward: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int, int],
                   dev: torch.device) -> int:
    with torch.no_grad():
        out = forward(torch.zeros(2, *shape, device=dev))
    return int(out.shape[1])


# --- loading ------------------------------------------------------------------

def _load_module(path: Path, fmt: str, arch: str | None, unsafe_pickle: bool,
                 device: torch.device) -> tuple[nn.Module, str]:
    """Dispatch to the format's loader; each applies its checks before deserialising (``leakaudit.loading``)."""
    if fmt == "torchscript":
        return load_torchscript(path, device), fmt
    if fmt == "export":
        return load_export(path), fmt
    if fmt == "safetensors":
        return load_safetensors(path, arch), fmt
    return load_torch_save(path, arch, unsafe_pickle)


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    unsafe_pickle: bool = False,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    shape_hint: tuple[int, int, int] | None = None,
    device: str | torch.device | None = None,
) -> TargetModel:
    """Load a model file safely and validate it with one forward pass.

    ``shape_hint`` (C, H, W) is the data's native shape, tried when neither
    the file nor ``input_size`` says what the model expects.
    """
    path = Path(path)
    shown = terminal_text(path)
    if not path.exists():
        raise ModelError(f"model file not found: {shown}")
    if not path.is_file():
        raise ModelError(f"model path is not a regular file: {shown}")
    if path.stat().st_size == 0:
        raise ModelError(f"model file is empty: {shown}")
    dev = torch.device(device) if device is not None else _default_device()
    fmt = detect_format(path)
    if arch is not None and fmt in ("torchscript", "export"):
        arch = None  # the file carries its own architecture
    module, fmt = _load_module(path, fmt, arch, unsafe_pickle, dev)
    module = module.to(dev) if not isinstance(module, torch.fx.GraphModule) else module
    target = _checked_target(module, shown, fmt, input_size, mean, std, shape_hint, dev)
    target.path = path
    target.arch = arch
    target.sha256 = file_sha256(path)
    if fmt == "pickle":
        target.load_notes.append(UNSAFE_NOTE.format(path=shown))
    return target


def wrap_module(
    module: nn.Module,
    *,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    shape_hint: tuple[int, int, int] | None = None,
    device: str | torch.device | None = None,
) -> TargetModel:
    """An in-memory module, checked as a loaded file is (shape, classes, normalisation).

    The audit works on a copy: the caller's module keeps its mode, device and
    ``requires_grad``. No file-safety check applies (the caller's own object);
    ``sha256`` is a digest of its state_dict.
    """
    if not isinstance(module, nn.Module):
        raise ModelError(f"the model must be a torch.nn.Module or a path, not {type(module).__name__}")
    dev = torch.device(device) if device is not None else _default_device()
    try:
        copy = copy_module(module).to(dev)
    except Exception as exc:  # a module holding what deepcopy cannot copy (open files, locks)
        raise ModelError(f"cannot copy the model for the audit ({type(exc).__name__}: {terminal_text(exc)})") from None
    shown = f"<in-memory {type(module).__name__}>"
    target = _checked_target(copy, shown, "module", input_size, mean, std, shape_hint, dev)
    target.path = None
    target.sha256 = state_dict_sha256(module)
    return target


def copy_module(module: nn.Module) -> nn.Module:
    """A deep copy, so that eval mode and frozen weights never reach the caller's object."""
    return copy.deepcopy(module)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over every state_dict entry's name, dtype, shape and bytes: an in-memory model's identity."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\0".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _checked_target(module: nn.Module, shown: str, fmt: str, input_size: tuple[int, int] | None,
                    mean: Sequence[float] | None, std: Sequence[float] | None,
                    shape_hint: tuple[int, int, int] | None, dev: torch.device) -> TargetModel:
    """One forward pass learns and checks the input shape and classes; then the module is wrapped."""
    set_mode(module, False)
    shape, num_classes, errors = infer_shape(module, input_size, shape_hint, dev)
    if shape is None:
        raise ModelError(
            f"{shown}: could not run the model on any plausible input "
            f"({terminal_text('; '.join(telling(errors))) or 'no input size known'}); "
            "pass --input-size H W"
        )
    if num_classes < 2:
        raise ModelError(f"{shown}: the model returns {num_classes} output(s); a classifier with at least 2 classes "
                         "is needed")
    for name, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, shape[0]):
            raise ModelError(f"{name} has {len(values)} values, the model takes {shape[0]} channel(s)")
    if std is not None and any(s <= 0 for s in std):
        raise ModelError("--std values must be positive")
    mean_full = list(mean) * shape[0] if mean is not None and len(mean) == 1 else mean
    std_full = list(std) * shape[0] if std is not None and len(std) == 1 else std
    return TargetModel.from_module(module, shape, num_classes, mean=mean_full, std=std_full, device=dev, fmt=fmt)
