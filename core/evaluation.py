"""Evaluation at VoxCeleb scale: batched embedding extraction, vectorised trial scoring, AS-norm, stores.

* **Extraction** (:func:`extract_embeddings`): a DataLoader (workers, pinned memory on CUDA) feeds several files per
  forward pass (on the CPU: one file per pass, passes in parallel threads with one intra-op thread each, the
  BatchNorms folded into the convolutions, loader workers only on spare cores; ``--eval_precision bf16`` runs
  the network in bfloat16 autocast). With fixed-size crops every file gives ``NUM_EVAL`` crops of the same
  length, so files are simply stacked; with whole files (``eval_frames == 0``) files are grouped by their exact
  number of samples (read from the header) and only files of equal length share a forward pass, so nothing is
  padded and every embedding is the one a single-file forward gives. Every unique file is embedded once, whatever
  the number of lists sharing it.
* **Scoring** (:class:`TrialScorer`, :func:`crop_scores`): ``crops`` is the original's score, minus the mean over
  the ``C x C`` crop pairs of the Euclidean distance between the (L2-normalised when the loss says so) crop
  embeddings. It is computed for chunks of trials at once from ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` with one
  batched matrix product per chunk (trials sorted by enrolment file, so a repeated enrolment embedding comes from
  the cache), clamped at 0, square-rooted and averaged; no Python runs per trial. Trials with a nearly identical
  crop pair (where the expansion cancels and float32 rounding would show after the square root) are recomputed
  from the differences. The crop norms come from one pass over the store; normalisation is folded into the dot
  products, so no normalised copy of the embeddings is made. ``cosine`` is the cosine of the crop-averaged
  (normalised) embeddings. On the CPU, chunks run in parallel Python threads with single-threaded operations
  (:func:`_run_chunks`).
* **AS-norm** (:func:`as_norm`, Matejka et al. 2017, "AS-norm1"): ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``
  with mean and (unbiased) standard deviation over the ``top_n`` highest cohort scores of the enrolment and of the
  test file (:func:`cohort_statistics`, top-k over chunks of files: the files x speakers matrix is never held).
  The cohort is one vector per training speaker, the mean of the normalised crop embeddings of up to
  ``--cohort_utterances`` of its files (:func:`speaker_means`, :func:`pick_cohort_files`). A file's cohort scores
  use the trial scoring function with that vector as a one-crop file: ``crops`` gives minus the mean distance of
  the file's crops to it (10 distances per speaker instead of 100: the full crop score against every cohort file
  would cost 10 times more again), ``cosine`` the cosine. A speaker mean is not a file's crop (it averages out
  the crops' noise), so with ``crops`` the cohort scores are on a slightly different scale from the trial scores;
  a shift ``d`` of the cohort scores moves a normalised score by ``-d/2 (1/sd_e + 1/sd_t)``, which differs between
  files, so there AS-norm is an approximation. With ``cosine`` (the usual choice with AS-norm) cohort and trial scores are the same function.
"""

import copy
import os
import signal
import sys
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core import atomic
from DatasetLoader import NUM_EVAL, TestDataset, max_audio_samples
from core.errors import SpeakerNetError

SCORINGS = ("crops", "cosine")
SCORE_NORMS = ("none", "asnorm")
# --eval_precision: the autocast type of the network during extraction (the log-mel front end stays float32)
EVAL_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Crop pairs whose squared distance is below this fraction of |a|^2 + |b|^2 are recomputed from the difference:
# there the expansion |a|^2 + |b|^2 - 2a.b cancels and its float32 rounding would show after the square root.
NEAR_DUPLICATE = 1e-2


def default_files_per_batch(device: torch.device) -> int:
    """Files per forward pass when not given: one file's crops on the CPU (larger batches are slower there, out
    of cache), many on a GPU."""
    return 32 if torch.device(device).type == "cuda" else 1


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated
    and slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")     # torch.cpu's, private but long-lived
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_loader_workers(requested: int, forward_threads: int) -> int:
    """Loader workers for a CPU extraction: only as many as the cores the forward passes leave free. The forward
    is compute-bound and keeps its threads busy; a worker on one of their cores stalls them (each operation
    waits for its slowest thread) for work the main process does in a few percent of the time."""
    return max(0, min(requested, available_cores() - forward_threads))


