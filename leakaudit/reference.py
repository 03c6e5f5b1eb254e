"""Reference audits built from real images: the demo, tests and benchmarks.

The bundled sets need no download: the digits come with scikit-learn (1,797
real 8×8 handwritten digits, upsampled to 32×32) and the faces with
scikit-image (``lfw_subset``: 100 face and 100 non-face 25×25 crops, upsampled
to 32×32). Real 28×28 MNIST and Fashion-MNIST are read from the cache that
``python -m bench.realdata`` fills once (``realdata_cache()``).
A reference is a member (training) folder, a non-member (holdout) folder, and a
classifier trained here on the members, saved as TorchScript, beside the
classifier's initial weights (``init.pt``, a state_dict) for init-aware audits.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leakaudit.data.folders import write_image_folder
from leakaudit.errors import ConfigError
from leakaudit.runtime.numerics import flush_denormals


BUNDLED = ("digits", "lfw")
REAL = ("mnist", "fashion-mnist")
ARCHS = ("mlp", "cnn", "cnn-bn", "resnet18")


def realdata_cache() -> Path:
    """Where ``bench/realdata.py`` caches real MNIST / Fashion-MNIST: ``$LEAKAUDIT_REALDATA`` or ``.cache/realdata``."""
    override = os.environ.get("LEAKAUDIT_REALDATA")
    return Path(override) if override else Path(__file__).resolve().parent.parent / ".cache" / "realdata"


def real_images(dataset: str, size: int = 28) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """A cached real dataset: (N, 1, size, size) uint8, labels, class names; ConfigError when not fetched."""
    npz = realdata_cache() / f"{dataset}.npz"
    if not npz.exists():
        raise ConfigError(f"{dataset} is not cached at {npz}; fetch it once with `python -m bench.realdata` in a "
                          "source checkout, or point $LEAKAUDIT_REALDATA at a folder holding such a cache")
    with np.load(npz) as arrays:
        images = torch.from_numpy(arrays["images"].copy())
        labels = torch.from_numpy(arrays["labels"].astype(np.int64))
        classes = tuple(str(c) for c in arrays["classes"])
    if images.shape[-1] != size:
        images = _upsample(images[:, 0].numpy() / 255.0, size)
    return images, labels, classes


@dataclass(frozen=True)
class ReferenceSpec:
    """How to build one reference model and its member / non-member folders."""

    name: str = "digits-mlp-1pc"
    dataset: str = "digits"  # "digits" | "lfw" (bundled) | "mnist" | "fashion-mnist" (cached, bench/realdata.py)
    train_per_class: int = 1  # members per class
    holdout_per_class: int = 50  # non-members per class (prior + evaluation)
    size: int = 32
    arch: str = "mlp"  # "mlp" | "cnn" | "cnn-bn" | "resnet18" (torchvision's, random init)
    hidden: int = 1000
    init_scale: float = 1.0  # multiplies the default initialisation (small init < 1)
    first_init_scale: float = 1.0  # multiplies the first layer's initial weights once more (Haim et al.: ~1e-4)
    optimizer: str = "adam"  # "adam" | "sgd" (momentum 0.9) | "gd" (plain gradient descent)
    bias: bool = True  # MLP layers with biases (the implicit-bias analyses assume none)
    lr: float = 1e-3
    epochs: int = 300
    batch_size: int = 64
    weight_decay: float = 0.0
    augment: bool = False  # random shifts of up to 2 px
    early_stopping: bool = False  # stop when a validation split stops improving
    loss_target: float = 0.0  # stop once an epoch's mean training loss is at or below it (0: run every epoch)
    seed: int = 0
    # Fine-tuning: pre-train on a public set first (Adam, its own epochs), then give the classifier a fresh last
    # layer (the classes differ) and train on the members from there; init.pt is that starting point.
    pretrain_dataset: str = ""  # "" (train from scratch) or a dataset name, e.g. "fashion-mnist"
    pretrain_per_class: int = 1000
    pretrain_epochs: int = 2
    trained_layers: str = "all"  # "all" | "dense" (only the fully connected layers: the backbone stays frozen)

    def __post_init__(self) -> None:
        if self.dataset not in BUNDLED + REAL:
            raise ConfigError(f"reference dataset must be one of {BUNDLED + REAL}, not {self.dataset!r}")
        if self.arch not in ARCHS:
            raise ConfigError(f"reference arch must be 'mlp', 'cnn', 'cnn-bn' or 'resnet18', not {self.arch!r}")
        if self.optimizer not in ("adam", "sgd", "gd"):
            raise ConfigError(f"reference optimizer must be 'adam', 'sgd' or 'gd', not {self.optimizer!r}")
        if self.pretrain_dataset not in ("",) + BUNDLED + REAL:
            raise ConfigError(f"pretrain_dataset must be empty or one of {BUNDLED + REAL}, not {self.pretrain_dataset!r}")
        if self.trained_layers not in ("all", "dense"):
            raise ConfigError(f"trained_layers must be 'all' or 'dense', not {self.trained_layers!r}")
        if self.train_per_class < 1 or self.holdout_per_class < 1:
            raise ConfigError("train_per_class and holdout_per_class must be at least 1")
        if not (self.init_scale > 0 and self.first_init_scale > 0):
            raise ConfigError("init_scale and first_init_scale must be positive")
        if self.loss_target < 0:
            raise ConfigError(f"loss_target must be 0 (off) or positive, not {self.loss_target}")


@dataclass(frozen=True)
class ReferenceData:
    """Member and non-member images of one reference, uint8 (M, C, H, W)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    holdout_images: torch.Tensor
    holdout_labels: torch.Tensor
    classes: tuple[str, ...]


