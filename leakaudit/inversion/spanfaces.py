"""Whether the extreme images of an update's span can single out members at all.

The extreme-image programme finds the non-negative images of the span with as
many dark (zero) pixels as the span allows. A member is such an isolated
extreme point only when its own dark pixels pin it down: the span's directions
that vanish on all of them must be the member's own direction alone. When the
span has more directions than a member has dark pixels among the pixels the
update reaches, a whole face of images shares the member's zeros and the
programme lands somewhere on it, rarely on the member. Measured with
``free_directions`` on the real MNIST MLPs: at 50 digits per class (rank 500,
583 pixels reached, a member lights ~148 of them) a member's dark pixels leave
a median of 114 free directions (25–244 over the 500; public images' 107); at
10 per class (rank 100) exactly 1 for every member (public images' 0), and most
members come back exactly (``bench/bench_spanfaces.py``).

Public images from the training distribution have the members' kind of
support, so their dark pixels measure the face without touching the members.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A pixel at or below this level is dark (uint8 zero; float images one half step above it).
DARK_LEVEL = 0.5 / 255
# A unit direction of the span whose part on the dark pixels is this small vanishes on them (the basis is
# orthonormal, so those parts lie in [0, 1]): members sit ~1e-5 from exact zeros (the span is exact to the
# weights' float32 rounding), generic directions far above.
VANISHING = 1e-3
# Public images whose dark pixels are measured (about a second at rank 500). Enough to tell a narrow span from
# a wide one, not for a precise count: at 50 per class the members' own counts spread from 25 to 244.
SAMPLE = 32
# Free directions at most this many: an image with those zeros is fixed by them (its own direction only).
ISOLATED = 1
NOT_MEASURED = ("init-aware mode: without public images, whether the span's extreme images can single out members "
                "was not measured (their dark pixels measure it)")


@dataclass(frozen=True)
class SpanFaces:
    """How many directions of the span vanish on a public image's dark pixels, over a sample of them."""

    median_free: float
    sampled: int
    rank: int  # directions of the span
    reached: int  # pixels where the span is not identically zero

    @property
    def isolated(self) -> bool:
        """True when an image with a public image's zeros is fixed by them: members are extreme points."""
        return self.median_free <= ISOLATED

    def note(self) -> str:
        """What the extreme images could single out, for the report's notes."""
        where = (f"median over {self.sampled} public images; the span has {self.rank} directions over "
                 f"{self.reached} pixels the update reaches")
        if self.isolated:
            return ("init-aware mode: an image of the span with the dark pixels of a public image is fixed by them "
                    f"({where}), so members are isolated extreme points the programmes can single out")
        return (f"init-aware mode: the span is too wide to single out members by their dark pixels: an image of it "
                f"with a public image's dark pixels still has {self.median_free:.0f} free directions ({where}), so "
                "its extreme images are only near members; the unit ratios are the sharper candidates here")


def free_directions(basis: torch.Tensor, images01: torch.Tensor) -> torch.Tensor:
    """(N,) for each image: how many of the span's directions vanish on every pixel the image leaves dark.

    ``basis`` (r, D) is orthonormal; ``images01`` (N, D) in [0, 1]. A member of
    the span scores at least 1 (its own direction); 1 means it is an isolated
    extreme point, k > 1 that a face of k dimensions shares its zeros.
    """
    basis = basis.double()
    out = torch.zeros(len(images01), dtype=torch.int64)
    for i, image in enumerate(images01.double()):
        dark = image <= DARK_LEVEL
        if not bool(dark.any()):
            out[i] = basis.shape[0]
            continue
        restricted = torch.linalg.svdvals(basis[:, dark])
        kept = int((restricted > VANISHING).sum())
        out[i] = basis.shape[0] - kept
    return out


def span_faces(basis: torch.Tensor, public01: torch.Tensor | None, seed: int = 0) -> SpanFaces | None:
    """The span's faces measured on up to ``SAMPLE`` public images (N, D); None when there are none."""
    if public01 is None or len(public01) == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    chosen = public01[torch.randperm(len(public01), generator=generator)[:SAMPLE]]
    free = free_directions(basis, chosen.flatten(1))
    column = basis.abs().amax(0)
    reached = int((column > 1e-9 * float(column.max().clamp_min(1e-300))).sum())
    return SpanFaces(float(free.double().median()), len(chosen), int(basis.shape[0]), reached)
