"""The original's schedule: multiply the LR by 0.7 when the validation EER has not improved for 3 epochs.

Stepped once per epoch, before training it, with the latest EER (50 before the first evaluation), as the
original does.
"""

import torch


def Scheduler(optimizer, **kwargs):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.7, patience=3)