def _upsample(images01: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images01.astype(np.float32))[:, None]  # (N, 1, h, w)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def bundled_images(dataset: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """All images of a dataset: (N, 1, size, size) uint8, labels, class names."""
    if dataset in REAL:
        return real_images(dataset, size)
    if dataset == "digits":
        from sklearn.datasets import load_digits  # scikit-learn is slow to import: only for the digits

        digits = load_digits()
        images = _upsample(digits.images / 16.0, size)
        return images, torch.from_numpy(digits.target.astype(np.int64)), tuple(str(d) for d in range(10))
    if dataset == "lfw":
        from skimage.data import lfw_subset  # scikit-image is slow to import: only for the faces

        faces = lfw_subset()  # (200, 25, 25) float in [0, 1]; first 100 faces
        labels = np.array([0] * 100 + [1] * 100, dtype=np.int64)
        return _upsample(faces, size), torch.from_numpy(labels), ("face", "non-face")
    raise ConfigError(f"unknown bundled dataset {dataset!r}")


def split_members(spec: ReferenceSpec) -> ReferenceData:
    """Deterministic per-class split into members and non-members."""
    images, labels, classes = bundled_images(spec.dataset, spec.size)
    rng = np.random.default_rng(spec.seed)
    train_idx: list[int] = []
    holdout_idx: list[int] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        need = spec.train_per_class + spec.holdout_per_class
        if len(idx) < need:
            raise ConfigError(f"class {classes[c]} has {len(idx)} images, the spec needs {need}")
        train_idx.extend(idx[: spec.train_per_class].tolist())
        holdout_idx.extend(idx[spec.train_per_class : need].tolist())
    tr, ho = torch.tensor(train_idx), torch.tensor(holdout_idx)
    return ReferenceData(images[tr], labels[tr], images[ho], labels[ho], classes)


