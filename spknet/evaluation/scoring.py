"""Trial scoring and adaptive score normalisation, vectorised over trials.

* **Scoring** (:class:`TrialScorer`, :func:`crop_scores`): ``crops`` is the original's score, minus the mean over
  the ``C x C`` crop pairs of the Euclidean distance between the (L2-normalised when the loss says so) crop
  embeddings. It is computed for chunks of trials at once from ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` with one
  batched matrix product per chunk (trials sorted by enrolment file, so a repeated enrolment embedding comes from
  the cache), clamped at 0, square-rooted and averaged; no Python runs per trial. Trials with a nearly identical
  crop pair (where the expansion cancels and float32 rounding would show after the square root) are recomputed
  from the differences. ``cosine`` is the cosine of the crop-averaged (normalised) embeddings. On the CPU, chunks
  run in parallel Python threads with single-threaded operations (:func:`_run_chunks`).
* **AS-norm** (:func:`as_norm`, Matejka et al. 2017, "AS-norm1"): ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``
  with mean and (unbiased) standard deviation over the ``top_n`` highest cohort scores of the enrolment and of the
  test file (:func:`cohort_statistics`: the files x speakers matrix is never held). The cohort is one vector per
  training speaker, the mean of the normalised crop embeddings of some of its files (:func:`speaker_means`). A
  file's cohort scores use the trial scoring function with that vector as a one-crop file; a speaker mean averages
  out the crops' noise, so with ``crops`` the cohort scores are on a slightly different scale from the trial
  scores and AS-norm is an approximation there; with ``cosine`` cohort and trial scores are the same function.
"""

import torch
import torch.nn.functional as F

from spknet.errors import SpeakerNetError, check_choice
from spknet.evaluation.threads import single_threaded_pool

SCORINGS = ("crops", "cosine")
SCORE_NORMS = ("none", "asnorm")
# Crop pairs whose squared distance is below this fraction of |a|^2 + |b|^2 are recomputed from the difference:
# there the expansion |a|^2 + |b|^2 - 2a.b cancels and its float32 rounding would show after the square root.
NEAR_DUPLICATE = 1e-2

# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------

