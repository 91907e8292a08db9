"""Generalised end-to-end loss, softmax variant: Wan et al., "Generalized End-to-End Loss for Speaker
Verification", ICASSP 2018.  Every utterance is scored against every speaker centroid of the batch; the centroid
of its own speaker excludes the utterance itself.  Logits ``w * cos + b``, learnable ``w > 0`` (init 10) and ``b``
(init -5).  As in voxceleb_trainer the cosines are floored at 1e-6 before scaling."""

import torch
import torch.nn.functional as F

from ._common import LearnedScaleLoss, accuracy
from ._metric import check_groups, diagonal_targets

COSINE_FLOOR = 1e-6


class LossFunction(LearnedScaleLoss):
    """Cross-entropy of each utterance against the batch's centroids (own centroid leave-one-out)."""

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_groups(x, "ge2e", 2)
        batch, group, _ = x.shape
        centroids = x.mean(dim=1)  # (batch, dim)
        exclusive = (centroids.unsqueeze(1) * group - x) / (group - 1)  # (batch, group, dim), leave-one-out
        unit = F.normalize(x, dim=-1)
        to_all = torch.einsum("kgd,md->kgm", unit, F.normalize(centroids, dim=-1))  # (batch, group, batch)
        to_own = (unit * F.normalize(exclusive, dim=-1)).sum(dim=-1)  # (batch, group)
        own = torch.eye(batch, dtype=torch.bool, device=x.device).unsqueeze(1)  # (batch, 1, batch)
        cosine = torch.where(own, to_own.unsqueeze(-1), to_all).clamp(min=COSINE_FLOOR)
        logits = (cosine * self.w.clamp(min=1e-6) + self.b).reshape(batch * group, batch)
        target = diagonal_targets(batch, x.device).repeat_interleave(group)
        return F.cross_entropy(logits, target), accuracy(logits.detach(), target)
