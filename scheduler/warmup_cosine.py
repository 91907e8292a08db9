"""Linear warm-up over --warmup_epochs, then cosine decay to --final_lr at the end of --max_epoch, stepped per
iteration (the shape of 3D-Speaker's WarmupCosineScheduler). See ``scheduler/_warmup.py``."""

from ._warmup import WarmupDecay, cosine_decay


class Scheduler(WarmupDecay):
    """After the warm-up, LR = final_lr + (lr - final_lr) * (1 + cos(pi * fraction)) / 2."""

    decay = staticmethod(cosine_decay)
