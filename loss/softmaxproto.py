"""Softmax + angular prototypical: the sum of ``loss/softmax.py`` over all utterances and ``loss/angleproto.py``
over the groups (Chung et al., "In defence of metric learning for speaker recognition", Interspeech 2020).
Accuracy is the softmax classification accuracy."""

import torch
import torch.nn as nn

from . import angleproto, softmax
from ._metric import check_groups


class LossFunction(nn.Module):
    utterances_per_speaker = 2
    train_normalize = False
    test_normalize = True

    def __init__(self, **kwargs):
        super().__init__()
        self.softmax = softmax.LossFunction(**kwargs)
        self.angleproto = angleproto.LossFunction(**kwargs)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_groups(x, "softmaxproto", 2)
        loss_softmax, acc = self.softmax(x, label)
        loss_proto, _ = self.angleproto(x, label)
        return loss_softmax + loss_proto, acc
