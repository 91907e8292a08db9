"""Proxy Anchor loss: Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020.

With ``s_ip = cos(x_i, p_c)``, ``P+`` the proxies that have a positive in the batch and ``C`` all proxies::

    loss = 1/|P+| sum_{p in P+} log(1 + sum_{i in X_p+} exp(-alpha (s_ip - margin)))
         + 1/|C|  sum_{p in C}  log(1 + sum_{i in X_p-} exp( alpha (s_ip + margin)))

``margin`` defaults to 0.1 and ``scale`` (alpha) to 30.  Accuracy: nearest proxy by cosine.
"""

import torch
import torch.nn as nn

from ._common import accuracy, flatten_groups
from ._metric import cosine_matrix, log1p_masked_sum_exp, target_mask

DEFAULT_MARGIN = 0.1
DEFAULT_SCALE = 30.0


class LossFunction(nn.Module):
    utterances_per_speaker = 1
    train_normalize = True
    test_normalize = True

    def __init__(self, nOut: int, nSpeakers: int, margin: float | None = None, scale: float | None = None, **kwargs):
        super().__init__()
        self.margin = DEFAULT_MARGIN if margin is None else float(margin)
        self.alpha = DEFAULT_SCALE if scale is None else float(scale)
        self.proxies = nn.Parameter(torch.empty(nSpeakers, nOut))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def set_margin(self, m: float) -> None:
        """Use margin ``m`` from the next forward on (the trainer's margin schedule; ``margin`` is read as is)."""
        self.margin = float(m)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, label = flatten_groups(x, label)
        cosine = cosine_matrix(x, self.proxies)  # (utterances, speakers)
        positive = target_mask(label, cosine.size(1))
        pos_term = log1p_masked_sum_exp(-self.alpha * (cosine - self.margin), positive, dim=0)
        neg_term = log1p_masked_sum_exp(self.alpha * (cosine + self.margin), ~positive, dim=0)
        with_positives = positive.any(dim=0).sum().to(cosine.dtype)
        loss = pos_term.sum() / with_positives + neg_term.sum() / cosine.size(1)
        return loss, accuracy(cosine.detach(), label)
