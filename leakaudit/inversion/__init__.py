"""Network inversion: a label-conditioned generator trained against the frozen classifier."""

from leakaudit.inversion.config import InversionConfig
from leakaudit.inversion.generator import ConditionalGenerator
from leakaudit.inversion.informed import split_prior
from leakaudit.inversion.invert import THREAT_MODELS, InversionCallbacks, InversionResult, invert

__all__ = ["THREAT_MODELS", "ConditionalGenerator", "InversionCallbacks", "InversionConfig", "InversionResult",
           "invert", "split_prior"]
