"""Triplet loss with online negative mining: Schroff et al., "FaceNet: A Unified Embedding for Face Recognition
and Clustering", CVPR 2015; mining as in voxceleb_trainer.

Each group is (anchor, positive); both are L2-normalised.  The negative of anchor ``i`` is the positive of another
group ``j != i``, chosen on the detached similarity ``-|a_i - p_j|^2``:

* ``hard_rank >= 0``: with probability ``hard_prob`` uniformly among the ``hard_rank + 1`` most similar negatives
  (ranks ``0..hard_rank``, as ``random.randint(0, hard_rank)`` in voxceleb_trainer), otherwise uniformly among all
  negatives;
* ``hard_rank < 0`` (semi-hard): uniformly among negatives with ``d(a, p) < d(a, n) < d(a, p) + margin`` in squared
  distance, or uniformly among all negatives when there is none.

Loss: ``mean_i relu(|a_i - p_i|^2 - |a_i - n_i|^2 + margin)``.  Sampling uses the torch generator of the device,
so ``torch.manual_seed`` makes it reproducible.  Accuracy: how often the anchor's own positive is the most similar
positive of the batch (the same measure as the prototypical losses).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import accuracy
from ._metric import check_groups, diagonal_targets, squared_distance_matrix

DEFAULT_MARGIN = 0.1
DEFAULT_HARD_RANK = 10
DEFAULT_HARD_PROB = 0.5


def mine_negatives(similarity: torch.Tensor, hard_rank: int, hard_prob: float, margin: float) -> torch.Tensor:
    """Index of the negative column for each row of a detached ``(batch, batch)`` similarity matrix whose diagonal
    holds the positives."""
    batch = similarity.size(0)
    device = similarity.device
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=device)
    # Uniform keys on the negatives, -1 on the positive: argmax of the keys is a uniformly random negative.
    keys = torch.rand(batch, batch, device=device).masked_fill(~off_diagonal, -1.0)
    if hard_rank < 0:
        positive = similarity.diagonal().unsqueeze(1)
        semi_hard = (similarity > positive - margin) & (similarity < positive) & off_diagonal
        # Semi-hard candidates outrank every other negative, so the argmax falls back to a random one only if none.
        return (keys + 2.0 * semi_hard.to(keys.dtype)).argmax(dim=1)
    random_negative = keys.argmax(dim=1)
    # Hardest first; the positive (set to -inf) sorts last, so ranks 0..batch-2 are the negatives.
    order = similarity.masked_fill(~off_diagonal, float("-inf")).argsort(dim=1, descending=True)
    top = min(hard_rank, batch - 2)
    rank = torch.randint(0, top + 1, (batch, 1), device=device)
    hard_negative = order.gather(1, rank).squeeze(1)
    use_hard = torch.rand(batch, device=device) < hard_prob
    return torch.where(use_hard, hard_negative, random_negative)


class LossFunction(nn.Module):
    utterances_per_speaker = 2
    train_normalize = True
    test_normalize = True

    def __init__(self, margin: float | None = None, hard_rank: int | None = None, hard_prob: float | None = None,
                 **kwargs):
        super().__init__()
        self.margin = DEFAULT_MARGIN if margin is None else float(margin)
        self.hard_rank = DEFAULT_HARD_RANK if hard_rank is None else int(hard_rank)
        self.hard_prob = DEFAULT_HARD_PROB if hard_prob is None else float(hard_prob)

    def set_margin(self, m: float) -> None:
        """Use margin ``m`` from the next forward on (the trainer's margin schedule; ``margin`` is read as is)."""
        self.margin = float(m)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_groups(x, "triplet", 2, exact=True)
        anchor = F.normalize(x[:, 0, :], dim=1)
        positive = F.normalize(x[:, 1, :], dim=1)
        distance = squared_distance_matrix(anchor, positive)  # (batch, batch), positives on the diagonal
        similarity = -distance.detach()
        negative = mine_negatives(similarity, self.hard_rank, self.hard_prob, self.margin)
        pos_dist = (anchor - positive).pow(2).sum(dim=1)
        neg_dist = (anchor - positive[negative]).pow(2).sum(dim=1)
        loss = F.relu(pos_dist - neg_dist + self.margin).mean()
        return loss, accuracy(similarity, diagonal_targets(x.size(0), x.device))
