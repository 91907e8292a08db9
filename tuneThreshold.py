"""The original's threshold tuning interface, on the metrics of :mod:`spknet.evaluation.metrics`."""

import numpy as np

from spknet.evaluation.metrics import eer_from_roc, roc


def tuneThresholdfromScore(scores, labels, target_fa, target_fr=None):
    """The original's interface: ``(tunedThreshold, eer_percent, fpr, fnr)``."""
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
