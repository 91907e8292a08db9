"""Helpers shared by every loss in ``loss/``.

The loss contract (see README, "Writing a loss"):

* ``loss/NAME.py`` exports ``LossFunction(nn.Module)``, built as ``LossFunction(**vars(args))`` so it must accept
  and ignore unknown keyword arguments (``nOut``, ``nSpeakers``, ``margin``, ``scale``, ...).
* class attributes: ``utterances_per_speaker`` (an ``int``, or ``IMBALANCED`` for the 2-or-3 sampler),
  ``train_normalize`` / ``test_normalize`` (L2-normalise embeddings before the loss / before scoring).
* ``forward(x, label)`` returns ``(loss, accuracy)``, both 0-d tensors (accuracy in percent).  With a fixed
  group size ``x`` is ``(batch, utterances_per_speaker, nOut)`` and ``label`` is ``(batch,)``, one class index
  per group; with ``IMBALANCED`` ``x`` is a flat ``(utterances, nOut)`` batch and ``label`` is ``(utterances,)``.
"""

import torch

IMBALANCED = "imbalanced"


def accuracy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Top-1 accuracy in percent, kept on the device (no host synchronisation).

    ``weight`` (0/1 per row) excludes rows from the average, e.g. groups without an anchor.
    """
    correct = (logits.argmax(dim=1) == target).to(logits.dtype)
    if weight is None:
        return correct.mean() * 100.0
    weight = weight.to(logits.dtype)
    return (correct * weight).sum() / weight.sum().clamp_min(1.0) * 100.0


def flatten_groups(x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, group, dim)`` + ``(batch,)`` -> ``(batch*group, dim)`` + per-utterance labels.

    Classification losses treat every utterance of a group as an independent example.
    """
    if x.dim() == 2:
        return x, label
    batch, group, dim = x.shape
    return x.reshape(batch * group, dim), label.repeat_interleave(group)


def query_and_anchor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(batch, group >= 2, dim)`` groups as voxceleb_trainer does: the query (positive) is utterance 0,
    the anchor (support prototype) the mean of utterances ``1..group-1``.

    Shared by the prototypical losses and the masked-proxy family; it checks nothing (each caller does).
    """
    return x[:, 0, :], x[:, 1:, :].mean(dim=1)


class LearnedScaleLoss(torch.nn.Module):
    """Base of the pair losses with a learned logit scale ``w`` (init 10) and bias ``b`` (init -5)."""

    utterances_per_speaker = 2
    train_normalize = True
    test_normalize = True

    def __init__(self, init_w: float = 10.0, init_b: float = -5.0, **kwargs):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(float(init_w)))
        self.b = torch.nn.Parameter(torch.tensor(float(init_b)))


class MarginSoftmaxLoss(torch.nn.Module):
    """Base of the margin softmaxes: one utterance per speaker, ``margin``/``scale`` defaulting to 0.2 and 30.

    A loss with a margin exposes ``margin`` (its current value) and ``set_margin(m)``; the trainer's margin
    schedule (``--margin_start_epoch``) needs both, and refuses losses without them.
    """

    utterances_per_speaker = 1
    train_normalize = False
    test_normalize = True
    default_margin = 0.2
    default_scale = 30.0

    def __init__(self, margin: float | None = None, scale: float | None = None, **kwargs):
        super().__init__()
        self.s = self.default_scale if scale is None else float(scale)
        self.set_margin(self.default_margin if margin is None else margin)

    @property
    def margin(self) -> float:
        """The margin in use now (the margin schedule reads the full one from it when the run is built)."""
        return self.m

    def set_margin(self, m: float) -> None:
        """Use margin ``m`` from the next forward on: the one way the margin schedule changes it, so a subclass
        that derives constants from the margin (ArcFace) recomputes them here. Plain floats: no device work."""
        self.m = float(m)
