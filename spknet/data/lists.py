"""Lists: the training list (who speaks which file) and the checks before a run."""

import os
from dataclasses import dataclass

import numpy as np

from spknet.data.audio import open_audio
from spknet.data.sources import UtteranceSource
from spknet.errors import SpeakerNetError, located
from spknet.files import shortened


@dataclass
class TrainList(UtteranceSource):
    """A training list as a source: one audio file per utterance (any rate or channel count), each played as
    recorded (:func:`~spknet.data.sources.speed_perturbed` makes the speed classes of one)."""
    files: list[str]        # full paths
    labels: np.ndarray      # class index per file (speakers numbered by sorted name)
    speakers: list[str]     # class names in label order (sorted speaker names)

    def name(self, index: int) -> str:
        return self.files[index]

    def open(self, index: int):
        return open_audio(self.files[index])


def read_lines(list_path: str) -> list[str]:
    if not list_path:
        raise SpeakerNetError("no list file given")
    try:
        with open(list_path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        raise SpeakerNetError(f"{list_path}: list file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpeakerNetError(f"{list_path}: cannot read list file ({error})") from None


def read_train_list(list_path: str, train_path: str) -> TrainList:
    """Parse ``<speaker> <relative/path.wav>`` lines; blank lines are skipped, anything else malformed is an error."""
    pairs = []
    for number, line in enumerate(read_lines(list_path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise located(list_path, number, f"expected '<speaker> <path.wav>' (2 fields), got {len(fields)}: {line!r}")
        pairs.append((fields[0], os.path.join(train_path, fields[1])))
    if not pairs:
        raise located(list_path, None, "the training list holds no utterances")
    speakers = sorted({speaker for speaker, _ in pairs})
    index = {speaker: i for i, speaker in enumerate(speakers)}
    labels = np.array([index[speaker] for speaker, _ in pairs], dtype=np.int64)
    return TrainList([path for _, path in pairs], labels, speakers)


def check_files_exist(paths: list[str], list_path: str, shown: int = 5) -> None:
    """Fail before any work starts if files of a list are missing: count them all, name the first ones."""
    missing = [path for path in dict.fromkeys(paths) if not os.path.isfile(path)]
    if missing:
        named = shortened(missing, shown, "\n  ")
        raise SpeakerNetError(f"{list_path}: {len(missing)} audio file(s) listed but not found:\n  {named}")
