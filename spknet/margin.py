"""The margin schedule of the margin losses: no margin at first, then an exponential rise to the full margin.

As WeSpeaker's margin scheduler: a classifier trained with its full margin from the first step can stall while
the embeddings are still random, so the margin is 0 for the first epochs, then rises per iteration over a few
epochs, then stays. The margin is a pure function of the position in the run (epoch, batch): it needs no saved
state, and a resumed run recomputes it before its first step.
"""

from dataclasses import dataclass

from spknet.errors import SpeakerNetError

# The rise follows 1 - RISE_FLOOR ** fraction, normalised to reach 1 at the end of the ramp: fast at first
# (half the margin after a tenth of the ramp), then flattening, the shape of WeSpeaker's "exp" increase.
RISE_FLOOR = 1e-3


def exponential_rise(fraction: float) -> float:
    """0 at ``fraction`` 0, 1 at 1, concave in between."""
    fraction = min(max(fraction, 0.0), 1.0)
    return (1.0 - RISE_FLOOR ** fraction) / (1.0 - RISE_FLOOR)


@dataclass(frozen=True)
class MarginSchedule:
    """Margin 0 before epoch ``start_epoch`` (1-based), then ``final * exponential_rise`` over ``rampup_epochs``
    (fractions allowed; 0 = a step to the full margin), then ``final``.

    ``steps_per_epoch`` (the loader's length) turns epochs into iterations; a batch is one iteration whether its
    step was applied or skipped (a non-finite loss), so the margin depends only on where the run stands.
    """
    final: float
    start_epoch: int
    rampup_epochs: float
    steps_per_epoch: int

    def __post_init__(self):
        if self.start_epoch < 1 or self.rampup_epochs < 0 or self.steps_per_epoch < 1:
            raise SpeakerNetError(f"margin schedule: start epoch {self.start_epoch} (from 1), ramp-up "
                                  f"{self.rampup_epochs} epochs (from 0) and {self.steps_per_epoch} steps per epoch "
                                  f"(from 1) are not a schedule")

    def at(self, epoch: int, batch: int) -> float:
        """The margin for batch ``batch`` (0-based) of epoch ``epoch`` (1-based)."""
        position = (epoch - 1) * self.steps_per_epoch + batch
        start = (self.start_epoch - 1) * self.steps_per_epoch
        ramp = self.rampup_epochs * self.steps_per_epoch
        if position < start:
            return 0.0
        if position >= start + ramp:
            return self.final
        return self.final * exponential_rise((position - start) / ramp)


def has_margin(loss) -> bool:
    """Whether a loss (class or instance) has a margin the schedule can drive: its ``set_margin`` (an instance
    also reads its full ``margin``)."""
    return callable(getattr(loss, "set_margin", None))
