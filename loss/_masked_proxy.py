"""The masked-proxy family (Lian et al., Interspeech 2021): MP and MMP, balanced and imbalanced batches.

Every loss of the family works on *slots*: one slot per group of utterances of one speaker, holding a query (the
group's first utterance), an anchor (the mean of its other utterances) and the class. For balanced batches the
slots are the groups; for the imbalanced (2-or-3) sampler the loss sees a flat batch and every utterance is a slot
candidate: the first utterance of each class in the batch becomes its slot and the rest make its anchor. A class
with a single utterance in the batch has no anchor, so its slot is switched off (``valid`` False): it adds nothing
to the loss and its proxy stays in the masked centre table. All of this is dense tensor algebra over a fixed number
of slots, so nothing synchronises with the host.

Masked centres: ``M`` is the normalised proxy table with the rows of the classes present in the batch replaced by
their anchors (MP) or normalised anchors (MMP). The table itself is never built: the query-to-proxy similarities
are computed once and the columns of the present classes are swapped for the query-to-anchor similarities.
"""

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError

from ._common import IMBALANCED, accuracy, query_and_anchor
from ._metric import log1p_masked_sum_exp, masked_fill_min


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weight = valid.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def balanced_slots(x: torch.Tensor, label: torch.Tensor):
    """``x`` (groups, utterances >= 2, dim): query = first utterance, anchor = mean of the others."""
    if x.dim() != 3 or x.shape[1] < 2:
        raise SpeakerNetError(f"masked-proxy losses need groups of at least 2 utterances, got shape {tuple(x.shape)}")
    valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    query, anchor = query_and_anchor(x)
    return query, anchor, label, valid


def imbalanced_slots(x: torch.Tensor, label: torch.Tensor):
    """Regroup a flat batch by label without leaving the device.

    Slot ``i`` is valid when utterance ``i`` is the first of its class in the batch and the class has at least
    two utterances; its anchor is the mean of the class's other utterances.
    """
    same = label[:, None] == label[None, :]
    earlier = torch.tril(same, diagonal=-1).any(dim=1)           # an earlier utterance has the same label
    others = same & ~torch.eye(len(label), dtype=torch.bool, device=x.device)
    count = others.sum(dim=1, keepdim=True)
    anchor = (others.to(x.dtype) @ x) / count.clamp_min(1).to(x.dtype)
    valid = ~earlier & (count.squeeze(1) > 0)
    return x, anchor, label, valid


