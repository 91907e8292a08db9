"""Additive angular margin softmax (ArcFace): Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019.  The target logit is ``scale * cos(theta + margin)``; past ``theta > pi - margin``
(where ``cos(theta + m)`` stops decreasing) it falls back to ``cos(theta) - sin(pi - m) * m`` as in
voxceleb_trainer (``easy_margin`` False)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import MarginSoftmaxLoss, accuracy, flatten_groups
from ._metric import cosine_matrix, target_mask


class LossFunction(MarginSoftmaxLoss):
    """Cross-entropy over ArcFace logits; accuracy is read from the margin-adjusted logits."""

    def __init__(self, nOut: int, nSpeakers: int, margin: float | None = None, scale: float | None = None, **kwargs):
        super().__init__(margin, scale)
        self.weight = nn.Parameter(torch.empty(nSpeakers, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)

    def set_margin(self, m: float) -> None:
        """The margin and the constants of ``cos(theta + m)`` and of its fallback past ``pi - m``."""
        super().set_margin(m)
        self.cos_m = math.cos(self.m)
        self.sin_m = math.sin(self.m)
        self.th = math.cos(math.pi - self.m)
        self.mm = math.sin(math.pi - self.m) * self.m

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, label = flatten_groups(x, label)
        cosine = cosine_matrix(x, self.weight)
        # sin(theta) >= 0; the tiny floor keeps the gradient finite at |cos| == 1 (value unchanged elsewhere).
        sine = (1.0 - cosine * cosine).clamp(min=1e-12, max=1.0).sqrt()
        phi = cosine * self.cos_m - sine * self.sin_m  # cos(theta + m)
        phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        target = target_mask(label, cosine.size(1))
        logits = self.s * torch.where(target, phi, cosine)
        return F.cross_entropy(logits, label), accuracy(logits.detach(), label)
