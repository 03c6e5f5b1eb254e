"""The hand-built scenarios behave like real audit documents."""

from __future__ import annotations

import numpy as np
import pytest

from leakaudit.report.schema import schema_errors
from tests.scenarios import gated, scenario

def test_leaky_scenario_matches_members_better_than_nonmembers() -> None:
    s = scenario(leaky=True)
    assert s.holdout_best is not None
    assert np.median(s.train_best) > np.quantile(s.holdout_best, 0.99)
    assert s.document["summary"]["leak_score"]["value"] > 0.9


def test_clean_scenario_has_no_member_advantage() -> None:
    s = scenario(leaky=False)
    leak = s.document["summary"]["leak_score"]
    assert leak["ci_low"] < 0.5 < leak["ci_high"] or leak["p_value"] > 0.01


@pytest.mark.parametrize("leaky", [True, False])
def test_ssim_agrees_with_scikit_image(leaky: bool) -> None:
    from skimage.metrics import structural_similarity

    s = scenario(leaky=leaky)
    f = s.document["findings"][0]
    recon = s.arrays["images"][f["reconstruction_index"], 0].astype(np.float64)
    train = s.arrays["finding_train_images"][0, 0].astype(np.float64) / 255.0
    ref = structural_similarity(
        recon, train, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert f["ssim"] == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("leaky,calibrated", [(True, True), (False, True), (True, False)])
def test_gated_scenarios_follow_the_schema(leaky: bool, calibrated: bool) -> None:
    document, _ = gated(leaky=leaky, calibrated=calibrated)
    assert schema_errors(document) == []