# ----------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------

def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process (training stops cleanly after its step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def equal_length_batches(lengths, files_per_batch: int, max_samples: int) -> list[list[int]]:
    """Indices grouped by identical length (longest first), at most ``files_per_batch`` files and ``max_samples``
    samples per batch (a single file longer than that is a batch of its own)."""
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(int(length), []).append(index)
    batches = []
    for length in sorted(by_length, reverse=True):
        per_batch = max(1, min(files_per_batch, max_samples // max(length, 1)))
        group = by_length[length]
        batches += [group[i:i + per_batch] for i in range(0, len(group), per_batch)]
    return batches


def eval_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of ``--eval_precision`` (None for float32), or a clear error."""
    if precision not in EVAL_PRECISIONS:
        raise SpeakerNetError(f"--eval_precision {precision!r}: choose one of {', '.join(EVAL_PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise SpeakerNetError("--eval_precision fp16 needs a GPU; on the CPU use bf16")
    return EVAL_PRECISIONS[precision]


_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d)
_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)


def _norms_fed_by_convs(model: torch.nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, norm name) of every eval-mode BatchNorm whose input, in a forward pass on ``example``, is the
    very tensor a convolution returned, unmodified (found with hooks, so the module names and the order of
    declaration do not matter; the original's SE blocks run conv1 -> in-place ReLU -> bn1: the same tensor, but
    its version counter has moved, so that bn1 is not fed by a conv)."""
    names = {module: name for name, module in model.named_modules()}
    # id(output) -> (output, kept alive so the id stays unique; its version; the conv)
    produced_by: dict[int, tuple[torch.Tensor, int, torch.nn.Module]] = {}
    pairs: dict[str, str] = {}

    def after_conv(conv, inputs, output):
        produced_by[id(output)] = (output, output._version, conv)

    def before_norm(norm, inputs):
        source = produced_by.get(id(inputs[0]))
        if source is not None and source[0] is inputs[0] and source[1] == inputs[0]._version:
            pairs[names[norm]] = names[source[2]]

    hooks = [module.register_forward_hook(after_conv) for module in model.modules() if isinstance(module, _CONVS)]
    hooks += [module.register_forward_pre_hook(before_norm) for module in model.modules()
              if isinstance(module, _NORMS) and not module.training and module.track_running_stats]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return [(conv, norm) for norm, conv in pairs.items()]


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def fold_batch_norms(model: torch.nn.Module, example: torch.Tensor, tolerance: float = 1e-4) -> int:
    """Fold eval-mode BatchNorms into the convolutions that feed them (in place); returns how many were folded.

    The pairs come from one forward pass on ``example`` (:func:`_norms_fed_by_convs`). The folds are kept only if
    the output on ``example`` then stays within ``tolerance`` (relative to its largest value) of the unfolded
    model's; otherwise (say, a conv whose output is also used unnormalised elsewhere) the model is left as it was.
    """
    reference = model(example)
    pairs = _norms_fed_by_convs(model, example)
    originals = []
    for conv_name, norm_name in pairs:
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        originals.append((conv, norm))
        _replace(model, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm))
        _replace(model, norm_name, torch.nn.Identity())
    limit = tolerance * reference.abs().max().clamp_min(1e-6)
    if pairs and (model(example) - reference).abs().max() > limit:
        for (conv_name, norm_name), (conv, norm) in zip(pairs, originals):
            _replace(model, conv_name, conv)
            _replace(model, norm_name, norm)
        return 0
    return len(pairs)


def inference_copy(model: torch.nn.Module, example: torch.Tensor, channels_last: bool) -> torch.nn.Module:
    """A faster CPU copy of an eval-mode ``model``: BatchNorms folded into the convolutions
    (:func:`fold_batch_norms`) and, with ``channels_last``, the channels-last memory format. A model that cannot
    be copied (or run on ``example``) is returned as it is."""
    try:
        fast = copy.deepcopy(model)
        fold_batch_norms(fast, example)
        return fast.to(memory_format=torch.channels_last) if channels_last else fast
    except Exception:
        return model


@torch.no_grad()
def extract_embeddings(model: torch.nn.Module, files: list[str], root: str, eval_frames: int,
                       device: torch.device | str = "cpu", num_workers: int = 0, files_per_batch: int | None = None,
                       show_progress: bool = True, desc: str = "embedding", threads: int | None = None,
                       channels_last: bool = True, precision: str = "fp32") -> torch.Tensor:
    """``(files, crops, dim)`` float32 CPU embeddings of ``files`` (paths relative to ``root``), in that order.

    ``crops`` is ``NUM_EVAL`` (fixed ``eval_frames`` crops) or 1 (whole files, ``eval_frames == 0``). ``model`` maps
    ``(batch, samples)`` waveforms to ``(batch, dim)`` and must be in eval mode (its forward is then read-only).

    On the CPU the forward passes run in ``threads`` Python threads (default ``torch.get_num_threads()``), each with
    one intra-op thread: a network of small convolutions gains little from splitting each operation over cores,
    and a machine shared with other work makes every split operation wait for its slowest thread (many times
    slower); whole batches in parallel avoid both. Loader workers run only on the cores those threads leave free
    (:func:`cpu_loader_workers`; none when every core has a forward thread). The CPU forward uses
    a copy of the model with its BatchNorms folded into the convolutions and, with ``channels_last``, in the
    channels-last memory format (:func:`inference_copy`; the model itself is left as it is; embeddings agree to
    float32 rounding).

    ``precision`` ``bf16`` (or ``fp16``, GPU only) runs the network under autocast in that type, with the log-mel
    front end kept in float32: on a CPU with native bfloat16 (AVX512-BF16 or AMX) and on a GPU, a faster
    extraction whose embeddings differ slightly from float32's (cosine to them above 0.9999 on ResNetSE34L).
    """
    device = torch.device(device)
    autocast_dtype = eval_autocast_dtype(precision, device)
    files_per_batch = files_per_batch or default_files_per_batch(device)
    if files_per_batch < 1:
        raise SpeakerNetError(f"--eval_batch_size must be at least 1, got {files_per_batch}")
    dataset = TestDataset(files, root, eval_frames)
    previous = torch.get_num_threads()
    threads = (threads or previous) if device.type == "cpu" else 1
    if device.type == "cpu":
        num_workers = cpu_loader_workers(num_workers, threads)
    workers = dict(num_workers=num_workers, pin_memory=device.type == "cuda",
                   worker_init_fn=_ignore_stop_signals if num_workers > 0 else None)
    if eval_frames == 0:
        lengths = [dataset.num_samples(i) for i in range(len(files))]
        # as many samples per forward as files_per_batch files of NUM_EVAL 4-s crops would have
        batches = equal_length_batches(lengths, files_per_batch * NUM_EVAL,
                                       files_per_batch * NUM_EVAL * max_audio_samples(400))
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, **workers)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=files_per_batch, **workers)

    def forward(crops: torch.Tensor) -> torch.Tensor:
        batch, count, samples = crops.shape
        # grad and autocast modes are per thread
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            embeddings = model(crops.view(batch * count, samples).to(device, non_blocking=True))
        return embeddings.float().view(batch, count, -1).cpu()

    out = None
    bar = tqdm(total=len(files), desc=desc, unit="file", disable=not show_progress, file=sys.stdout,
               dynamic_ncols=True)

    def keep(embeddings: torch.Tensor, indices: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            out = torch.empty(len(files), embeddings.shape[1], embeddings.shape[2])
        out[indices] = embeddings
        bar.update(len(indices))

    if device.type == "cpu" and len(files):
        model = inference_copy(model, torch.randn(2, max_audio_samples(100)) * 1000, channels_last)
    if threads <= 1:
        for crops, indices in loader:
            keep(forward(crops), indices)
    else:
        pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,))
        try:
            pending = deque()
            for crops, indices in loader:
                pending.append((pool.submit(forward, crops), indices))
                if len(pending) > 2 * threads:
                    future, done = pending.popleft()
                    keep(future.result(), done)
            while pending:
                future, done = pending.popleft()
                keep(future.result(), done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(previous)
    bar.close()
    if out is None:
        return torch.empty(0, NUM_EVAL if eval_frames else 1, 0)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Embedding store
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class EmbeddingStore:
    """Embeddings of unique files: ``embeddings[i]`` (crops x dim, as the network gave them) is ``files[i]``."""
    files: list[str]
    embeddings: torch.Tensor
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {path: i for i, path in enumerate(self.files)}

    def indices(self, paths) -> torch.Tensor:
        return torch.tensor([self.index[path] for path in paths], dtype=torch.long)

    def save_npz(self, path: str) -> None:
        """An ``.npz`` (``numpy.load``) whose keys are the file names as in the trial lists and whose values are
        their ``(crops, dim)`` float32 embeddings as the network gave them (not normalised). Written atomically."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        arrays = self.embeddings.numpy()
        # numpy.savez's own layout (one NAME.npy member per array), written member by member
        with atomic.atomic_open(path, "wb") as handle, zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
            for name, array in zip(self.files, arrays):
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


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
    each run their operations single-threaded.

    The per-chunk operations of the scorers are too small for intra-op parallelism, whose synchronisation costs
    more than it gains (many times more on a busy machine); whole chunks in parallel threads (torch releases the
    GIL) keep every core busy instead. The caller's thread count is restored afterwards.
    """
    previous = torch.get_num_threads()
    threads = min(threads or previous, len(starts))
    if device.type != "cpu" or threads <= 1:
        run(starts)
        return

    def run_single_threaded(my_starts):
        torch.set_num_threads(1)        # this thread's intra-op pool only
        run(my_starts)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run_single_threaded, [starts[i::threads] for i in range(threads)]))
    finally:
        torch.set_num_threads(previous)


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


