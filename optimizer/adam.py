"""Adam with the original's weight decay (5e-5 unless --weight_decay is given)."""

import torch


def Optimizer(parameters, lr: float, weight_decay: float = 5e-5, **kwargs):
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
