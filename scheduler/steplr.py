"""voxceleb_trainer's schedule: multiply the LR by --lr_decay every --test_interval epochs."""

import torch


def Scheduler(optimizer, test_interval: int = 1, lr_decay: float = 0.95, **kwargs):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=test_interval, gamma=lr_decay)
