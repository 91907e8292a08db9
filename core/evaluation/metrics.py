"""Verification metrics: EER (as the original computes it), minDCF (NIST SRE), their thresholds."""

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from core.errors import SpeakerNetError


def roc(scores, labels):
    """False-alarm and miss rates at every threshold (scikit-learn's ROC)."""
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
