"""The zoo: classifiers trained here on real images, for the demo, the tests and the benchmarks.

Each one is a member (training) folder, a non-member (holdout) folder, and a
classifier trained on the members, saved as TorchScript beside its initial
weights (``init.pt``, a state_dict) for init-aware audits. The recipes ship as
``audits/*.toml``. One module per job: ``spec`` (the recipe), ``datasets``
(the real images), ``architectures``, ``training``, ``build`` (on disk, cached
by spec) and ``catalogue`` (the shipped definitions).
"""

from leakaudit.zoo.architectures import build_classifier, initial_classifier
from leakaudit.zoo.build import BuiltReference, build_reference
from leakaudit.zoo.catalogue import ShippedAudit, describe, load_spec, shipped_audits
from leakaudit.zoo.datasets import bundled_images, pretrained_images, real_images, realdata_cache, split_members
from leakaudit.zoo.spec import ARCHS, BUNDLED, REAL, ReferenceData, ReferenceSpec
from leakaudit.zoo.training import starting_classifier, train_classifier

__all__ = [
    "ARCHS", "BUNDLED", "REAL", "BuiltReference", "ReferenceData", "ReferenceSpec", "ShippedAudit",
    "build_classifier", "build_reference", "bundled_images", "describe", "initial_classifier", "load_spec",
    "pretrained_images", "real_images", "realdata_cache", "shipped_audits", "split_members",
    "starting_classifier", "train_classifier",
]
