"""The model: the embedding network ``__S__`` and the training objective ``__L__``, as the original names them."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from spknet import distributed, plugins
from spknet.loss._common import IMBALANCED
from spknet.margin import has_margin
from spknet.models._frontend import set_audio_scale
from spknet.specs import MODEL_FIELDS, LossSpec, ModelSpec


class SpeakerNet(nn.Module):
    """``__S__`` maps waveforms to embeddings; ``__L__`` (absent when only evaluating) is the training objective.

    ``spec`` is resolved (every network option the network's own default where unset) and kept as ``self.spec``:
    what a checkpoint records. ``loss`` (its classes, margin, ...) builds the objective named ``spec.trainfunc``;
    without it only the embedding network is built, and the objective only says how embeddings are scored.
    """

    def __init__(self, spec: ModelSpec, loss: LossSpec | None = None):
        super().__init__()
        self.spec = spec.check().resolved()
        self.__S__ = plugins.load("models", self.spec.model)(**self.spec.network_options())
        set_audio_scale(self.__S__, self.spec.audio_scale)      # a kaldi_fbank's training dither: one int16 step
        objective = plugins.load("loss", self.spec.trainfunc) if self.spec.trainfunc else None
        self.__L__ = objective(**loss.plugin_options(self.spec.nOut)) if objective and loss is not None else None
        self.train_normalize = getattr(objective, "train_normalize", True)
        self.test_normalize = getattr(objective, "test_normalize", True)

    @classmethod
    def build(cls, model: str, trainfunc: str = "", nSpeakers: int | None = None, margin: float | None = None,
              scale: float | None = None, with_loss: bool = True, **model_options) -> "SpeakerNet":
        """A model from keywords (the model options by their names, the loss's classes as ``nSpeakers``): for
        scripts and tests; an unknown keyword is an error."""
        spec = ModelSpec(model=model, trainfunc=trainfunc).overridden(**model_options)
        loss = LossSpec(nSpeakers, margin, scale) if with_loss and trainfunc and nSpeakers else None
        return cls(spec, loss)

    @property
    def utterances_per_speaker(self):
        return self.__L__.utterances_per_speaker

    @property
    def margin(self) -> float | None:
        """The objective's margin now (None for one without a margin)."""
        return self.__L__.margin if has_margin(self.__L__) else None

    def set_margin(self, margin: float) -> None:
        self.__L__.set_margin(margin)

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


__all__ = ["MODEL_FIELDS", "ModelSpec", "SpeakerNet"]
