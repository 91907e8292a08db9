"""Datasets: a training group's crops, the evaluation crops of a file or a waveform, and the loader workers' signal
handling."""

import ctypes
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from spknet.data.audio import HOP_SAMPLES, NUM_EVAL, ORIGINAL, AudioPipeline, eval_crops
from spknet.data.sampler import Group
from spknet.data.sources import UtteranceSource, as_test_audio
from spknet.errors import SpeakerNetError

PR_SET_PDEATHSIG = 1        # <linux/prctl.h>


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux; elsewhere nothing), and end now if the
    parent has already gone.

    A loader worker otherwise outlives a SIGKILLed main process for seconds (until its own watchdog notices), with
    the main process's open files, and the run cannot be resumed at once. The kernel's parent is the thread that
    started the worker: a loader's workers end with the thread that first iterates it (the main thread here).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)         # orphaned between its start and the prctl: nobody reads this worker's output


def ignore_stop_signals(worker_id: int) -> None:
    """Loader worker start: SIGINT/SIGTERM are left to the main process, which finishes its step and saves first;
    a SIGKILL of the main process ends the worker too (:func:`die_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()


@dataclass(frozen=True)
class Unreadable:
    """A training utterance that could not be read: its name and why (one line)."""
    name: str
    reason: str


class TrainDataset(Dataset):
    """Maps a :class:`Group` to ``(waves (len(group), samples), label)``: a random crop of each utterance of
    ``source`` (a :class:`~spknet.data.sources.UtteranceSource`: a training list, a Kaldi data directory, either
    speed-perturbed), played at its speed before it is cropped, and augmented after.

    A group with an utterance that cannot be read (or is too short) is ``(None, label, Unreadable)``: the worker
    does not fail, and the main process decides (:func:`collate_readable`; training stops, or skips the group
    under ``--max_bad_files``). The whole group goes: a loss over groups (the masked-proxy losses among them)
    needs every group intact."""

    def __init__(self, source: UtteranceSource, max_frames: int, augmenter=None,
                 pipeline: AudioPipeline = ORIGINAL):
        self.source = source
        self.max_frames = max_frames
        self.augmenter = augmenter
        self.pipeline = pipeline

    def __getitem__(self, group: Group):
        rng = np.random.default_rng(group.crop_seed)
        crops = []
        for i in group.files:
            try:
                crops.append(self.source.train_crop(i, self.max_frames, rng, self.pipeline))
            except SpeakerNetError as error:
                name, reason = self.source.name(i), " ".join(str(error).split())
                return None, group.label, Unreadable(name, reason.removeprefix(f"{name}: "))
        waves = np.concatenate(crops)
        if self.augmenter is not None:       # the augmenter mixes in the int16 range
            waves = np.stack([self.pipeline.from_int16_scale(self.augmenter(self.pipeline.to_int16_scale(wave), rng))
                              for wave in waves])
        return waves, group.label

    def __len__(self):
        return len(self.source)


def collate_readable(items):
    """:func:`collate_groups` of the readable groups, and the :class:`Unreadable` utterances of the others (a
    batch whose every group was unreadable has 0 utterances)."""
    unreadable = [item[2] for item in items if item[0] is None]
    readable = [item for item in items if item[0] is not None]
    if not readable:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), unreadable
    return (*collate_groups(readable), unreadable)


def collate_groups(items):
    """Concatenate groups into a flat ``(utterances, samples)`` batch with per-utterance labels."""
    waves = torch.from_numpy(np.concatenate([waves for waves, _ in items]))
    labels = torch.tensor([label for waves, label in items for _ in range(len(waves))], dtype=torch.long)
    sizes = torch.tensor([len(waves) for waves, _ in items], dtype=torch.long)
    return waves, labels, sizes


class TestDataset(Dataset):
    """Evaluation crops of each file: ``(num_eval, samples)``, or ``(1, whole file)`` with ``max_frames == 0``.

    ``files`` are names in ``test_path``: a folder (paths relative to it), or any evaluation audio of
    :func:`~spknet.data.sources.as_test_audio` (say, a Kaldi data directory's utterance ids). Each is read whole
    through the one reader (any rate or channel count); one shorter than ``min_frames`` samples at 16 kHz is an
    error naming it, and so is one whose samples are all zero when ``reject_silence``.
    """

    def __init__(self, files: list[str], test_path, max_frames: int, num_eval: int = NUM_EVAL,
                 pipeline: AudioPipeline = ORIGINAL, min_frames: int = HOP_SAMPLES, reject_silence: bool = False):
        self.files = files
        self.test_path = test_path
        self.audio = as_test_audio(test_path)
        self.max_frames = max_frames
        self.num_eval = num_eval
        self.pipeline = pipeline
        self.min_frames, self.reject_silence = min_frames, reject_silence

    def __getitem__(self, index):
        with self.audio.open(self.files[index], self.min_frames) as audio:
            samples = audio.read(pipeline=self.pipeline)
        if self.reject_silence:
            check_not_silent(samples, self.audio.describe(self.files[index]))
        return torch.from_numpy(eval_crops(samples, self.max_frames, self.num_eval, self.pipeline)), index

    def num_samples(self, index) -> int:
        """Samples of a file at 16 kHz from its header (whole-file evaluation batches files of equal length)."""
        with self.audio.open(self.files[index], self.min_frames) as audio:
            return audio.frames

    def __len__(self):
        return len(self.files)


class WaveformDataset(Dataset):
    """Evaluation crops of waveforms held in memory (16 kHz, mono, float32 in ``pipeline``'s scale), cut as
    :class:`TestDataset` cuts a file's."""

    def __init__(self, waves: list[np.ndarray], max_frames: int, num_eval: int = NUM_EVAL,
                 pipeline: AudioPipeline = ORIGINAL):
        self.waves, self.max_frames, self.num_eval, self.pipeline = waves, max_frames, num_eval, pipeline

    def __getitem__(self, index):
        crops = eval_crops(self.waves[index], self.max_frames, self.num_eval, self.pipeline)
        return torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)), index

    def num_samples(self, index) -> int:
        return self.waves[index].shape[0]

    def __len__(self):
        return len(self.waves)


def check_not_silent(audio: np.ndarray, name: str) -> None:
    """An all-zero utterance has no speaker: an error naming it."""
    if not np.abs(audio).max(initial=0.0) > 0:
        raise SpeakerNetError(f"{name}: all samples are zero (silence has no speaker)")
