"""SGD with momentum 0.9 and the original's weight decay (5e-5 unless --weight_decay is given)."""

import torch


def Optimizer(parameters, lr: float, weight_decay: float = 5e-5, **kwargs):
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
