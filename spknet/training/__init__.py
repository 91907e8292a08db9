"""Training: a run (its folder, identity, resume, epochs) and the trainer (the step and the epoch)."""

from spknet.training.run import train

__all__ = ["train"]
