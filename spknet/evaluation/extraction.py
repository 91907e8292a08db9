"""Embedding extraction: a DataLoader (workers, pinned memory on CUDA) feeds several files per forward pass.

On the CPU each forward takes one file's crops, passes run in parallel threads with one intra-op thread each, the
BatchNorms are folded into the convolutions and loader workers run only on spare cores; ``--eval_precision bf16``
runs the network in bfloat16 autocast. With fixed-size crops every file gives ``NUM_EVAL`` crops of the same
length, so files are simply stacked; with whole files (``eval_frames == 0``) files are grouped by their exact
number of samples (read from the header) and only files of equal length share a forward pass, so nothing is
padded and every embedding is the one a single-file forward gives. :func:`extract_dataset` is the one
extraction (``--eval``, AS-norm cohorts, calibration and :class:`~spknet.inference.Embedder`); :func:`embed_files`
shards the files over the ranks of torch.distributed and gathers the embeddings on every rank.
"""

import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from spknet import atomic, distributed
from spknet.data import (
    HOP_SAMPLES,
    NUM_EVAL,
    ORIGINAL,
    AudioPipeline,
    TestDataset,
    WaveformDataset,
    ignore_stop_signals,
    max_audio_samples,
)
from spknet.errors import check_choice
from spknet.evaluation.threads import single_threaded_pool
from spknet.folding import inference_copy
from spknet.progress import progress_bar

# --eval_precision: the autocast type of the network during extraction (the log-mel front end stays float32)
EVAL_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


SHORT_FILES = ("pad", "whole")


@torch.no_grad()
def extract_embeddings(model: torch.nn.Module, files: list[str], root, eval_frames: int,
                       device: torch.device | str = "cpu", *, short_files: str = "pad",
                       pipeline: AudioPipeline = ORIGINAL, min_frames: int = HOP_SAMPLES, reject_silence: bool = False,
                       **options) -> torch.Tensor:
    """``(files, crops, dim)`` float32 CPU embeddings of ``files`` (paths relative to the folder ``root``, or names
    in the evaluation audio ``root``: :func:`~spknet.data.as_test_audio`), in that order.

    ``crops`` is ``NUM_EVAL`` (fixed ``eval_frames`` crops) or 1 (whole files, ``eval_frames == 0``). A file no
    longer than one crop is padded (``short_files="pad"``, the original) or embedded whole (``"whole"``), its one
    embedding then standing for each of its crops. ``pipeline`` reads and pads the audio (any rate or channel
    count: see :func:`~spknet.data.audio.open_audio`); a file shorter than ``min_frames`` samples, or (with
    ``reject_silence``) an all-zero one, is an error naming it. ``options``: see :func:`extract_dataset`.
    """
    def dataset(chosen: list[str], frames: int) -> TestDataset:
        return TestDataset(chosen, root, frames, pipeline=pipeline, min_frames=min_frames,
                           reject_silence=reject_silence)

    if not eval_frames or short_files == "pad" or not files:
        return extract_dataset(model, dataset(files, eval_frames), device, **options)
    lengths = np.array([dataset(files, 0).num_samples(i) for i in range(len(files))])
    short = np.flatnonzero(lengths <= max_audio_samples(eval_frames))
    if len(short) == 0:
        return extract_dataset(model, dataset(files, eval_frames), device, **options)
    long = np.flatnonzero(lengths > max_audio_samples(eval_frames))
    whole = extract_dataset(model, dataset([files[i] for i in short], 0), device, **options)
    out = torch.empty(len(files), NUM_EVAL, whole.shape[2])
    out[torch.from_numpy(short)] = whole.expand(-1, NUM_EVAL, -1)
    if len(long):
        out[torch.from_numpy(long)] = extract_dataset(model, dataset([files[i] for i in long], eval_frames), device,
                                                      **options)
    return out


def cpu_inference_model(model: torch.nn.Module, channels_last: bool = True) -> torch.nn.Module:
    """The copy of ``model`` that a CPU extraction runs: BatchNorms folded into the convolutions and, with
    ``channels_last``, in the channels-last memory format (:func:`~spknet.folding.inference_copy`)."""
    return inference_copy(model, torch.randn(2, max_audio_samples(100)) * 1000, channels_last)


