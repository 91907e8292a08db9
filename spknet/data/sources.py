"""Sources of training utterances: which utterances exist and who speaks them, apart from how their samples are read.

A source holds ``len(source)`` utterances: ``labels[i]`` is utterance i's class (classes numbered from 0),
``speakers`` the class names in label order, ``copies`` how many speed blocks the list holds (see
:class:`SpeedPerturbedSource`), :meth:`~UtteranceSource.name` a name to show for an utterance and
:meth:`~UtteranceSource.open` its samples as a :class:`~spknet.data.audio.Readable` (16 kHz, mono, read by window
through the one reader). The sampler needs only the labels, the dataset only ``open`` and ``speed``; so a training
list (:class:`~spknet.data.lists.TrainList`) is a source, another layout of the data (Kaldi folders with segments,
tar shards) is another, and the sampler, the trainer, the checkpoints and resuming do not change.
"""

import os
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager

import numpy as np

from spknet.data.audio import HOP_SAMPLES, ORIGINAL, AudioPipeline, Readable, open_audio, random_crop
from spknet.errors import SpeakerNetError


class UtteranceSource(ABC):
    """Training utterances, their classes, and their samples (see the module's description)."""

    labels: np.ndarray
    speakers: list[str]
    copies: int = 1

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def name(self, index: int) -> str:
        """What an error or a log shows for utterance ``index`` (a path, a recording and segment, ...)."""

    @abstractmethod
    def open(self, index: int) -> AbstractContextManager[Readable]:
        """Utterance ``index`` as a :class:`~spknet.data.audio.Readable`, in a ``with`` block."""

    def speed(self, index: int) -> float:
        """The factor utterance ``index`` is played at (its class's speed; 1.0: as recorded)."""
        return 1.0

    def train_crop(self, index: int, max_frames: int, rng, pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
        """One random ``(1, samples)`` training crop of utterance ``index`` at its speed (a partial read)."""
        with self.open(index) as audio:
            return random_crop(audio, max_frames, rng, pipeline, self.speed(index))

    def whole(self, index: int, pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
        """All the samples of utterance ``index`` (16 kHz, mono, float32 in ``pipeline``'s scale)."""
        with self.open(index) as audio:
            return audio.read(pipeline=pipeline)


class SpeedPerturbedSource(UtteranceSource):
    """Each (speaker, speed) of ``source`` as a class of its own, as WeSpeaker's speed perturbation does.

    The source becomes ``len(speeds)`` blocks of the recorded ``source`` (any source: a training list, a Kaldi
    data directory), block ``k`` played at ``speeds[k]``; an utterance of class ``s`` in block ``k`` has label
    ``k * n_classes + s`` and class name ``f"{name}_speed{factor:g}"`` (plain ``name`` for 1.0). With 1.0 first,
    the first ``n_classes`` classes are the recorded speakers under their usual labels. A class is a speaker to
    the sampler and the loss, so every utterance of a group shares one speed.
    """

    def __init__(self, source: UtteranceSource, speeds: tuple[float, ...]):
        if source.copies != 1:
            raise SpeakerNetError("the source is already speed-perturbed: perturb the recorded utterances once")
        if len(set(speeds)) != len(speeds) or not all(factor > 0 for factor in speeds):
            raise SpeakerNetError(f"speed factors must be distinct and positive, got {speeds}")
        self.source, self.factors, self.copies, self.count = source, tuple(speeds), len(speeds), len(source)
        classes = len(source.speakers)
        self.labels = np.concatenate([source.labels + block * classes for block in range(len(speeds))])
        self.speakers = [name if factor == 1.0 else f"{name}_speed{factor:g}" for factor in speeds
                         for name in source.speakers]

    @property
    def speeds(self) -> np.ndarray:
        """The speed factor of each utterance."""
        return np.repeat(np.asarray(self.factors, dtype=np.float64), self.count)

    @property
    def files(self) -> list[str]:
        """Each utterance's file, for a source of files (a training list)."""
        return list(self.source.files) * self.copies

    def name(self, index: int) -> str:
        return self.source.name(index % self.count)

    def open(self, index: int):
        return self.source.open(index % self.count)

    def speed(self, index: int) -> float:
        return self.factors[index // self.count]


def speed_perturbed(source: UtteranceSource, speeds: tuple[float, ...]) -> SpeedPerturbedSource:
    """``source`` with each (speaker, speed) a class of its own (:class:`SpeedPerturbedSource`)."""
    return SpeedPerturbedSource(source, speeds)


class AudioFolder:
    """Evaluation audio named as the original's trial lists name it: paths relative to a folder (``root``).

    An evaluation's audio is any object with this interface: :meth:`missing` (names it cannot find, checked
    before anything is embedded), :meth:`open` (a name's samples as a :class:`~spknet.data.audio.Readable`, in a
    ``with`` block) and :meth:`describe` (what an error shows for a name). A Kaldi data directory's utterances
    are another (:class:`~spknet.data.kaldi.KaldiAudio`).
    """

    def __init__(self, root: str):
        self.root = root

    def describe(self, name: str) -> str:
        return os.path.join(self.root, name)

    def missing(self, names) -> list[str]:
        return [name for name in names if not os.path.isfile(self.describe(name))]

    def open(self, name: str, min_frames: int = HOP_SAMPLES):
        return open_audio(self.describe(name), min_frames)


def as_test_audio(audio) -> "AudioFolder":
    """Evaluation audio: a folder path becomes an :class:`AudioFolder`; another audio object is kept."""
    return AudioFolder(audio) if isinstance(audio, (str, os.PathLike)) else audio
