"""EER and minDCF against brute-force definitions over every threshold; Cllr, minCllr and actDCF by hand."""

import numpy as np
import pytest

import tuneThreshold
from spknet.errors import SpeakerNetError
from spknet.evaluation import act_dcf, cllr, compute_metrics, min_cllr
from spknet.evaluation import metrics as metrics_module
from spknet.evaluation.metrics import bayes_threshold
from tuneThreshold import ComputeErrorRates, ComputeMinDcf, tuneThresholdfromScore


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


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p_target,c_miss,c_fa", [(0.05, 1, 1), (0.01, 1, 1), (0.3, 2, 0.5)])
def test_voxceleb_trainer_s_error_rates_and_min_dcf_against_every_threshold(seed, p_target, c_miss, c_fa):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.4).astype(int)
    scores = rng.normal(size=300) + 1.5 * labels                # distinct scores: one trial per threshold
    fnrs, fprs, thresholds = ComputeErrorRates(list(scores), list(labels))
    # at a trial's score, trials up to it are rejected and the others accepted
    below = scores[None, :] <= np.sort(scores)[:, None]
    assert np.array_equal(thresholds, np.sort(scores))
    assert np.allclose(fnrs, (below & (labels == 1)).sum(1) / (labels == 1).sum(), rtol=0, atol=1e-12)
    assert np.allclose(fprs, (~below & (labels == 0)).sum(1) / (labels == 0).sum(), rtol=0, atol=1e-12)
    cost = c_miss * p_target * fnrs + c_fa * (1 - p_target) * fprs
    best = int(np.argmin(cost))
    min_dcf, threshold = ComputeMinDcf(fnrs, fprs, thresholds, p_target, c_miss, c_fa)
    assert min_dcf == pytest.approx(cost[best] / min(c_miss * p_target, c_fa * (1 - p_target)), abs=1e-12)
    assert threshold == thresholds[best]
    # the same minimum as the ROC's (the staircase's corners hold every optimum)
    assert min_dcf == pytest.approx(compute_metrics(scores, labels, (p_target,), c_miss, c_fa).min_dcf[p_target][0],
                                    abs=1e-12)


def test_error_rates_with_tied_scores_follow_trial_order():
    fnrs, fprs, thresholds = ComputeErrorRates([0.5, 0.5, 0.1, 0.5], [1, 0, 0, 1])
    assert list(thresholds) == [0.1, 0.5, 0.5, 0.5]               # sorted: trials 2, 0, 1, 3
    assert list(fnrs) == [0.0, 0.5, 0.5, 1.0] and list(fprs) == [0.5, 0.5, 0.0, 0.0]
    assert ComputeMinDcf(fnrs, fprs, thresholds, 0.5, 1, 1) == (0.5, 0.1)   # first of the tied minima


def test_threshold_tuning_is_the_library_s():
    assert tuneThreshold.ComputeErrorRates is metrics_module.sorted_error_rates
    assert tuneThreshold.ComputeMinDcf is metrics_module.min_dcf_from_rates
    assert tuneThreshold.tuneThresholdfromScore is metrics_module.tuned_thresholds


@pytest.mark.parametrize("scores,labels,message", [
    ([0.1, 0.2], [1, 1], "both target"),
    ([0.1, 0.2], [1, 2], "labels must be 1 .target. or 0"),
    ([0.1, 0.2, 0.3], [1, 0], "3 scores but 2 labels"),
    ([], [], "both target"),
])
def test_error_rates_of_bad_trials_are_user_errors(scores, labels, message):
    with pytest.raises(SpeakerNetError, match=message):
        ComputeErrorRates(scores, labels)
    with pytest.raises(SpeakerNetError, match="at least one point; got 0, 0 and 0"):
        ComputeMinDcf([], [], [], 0.05, 1, 1)


def test_separable_and_reversed():
    labels = np.array([0, 0, 1, 1])
    assert compute_metrics(np.array([0.1, 0.2, 0.8, 0.9]), labels).eer == 0.0
    assert compute_metrics(np.array([0.9, 0.8, 0.2, 0.1]), labels).eer == 100.0
    # interleaved: at 0.3 one target of two is missed and one non-target of two accepted
    assert compute_metrics(np.array([0.1, 0.3, 0.2, 0.4]), labels).eer == 50.0
    with pytest.raises(SpeakerNetError, match="both target"):
        compute_metrics(np.array([0.1, 0.2]), np.array([1, 1]))


