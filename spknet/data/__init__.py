"""Data: one audio reader, training lists, the batch sampler, datasets, augmentation and speed perturbation."""

from spknet.data.audio import (
    AUDIO_SCALES,
    INT16_SCALE,
    NUM_EVAL,
    ORIGINAL,
    PADS,
    SPEED_MARGIN,
    AudioPipeline,
    change_speed,
    eval_crops,
    load_train_crop,
    load_wav,
    max_audio_samples,
    open_audio,
)
from spknet.data.datasets import TestDataset, TrainDataset, collate_groups, ignore_stop_signals
from spknet.data.lists import TrainList, check_files_exist, read_lines, read_train_list, speed_perturbed
from spknet.data.sampler import Group, GroupBatchSampler

__all__ = [
    "AUDIO_SCALES", "INT16_SCALE", "NUM_EVAL", "ORIGINAL", "PADS", "SPEED_MARGIN", "AudioPipeline", "Group",
    "GroupBatchSampler", "TestDataset", "TrainDataset", "TrainList", "change_speed", "check_files_exist",
    "collate_groups", "eval_crops", "ignore_stop_signals", "load_train_crop", "load_wav", "max_audio_samples",
    "open_audio", "read_lines", "read_train_list", "speed_perturbed",
]
