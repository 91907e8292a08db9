"""Shared by the per-iteration schedules (``warmup_exp``, ``warmup_cosine``): a linear warm-up from about 0 to
``--lr`` over ``--warmup_epochs``, then a decay that reaches ``--final_lr`` at the last iteration of
``--max_epoch``, as WeSpeaker's and 3D-Speaker's recipes.

Such a schedule declares ``per_iteration = True``: the trainer steps it after every batch (also a batch whose
step was skipped for a non-finite loss, so the LR depends only on where the run stands, as the margin does) and
not at the end of an epoch. It is a closed form of its step count (``last_epoch``), so the saved scheduler state
(the count) is all a resume needs.
"""

import math

import torch

from spknet.errors import SpeakerNetError


def warmup_factor(step: int, warmup_steps: int) -> float:
    """(step + 1) / warmup_steps: the first step already moves (an LR of exactly 0 would waste it), the last warm-up
    step trains at the full LR."""
    return (step + 1) / warmup_steps


def decay_fraction(step: int, warmup_steps: int, total_steps: int) -> float:
    """0 at the first step after the warm-up, 1 at the last step of the run (and after it: the sampler's epochs
    can be a batch longer than the first one, which sets ``steps_per_epoch``)."""
    span = total_steps - 1 - warmup_steps
    if span <= 0:
        return 1.0
    return min(max((step - warmup_steps) / span, 0.0), 1.0)


class WarmupDecay(torch.optim.lr_scheduler.LRScheduler):
    """Warm-up then ``decay(fraction, final_ratio)`` of each group's initial LR; subclasses define ``decay``."""

    per_iteration = True
    final_must_be_positive = False
    default_final_ratio = 1e-3      # final_lr unset (--final_lr): lr / 1000
    _SHAPE = ("total_steps", "warmup_steps", "final_ratio")     # from the run's options, not from a checkpoint

    def __init__(self, optimizer, lr: float, max_epoch: int, steps_per_epoch: int | None = None,
                 warmup_epochs: float = 0.0, final_lr: float | None = None, **kwargs):
        if not steps_per_epoch or steps_per_epoch < 1:
            raise SpeakerNetError(f"{type(self).__module__}: a per-iteration schedule needs the number of steps per "
                                  f"epoch, got {steps_per_epoch}")
        final_lr = lr * self.default_final_ratio if final_lr is None else final_lr
        self.total_steps = max_epoch * steps_per_epoch
        self.warmup_steps = round(warmup_epochs * steps_per_epoch)
        if self.warmup_steps >= self.total_steps:
            raise SpeakerNetError(f"a warm-up of {warmup_epochs} epochs leaves no step to decay in {max_epoch} "
                                  f"epochs")
        self.final_ratio = final_lr / lr
        if not (0.0 < self.final_ratio if self.final_must_be_positive else 0.0 <= self.final_ratio) \
                or self.final_ratio > 1.0:
            raise SpeakerNetError(f"{type(self).__module__}: the final LR {final_lr:g} must lie between "
                                  f"{'above ' if self.final_must_be_positive else ''}0 and the initial LR {lr:g}")
        super().__init__(optimizer)

    @staticmethod
    def decay(fraction: float, final_ratio: float) -> float:
        raise NotImplementedError

    def factor(self, step: int) -> float:
        """The LR of step ``step`` (0-based) over the initial LR."""
        if step < self.warmup_steps:
            return warmup_factor(step, self.warmup_steps)
        return self.decay(decay_fraction(step, self.warmup_steps, self.total_steps), self.final_ratio)

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def state_dict(self) -> dict:
        """Where the schedule stands; its shape comes from the run's options (which a resume holds fixed)."""
        state = super().state_dict()
        for key in self._SHAPE:
            state.pop(key, None)
        return state


def exponential_decay(fraction: float, final_ratio: float) -> float:
    return final_ratio ** fraction


def cosine_decay(fraction: float, final_ratio: float) -> float:
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * fraction))
