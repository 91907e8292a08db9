"""Lists: the training list (who speaks which file), speed-perturbed classes, and the checks before a run."""

import os
from dataclasses import dataclass

import numpy as np

from spknet.errors import SpeakerNetError, located


@dataclass
class TrainList:
    files: list[str]        # full paths
    labels: np.ndarray      # class index per file (speakers numbered by sorted name)
    speakers: list[str]     # class names in label order (sorted speaker names; see speed_perturbed)
    speeds: np.ndarray | None = None    # speed factor per entry (speed_perturbed); None: every file as recorded
    copies: int = 1         # entries per recorded file: the list is ``copies`` blocks of the recorded list


def speed_perturbed(train_list: TrainList, speeds: tuple[float, ...]) -> TrainList:
    """Each (speaker, speed) as its own class, as WeSpeaker's speed perturbation does.

    The list becomes ``len(speeds)`` blocks of the recorded list, block ``k`` at ``speeds[k]``; an entry of
    speaker ``s`` in block ``k`` has label ``k * n_speakers + s`` and class name ``f"{name}_speed{factor}"``
    (plain ``name`` for 1.0). With 1.0 first, the first ``n_speakers`` classes are the recorded speakers under
    their usual labels. A class is a speaker to the sampler and the loss, so every utterance of a group shares
    one speed.
    """
    if train_list.copies != 1:
        raise ValueError("the training list is already speed-perturbed")
    if len(set(speeds)) != len(speeds) or not all(factor > 0 for factor in speeds):
        raise SpeakerNetError(f"speed factors must be distinct and positive, got {speeds}")
    count, files = len(train_list.speakers), len(train_list.files)
    labels = np.concatenate([train_list.labels + block * count for block in range(len(speeds))])
    names = [name if factor == 1.0 else f"{name}_speed{factor:g}" for factor in speeds for name in train_list.speakers]
    return TrainList(train_list.files * len(speeds), labels, names,
                     np.repeat(np.asarray(speeds, dtype=np.float64), files), len(speeds))


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
        names = "\n  ".join(missing[:shown])
        more = f"\n  ... and {len(missing) - shown} more" if len(missing) > shown else ""
        raise SpeakerNetError(f"{list_path}: {len(missing)} audio file(s) listed but not found:\n  {names}{more}")
