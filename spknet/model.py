"""The model: the embedding network ``__S__`` and the training objective ``__L__``, as the original names them."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from spknet import distributed, plugins
from spknet.errors import SpeakerNetError
from spknet.loss._common import IMBALANCED


class SpeakerNet(nn.Module):
    """``__S__`` maps waveforms to embeddings; ``__L__`` (absent when only evaluating) is the training objective."""

    def __init__(self, model: str, trainfunc: str = "", with_loss: bool = True, **kwargs):
        """``model`` and ``trainfunc`` name plugins, which receive ``kwargs``; without ``with_loss`` (evaluation)
        only the embedding network is built, and the loss only says how its embeddings are scored."""
        super().__init__()
        if not model:
            raise SpeakerNetError(f"no model given; choices: {', '.join(plugins.choices('models'))}")
        # an option left None (nOut, n_mels, ...) is the network's own default, which the loss then sees too
        kwargs = plugins.with_model_defaults(model, kwargs)
        self.__S__ = plugins.load("models", model)(**kwargs)
        loss = plugins.load("loss", trainfunc) if trainfunc else None
        self.__L__ = loss(**kwargs) if loss is not None and with_loss else None
        self.train_normalize = getattr(loss, "train_normalize", True)
        self.test_normalize = getattr(loss, "test_normalize", True)

    @property
    def utterances_per_speaker(self):
        return self.__L__.utterances_per_speaker

    def forward(self, waves: torch.Tensor, labels: torch.Tensor, groups: int):
        """Loss and accuracy of a flat batch of ``groups`` speaker groups (labels per utterance)."""
        embeddings = self.__S__(waves)
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()          # the loss runs in float32 under mixed precision
        if self.train_normalize:
            embeddings = F.normalize(embeddings, p=2, dim=1)
        # Under torch.distributed the loss sees the global batch (every rank's groups, in rank order).
        imbalanced = self.__L__.utterances_per_speaker == IMBALANCED
        labels = distributed.gather_without_grad(labels, equal_sizes=not imbalanced)
        embeddings = distributed.gather_with_grad(embeddings, equal_sizes=not imbalanced)
        if imbalanced:
            return self.__L__(embeddings, labels)
        groups *= distributed.world_size()
        per_group = embeddings.shape[0] // groups
        return self.__L__(embeddings.view(groups, per_group, -1), labels.view(groups, per_group)[:, 0])
