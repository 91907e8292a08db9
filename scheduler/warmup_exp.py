"""Linear warm-up over --warmup_epochs, then exponential decay to --final_lr at the end of --max_epoch, stepped
per iteration (the shape of WeSpeaker's ExponentialDecrease). See ``scheduler/_warmup.py``."""

from ._warmup import WarmupDecay, exponential_decay


class Scheduler(WarmupDecay):
    """After the warm-up, LR = lr * (final_lr / lr) ** fraction of the decay; --final_lr must be above 0."""

    final_must_be_positive = True
    decay = staticmethod(exponential_decay)
