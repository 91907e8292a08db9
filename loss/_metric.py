"""Similarity pieces shared by the baseline losses (prototypical, GE2E, triplet, margin softmaxes, proxies).

Everything here is batched tensor math on the input's device: no host synchronisation, no Python loops over
examples or classes.
"""

import torch
import torch.nn.functional as F

from spknet.errors import SpeakerNetError


def check_groups(x: torch.Tensor, loss_name: str, minimum: int, exact: bool = False) -> None:
    """Reject an ``x`` that is not ``(batch >= 2, group, dim)`` with ``group >= minimum`` (``== minimum`` if exact).

    Only shapes are inspected, so this costs no device synchronisation.
    """
    if x.dim() != 3:
        raise SpeakerNetError(f"loss '{loss_name}' expects embeddings shaped (batch, utterances, dim), "
                              f"got {tuple(x.shape)}")
    group = x.size(1)
    if (exact and group != minimum) or group < minimum:
        wanted = f"exactly {minimum}" if exact else f"at least {minimum}"
        raise SpeakerNetError(f"loss '{loss_name}' needs {wanted} utterances per speaker, got {group}")
    if x.size(0) < 2:
        raise SpeakerNetError(f"loss '{loss_name}' needs at least 2 speakers in a batch, got {x.size(0)}")


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, d)`` x ``(m, d)`` -> ``(n, m)`` cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def squared_distance_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, d)`` x ``(m, d)`` -> ``(n, m)`` squared Euclidean distances ``|a_i - b_j|^2``.

    Uses the ``|a|^2 + |b|^2 - 2 a.b`` expansion (no ``(n, m, d)`` intermediate), clamped at 0 against rounding.
    """
    a2 = (a * a).sum(dim=-1, keepdim=True)
    b2 = (b * b).sum(dim=-1, keepdim=True).transpose(-1, -2)
    return (a2 + b2 - 2.0 * (a @ b.transpose(-1, -2))).clamp_min(0.0)


def target_mask(label: torch.Tensor, classes: int) -> torch.Tensor:
    """``(n,)`` labels -> ``(n, classes)`` boolean one-hot (a comparison, so no value check that would synchronise)."""
    return label.unsqueeze(1) == torch.arange(classes, device=label.device).unsqueeze(0)


def diagonal_targets(n: int, device: torch.device) -> torch.Tensor:
    """Targets ``0..n-1``: row ``i`` of a (query x prototype) matrix belongs to column ``i``."""
    return torch.arange(n, device=device)


def masked_fill_min(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Replace entries where ``keep`` is False by the dtype's lowest finite value.

    Finite rather than -inf so that a row with nothing kept has a zero gradient instead of NaN.
    """
    return values.masked_fill(~keep, torch.finfo(values.dtype).min)


def log1p_masked_sum_exp(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(1 + sum_{mask} exp(logits))`` along ``dim``, computed stably; 0 (with zero gradient) where the
    mask is empty."""
    return F.softplus(torch.logsumexp(masked_fill_min(logits, mask), dim=dim))
