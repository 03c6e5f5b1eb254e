"""Training a zoo classifier: from its seed (or a pre-trained backbone) to the weights an audit reads."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from leakaudit.errors import ConfigError
from leakaudit.runtime.numerics import flush_denormals
from leakaudit.runtime.threads import torch_threads
from leakaudit.zoo.architectures import initial_classifier
from leakaudit.zoo.datasets import pretrained_images
from leakaudit.zoo.spec import ReferenceData, ReferenceSpec

# Every zoo classifier trains on one thread: the same spec gives the same weights on any CPU machine
# (another thread count sums in another order), so the demo's figures and the benchmarks' references
# do not depend on the core count.
BUILD_THREADS = 1


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
    with flush_denormals(), torch_threads(BUILD_THREADS):
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
    classifier to train (``starting_classifier``, built here when not given); it is trained in place. Training
    runs on ``BUILD_THREADS`` threads whatever the machine, so a spec gives the same weights on every CPU.
    """
    if start is None:
        start = starting_classifier(spec, data.train_images.shape[1], len(data.classes))
    # near-zero losses make denormal floats: steps ~2–9× slower
    with flush_denormals(), torch_threads(BUILD_THREADS):
        return _train(spec, data, progress, start)


def _train(spec: ReferenceSpec, data: ReferenceData, progress: Callable[[int, int], None] | None,
           model: nn.Module) -> tuple[nn.Module, dict[str, float]]:
    generator = torch.Generator().manual_seed(spec.seed)
    x, y, val = _validation_split(spec, data, generator)
    opt = _optimizer(spec, _trained_parameters(spec, model))
    best_state, best_val, patience = None, -1.0, 0
    epoch_loss, epochs_run = float("inf"), 0
    for epoch in range(spec.epochs):
        if progress is not None:
            progress(epoch, spec.epochs)
        epoch_loss, epochs_run = _epoch(spec, model, opt, x, y, generator), epoch + 1
        if spec.loss_target > 0 and epoch_loss <= spec.loss_target:
            break
        if val is not None:
            model.eval()
            with torch.no_grad():
                acc = (model(val[0]).argmax(1) == val[1]).float().mean().item()
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


def _validation_split(spec: ReferenceSpec, data: ReferenceData, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The members in [0, 1]; with early stopping, a tenth of them (at least one per class) held out to watch."""
    x = data.train_images.float() / 255.0
    y = data.train_labels
    if not spec.early_stopping:
        return x, y, None
    perm = torch.randperm(len(x), generator=generator)
    n_val = max(len(x) // 10, len(data.classes))
    return x[perm[n_val:]], y[perm[n_val:]], (x[perm[:n_val]], y[perm[:n_val]])


def _optimizer(spec: ReferenceSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.optimizer in ("sgd", "gd"):
        momentum = 0.9 if spec.optimizer == "sgd" else 0.0
        return torch.optim.SGD(params, lr=spec.lr, momentum=momentum, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


def _epoch(spec: ReferenceSpec, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           generator: torch.Generator) -> float:
    """One pass over the members in minibatches; returns the epoch's mean training loss."""
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
    return total / len(x)


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 1000) -> float:
    """In chunks: a ResNet's activations on tens of thousands of images at once would take GiBs."""
    with torch.no_grad():
        correct = sum(int((model(images[i : i + chunk].float() / 255).argmax(1) == labels[i : i + chunk]).sum())
                      for i in range(0, len(images), chunk))
    return correct / len(images)
