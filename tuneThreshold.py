"""The original's threshold tuning interface (and voxceleb_trainer's additions), from
:mod:`spknet.evaluation.metrics`."""

from spknet.evaluation.metrics import min_dcf_from_rates as ComputeMinDcf
from spknet.evaluation.metrics import sorted_error_rates as ComputeErrorRates
from spknet.evaluation.metrics import tuned_thresholds as tuneThresholdfromScore

__all__ = ["ComputeErrorRates", "ComputeMinDcf", "tuneThresholdfromScore"]
