"""Softmax classification loss: a linear layer over the speakers followed by cross-entropy."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import accuracy, flatten_groups


class LossFunction(nn.Module):
    """Cross-entropy of ``Linear(nOut, nSpeakers)`` logits; every utterance is one example."""

    utterances_per_speaker = 1
    train_normalize = False
    test_normalize = True

    def __init__(self, nOut: int, nSpeakers: int, **kwargs):
        super().__init__()
        self.fc = nn.Linear(nOut, nSpeakers)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, label = flatten_groups(x, label)
        logits = self.fc(x)
        return F.cross_entropy(logits, label), accuracy(logits.detach(), label)
