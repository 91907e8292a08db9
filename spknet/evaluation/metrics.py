"""Verification metrics: EER (as the original computes it), minDCF (NIST SRE), their thresholds; Cllr, minCllr and
actDCF of scores read as log-likelihood ratios."""

from dataclasses import dataclass

import numpy as np

from spknet.errors import SpeakerNetError


def roc(scores, labels):
    """False-alarm and miss rates at every threshold (scikit-learn's ROC)."""
    from sklearn.metrics import roc_curve  # here, not at the top: sklearn adds a second to every command's start

    fpr, tpr, thresholds = roc_curve(np.asarray(labels), np.asarray(scores), pos_label=1)
    return fpr, 1 - tpr, thresholds


def eer_from_roc(fpr, fnr, thresholds) -> tuple[float, float]:
    """EER in percent and its threshold: where |FNR - FPR| is smallest, the larger of the two there."""
    index = int(np.nanargmin(np.abs(fnr - fpr)))
    return float(max(fpr[index], fnr[index]) * 100), float(thresholds[index])


def min_dcf_from_roc(fpr, fnr, thresholds, p_target=0.05, c_miss=1.0, c_fa=1.0) -> tuple[float, float]:
    """Normalised minimum detection cost and its threshold."""
    cost = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    index = int(np.argmin(cost))
    return float(cost[index] / min(c_miss * p_target, c_fa * (1 - p_target))), float(thresholds[index])


def tuned_thresholds(scores, labels, target_fa, target_fr=None) -> tuple[list, float, np.ndarray, np.ndarray]:
    """The original's ``tuneThresholdfromScore``: ``(tuned, eer_percent, fpr, fnr)``, where ``tuned`` holds
    ``[threshold, fpr, fnr]`` at the ROC point nearest each target miss rate, then each target false-alarm rate,
    then at the EER."""
    fpr, fnr, thresholds = roc(scores, labels)
    tuned = []
    for rate in target_fr or []:
        index = int(np.nanargmin(np.abs(rate - fnr)))
        tuned.append([thresholds[index], fpr[index], fnr[index]])
    for rate in target_fa:
        index = int(np.nanargmin(np.abs(rate - fpr)))
        tuned.append([thresholds[index], fpr[index], fnr[index]])
    eer, eer_threshold = eer_from_roc(fpr, fnr, thresholds)
    tuned.append([eer_threshold, eer / 100, eer / 100])
    return tuned, eer, fpr, fnr


