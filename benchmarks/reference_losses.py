"""The masked-proxy reference: the losses of ``loss/_masked_proxy.py`` computed per step the way the original
implementation does, written independently of ours. ``benchmarks/bench_losses.py`` times it against our losses and
the tests (``tests/test_masked_proxy.py``, ``tests/test_bench_losses.py``) check values, accuracies and gradients
against it.

* the one-hot targets come from scikit-learn's ``label_binarize`` on the CPU and are copied to the device;
* the classes absent from the batch are found with ``numpy.delete``;
* the masked centre table is a dense zero ``(C, D)`` tensor filled by index assignment (anchors at the batch's
  classes, normalised proxies everywhere else);
* for the imbalanced losses (``mp``, ``mmp``) the flat batch is regrouped by label in Python, with list
  comprehensions over the batch; a class with a single utterance in the batch is dropped.
"""


import numpy as np
import torch
import torch.nn.functional as F
from sklearn.preprocessing import label_binarize

from spknet.loss._common import IMBALANCED


def regroup_by_label(x: torch.Tensor, label: torch.Tensor):
    """The original's Python regrouping of a flat batch: query = first utterance of a class, anchor = mean of the
    others; classes with a single utterance in the batch are dropped."""
    labels = label.cpu().tolist()
    classes = sorted(set(labels))
    members = [[i for i, y in enumerate(labels) if y == c] for c in classes]
    members = [m for m in members if len(m) > 1]
    query = torch.stack([x[m[0]] for m in members])
    anchor = torch.stack([x[m[1:]].mean(dim=0) for m in members])
    return query, anchor, torch.tensor([labels[m[0]] for m in members], device=x.device)


def reference_loss(module: torch.nn.Module, x: torch.Tensor, label: torch.Tensor):
    """``(loss, accuracy)`` of ``module`` (a masked-proxy loss) computed the original's way."""
    classes, dim = module.proxies.shape
    device, dtype = x.device, x.dtype
    if module.utterances_per_speaker == IMBALANCED:
        query, anchor, label = regroup_by_label(x, label)
    else:
        query, anchor = x[:, 0], x[:, 1:].mean(dim=1)
    n = len(label)
    label_cpu = label.cpu().numpy()
    onehot = torch.from_numpy(label_binarize(label_cpu, classes=np.arange(classes))).to(device=device, dtype=dtype)
    other = torch.from_numpy(np.delete(np.arange(classes), label_cpu)).to(device)

    proxies = F.normalize(module.proxies, dim=1)
    centre_anchor = F.normalize(anchor, dim=1) if module.variant == "mmp" else anchor
    new_center = torch.zeros(classes, dim, device=device, dtype=dtype)
    new_center[label] = centre_anchor
    new_center[other] = proxies[other]
    similarity = query @ new_center.t()                                   # (groups, classes)
    w, b = module.w, module.b

    if module.variant == "mp":
        main = -(onehot * F.log_softmax(w * similarity + b, dim=1)).sum(dim=1).mean()
        sign = 1.0
    else:
        positive = (similarity * onehot).sum(dim=1)                         # q_i . M[y_i]
        l_pos = torch.log(1 + torch.exp(-w * positive + b).sum())
        l_proxy = torch.log(1 + torch.exp(w * similarity[:, other] - b).sum(dim=1)).mean()
        off_diagonal = 1 - torch.eye(n, device=device, dtype=dtype)
        l_batch = torch.log(1 + (torch.exp(w * similarity[:, label] - b) * off_diagonal).sum(dim=1)).mean()
        main = l_pos + l_proxy + l_batch
        sign = -1.0
    reg_logits = w * (anchor @ proxies[label].t()) + sign * b
    reg = F.cross_entropy(reg_logits, torch.arange(n, device=device))
    accuracy = (similarity.argmax(dim=1) == label).to(dtype).mean() * 100.0
    return main + module.lambda_reg * reg, accuracy