def crop_norms(embeddings: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``(files, crops)`` Euclidean norms of the crop embeddings (float32, computed in chunks of files)."""
    norms = torch.empty(embeddings.shape[:2], dtype=torch.float32, device=embeddings.device)
    for start in range(0, embeddings.shape[0], chunk):
        torch.linalg.vector_norm(embeddings[start:start + chunk], dim=2, out=norms[start:start + chunk])
    return norms


def _as_index(values, device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long).to(device)


def _run_chunks(run, starts: list, device: torch.device, threads: int | None = None) -> None:
    """``run(starts)``, on the CPU split over ``threads`` Python threads (default ``torch.get_num_threads()``) that
    each run their operations single-threaded (:func:`~spknet.evaluation.threads.single_threaded_pool`: the
    per-chunk operations of the scorers are too small for intra-op parallelism). The caller's thread count is
    unchanged afterwards."""
    threads = min(threads or torch.get_num_threads(), len(starts))
    if device.type != "cpu" or threads <= 1:
        run(starts)
        return
    with single_threaded_pool(threads) as pool:
        list(pool.map(run, [starts[i::threads] for i in range(threads)]))


def default_chunk(device: torch.device) -> int:
    """Trials per batched product: cache-sized on the CPU (two 256 x 10 x 512 buffers per thread), large on a GPU."""
    return 8192 if torch.device(device).type == "cuda" else 256


def crop_scores(embeddings: torch.Tensor, enroll, test, normalize: bool = True, norms: torch.Tensor | None = None,
                chunk: int | None = None, threads: int | None = None) -> torch.Tensor:
    """Minus the mean over all crop pairs of the Euclidean distance, for every trial ``(enroll[i], test[i])``.

    ``embeddings``: ``(files, crops, dim)`` float32 (raw: ``normalize`` L2-normalises each crop, as the original
    does when the loss says so); ``norms``: their crop norms when already known (:func:`crop_norms`). Returns
    ``(trials,)`` float32 on the embeddings' device, in the trials' order.

    On the CPU the chunks are shared by ``threads`` threads (see :func:`_run_chunks`).
    """
    device = embeddings.device
    enroll, test = _as_index(enroll, device), _as_index(test, device)
    trials = enroll.shape[0]
    scores = torch.empty(trials, dtype=torch.float32, device=device)
    if trials == 0:
        return scores
    if norms is None:
        norms = crop_norms(embeddings)
    if normalize:
        inverse = 1.0 / norms.clamp_min(1e-12)                       # F.normalize's eps
        squared = None                                               # unit crops: |a|^2 + |b|^2 = 2
    else:
        inverse, squared = None, norms * norms
    # Sorted by enrolment (then test) file: repeated enrolment rows are read from cache, not memory.
    order = torch.argsort(enroll * embeddings.shape[0] + test)
    size = min(chunk or default_chunk(device), trials)
    starts = list(range(0, trials, size))

    def run(my_starts):
        crops, dim = embeddings.shape[1], embeddings.shape[2]
        a_buffer = torch.empty(size, crops, dim, device=device)
        b_buffer = torch.empty(size, crops, dim, device=device)
        gram = torch.empty(size, crops, crops, device=device)
        for start in my_starts:
            rows = order[start:start + size]
            n = rows.shape[0]
            e, t = enroll[rows], test[rows]
            a = torch.index_select(embeddings, 0, e, out=a_buffer[:n])
            b = torch.index_select(embeddings, 0, t, out=b_buffer[:n])
            g = torch.bmm(a, b.transpose(1, 2), out=gram[:n])     # crop dot products
            if normalize:
                g.mul_(inverse[e].unsqueeze(2)).mul_(inverse[t].unsqueeze(1)).mul_(-2).add_(2.0)
                close = g.view(n, -1).amin(dim=1) < 2 * NEAR_DUPLICATE
            else:
                sum_squares = squared[e].unsqueeze(2) + squared[t].unsqueeze(1)
                g.mul_(-2).add_(sum_squares)
                close = (g < NEAR_DUPLICATE * sum_squares).view(n, -1).any(dim=1)
            # g now holds squared distances
            scores[rows] = g.clamp_(min=0).sqrt_().view(n, -1).mean(dim=1).neg_()
            if bool(close.any()):
                redo = close.nonzero().squeeze(1)
                x, y = a[redo], b[redo]
                if normalize:
                    x, y = x * inverse[e[redo]].unsqueeze(2), y * inverse[t[redo]].unsqueeze(2)
                exact = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
                scores[rows[redo]] = exact.mean(dim=(1, 2)).neg()

    _run_chunks(run, starts, device, threads)
    return scores


def mean_embeddings(embeddings: torch.Tensor, normalize: bool = True, norms: torch.Tensor | None = None,
                    chunk: int = 8192) -> torch.Tensor:
    """``(files, dim)``: each file's crop embeddings (normalised when ``normalize``) averaged, then L2-normalised."""
    out = torch.empty(embeddings.shape[0], embeddings.shape[2], device=embeddings.device)
    for start in range(0, embeddings.shape[0], chunk):
        block = embeddings[start:start + chunk]
        if normalize:       # the sum of the normalised crops as one weighted sum, without a normalised copy
            scale = (norms[start:start + chunk] if norms is not None else crop_norms(block)).clamp_min(1e-12)
            total = torch.einsum("nc,ncd->nd", scale.reciprocal(), block)
        else:
            total = block.sum(dim=1)
        out[start:start + chunk] = F.normalize(total, p=2, dim=1)     # the mean's direction
    return out


def cosine_scores(means: torch.Tensor, enroll, test, chunk: int = 1024, threads: int | None = None) -> torch.Tensor:
    """Cosine of the (normalised) mean embeddings of every trial's two files."""
    enroll, test = _as_index(enroll, means.device), _as_index(test, means.device)
    scores = torch.empty(enroll.shape[0], device=means.device)
    chunk = chunk if means.device.type == "cpu" else max(chunk, 65536)

    def run(starts):
        for start in starts:
            e, t = enroll[start:start + chunk], test[start:start + chunk]
            scores[start:start + chunk] = (means[e] * means[t]).sum(dim=1)

    _run_chunks(run, list(range(0, enroll.shape[0], chunk)), means.device, threads)
    return scores


class TrialScorer:
    """Scores trials (and cohort speakers) between the files of an embedding tensor with one scoring function.

    ``scoring``: ``crops`` (the original) or ``cosine``. ``normalize``: L2-normalise crop embeddings first (the
    loss's ``test_normalize``). Work happens on ``device`` (the embeddings are copied there once); scores come
    back on the CPU.
    """

    def __init__(self, embeddings: torch.Tensor, scoring: str = "crops", normalize: bool = True,
                 device: torch.device | str | None = None, chunk: int | None = None):
        check_choice("scoring", scoring, SCORINGS)
        self.scoring, self.normalize, self.chunk = scoring, normalize, chunk
        self.device = torch.device(device) if device is not None else embeddings.device
        embeddings = embeddings.to(self.device, torch.float32)
        self.norms = crop_norms(embeddings)
        if scoring == "crops":
            self.embeddings = embeddings.contiguous()
        else:
            self.means = mean_embeddings(embeddings, normalize, self.norms)

    def __call__(self, enroll, test) -> torch.Tensor:
        if self.scoring == "crops":
            scores = crop_scores(self.embeddings, enroll, test, self.normalize, self.norms, self.chunk)
        else:
            scores = cosine_scores(self.means, enroll, test)
        return scores.cpu()

    def cohort_scores(self, files: torch.Tensor, cohort: torch.Tensor) -> torch.Tensor:
        """``(len(files), speakers)`` scores of the given files against cohort vectors ``(speakers, dim)``.

        ``crops``: minus the mean distance of the file's (normalised) crops to each cohort vector (the trial score
        with the cohort vector as a one-crop file); ``cosine``: the cosine of the file's mean embedding.
        """
        files = _as_index(files, self.device)
        cohort = cohort.to(self.device, torch.float32)
        if self.scoring == "cosine":
            return self.means[files] @ F.normalize(cohort, p=2, dim=1).T
        crops, norms = self.embeddings[files], self.norms[files]
        if self.normalize:
            crops = crops / norms.clamp_min(1e-12).unsqueeze(2)
            squared_crops = torch.ones_like(norms)
        else:
            squared_crops = norms * norms
        dots = torch.matmul(crops, cohort.T)                                    # (files, crops, speakers)
        squared = squared_crops.unsqueeze(2) + (cohort * cohort).sum(1) - 2 * dots
        return squared.clamp_(min=0).sqrt_().mean(dim=1).neg_()


# ----------------------------------------------------------------------------------------------------------------
# Adaptive score normalisation
# ----------------------------------------------------------------------------------------------------------------

def speaker_means(embeddings: torch.Tensor, labels, normalize: bool = True) -> torch.Tensor:
    """``(speakers, dim)`` cohort vectors: the mean over each speaker's files and crops of the (normalised when
    ``normalize``) crop embeddings, L2-normalised when ``normalize``. ``labels`` are ``0..speakers-1`` per file."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    crops = F.normalize(embeddings, p=2, dim=2) if normalize else embeddings
    per_file = crops.mean(dim=1)
    speakers = int(labels.max()) + 1
    sums = torch.zeros(speakers, per_file.shape[1]).index_add_(0, labels, per_file)
    counts = torch.bincount(labels, minlength=speakers).clamp_min(1).unsqueeze(1)
    means = sums / counts
    return F.normalize(means, p=2, dim=1) if normalize else means


def top_cohort_statistics(cohort_scores: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation of each row's ``top_n`` highest scores."""
    top = torch.topk(cohort_scores, min(top_n, cohort_scores.shape[1]), dim=1).values
    return top.mean(dim=1), top.std(dim=1)


def cohort_statistics(scorer: TrialScorer, files, cohort: torch.Tensor, top_n: int,
                      chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-file ``(mean, std)`` of the ``top_n`` highest cohort scores; the full score matrix is never held.

    The standard deviation needs two scores or more: a ``top_n`` or a cohort smaller than that is an error, not a
    NaN in every normalised score.
    """
    if min(top_n, cohort.shape[0]) < 2:
        raise SpeakerNetError(f"AS-norm needs at least 2 top cohort scores per file (their standard deviation); "
                              f"got cohort size {top_n} and a cohort of {cohort.shape[0]} speaker(s)")
    files = torch.as_tensor(files, dtype=torch.long)
    means, stds = torch.empty(len(files)), torch.empty(len(files))
    for start in range(0, len(files), chunk):
        mean, std = top_cohort_statistics(scorer.cohort_scores(files[start:start + chunk], cohort), top_n)
        means[start:start + chunk], stds[start:start + chunk] = mean.cpu(), std.cpu()
    return means, stds


def as_norm(scores, enroll, test, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """AS-norm1: ``0.5 * ((s - mean[e]) / std[e] + (s - mean[t]) / std[t])`` for every trial."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    enroll, test = torch.as_tensor(enroll, dtype=torch.long), torch.as_tensor(test, dtype=torch.long)
    std = std.clamp_min(1e-8)
    return 0.5 * ((scores - mean[enroll]) / std[enroll] + (scores - mean[test]) / std[test])