def sorted_error_rates(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates with every trial's score as the threshold: ``(fnrs, fprs, thresholds)``.

    ``thresholds`` are the scores in ascending order (tied scores in trial order); at ``thresholds[i]`` the first
    ``i + 1`` trials of that order are rejected and the others accepted, so ``fnrs[i]`` is the fraction of targets
    among the first ``i + 1`` and ``fprs[i]`` the fraction of non-targets after them. This is the Kaldi-style
    ``ComputeErrorRates`` of voxceleb_trainer's ``tuneThreshold.py``, whose users pass its output to
    :func:`min_dcf_from_rates`; :func:`roc` is the same curve at distinct thresholds only.
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise SpeakerNetError(f"{scores.size} scores but {labels.size} labels")
    if not np.isin(labels, (0, 1)).all():
        raise SpeakerNetError("labels must be 1 (target) or 0 (non-target)")
    if labels.size == 0 or labels.min() == labels.max():
        raise SpeakerNetError("error rates need both target (1) and non-target (0) trials")
    order = np.argsort(scores, kind="stable")
    targets = labels[order].astype(np.float64)
    fnrs = np.cumsum(targets) / targets.sum()
    fprs = 1.0 - np.cumsum(1.0 - targets) / (targets.size - targets.sum())
    return fnrs, fprs, scores[order]


def min_dcf_from_rates(fnrs, fprs, thresholds, p_target=0.05, c_miss=1.0, c_fa=1.0) -> tuple[float, float]:
    """Normalised minimum detection cost over given operating points and the threshold of the first point that
    reaches it: voxceleb_trainer's ``ComputeMinDcf`` (miss rates first), on :func:`sorted_error_rates`' output."""
    fnrs, fprs = np.asarray(fnrs, dtype=np.float64), np.asarray(fprs, dtype=np.float64)
    thresholds = np.asarray(thresholds)
    if fnrs.size == 0 or not fnrs.shape == fprs.shape == thresholds.shape:
        raise SpeakerNetError(f"minDCF needs a miss rate, a false-alarm rate and a threshold per operating point, "
                              f"and at least one point; got {fnrs.size}, {fprs.size} and {thresholds.size}")
    return min_dcf_from_roc(fprs, fnrs, thresholds, p_target, c_miss, c_fa)


@dataclass
class Metrics:
    eer: float                  # percent
    eer_threshold: float
    min_dcf: dict               # p_target -> (minDCF, threshold)

    def summary(self) -> str:
        dcfs = ", ".join(f"minDCF(p={p:g}) {value:.4f}" for p, (value, _) in self.min_dcf.items())
        return f"EER {self.eer:2.4f}, {dcfs}"

    def report(self) -> str:
        """The summary with the threshold of each operating point."""
        dcfs = ", ".join(f"minDCF(p={p:g}) {value:.4f} (threshold {threshold:.6g})"
                         for p, (value, threshold) in self.min_dcf.items())
        return f"EER {self.eer:2.4f} (threshold {self.eer_threshold:.6g}), {dcfs}"


def compute_metrics(scores, labels, p_targets=(0.05, 0.01), c_miss=1.0, c_fa=1.0) -> Metrics:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        raise SpeakerNetError("EER needs both target (1) and non-target (0) trials")
    fpr, fnr, thresholds = roc(scores, labels)
    eer, eer_threshold = eer_from_roc(fpr, fnr, thresholds)
    dcf = {p: min_dcf_from_roc(fpr, fnr, thresholds, p, c_miss, c_fa) for p in p_targets}
    return Metrics(eer, eer_threshold, dcf)


# ----------------------------------------------------------------------------------------------------------------
# Calibration metrics: scores read as log-likelihood ratios (natural log)
# ----------------------------------------------------------------------------------------------------------------

def _classes(llrs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Target and non-target values of ``llrs``; both classes must be present."""
    llrs, labels = np.asarray(llrs, dtype=np.float64), np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        raise SpeakerNetError("Cllr and actDCF need both target (1) and non-target (0) trials")
    return llrs[labels == 1], llrs[labels == 0]


def cllr(llrs, labels) -> float:
    """Log-likelihood-ratio cost in bits: the mean of the targets' and the non-targets' mean cross-entropy of the
    posterior at prior 0.5 (each class weighs one half whatever its count). LLR 0 everywhere costs 1 bit; a
    perfect, confident system tends to 0; a badly calibrated one can cost far more than 1."""
    targets, non_targets = _classes(llrs, labels)
    # log(1 + exp(-x)) via logaddexp: exact for large |x|, and 0 (not NaN) for a target at +inf
    miss = np.logaddexp(0.0, -targets).mean()
    false_alarm = np.logaddexp(0.0, non_targets).mean()
    return float((miss + false_alarm) / (2 * np.log(2)))


def pav_llrs(scores, labels) -> np.ndarray:
    """The LLRs of the optimal monotonic (PAV) calibration of ``scores`` on these trials.

    Isotonic regression of the labels on the scores, with each class weighted by one over its count, gives
    posteriors at prior 0.5, whose logit is the LLR. Tied scores share one value (scikit-learn pools ties). A
    block at posterior 0 holds only non-targets (LLR -inf) and one at 1 only targets (LLR +inf); each costs 0 in
    Cllr, so the ends need no clipping, only the division warnings of logit(0) and logit(1) silenced.
    """
    from sklearn.isotonic import IsotonicRegression
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    _classes(scores, labels)
    weights = np.where(labels == 1, 1.0 / np.sum(labels == 1), 1.0 / np.sum(labels == 0))
    posteriors = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit_transform(scores, labels,
                                                                                        sample_weight=weights)
    with np.errstate(divide="ignore"):
        return np.log(posteriors) - np.log1p(-posteriors)


def min_cllr(scores, labels) -> float:
    """Cllr after the optimal monotonic calibration (:func:`pav_llrs`): the discrimination part of Cllr, what no
    calibration of these scores can go below on these trials. Needs no calibration of its own."""
    return cllr(pav_llrs(scores, labels), labels)


def effective_prior(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The target prior that, with unit costs, makes the same decisions as ``p_target`` with these costs."""
    return p_target * c_miss / (p_target * c_miss + (1 - p_target) * c_fa)


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR above which accepting costs less than rejecting: ``-logit(effective prior)``."""
    prior = effective_prior(p_target, c_miss, c_fa)
    return float(np.log1p(-prior) - np.log(prior))


def act_dcf(llrs, labels, p_target: float = 0.05, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised actual detection cost of LLRs decided at the Bayes threshold (accept when llr > threshold): the
    cost the calibrated system really pays, against minDCF's best threshold chosen on the trials themselves."""
    targets, non_targets = _classes(llrs, labels)
    threshold = bayes_threshold(p_target, c_miss, c_fa)
    cost = c_miss * p_target * np.mean(targets <= threshold) + c_fa * (1 - p_target) * np.mean(non_targets > threshold)
    return float(cost / min(c_miss * p_target, c_fa * (1 - p_target)))


@dataclass
class CalibrationMetrics:
    """minCllr of the scores, and (given LLRs from a calibration) Cllr and actDCF per p_target."""
    min_cllr: float
    cllr: float | None = None
    act_dcf: dict | None = None        # p_target -> actDCF

    def summary(self) -> str:
        if self.cllr is None:
            return f"minCllr {self.min_cllr:.4f} (Cllr and actDCF need a calibration: python inference.py calibrate)"
        dcfs = ", ".join(f"actDCF(p={p:g}) {value:.4f}" for p, value in self.act_dcf.items())
        return f"Cllr {self.cllr:.4f}, minCllr {self.min_cllr:.4f}, {dcfs}"


def calibration_metrics(scores, labels, llrs=None, p_targets=(0.05, 0.01), c_miss=1.0,
                        c_fa=1.0) -> CalibrationMetrics:
    """minCllr of ``scores``; Cllr and actDCF of ``llrs`` too when given (the calibrated scores)."""
    metrics = CalibrationMetrics(min_cllr(scores, labels))
    if llrs is not None:
        metrics.cllr = cllr(llrs, labels)
        metrics.act_dcf = {p: act_dcf(llrs, labels, p, c_miss, c_fa) for p in p_targets}
    return metrics
