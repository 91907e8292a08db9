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
