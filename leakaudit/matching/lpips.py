"""LPIPS through the ``lpips`` package, strictly offline.

LPIPS needs two things: the small linear heads, which ship inside the
``lpips`` wheel, and an ImageNet backbone (AlexNet, VGG16 or SqueezeNet 1.1)
that torchvision would download into ``$TORCH_HOME/hub/checkpoints``.
An audit never downloads: the backbone is built without weights and its state
dict is loaded from torchvision's cache (or an explicit file), which
``leakaudit fetch-weights`` fills when the user asks. When the file
is missing or does not fit, the scorer is *unavailable* and says why; a number
from a randomly initialised backbone would be meaningless, so none is ever
computed.

Input rule: images (uint8 or float [0, 1]) are replicated to 3 channels if
gray, upsampled bilinearly so the shorter side is at least 64 px (LPIPS was
calibrated on 64×64 patches, and AlexNet's deeper layers shrink to 1×1 below
~32 px and fail below ~31 px), and scaled to [-1, 1]. Lower is more similar.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path

import lpips as lpips_pkg
import torch
import torch.nn.functional as F

from leakaudit.matching import backbone_download
from leakaudit.errors import ConfigError, DataError
from leakaudit.matching.ssim import to_float01

LPIPS_VERSION = "0.1"
MIN_SIDE = 64
_BATCH = 64



def backbone_filename(net: str) -> str:
    """The checkpoint file name torchvision uses for this LPIPS backbone, e.g. alexnet-owt-7be5be79.pth."""
    if net not in backbone_download.BACKBONES:
        raise ConfigError(f"LPIPS net must be one of {', '.join(backbone_download.BACKBONES)}, not {net!r}")
    return backbone_download.BACKBONES[net].filename


def default_backbone_path(net: str) -> Path:
    """Where torchvision's cache keeps the backbone: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / backbone_filename(net)


def _backbone_state(model: lpips_pkg.LPIPS, path: Path) -> dict[str, torch.Tensor]:
    """Map torchvision's ``features.<i>.*`` keys onto the lpips trunk's ``slice<k>.<i>.*`` keys.

    Raises ValueError when the file does not hold the expected tensors.
    """
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError("the file is not a state dict")
    state: dict[str, torch.Tensor] = {}
    for key, param in model.net.state_dict().items():
        source = "features." + key.split(".", 1)[1]
        value = loaded.get(source)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"it has no tensor {source!r}")
        if value.shape != param.shape:
            raise ValueError(f"{source} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        state[key] = value.to(param.dtype)
    return state


class LpipsScorer:
    """LPIPS distances for matched pairs, or a clear reason why there are none.

    Backbone features are cached per image key (least recently used first out,
    ``cache_size`` images), so an image that appears in many pairs, such as a
    candidate that is the best match of several training images, is run
    through the backbone once.
    """

    higher_is_better = False

    def __init__(
        self,
        net: str,
        model: lpips_pkg.LPIPS | None,
        reason: str | None,
        weights_path: Path | None,
        cache_size: int = 1024,
    ) -> None:
        self.net = net
        self._model = model
        self.reason = reason
        self.weights_path = weights_path
        self.cache_size = cache_size
        self._cache: OrderedDict[Hashable, list[torch.Tensor]] = OrderedDict()

    @property
    def available(self) -> bool:
        return self._model is not None

    @classmethod
    def load(cls, net: str = "alex", weights_path: str | Path | None = None, *, cache_size: int = 1024) -> LpipsScorer:
        """Build the scorer from local files only; unavailable (with ``reason``) when they are missing."""
        filename = backbone_filename(net)
        label = backbone_download.BACKBONES[net].label
        path = Path(weights_path) if weights_path is not None else default_backbone_path(net)
        if not path.is_file():
            where = str(path) if weights_path is not None else f"$TORCH_HOME/hub/checkpoints/{filename} ({path})"
            reason = f"{label} backbone weights not found at {where}: {backbone_download.fetch_hint(net)}"
            return cls(net, None, reason, path, cache_size)
        try:
            with warnings.catch_warnings():
                # pnet_rand=True builds the trunk without weights (no download);
                # pretrained=True loads the linear heads shipped in the lpips wheel.
                warnings.simplefilter("ignore")
                model = lpips_pkg.LPIPS(
                    pretrained=True, net=net, version=LPIPS_VERSION, pnet_rand=True, verbose=False
                )
            model.net.load_state_dict(_backbone_state(model, path))
        except (ValueError, RuntimeError, OSError, KeyError) as exc:
            reason = (f"{label} backbone weights at {path} could not be used ({exc}); "
                      f"{backbone_download.fetch_hint(net)}")
            return cls(net, None, reason, path, cache_size)
        model.eval()
        return cls(net, model, None, path, cache_size)

    def settings(self) -> dict[str, object]:
        """The contract's ``metrics.lpips`` block."""
        return {"available": self.available, "reason": self.reason, "net": self.net, "version": LPIPS_VERSION}

    def _require(self) -> lpips_pkg.LPIPS:
        if self._model is None:
            raise ConfigError(f"LPIPS is unavailable: {self.reason}")
        return self._model

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """(N, 1|3, H, W) uint8 or [0, 1] -> (N, 3, H', W') in [-1, 1], shorter side ≥ 64 px."""
        x = to_float01(images)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise DataError(f"LPIPS needs 1 or 3 channels, got {x.shape[1]}")
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIDE:
            scale = MIN_SIDE / min(h, w)
            size = (max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x * 2 - 1

    @torch.no_grad()
    def _compute(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Unit-normalised backbone features per image: [image][layer] (C_l, h_l, w_l)."""
        model = self._require()
        out: list[list[torch.Tensor]] = []
        for s in range(0, images.shape[0], _BATCH):
            x = model.scaling_layer(self.preprocess(images[s : s + _BATCH]))
            layers = [lpips_pkg.normalize_tensor(f) for f in model.net(x)]
            out.extend([layer[i] for layer in layers] for i in range(x.shape[0]))
        return out

    @torch.no_grad()
    def features(self, images: torch.Tensor, keys: Sequence[Hashable] | None = None) -> list[list[torch.Tensor]]:
        """Features of images (N, C, H, W), reusing the cache for keys already seen."""
        if keys is None:
            return self._compute(images)
        if len(keys) != images.shape[0]:
            raise DataError("one cache key per image is needed")
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            computed = self._compute(images[missing])
            for i, feats in zip(missing, computed, strict=True):
                self._cache[keys[i]] = feats
        result = []
        for key in keys:
            self._cache.move_to_end(key)
            result.append(self._cache[key])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    @torch.no_grad()
    def distance_pairs(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        *,
        a_keys: Sequence[Hashable] | None = None,
        b_keys: Sequence[Hashable] | None = None,
    ) -> torch.Tensor:
        """LPIPS of a[i] vs b[i]: (N, C, H, W) x2 -> (N,) float32; keys enable the feature cache.

        Keys must identify the image (e.g. ("train", 17), ("candidate", 42)):
        a key seen before returns its cached features without looking at the pixels.
        """
        model = self._require()
        if a.shape != b.shape:
            raise DataError(f"LPIPS pairs need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        fa, fb = self.features(a, a_keys), self.features(b, b_keys)
        out = torch.empty(a.shape[0], dtype=torch.float32)
        for i, (xa, xb) in enumerate(zip(fa, fb, strict=True)):
            total = torch.zeros(())
            for lin, la, lb in zip(model.lins, xa, xb, strict=True):
                total += lin((la - lb).pow(2)[None]).mean()
            out[i] = total
        return out
