"""The original's per-trial scoring loop, the reference that the vectorised scorers are checked and timed against."""

import numpy as np
import torch
import torch.nn.functional as F


def reference_crop_scores(embeddings: torch.Tensor, enroll, test, normalize: bool = True) -> np.ndarray:
    """The original's per-trial loop: one ``F.pairwise_distance`` over the expanded crop pairs per trial.

    (The original wrote ``pairwise_distance(ref.unsqueeze(-1), com.unsqueeze(-1).transpose(0, 2))``, with the norm
    over dimension 1, the embedding dimension, in the PyTorch of its day; current PyTorch takes the last dimension,
    so the explicit expansion below computes the same ``crops x crops`` distances. ``pairwise_distance`` adds its
    ``eps = 1e-6`` to the differences, which moves a score by about 1e-6.)
    """
    scores = []
    for e, t in zip(list(map(int, enroll)), list(map(int, test))):
        ref, com = embeddings[e], embeddings[t]
        if normalize:
            ref, com = F.normalize(ref, p=2, dim=1), F.normalize(com, p=2, dim=1)
        x1 = ref.unsqueeze(1).expand(-1, com.shape[0], -1)
        x2 = com.unsqueeze(0).expand(ref.shape[0], -1, -1)
        scores.append(-F.pairwise_distance(x1, x2).mean().item())
    return np.array(scores)