class TrialScorer:
    """Scores trials (and cohort speakers) between the files of an embedding tensor with one scoring function.

    ``scoring``: ``crops`` (the original) or ``cosine``. ``normalize``: L2-normalise crop embeddings first (the
    loss's ``test_normalize``). Work happens on ``device`` (the embeddings are copied there once); scores come
    back on the CPU.
    """

    def __init__(self, embeddings: torch.Tensor, scoring: str = "crops", normalize: bool = True,
                 device: torch.device | str | None = None, chunk: int | None = None):
        if scoring not in SCORINGS:
            raise SpeakerNetError(f"--scoring {scoring!r}: choose one of {', '.join(SCORINGS)}")
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
    """Per-file ``(mean, std)`` of the ``top_n`` highest cohort scores; the full score matrix is never held."""
    if cohort.shape[0] < 2 or top_n < 2:
        raise SpeakerNetError(f"AS-norm needs at least 2 cohort speakers and --cohort_size >= 2 "
                              f"(got {cohort.shape[0]} speakers, --cohort_size {top_n})")
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


def pick_cohort_files(labels: np.ndarray, per_speaker: int) -> np.ndarray:
    """Indices of up to ``per_speaker`` files of each speaker, evenly spread over its files in list order."""
    if per_speaker < 1:
        raise SpeakerNetError(f"--cohort_utterances must be at least 1, got {per_speaker}")
    picked = []
    for speaker in np.unique(labels):
        files = np.flatnonzero(labels == speaker)
        if len(files) > per_speaker:
            files = files[np.linspace(0, len(files) - 1, per_speaker).round().astype(int)]
        picked.append(files)
    return np.sort(np.concatenate(picked))


# ----------------------------------------------------------------------------------------------------------------
# Several lists
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class TrialList:
    """A trial list file: its path, a short name (its stem, for per-list output files) and its trials."""
    path: str
    name: str
    trials: list


def list_names(paths: list[str]) -> list[str]:
    """A short distinct name per list: its file stem (``_2``, ``_3``... appended when stems repeat)."""
    stems = [os.path.splitext(os.path.basename(path))[0] or "list" for path in paths]
    names = []
    for i, stem in enumerate(stems):
        name = stem if stems.count(stem) == 1 else f"{stem}_{stems[:i + 1].count(stem)}"
        names.append(name)
    return names


def per_list_path(path: str, name: str) -> str:
    """``FILE`` with ``_<name>`` appended to its stem: ``out/scores.txt`` -> ``out/scores_veri_test.txt``."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}_{name}{suffix}"
