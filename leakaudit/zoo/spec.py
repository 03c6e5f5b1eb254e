"""What one zoo classifier is: its recipe (``ReferenceSpec``) and its member / non-member images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leakaudit.errors import ConfigError


BUNDLED = ("digits", "lfw")
REAL = ("mnist", "fashion-mnist")
ARCHS = ("mlp", "cnn", "cnn-bn", "resnet18")


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
            raise ConfigError(f"pretrain_dataset must be empty or one of {BUNDLED + REAL}, "
                              f"not {self.pretrain_dataset!r}")
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