# ----------------------------------------------------------------------------------------------------------------
# Cllr, minCllr, actDCF against hand-computed cases
# ----------------------------------------------------------------------------------------------------------------

def test_cllr_of_hand_computed_llrs():
    labels = np.array([1, 1, 0, 0])
    assert cllr(np.zeros(4), labels) == pytest.approx(1.0)                     # uninformative: 1 bit
    # each trial on the right side at odds 3: every trial costs log2(1 + 1/3) bits
    assert cllr(np.log([3, 3, 1 / 3, 1 / 3]), labels) == pytest.approx(np.log2(4 / 3))
    # the same LLRs with the wrong sign: log2(1 + 3) = 2 bits, worse than saying nothing
    assert cllr(np.log([1 / 3, 1 / 3, 3, 3]), labels) == pytest.approx(2.0)
    # each class weighs one half whatever its count: 1 target at LLR 0 (1 bit) and 3 confident non-targets
    assert cllr(np.array([0.0, -50.0, -50.0, -50.0]), np.array([1, 0, 0, 0])) == pytest.approx(0.5)
    assert cllr(np.array([np.inf, -np.inf]), np.array([1, 0])) == 0.0          # infinite confidence, right: free
    assert cllr(np.array([-1000.0, 0.0]), np.array([1, 0])) == pytest.approx((1000 / np.log(2) + 1) / 2)


def test_min_cllr_is_the_pav_calibration():
    labels = np.array([1, 1, 0, 0])
    assert min_cllr(np.array([5.0, 6.0, -1.0, 2.0]), labels) == 0.0            # separated: PAV gives +-inf
    assert min_cllr(np.array([-5.0, -6.0, 1.0, -2.0]), labels) == pytest.approx(1.0)   # reversed: LLR 0 at best
    # sorted: non 0, target 1, non 2, target 3; PAV pools the middle pair at posterior 1/2 (LLR 0), the ends are
    # -inf (non-target) and +inf (target): each class has one trial at 1 bit and one at 0 -> 0.5
    assert min_cllr(np.array([1.0, 3.0, 0.0, 2.0]), labels) == pytest.approx(0.5)
    # tied scores share one LLR: a target and a non-target at the same score are pooled
    assert min_cllr(np.array([1.0, 1.0]), np.array([1, 0])) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(3))
def test_min_cllr_is_invariant_to_monotonic_maps_and_below_cllr(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(500) < 0.2).astype(int)
    scores = rng.normal(size=500) + 1.5 * labels
    best = min_cllr(scores, labels)
    assert 0 < best < 1
    assert min_cllr(np.exp(3 * scores) - 7, labels) == pytest.approx(best)
    for scale, offset in ((1.0, 0.0), (3.0, -2.0), (0.3, 1.0)):
        assert cllr(scale * scores + offset, labels) >= best - 1e-12
    # the PAV LLRs do not depend on the list's target proportion: repeating every target 3 times keeps them
    repeated = np.concatenate([scores, np.repeat(scores[labels == 1], 2)])
    repeated_labels = np.concatenate([labels, np.ones(2 * labels.sum(), dtype=int)])
    assert min_cllr(repeated, repeated_labels) == pytest.approx(best)


def test_act_dcf_decides_at_the_bayes_threshold():
    # p_target 0.05, unit costs: threshold -logit(0.05) = log(19) = 2.944
    assert bayes_threshold(0.05) == pytest.approx(np.log(19))
    assert bayes_threshold(0.5, c_miss=1, c_fa=3) == pytest.approx(np.log(3))
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    llrs = np.array([5.0, 3.0, 2.0, 0.0, np.log(19), 3.5, -1.0, -9.0])
    # misses: 2.0 and 0.0 -> P_miss 2/4; false alarm: 3.5 only (one exactly at the threshold is rejected) -> 1/4
    expected = (0.05 * 0.5 + 0.95 * 0.25) / 0.05
    assert act_dcf(llrs, labels, 0.05) == pytest.approx(expected)
    # costs act through the effective prior: (p 0.5, c_fa 3) decides like p 0.25 at unit costs (threshold log 3)
    assert act_dcf(llrs, labels, 0.5, 1.0, 3.0) == pytest.approx(
        (0.5 * np.mean(llrs[:4] <= np.log(3)) + 1.5 * np.mean(llrs[4:] > np.log(3))) / 0.5)
    assert act_dcf(np.zeros(8), labels, 0.05) == pytest.approx(1.0)            # LLR 0 rejects everything: 1
    with pytest.raises(SpeakerNetError, match="both target"):
        cllr(np.zeros(3), np.ones(3))
