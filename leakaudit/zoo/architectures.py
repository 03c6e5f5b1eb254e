"""The zoo's architectures: an MLP, a CNN (with or without BatchNorm) and torchvision's ResNet-18."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from leakaudit.zoo.spec import ReferenceSpec


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

    model: nn.Module = resnet18(num_classes=num_classes)
    if in_channels != 3:
        conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = conv1
    return model


def initial_classifier(spec: ReferenceSpec, in_channels: int, num_classes: int) -> nn.Module:
    """The classifier exactly as training starts from it: the seed rebuilds the initial weights θ₀."""
    torch.manual_seed(spec.seed)
    return build_classifier(spec, in_channels, num_classes)
