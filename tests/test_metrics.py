"""EER and minDCF against brute-force definitions over every threshold."""

import numpy as np
import pytest

from core.errors import SpeakerNetError
from core.evaluation import compute_metrics
from tuneThreshold import tuneThresholdfromScore


def brute_force(scores, labels, p_target):
    thresholds = np.concatenate([[np.inf], np.sort(scores)[::-1]])
    fnr = np.array([np.mean(scores[labels == 1] < t) for t in thresholds])
    fpr = np.array([np.mean(scores[labels == 0] >= t) for t in thresholds])
    dcf = np.min(fnr * p_target + fpr * (1 - p_target)) / min(p_target, 1 - p_target)
    return fnr, fpr, dcf


def brute_force_eers(fnr, fpr):
    """EER in percent as the original defines it, on the corners of the ROC staircase (the points scikit-learn's
    ``roc_curve`` keeps): where ``|FNR - FPR|`` is smallest, the larger of the two there. A set, because two
    corners can tie (up to rounding, which then decides between them)."""
    steps = np.stack([np.diff(fnr) != 0, np.diff(fpr) != 0], axis=1)           # which rate each step moves
    turns = np.flatnonzero((steps[1:] != steps[:-1]).any(axis=1)) + 1
    corners = np.concatenate([[0], turns, [len(fnr) - 1]])
    gap = np.abs(fnr[corners] - fpr[corners])
    closest = corners[gap <= gap.min() + 1e-12]
    return {round(max(fnr[i], fpr[i]) * 100, 9) for i in closest}


@pytest.mark.parametrize("seed", range(5))
def test_eer_and_min_dcf(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.3).astype(int)
    scores = rng.normal(size=400) + 1.5 * labels
    metrics = compute_metrics(scores, labels)
    fnr, fpr, dcf05 = brute_force(scores, labels, 0.05)
    assert round(metrics.eer, 9) in brute_force_eers(fnr, fpr)
    # and it lies between the two error rates where they cross over all thresholds
    crossing = np.argmin(np.abs(fnr - fpr))
    low, high = sorted((fnr[crossing] * 100, fpr[crossing] * 100))
    assert low - 1e-9 <= metrics.eer <= high + 1e-9
    assert metrics.min_dcf[0.05][0] == pytest.approx(dcf05, abs=1e-12)
    assert metrics.min_dcf[0.01][0] == pytest.approx(brute_force(scores, labels, 0.01)[2], abs=1e-12)
    assert tuneThresholdfromScore(scores, labels, [1, 0.1])[1] == metrics.eer


def test_separable_and_reversed():
    labels = np.array([0, 0, 1, 1])
    assert compute_metrics(np.array([0.1, 0.2, 0.8, 0.9]), labels).eer == 0.0
    assert compute_metrics(np.array([0.9, 0.8, 0.2, 0.1]), labels).eer == 100.0
    # interleaved: at 0.3 one target of two is missed and one non-target of two accepted
    assert compute_metrics(np.array([0.1, 0.3, 0.2, 0.4]), labels).eer == 50.0
    with pytest.raises(SpeakerNetError, match="both target"):
        compute_metrics(np.array([0.1, 0.2]), np.array([1, 1]))