def compact_slots(query, anchor, label, valid):
    """Keep ``len // 2`` slots, valid ones first: a valid slot needs two utterances, so none is lost, and the
    (slots x classes) work halves without a data-dependent shape."""
    keep = torch.argsort((~valid).to(torch.uint8), stable=True)[: len(valid) // 2]
    return query[keep], anchor[keep], label[keep], valid[keep]


class ProxySimilarity(torch.autograd.Function):
    """``q @ normalize(P).T`` and ``normalize(P)[label]`` without materialising the normalised table.

    The backward writes the (classes x dim) proxy gradient once, instead of the several full-table passes that
    autograd through ``F.normalize`` makes: that table is the largest tensor of the loss (5994 x 512).
    """

    @staticmethod
    def forward(ctx, query, proxies, label):
        norms = proxies.norm(dim=1).clamp_min(1e-12)
        similarity = (query @ proxies.t()) / norms
        class_proxies = proxies[label] / norms[label, None]
        ctx.save_for_backward(query, proxies, label, norms, similarity)
        return similarity, class_proxies

    @staticmethod
    def backward(ctx, grad_similarity, grad_class_proxies):
        query, proxies, label, norms, similarity = ctx.saved_tensors
        scaled = grad_similarity / norms
        grad_query = scaled @ proxies
        # d(q.p/|p|)/dp = (q - (q.p/|p|) p/|p|) / |p|: the direct part, then the radial correction.
        grad_proxies = scaled.t() @ query
        grad_proxies.addcmul_(proxies, (-(grad_similarity * similarity).sum(0) / norms ** 2)[:, None])
        label_norms = norms[label, None]
        unit = proxies[label] / label_norms
        radial = (grad_class_proxies * unit).sum(1, keepdim=True)
        grad_proxies.index_add_(0, label, (grad_class_proxies - unit * radial) / label_norms)
        return grad_query, grad_proxies, None


class MaskedProxyLoss(nn.Module):
    """MP or MMP with the regulariser ``lambda * CE(w * anchor . P[y_j] + sign * b, target j = i)``.

    Subclasses set ``variant`` ("mp" or "mmp"), ``init_b``, ``utterances_per_speaker`` (2 or IMBALANCED) and
    ``has_unused_scalars`` (the original's ``mp`` and ``mp_balance`` define ``w2``/``b2`` and never use them: they
    are kept as buffers so that its checkpoints load with every key). The initial scale is the ``init_w`` keyword,
    spelt as in ``LearnedScaleLoss``; the initial bias is fixed per variant, so ``init_b`` is a class attribute.
    """

    variant = "mp"
    init_b = -5.0
    utterances_per_speaker = 2
    has_unused_scalars = False
    train_normalize = True
    test_normalize = True

    def __init__(self, nOut: int = 512, nSpeakers: int = 5994, init_w: float = 10.0, lambda_reg: float = 0.5,
                 **kwargs):
        super().__init__()
        self.proxies = nn.Parameter(torch.empty(nSpeakers, nOut))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(self.init_b)))
        if self.has_unused_scalars:
            self.register_buffer("w2", torch.tensor(float(init_w)))
            self.register_buffer("b2", torch.tensor(float(self.init_b)))
        self.lambda_reg = lambda_reg
        # MP adds b to its logits, MMP subtracts it (the sign convention of the paper's equations).
        self.bias_sign = 1.0 if self.variant == "mp" else -1.0

    def forward(self, x: torch.Tensor, label: torch.Tensor):
        if self.utterances_per_speaker == IMBALANCED:
            query, anchor, label, valid = compact_slots(*imbalanced_slots(x, label))
        else:
            query, anchor, label, valid = balanced_slots(x, label)
        proxy_similarity, class_proxies = ProxySimilarity.apply(query, self.proxies, label)
        centre_anchor = F.normalize(anchor, dim=1) if self.variant == "mmp" else anchor
        batch_similarity = query @ centre_anchor.t()                      # s_ij = q_i . M[y_j]

        # Against the masked centre table: the columns of the classes present in the batch hold the anchors
        # instead of the proxies. Swapping those few columns avoids building the (classes x dim) table.
        swap = (batch_similarity - query @ class_proxies.t()) * valid[None, :].to(x.dtype)
        similarity = proxy_similarity.index_add(1, label, swap)          # (slots, classes)

        if self.variant == "mp":
            main = _masked_mean(F.cross_entropy(self.w * similarity + self.b, label, reduction="none"), valid)
        else:
            main = self._mmp_terms(batch_similarity, proxy_similarity, label, valid)
        main = main + self.lambda_reg * self._regulariser(anchor, class_proxies, valid)
        return main, accuracy(similarity, label, valid)

    def _mmp_terms(self, batch_similarity, proxy_similarity, label, valid):
        """Positive pairs, absent-class proxies and in-batch negatives, each as ``log(1 + sum exp)``."""
        weight = valid.to(batch_similarity.dtype)
        present = torch.zeros(proxy_similarity.shape[1], dtype=weight.dtype, device=weight.device)
        present = present.index_add(0, label, weight) > 0
        positive = log1p_masked_sum_exp(-self.w * batch_similarity.diagonal() + self.b, valid, dim=0)
        absent = valid[:, None] & ~present[None, :]
        proxy = _masked_mean(log1p_masked_sum_exp(self.w * proxy_similarity - self.b, absent, dim=1), valid)
        off_diagonal = valid[:, None] & valid[None, :] & ~torch.eye(len(valid), dtype=torch.bool, device=valid.device)
        batch = _masked_mean(log1p_masked_sum_exp(self.w * batch_similarity - self.b, off_diagonal, dim=1), valid)
        return positive + proxy + batch

    def _regulariser(self, anchor, class_proxies, valid):
        """Each anchor against the proxies of the batch's speakers, its own proxy as the target."""
        logits = self.w * (anchor @ class_proxies.t()) + self.bias_sign * self.b
        target = torch.arange(len(valid), device=valid.device)
        # Columns of slots without an anchor are not speakers of this batch; each row keeps its own target.
        keep = valid[None, :] | (target[:, None] == target[None, :])
        logits = masked_fill_min(logits, keep)
        return _masked_mean(F.cross_entropy(logits, target, reduction="none"), valid)