def build_classifier(spec: ReferenceSpec, in_channels: int, num_classes: int) -> nn.Module:
    """A classifier of the spec's architecture, freshly initialised from the current seed.

    The small ones are ``nn.Sequential`` so that even a chain of children
    reaches their penultimate features; ``resnet18`` is torchvision's
    residual network, which the audit taps through its TorchScript graph.
    """
    side = spec.size
    model: nn.Module
    if spec.arch == "resnet18":
        model = _resnet18(in_channels, num_classes)
    elif spec.arch == "mlp":
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * side * side, spec.hidden, bias=spec.bias),
            nn.ReLU(),
            nn.Linear(spec.hidden, spec.hidden, bias=spec.bias),
            nn.ReLU(),
            nn.Linear(spec.hidden, num_classes, bias=spec.bias),
        )
    else:
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d if spec.arch == "cnn-bn" else (lambda c: nn.Identity())
        model = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            norm(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            norm(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (side // 4) * (side // 4), 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )
    if spec.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(spec.init_scale)
    if spec.first_init_scale != 1.0:
        first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        with torch.no_grad():
            for p in first.parameters():
                p.mul_(spec.first_init_scale)
    return model


def _resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18, stem kept (7×7 stride-2 conv, max-pool: a 28×28 input is 7×7 after it, cheap).

    Only the first convolution changes, to take the data's channels; it gets
    the initialisation torchvision gives every convolution. No pretrained
    weights: nothing is downloaded.
    """
    from torchvision.models import resnet18  # torchvision is slow to import: only for this arch

    model = resnet18(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def initial_classifier(spec: ReferenceSpec, in_channels: int, num_classes: int) -> nn.Module:
    """The classifier exactly as training starts from it: the seed rebuilds the initial weights θ₀."""
    torch.manual_seed(spec.seed)
    return build_classifier(spec, in_channels, num_classes)


def pretrained_images(spec: ReferenceSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The public pre-training set: ``pretrain_per_class`` images of each class of ``pretrain_dataset``, seeded."""
    images, labels, classes = bundled_images(spec.pretrain_dataset, spec.size)
    rng = np.random.default_rng(spec.seed + 1)
    chosen: list[int] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        chosen.extend(idx[: spec.pretrain_per_class].tolist())
    order = torch.tensor(chosen)
    return images[order], labels[order]


def starting_classifier(spec: ReferenceSpec, in_channels: int, num_classes: int) -> nn.Module:
    """Where training on the members starts: θ₀ rebuilt from the seed, or a pre-trained network with a fresh head.

    Pre-training is plain minibatch Adam on the public set; the last linear
    layer is then re-initialised for the members' classes.
    """
    model = initial_classifier(spec, in_channels, num_classes)
    if not spec.pretrain_dataset:
        return model
    images, labels = pretrained_images(spec)
    if int(labels.max()) >= num_classes:
        raise ConfigError(f"pretrain_dataset {spec.pretrain_dataset} has more classes than the members' {num_classes}")
    x, generator = images.float() / 255.0, torch.Generator().manual_seed(spec.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    with flush_denormals():
        for _ in range(spec.pretrain_epochs):
            perm = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 128):
                idx = perm[start : start + 128]
                loss = F.cross_entropy(model(x[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    torch.manual_seed(spec.seed + 2)
    head.reset_parameters()
    model.eval()
    return model


def _trained_parameters(spec: ReferenceSpec, model: nn.Module) -> list[nn.Parameter]:
    """All weights, or those of the fully connected layers only (``trained_layers = "dense"``)."""
    if spec.trained_layers == "all":
        return list(model.parameters())
    return [p for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()]


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(spec: ReferenceSpec, data: ReferenceData,
                     progress: Callable[[int, int], None] | None = None,
                     start: nn.Module | None = None) -> tuple[nn.Module, dict[str, float]]:
    """Train the reference classifier on the members; returns it (eval mode) and its accuracies.

    ``progress(epoch, epochs)`` is called as each epoch starts (``epoch`` counts from 0). ``start`` is the
    classifier to train (``starting_classifier``, built here when not given); it is trained in place.
    """
    if start is None:
        start = starting_classifier(spec, data.train_images.shape[1], len(data.classes))
    with flush_denormals():  # near-zero losses make denormal floats: steps ~2–9× slower
        return _train(spec, data, progress, start)


def _train(spec: ReferenceSpec, data: ReferenceData, progress: Callable[[int, int], None] | None,
           model: nn.Module) -> tuple[nn.Module, dict[str, float]]:
    generator = torch.Generator().manual_seed(spec.seed)
    x = data.train_images.float() / 255.0
    y = data.train_labels
    val_x = val_y = None
    if spec.early_stopping:
        perm = torch.randperm(len(x), generator=generator)
        n_val = max(len(x) // 10, len(data.classes))
        val_x, val_y = x[perm[:n_val]], y[perm[:n_val]]
        x, y = x[perm[n_val:]], y[perm[n_val:]]
    params = _trained_parameters(spec, model)
    opt: torch.optim.Optimizer
    if spec.optimizer in ("sgd", "gd"):
        momentum = 0.9 if spec.optimizer == "sgd" else 0.0
        opt = torch.optim.SGD(params, lr=spec.lr, momentum=momentum, weight_decay=spec.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    best_state, best_val, patience = None, -1.0, 0
    epoch_loss, epochs_run = float("inf"), 0
    for epoch in range(spec.epochs):
        if progress is not None:
            progress(epoch, spec.epochs)
        model.train()
        if spec.trained_layers == "dense":  # a frozen backbone keeps its BatchNorm statistics too
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        perm = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), spec.batch_size):
            idx = perm[start : start + spec.batch_size]
            xb = _shift(x[idx], generator) if spec.augment else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        epoch_loss, epochs_run = total / len(x), epoch + 1
        if spec.loss_target > 0 and epoch_loss <= spec.loss_target:
            break
        if val_x is not None:
            model.eval()
            with torch.no_grad():
                acc = (model(val_x).argmax(1) == val_y).float().mean().item()
            if acc > best_val:
                best_val, patience = acc, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                patience += 1
                if patience >= 10:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"train_accuracy": _accuracy(model, data.train_images, data.train_labels),
                   "holdout_accuracy": _accuracy(model, data.holdout_images, data.holdout_labels),
                   "final_loss": epoch_loss, "epochs": epochs_run}


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 1000) -> float:
    """In chunks: a ResNet's activations on tens of thousands of images at once would take GiBs."""
    with torch.no_grad():
        correct = sum(int((model(images[i : i + chunk].float() / 255).argmax(1) == labels[i : i + chunk]).sum())
                      for i in range(0, len(images), chunk))
    return correct / len(images)


@dataclass(frozen=True)
class BuiltReference:
    """Where a built reference lies on disk."""

    model_path: Path
    train_dir: Path
    holdout_dir: Path
    metrics: dict[str, float]
    init_path: Path | None = None  # the classifier's initial weights (state_dict), for init-aware audits


def _same_spec(stored: object, spec: ReferenceSpec) -> bool:
    """Whether a stored build is of this spec; a field the stored one predates counts at its default."""
    if not isinstance(stored, dict):
        return False
    defaults = {f.name: f.default for f in fields(ReferenceSpec)}
    return all(stored.get(name, defaults[name]) == value for name, value in asdict(spec).items())


def build_reference(spec: ReferenceSpec, out_dir: str | Path,
                    progress: Callable[[int, int], None] | None = None) -> BuiltReference:
    """Write members, non-members and a TorchScript classifier under ``out_dir``.

    A previous build of the same spec in the same folder is reused (the spec is
    stored beside it), since training is the slow part.
    """
    out = Path(out_dir)
    spec_file = out / "reference.json"
    model_path, train_dir, holdout_dir = out / "model.pt", out / "train", out / "holdout"
    init_path = out / "init.pt"
    if spec_file.exists() and model_path.exists() and init_path.exists():
        stored = json.loads(spec_file.read_text())
        if _same_spec(stored.get("spec"), spec):
            return BuiltReference(model_path, train_dir, holdout_dir, stored["metrics"], init_path)
    out.mkdir(parents=True, exist_ok=True)
    data = split_members(spec)
    start = starting_classifier(spec, data.train_images.shape[1], len(data.classes))
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    model, metrics = train_classifier(spec, data, progress, start)

    for folder in (train_dir, holdout_dir):
        if folder.exists():
            shutil.rmtree(folder)
    write_image_folder(train_dir, data.train_images, data.train_labels, data.classes)
    write_image_folder(holdout_dir, data.holdout_images, data.holdout_labels, data.classes)
    torch.save(start_state, init_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still widely shipped
        torch.jit.save(torch.jit.script(model), str(model_path))
    spec_file.write_text(json.dumps({"spec": asdict(spec), "metrics": metrics}, indent=2))
    return BuiltReference(model_path, train_dir, holdout_dir, metrics, init_path)


def load_spec(path_or_name: str | Path) -> tuple[ReferenceSpec, dict]:
    """Read an audit definition (TOML): its ``[reference]`` table and its audit settings.

    A bare name (``digits-mlp-1pc``) is looked up among the audits that ship
    with leakaudit.
    """
    path = Path(path_or_name)
    if path.suffix != ".toml" and not path.exists():
        resource = resources.files("leakaudit.audits").joinpath(f"{path_or_name}.toml")
        if not resource.is_file():
            raise ConfigError(f"no shipped audit named {path_or_name!r}; see `leakaudit demo --list`")
        text = resource.read_text(encoding="utf-8")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read audit definition {path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path_or_name}: invalid TOML: {exc}") from None
    table = doc.get("reference", {})
    known = {f.name for f in fields(ReferenceSpec)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{path_or_name}: unknown [reference] keys: {', '.join(unknown)}")
    table.setdefault("name", path.stem if path.suffix == ".toml" else str(path_or_name))
    spec = replace(ReferenceSpec(), **table)
    return spec, doc.get("tool", {}).get("leakaudit", {})


def shipped_audits() -> list[str]:
    """Names of the audit definitions that ship with leakaudit."""
    folder = resources.files("leakaudit.audits")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
