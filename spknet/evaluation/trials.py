"""Trial lists, the evaluation plan (which lists, which cohort) and score files."""

import os
from dataclasses import dataclass

import numpy as np

from spknet import atomic
from spknet.data import check_files_exist, read_lines, read_train_list
from spknet.errors import SpeakerNetError, located


@dataclass
class Trial:
    label: int | None       # 1 target, 0 non-target, None when the list has no labels
    enroll: str
    test: str


def read_trial_list(list_path: str) -> list[Trial]:
    """Parse ``<label> <enroll> <test>`` lines (or ``<enroll> <test>`` without labels)."""
    trials = []
    for number, line in enumerate(read_lines(list_path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 2:
            trials.append(Trial(None, fields[0], fields[1]))
        elif len(fields) == 3 and fields[0] in ("0", "1"):
            trials.append(Trial(int(fields[0]), fields[1], fields[2]))
        else:
            raise located(list_path, number, f"expected '<label 0|1> <enroll.wav> <test.wav>' or "
                                             f"'<enroll.wav> <test.wav>', got: {line!r}")
    if not trials:
        raise located(list_path, None, "the trial list holds no trials")
    labelled = {trial.label is None for trial in trials}
    if len(labelled) > 1:
        raise located(list_path, None, "mixes labelled (3-field) and unlabelled (2-field) trials")
    return trials


@dataclass
class TrialList:
    """A trial list file: its path, a short name (its stem, for per-list output files) and its trials."""
    path: str
    name: str
    trials: list

    @property
    def labels(self) -> list[int | None]:
        return [trial.label for trial in self.trials]

    @property
    def labelled(self) -> bool:
        return self.trials[0].label is not None


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


def write_scores(path: str, scores, trials) -> None:
    """``score label enroll test`` per trial, in list order (label ``-`` for an unlabelled list)."""
    lines = [f"{score:.6f} {'-' if trial.label is None else trial.label} {trial.enroll} {trial.test}\n"
             for score, trial in zip(scores, trials)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_text(path, "".join(lines))


# ----------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Cohort:
    """The AS-norm cohort: files (full paths) and their speaker indices."""
    files: list[str]
    speakers: np.ndarray


@dataclass
class EvalPlan:
    """What an evaluation scores: the test lists, an optional validation list and an optional AS-norm cohort."""
    tests: list[TrialList]
    val: TrialList | None = None
    cohort: Cohort | None = None

    @property
    def lists(self) -> list[TrialList]:
        return self.tests + ([self.val] if self.val is not None else [])


def read_trials(list_path: str, test_path: str, name: str, need_labels: str = "") -> TrialList:
    """A trial list whose files exist; ``need_labels`` (what needs them) also asks for both kinds of trial."""
    trials = read_trial_list(list_path)
    check_files_exist([os.path.join(test_path, p) for t in trials for p in (t.enroll, t.test)], list_path)
    trial_list = TrialList(list_path, name, trials)
    if need_labels and not trial_list.labelled:
        raise SpeakerNetError(f"{list_path}: {need_labels} needs a labelled trial list ('<label> <enroll> <test>')")
    if trial_list.labelled and len(set(trial_list.labels)) < 2:
        raise SpeakerNetError(f"{list_path}: every trial has label {trial_list.labels[0]}; an EER needs both "
                              f"target (1) and non-target (0) trials")
    return trial_list


def pick_cohort_files(labels: np.ndarray, per_speaker: int) -> np.ndarray:
    """Indices of up to ``per_speaker`` files of each speaker, evenly spread over its files in list order."""
    picked = []
    for speaker in np.unique(labels):
        files = np.flatnonzero(labels == speaker)
        if len(files) > per_speaker:
            files = files[np.linspace(0, len(files) - 1, per_speaker).round().astype(int)]
        picked.append(files)
    return np.sort(np.concatenate(picked))


def read_cohort(train_list_path: str, train_path: str, per_speaker: int) -> Cohort:
    """Up to ``per_speaker`` files of each speaker of a training list, as the AS-norm cohort."""
    train_list = read_train_list(train_list_path, train_path)
    if len(train_list.speakers) < 2:
        raise SpeakerNetError(f"{train_list_path}: AS-norm needs at least 2 cohort speakers, the list has "
                              f"{len(train_list.speakers)}")
    picked = pick_cohort_files(train_list.labels, per_speaker)
    files = [train_list.files[i] for i in picked]
    check_files_exist(files, train_list_path)
    return Cohort(files, train_list.labels[picked])


def read_plan(test_lists: list[str], test_path: str, steering: str = "", val_list: str = "",
              cohort: Cohort | None = None) -> EvalPlan:
    """The lists to evaluate, read and checked before anything is written.

    ``steering`` names what needs labels on the first list (say, training's VEER); ``val_list`` is a held-out
    list whose EER steers training instead.
    """
    if len(set(test_lists)) < len(test_lists):
        raise SpeakerNetError(f"{','.join(test_lists)}: names a list twice")
    tests = [read_trials(path, test_path, name, steering if i == 0 else "")
             for i, (path, name) in enumerate(zip(test_lists, list_names(test_lists)))]
    val = read_trials(val_list, test_path, "val", "a validation list") if val_list else None
    return EvalPlan(tests, val, cohort)
