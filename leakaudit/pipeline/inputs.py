"""The audit's inputs: model and images loaded and cross-checked, and the holdout split in two.

Every mismatch between the model and the folders is a clear ``DataError``
before any attack runs. With non-members, part of them may train the
generator's prior (the informed attacker) while the rest is the null that
members are compared with; the two parts never overlap.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from leakaudit.config import AuditSettings
from leakaudit.data.folders import ImageSet
from leakaudit.errors import AuditInterrupted, DataError, OutputError
from leakaudit.inversion.informed import split_prior
from leakaudit.confine.operations import LoadRequest
from leakaudit.confine.session import ModelSession
from leakaudit.runtime.outlock import check_writable
from leakaudit.runtime.progress import Observer
from leakaudit.data.safe_files import check_apart
from leakaudit.data.sources import LoadSpec, resolve_source

PRIOR_FRACTION = 0.5  # share of the holdout that trains the informed prior; the rest is the null
PRIOR_SEED_OFFSET = 7919  # the split's own stream, apart from the inversion's seed


@dataclass(frozen=True)
class AuditInputs:
    """The validated model and image sets of one audit."""

    model: ModelSession  # the model under audit, behind its session (confined or in-process)
    train: ImageSet
    holdout: ImageSet | None


@dataclass(frozen=True)
class AuditSets:
    """What the attack may learn from (``prior``) and what members are compared with (``null``)."""

    train: ImageSet
    prior: ImageSet | None
    null: ImageSet | None
    informed: bool
    notes: tuple[str, ...] = field(default=())


def load_inputs(settings: AuditSettings, observer: Observer, model: ModelSession,
                should_stop: Callable[[], bool] | None = None, started: float | None = None) -> AuditInputs:
    """Load and cross-check model and data; every mismatch is a clear error.

    ``settings.data`` / ``settings.holdout`` may be paths or already-resolved
    sources (``leakaudit.data.sources``); ``settings.model`` a path or a module.
    Reading the images stops at a stop request (``AuditInterrupted``) and when the audit, begun at ``started``
    (``time.monotonic()``), reaches ``--budget`` (``DataError`` naming the phase).
    """
    observer.phase("loading model and data")
    data = resolve_source(settings.data, name="train")
    holdout_source = resolve_source(settings.holdout, name="holdout") if settings.holdout is not None else None
    check_apart(settings.out, (data.path, holdout_source.path if holdout_source else None))  # outputs never inputs
    data.check()  # a missing or empty input is reported before the model is touched
    if holdout_source is not None:
        holdout_source.check()
    target = model.load(LoadRequest(
        settings.model, arch=settings.arch, unsafe_pickle=settings.unsafe_pickle, input_size=settings.input_size,
        mean=settings.mean, std=settings.std, shape_hint=data.shape_hint(), device=settings.device,
    ))
    channels, height, width = target.input_shape
    spec = LoadSpec(channels, (height, width), target.num_classes, strict=settings.strict_data,
                    max_file_bytes=settings.max_image_bytes,
                    progress=lambda d, t: observer.advance(d, t, "training images"),
                    poll=data_poll(settings.budget, started, should_stop))
    train = data.load(spec)
    if len(train.classes) != target.num_classes:
        raise DataError(
            f"{data} has {len(train.classes)} {data.count_noun} but the model has {target.num_classes} outputs; "
            "the classes must be exactly those the model was trained on (sorted names = class indices)"
        )
    for skipped in train.skipped:
        observer.note(f"skipped {skipped.path}: {skipped.reason}")
    holdout = None
    if holdout_source is not None:
        holdout = holdout_source.load(replace(spec, classes=train.classes, progress=None))
        for skipped in holdout.skipped:
            observer.note(f"skipped holdout {skipped.path}: {skipped.reason}")
        holdout = _without_members(holdout, train, settings, observer)
    return AuditInputs(model, train, holdout)


def data_poll(budget_s: float | None, started: float | None,
              should_stop: Callable[[], bool] | None) -> Callable[[], None]:
    """What the image readers call before each image: a stop request or the budget's end ends the loading."""
    begun = time.monotonic() if started is None else started
    stop = should_stop or (lambda: False)

    def poll() -> None:
        if stop():
            raise AuditInterrupted("stopped while the data was loading")
        if budget_s is not None and time.monotonic() - begun > budget_s:
            raise DataError(f"--budget {budget_s:g} s ended the audit while loading the data; the audit is "
                            "incomplete: raise --budget or give fewer images")

    return poll


def _without_members(holdout: ImageSet, train: ImageSet, settings: AuditSettings, observer: Observer) -> ImageSet:
    """The holdout less any image pixel-identical to a training image: a member is no non-member."""
    holdout_digests = _pixel_digests(holdout)
    overlap = set(_pixel_digests(train)) & set(holdout_digests)
    if not overlap:
        return holdout
    observer.note(f"{len(overlap)} holdout image(s) are pixel-identical to training images; "
                  "they are left out of the null")
    kept = _subset(holdout, torch.tensor([d not in overlap for d in holdout_digests]))
    if len(kept) == 0:
        raise DataError(f"every image in {settings.holdout} is also in {settings.data}: no non-members left")
    return kept


def _pixel_digests(images: ImageSet) -> list[str]:
    return [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images.images]


def take_first(images: ImageSet, count: int) -> ImageSet:
    """The first ``count`` images of a set (those matching reached before the budget ended it)."""
    return replace(images, images=images.images[:count], labels=images.labels[:count], paths=images.paths[:count])


def _subset(images: ImageSet, keep: torch.Tensor) -> ImageSet:
    idx = torch.nonzero(keep).flatten()
    return replace(images, images=images.images[idx], labels=images.labels[idx],
                   paths=tuple(images.paths[i] for i in idx.tolist()))


def prior_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (prior, null) of the holdout: the audit's split, which the benchmarks use too."""
    return split_prior(labels, PRIOR_FRACTION, seed=seed + PRIOR_SEED_OFFSET)


def split_holdout(holdout: ImageSet, seed: int) -> tuple[ImageSet, ImageSet]:
    """Per class, a seeded share of the non-members trains the prior; the rest is the null.

    The two parts never overlap, so the null measures what a generator that
    never saw those images reaches.
    """
    prior_idx, _ = prior_split(holdout.labels, seed)
    prior_mask = torch.zeros(len(holdout), dtype=torch.bool)
    prior_mask[prior_idx] = True
    return _subset(holdout, prior_mask), _subset(holdout, ~prior_mask)


def audit_sets(inputs: AuditInputs, settings: AuditSettings) -> AuditSets:
    """Decide the threat model's data: informed when a holdout is given and ``--prior`` allows it."""
    informed = inputs.holdout is not None and settings.prior in ("auto", "holdout")
    if not informed or inputs.holdout is None:
        return AuditSets(inputs.train, None, inputs.holdout, False)
    prior, null = split_holdout(inputs.holdout, settings.seed)
    if len(prior) == 0 or len(null) == 0:
        return AuditSets(inputs.train, None, inputs.holdout, False, (
            "The holdout is too small to split into a prior and a null part; the inversion ran data-free.",))
    return AuditSets(inputs.train, prior, null, True)


def check_output_folder(out: Path) -> None:
    """The output folder exists or can be made, and can be written."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None
    check_writable(out)  # a new file of a random name: never written through a link planted in OUT
