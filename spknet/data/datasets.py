"""Datasets: a training group's crops, a test file's crops, and the loader workers' signal handling."""

import os
import signal

import numpy as np
import torch
from torch.utils.data import Dataset

from spknet.data.audio import NUM_EVAL, ORIGINAL, AudioPipeline, load_train_crop, load_wav, open_audio
from spknet.data.lists import TrainList
from spknet.data.sampler import Group



def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process, which finishes its step and saves first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainDataset(Dataset):
    """Maps a :class:`Group` to ``(waves (len(group), samples), label)``; each file is played at its entry's speed
    (:func:`speed_perturbed`) before it is cropped, and augmented after."""

    def __init__(self, train_list: TrainList, max_frames: int, augmenter=None, pipeline: AudioPipeline = ORIGINAL):
        self.files = train_list.files
        self.speeds = train_list.speeds
        self.max_frames = max_frames
        self.augmenter = augmenter
        self.pipeline = pipeline

    def __getitem__(self, group: Group):
        rng = np.random.default_rng(group.crop_seed)
        waves = np.concatenate([load_train_crop(self.files[i], self.max_frames, rng, self.pipeline,
                                                1.0 if self.speeds is None else float(self.speeds[i]))
                                for i in group.files])
        if self.augmenter is not None:       # the augmenter mixes in the int16 range
            waves = np.stack([self.pipeline.from_int16_scale(self.augmenter(self.pipeline.to_int16_scale(wave), rng))
                              for wave in waves])
        return waves, group.label

    def __len__(self):
        return len(self.files)


def collate_groups(items):
    """Concatenate groups into a flat ``(utterances, samples)`` batch with per-utterance labels."""
    waves = torch.from_numpy(np.concatenate([waves for waves, _ in items]))
    labels = torch.tensor([label for waves, label in items for _ in range(len(waves))], dtype=torch.long)
    sizes = torch.tensor([len(waves) for waves, _ in items], dtype=torch.long)
    return waves, labels, sizes


class TestDataset(Dataset):
    """Evaluation crops of each file: ``(num_eval, samples)``, or ``(1, whole file)`` with ``max_frames == 0``."""

    def __init__(self, files: list[str], test_path: str, max_frames: int, num_eval: int = NUM_EVAL,
                 pipeline: AudioPipeline = ORIGINAL):
        self.files = files
        self.test_path = test_path
        self.max_frames = max_frames
        self.num_eval = num_eval
        self.pipeline = pipeline

    def __getitem__(self, index):
        path = os.path.join(self.test_path, self.files[index])
        crops = load_wav(path, self.max_frames, evalmode=True, num_eval=self.num_eval, pipeline=self.pipeline)
        return torch.from_numpy(crops), index

    def num_samples(self, index) -> int:
        """Samples of a file from its header (whole-file evaluation batches files of equal length)."""
        with open_audio(os.path.join(self.test_path, self.files[index])) as handle:
            return handle.frames

    def __len__(self):
        return len(self.files)
