"""ProxyNCA loss: Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017, in the
variant of the common PyTorch re-implementation: embeddings and proxies are L2-normalised and multiplied by
``scale`` (default 3), logits are ``-|x_i - p_c|^2``, and the cross-entropy uses smoothed targets
(``1 - 0.1`` on the true speaker, ``0.1 / (nSpeakers - 1)`` on each other one).  Accuracy: nearest proxy."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from spknet.errors import SpeakerNetError

from ._common import accuracy, flatten_groups
from ._metric import cosine_matrix, target_mask

DEFAULT_SCALE = 3.0
SMOOTHING = 0.1


class LossFunction(nn.Module):
    utterances_per_speaker = 1
    train_normalize = True
    test_normalize = True

    def __init__(self, nOut: int, nSpeakers: int, scale: float | None = None, **kwargs):
        super().__init__()
        if nSpeakers < 2:
            raise SpeakerNetError(f"loss 'proxynca' needs at least 2 speakers, got nSpeakers={nSpeakers}")
        self.scale = DEFAULT_SCALE if scale is None else float(scale)
        self.proxies = nn.Parameter(torch.randn(nSpeakers, nOut) / 8)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, label = flatten_groups(x, label)
        # For unit vectors scaled by s: |s x - s p|^2 = 2 s^2 (1 - cos), without an (utterances, speakers, dim) tensor.
        distance = 2.0 * self.scale**2 * (1.0 - cosine_matrix(x, self.proxies))
        speakers = distance.size(1)
        target = torch.full_like(distance, SMOOTHING / (speakers - 1)).masked_fill(target_mask(label, speakers),
                                                                                  1.0 - SMOOTHING)
        loss = (-target * F.log_softmax(-distance, dim=1)).sum(dim=1).mean()
        return loss, accuracy(-distance.detach(), label)
