"""The worker's replies checked field by field before the audit uses them.

A reply already decoded safely (``channel``) can still be the wrong shape: a
confined model could be made to answer anything. Every field of an
``InversionResult`` or ``ModelInfo`` is checked against the type it must have.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from leakaudit.confine.operations import LoadRequest, ModelInfo
from leakaudit.inversion import InversionResult
from leakaudit.membership.references import ReferenceModel, ReferenceRun
from leakaudit.power.control import ControlRun


class ReplyError(Exception):
    """A reply that is not what the operation returns."""


def _is(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise ReplyError(f"{name} has the wrong type ({type(value).__name__})")
    return value


def integer(value: Any) -> int:
    """An integer field of a progress or checkpoint message (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReplyError(f"expected an integer, got {type(value).__name__}")
    return value


def _optional(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    return None if value is None else _is(value, kind, name)


def _tensor(value: Any, name: str, dtype: torch.dtype | None = None, ndim: int | None = None) -> torch.Tensor:
    tensor: torch.Tensor = _is(value, torch.Tensor, name)
    if (dtype is not None and tensor.dtype != dtype) or (ndim is not None and tensor.dim() != ndim):
        raise ReplyError(f"{name} is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}")
    return tensor


def _floats(value: Any, name: str) -> dict[str, float]:
    _is(value, dict, name)
    return {_is(k, str, name): float(_is(v, (int, float), name)) for k, v in value.items()}


def _strings(value: Any, name: str) -> list[str]:
    return [_is(v, str, name) for v in _is(value, (list, tuple), name)]


def model_info(fields: dict[str, Any]) -> ModelInfo:
    shape = tuple(_is(v, int, "input_shape") for v in _is(fields.get("input_shape"), (list, tuple), "input_shape"))
    if len(shape) != 3 or min(shape) < 1:
        raise ReplyError(f"input_shape {shape}")
    return ModelInfo(shape, _is(fields.get("num_classes"), int, "num_classes"),
                     _is(fields.get("format"), str, "format"), _optional(fields.get("sha256"), str, "sha256"),
                     _optional(fields.get("feature_note"), str, "feature_note"),
                     torch.device(_is(fields.get("device"), str, "device")),
                     tuple(_strings(fields.get("load_notes", []), "load_notes")),
                     _flops(fields.get("flops_per_image", 0.0)))


def _flops(value: Any) -> float:
    flops = float(_is(value, (int, float), "flops_per_image"))
    if not 0.0 <= flops < float("inf"):
        raise ReplyError(f"flops_per_image {flops}")
    return flops


def with_provenance(info: ModelInfo, request: LoadRequest, fmt: str, sha256: str) -> ModelInfo:
    """The worker's account of the model with what the parent computed itself from the file in place of it.

    ``fmt`` and ``sha256`` are the parent's (``detect_format``, ``file_sha256``). The one thing only the
    worker knows is whether a pickled module was unpickled (``pickle``) rather than plain weights; with
    ``--unsafe-pickle`` on a pickle-bearing file the note that code from the file ran is the parent's, whatever
    the worker says, since code that ran could have said anything. Nothing the worker claims is refused here:
    it is simply not used.
    """
    from leakaudit.model.target import UNSAFE_NOTE
    from leakaudit.sanitize import terminal_text

    pickled = request.unsafe_pickle and fmt == "state_dict"
    notes = (UNSAFE_NOTE.format(path=terminal_text(Path(str(request.path)))),) if pickled else ()
    if pickled:  # plain weights, or a module whose code ran (and may have said anything): the cautious one
        fmt = "state_dict" if info.format == "state_dict" else "pickle"
    return replace(info, format=fmt, sha256=sha256, load_notes=notes)


def info_fields(info: ModelInfo) -> dict[str, Any]:
    return {"input_shape": list(info.input_shape), "num_classes": info.num_classes, "format": info.format,
            "sha256": info.sha256, "feature_note": info.feature_note, "device": str(info.device),
            "load_notes": list(info.load_notes), "flops_per_image": info.flops_per_image}


def inversion_result(f: dict[str, Any], info: ModelInfo) -> InversionResult:
    images = _tensor(f.get("images"), "images", ndim=4)
    if tuple(images.shape[1:]) != info.input_shape or not images.is_floating_point():
        raise ReplyError(f"images of shape {tuple(images.shape)}")
    n = len(images)
    targets = _tensor(f.get("targets"), "targets", torch.int64, 1)
    confidence = _tensor(f.get("confidence"), "confidence", ndim=1)
    if len(targets) != n or len(confidence) != n:
        raise ReplyError("targets or confidence do not match the images")
    pretrained_images = f.get("pretrained_images")
    pretrained_targets = f.get("pretrained_targets")
    if pretrained_images is not None:
        _tensor(pretrained_images, "pretrained_images", ndim=4)
        _tensor(pretrained_targets, "pretrained_targets", torch.int64, 1)
    gallery = f.get("gallery")
    if gallery is not None:
        gallery = {_is(k, int, "gallery"): [_is(i, int, "gallery") for i in _is(v, list, "gallery")]
                   for k, v in _is(gallery, dict, "gallery").items()}
    return InversionResult(
        images=images, targets=targets, confidence=confidence, mode=_is(f.get("mode"), str, "mode"),
        threat_model=_is(f.get("threat_model"), str, "threat_model"), steps=_is(f.get("steps"), int, "steps"),
        planned_steps=_is(f.get("planned_steps"), int, "planned_steps"),
        seconds=float(_is(f.get("seconds"), (int, float), "seconds")),
        completed_fraction=float(_is(f.get("completed_fraction"), (int, float), "completed_fraction")),
        notes=_strings(f.get("notes", []), "notes"), gallery=gallery, pretrained_images=pretrained_images,
        pretrained_targets=pretrained_targets, losses=_floats(f.get("losses", {}), "losses"),
        complete=_is(f.get("complete"), bool, "complete"), interrupted=_is(f.get("interrupted"), bool, "interrupted"),
        resumed_from=_optional(f.get("resumed_from"), str, "resumed_from"),
        phase_seconds=_floats(f.get("phase_seconds", {}), "phase_seconds"),
    )


def logits(value: Any, n: int, num_classes: int) -> torch.Tensor:
    t = _tensor(value, "logits", torch.float32, 2)
    if tuple(t.shape) != (n, num_classes):
        raise ReplyError(f"logits of shape {tuple(t.shape)}")
    return t


def control_run(f: dict[str, Any], info: ModelInfo) -> ControlRun:
    candidates = _tensor(f.get("candidates"), "candidates")
    unsupported = _optional(f.get("unsupported"), str, "unsupported")
    if unsupported is None and (candidates.dim() != 4 or tuple(candidates.shape[1:]) != info.input_shape
                                or not candidates.is_floating_point()):
        raise ReplyError(f"candidates of shape {tuple(candidates.shape)}")
    targets = _tensor(f.get("targets"), "targets", torch.int64, 1)
    if unsupported is None and len(targets) != len(candidates):
        raise ReplyError("targets do not match the candidates")
    number = (int, float)
    return ControlRun(
        candidates=candidates, targets=targets, steps=_is(f.get("steps"), int, "steps"),
        final_loss=float(_is(f.get("final_loss"), number, "final_loss")),
        accuracy=float(_is(f.get("accuracy"), number, "accuracy")),
        memorised=_is(f.get("memorised"), bool, "memorised"),
        complete=_is(f.get("complete"), bool, "complete"), method=_is(f.get("method"), str, "method"),
        train_seconds=float(_is(f.get("train_seconds"), number, "train_seconds")),
        invert_seconds=float(_is(f.get("invert_seconds"), number, "invert_seconds")),
        notes=tuple(_strings(f.get("notes", []), "notes")), unsupported=unsupported,
    )


def reference_run(f: dict[str, Any], models: int, n: int, num_classes: int, flips: bool) -> ReferenceRun:
    """Reference models' logits (R' ≤ R, N, K) float32 and their per-model fits, shapes checked."""
    unsupported = _optional(f.get("unsupported"), str, "unsupported")
    done = _is(f.get("models_done"), int, "models_done")
    if not 0 <= done <= models:
        raise ReplyError(f"models_done {done} of {models}")
    logits = _tensor(f.get("logits"), "logits", torch.float32, 3)
    if unsupported is None and tuple(logits.shape) != (done, n, num_classes):
        raise ReplyError(f"reference logits of shape {tuple(logits.shape)}")
    mirrored = f.get("mirrored")
    if mirrored is not None:
        _tensor(mirrored, "mirrored", torch.float32, 3)
        if tuple(mirrored.shape) != tuple(logits.shape):
            raise ReplyError(f"mirrored logits of shape {tuple(mirrored.shape)}")
    elif flips and done and unsupported is None:
        raise ReplyError("mirrored logits missing")
    rows = {}
    for name in ("in_loss", "in_accuracy", "out_loss", "out_accuracy", "seconds"):
        rows[name] = _tensor(f.get(name), name, torch.float64, 1)
        if unsupported is None and len(rows[name]) != done:
            raise ReplyError(f"{name} has {len(rows[name])} values for {done} models")
    return ReferenceRun(logits=logits, mirrored=mirrored, models_done=done,
                        method=_is(f.get("method"), str, "method"), unsupported=unsupported, **rows)


def reference_model(f: dict[str, Any], n: int, num_classes: int, flips: bool) -> ReferenceModel:
    """One finished reference model's signals (a checkpoint message), shapes checked."""
    logits = _tensor(f.get("logits"), "logits", torch.float32, 2)
    if tuple(logits.shape) != (n, num_classes):
        raise ReplyError(f"reference logits of shape {tuple(logits.shape)}")
    mirrored = f.get("mirrored")
    if mirrored is not None and tuple(_tensor(mirrored, "mirrored", torch.float32, 2).shape) != (n, num_classes):
        raise ReplyError(f"mirrored logits of shape {tuple(mirrored.shape)}")
    if flips and mirrored is None:
        raise ReplyError("mirrored logits missing")
    fit = _is(f.get("fit"), (list, tuple), "fit")
    if len(fit) != 4:
        raise ReplyError("fit")
    index = _is(f.get("index"), int, "index")
    if index < 0:
        raise ReplyError(f"index {index}")
    in_loss, in_accuracy, out_loss, out_accuracy = (float(_is(v, (int, float), "fit")) for v in fit)
    return ReferenceModel(index, logits, mirrored, (in_loss, in_accuracy, out_loss, out_accuracy),
                          float(_is(f.get("seconds"), (int, float), "seconds")))
