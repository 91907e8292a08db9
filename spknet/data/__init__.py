"""Data: one audio reader, training lists and sources, the batch sampler, datasets, augmentation and speed
perturbation."""

from spknet.data.audio import (
    AUDIO_SCALES,
    FLOAT,
    HOP_SAMPLES,
    INT16_SCALE,
    NUM_EVAL,
    ORIGINAL,
    PADS,
    SPEED_MARGIN,
    WINDOW_SAMPLES,
    AudioFile,
    AudioPipeline,
    Readable,
    change_speed,
    eval_crops,
    load_train_crop,
    load_wav,
    max_audio_samples,
    open_audio,
    random_crop,
    read_audio,
)
from spknet.data.datasets import (
    TestDataset,
    TrainDataset,
    Unreadable,
    WaveformDataset,
    check_not_silent,
    collate_groups,
    collate_readable,
    ignore_stop_signals,
)
from spknet.data.lists import TrainList, check_files_exist, read_lines, read_train_list
from spknet.data.sampler import Group, GroupBatchSampler
from spknet.data.sources import AudioFolder, SpeedPerturbedSource, UtteranceSource, as_test_audio, speed_perturbed

__all__ = [
    "AUDIO_SCALES", "FLOAT", "HOP_SAMPLES", "INT16_SCALE", "NUM_EVAL", "ORIGINAL", "PADS", "SPEED_MARGIN",
    "WINDOW_SAMPLES", "AudioFile", "AudioFolder", "AudioPipeline", "Group", "GroupBatchSampler",
    "Readable", "SpeedPerturbedSource", "TestDataset", "TrainDataset", "TrainList", "Unreadable", "UtteranceSource",
    "WaveformDataset", "as_test_audio", "change_speed", "check_files_exist", "check_not_silent",
    "collate_groups", "collate_readable", "eval_crops", "ignore_stop_signals", "load_train_crop", "load_wav",
    "max_audio_samples", "open_audio", "random_crop", "read_audio", "read_lines", "read_train_list",
    "speed_perturbed",
]
