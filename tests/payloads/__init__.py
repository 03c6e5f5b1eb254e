"""Hostile model files, built against the installed PyTorch: each would create a marker file if it ran.

Every builder returns a file whose payload is live: the tests show that the
plain PyTorch loader (or the module itself) does create the marker, so a
passing refusal test is not a payload that was broken to begin with.
The builders live in ``archives`` (pickles, ``.pt2`` and weight files) and
``torchscript``; ``arch`` holds the hostile ``--arch`` module of the
confinement tests, ``harness`` the checks the security tests share.
"""

from __future__ import annotations

from .archives import (Payload, exported, exported_dynamic, forging_pickle, payload_pickle, pt2_case_twin,
                       pt2_extra_entry, pt2_graph_target, pt2_opaque_constant, pt2_pickled_weight, pt2_sample_inputs,
                       pt2_sample_inputs_archive, pt2_shape_expression, pt2_version, rewrite_zip,
                       safetensors_overclaim, zip_bomb_state_dict)
from .torchscript import (torchscript_attribute, torchscript_case, torchscript_chatty, torchscript_fork,
                          torchscript_from_file, torchscript_hook, torchscript_pickle, torchscript_setstate,
                          torchscript_setstate_continued, torchscript_shouting)

__all__ = [
    "Payload", "exported", "exported_dynamic", "forging_pickle", "payload_pickle", "pt2_case_twin", "pt2_extra_entry",
    "pt2_graph_target", "pt2_opaque_constant", "pt2_pickled_weight", "pt2_sample_inputs", "pt2_sample_inputs_archive",
    "pt2_shape_expression", "pt2_version", "rewrite_zip", "safetensors_overclaim", "zip_bomb_state_dict",
    "torchscript_attribute", "torchscript_case", "torchscript_chatty", "torchscript_fork", "torchscript_from_file",
    "torchscript_hook", "torchscript_pickle", "torchscript_setstate", "torchscript_setstate_continued",
    "torchscript_shouting",
]