@torch.no_grad()
def extract_dataset(model: torch.nn.Module, dataset: TestDataset | WaveformDataset,
                    device: torch.device | str = "cpu", num_workers: int = 0, files_per_batch: int | None = None,
                    max_samples: int | None = None, show_progress: bool = True, desc: str = "embedding",
                    threads: int | None = None, channels_last: bool = True, precision: str = "fp32",
                    prepared: bool = False) -> torch.Tensor:
    """The one extraction: ``(items, crops, dim)`` embeddings of every item of ``dataset`` (files read by
    :class:`~spknet.data.TestDataset`, or waveforms held by :class:`~spknet.data.WaveformDataset`, both cropped
    by :func:`~spknet.data.eval_crops`), in order.

    Fixed crops (``dataset.max_frames`` N) are stacked ``files_per_batch`` items per forward pass (default
    :func:`default_files_per_batch`); whole items (``max_frames`` 0) share a forward pass only with items of the
    same length (nothing is padded), ``files_per_batch * NUM_EVAL`` of them and at most ``max_samples`` samples
    (default: as many as ``files_per_batch`` items of ``NUM_EVAL`` 4-s crops).

    On the CPU several forward passes run in ``threads`` Python threads (default ``torch.get_num_threads()``), each
    with one intra-op thread (a single pass, as for one file, runs with the caller's threads): a network of small
    convolutions gains little from splitting each operation over cores, and a machine shared with other work makes
    every split operation wait for its slowest thread (many times slower); whole batches in parallel avoid both
    (:func:`~spknet.evaluation.threads.single_threaded_pool`; the caller's thread count is unchanged afterwards).
    Loader workers run only on the cores those threads leave free (:func:`cpu_loader_workers`; none when every core
    has a forward thread). The CPU forward uses a copy of the model with its BatchNorms folded into the convolutions
    and, with ``channels_last``, in the channels-last memory format (:func:`cpu_inference_model`; the model itself
    is left as it is; embeddings agree to float32 rounding); ``prepared`` says ``model`` is such a copy already.

    ``precision`` ``bf16`` (or ``fp16``, GPU only) runs the network under autocast in that type, with the log-mel
    front end kept in float32: on a CPU with native bfloat16 (AVX512-BF16 or AMX) and on a GPU, a faster
    extraction whose embeddings differ slightly from float32's (cosine to them above 0.9999 on ResNetSE34L).
    """
    device = torch.device(device)
    autocast_dtype = EVAL_PRECISIONS[check_choice("eval precision", precision, EVAL_PRECISIONS)]
    files_per_batch = files_per_batch or default_files_per_batch(device)
    count, whole = len(dataset), dataset.max_frames == 0
    threads = (threads or torch.get_num_threads()) if device.type == "cpu" else 1
    if device.type == "cpu":
        num_workers = cpu_loader_workers(num_workers, threads)
    workers = dict(num_workers=num_workers, pin_memory=device.type == "cuda",
                   worker_init_fn=ignore_stop_signals if num_workers > 0 else None)
    if whole:
        lengths = [dataset.num_samples(i) for i in range(count)]
        # as many samples per forward as files_per_batch files of NUM_EVAL 4-s crops would have
        batches = equal_length_batches(lengths, files_per_batch * NUM_EVAL,
                                       max_samples or files_per_batch * NUM_EVAL * max_audio_samples(400))
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, **workers)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=files_per_batch, **workers)

    def forward(crops: torch.Tensor) -> torch.Tensor:
        batch, crop_count, samples = crops.shape
        # grad and autocast modes are per thread
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            embeddings = model(crops.view(batch * crop_count, samples).to(device, non_blocking=True))
        return embeddings.float().view(batch, crop_count, -1).cpu()

    out = None
    bar = progress_bar(total=count, enabled=show_progress, desc=desc, unit="file")

    def keep(embeddings: torch.Tensor, indices: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            out = torch.empty(count, embeddings.shape[1], embeddings.shape[2])
        out[indices] = embeddings
        bar.update(len(indices))

    if device.type == "cpu" and count and not prepared:
        model = cpu_inference_model(model, channels_last)
    if threads <= 1 or len(loader) <= 1:       # one forward pass (a single file): the caller's threads split it
        for crops, indices in loader:
            keep(forward(crops), indices)
    else:
        with single_threaded_pool(threads) as pool:
            pending = deque()
            for crops, indices in loader:
                pending.append((pool.submit(forward, crops), indices))
                if len(pending) > 2 * threads:
                    future, done = pending.popleft()
                    keep(future.result(), done)
            while pending:
                future, done = pending.popleft()
                keep(future.result(), done)
    bar.close()
    if out is None:
        return torch.empty(0, 1 if whole else NUM_EVAL, 0)
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
        arrays = dict(zip(self.files, self.embeddings.numpy()))
        with atomic.atomic_open(path, "wb") as handle:
            np.savez(handle, **arrays)



def embed_files(model: torch.nn.Module, files: list[str], root, eval_frames: int, device: torch.device,
                **options) -> torch.Tensor:
    """:func:`extract_embeddings` sharded over the ranks of torch.distributed: every rank embeds every
    ``world_size``-th file and receives all the embeddings, in ``files`` order."""
    ranks, rank = distributed.world_size(), distributed.rank()
    mine = extract_embeddings(model, files[rank::ranks], root, eval_frames, device, **options)
    if ranks == 1:
        return mine
    return distributed.gather_strided(mine, len(files), device)
