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


# Trial list formats: the original's ``<label 0|1> <enroll> <test>`` (labelled) or ``<enroll> <test>``
# (unlabelled), and Kaldi's ``<enroll> <test> target|nontarget``, whose keys are utterance ids of a data directory.
LABELLED, UNLABELLED, KALDI = "labelled", "unlabelled", "kaldi"
KALDI_LABELS = {"target": 1, "nontarget": 0}
FORMS = {LABELLED: "'<label 0|1> <enroll.wav> <test.wav>'", UNLABELLED: "'<enroll.wav> <test.wav>'",
         KALDI: "Kaldi's '<enroll> <test> target|nontarget'"}


def _line_formats(fields: list[str]) -> set[str]:
    """The formats a line's fields fit (none, one, or -- for '1 a target' -- two)."""
    formats = set()
    if len(fields) == 2:
        formats.add(UNLABELLED)
    if len(fields) == 3 and fields[0] in ("0", "1"):
        formats.add(LABELLED)
    if len(fields) == 3 and fields[2] in KALDI_LABELS:
        formats.add(KALDI)
    return formats


def _forms(formats: set[str]) -> str:
    return " or ".join(FORMS[form] for form in sorted(formats))


def read_trial_file(list_path: str) -> tuple[str, list[Trial]]:
    """The format (``labelled``, ``unlabelled`` or ``kaldi``) and trials of a trial list.

    The format is detected per file: every line must fit the same one, so a file mixing them is an error naming
    the first line that does not fit. Kaldi's target/nontarget become labels 1/0; its keys are kept as given.
    """
    rows, formats, first = [], {LABELLED, UNLABELLED, KALDI}, None
    for number, line in enumerate(read_lines(list_path), start=1):
        fields = line.split()
        if not fields:
            continue
        fits = _line_formats(fields)
        if not fits:
            raise located(list_path, number, f"expected '<label 0|1> <enroll.wav> <test.wav>', "
                                             f"'<enroll.wav> <test.wav>' or '<enroll> <test> target|nontarget', "
                                             f"got: {line!r}")
        if not fits & formats:
            raise located(list_path, number, f"mixes trial list formats: this line is {_forms(fits)}, the lines "
                                             f"from line {first} are {_forms(formats)}")
        formats &= fits
        first = first or number
        rows.append(fields)
    if not rows:
        raise located(list_path, None, "the trial list holds no trials")
    form = KALDI if KALDI in formats else formats.pop()
    if form == KALDI:
        return form, [Trial(KALDI_LABELS[label], enroll, test) for enroll, test, label in rows]
    if form == LABELLED:
        return form, [Trial(int(label), enroll, test) for label, enroll, test in rows]
    return form, [Trial(None, enroll, test) for enroll, test in rows]


def read_trial_list(list_path: str) -> list[Trial]:
    """Parse a trial list in any format of :func:`read_trial_file`: ``<label> <enroll> <test>``,
    ``<enroll> <test>`` (no labels) or Kaldi's ``<enroll> <test> target|nontarget``."""
    return read_trial_file(list_path)[1]


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
    """The AS-norm cohort: files (full paths, or names in ``audio``) and their speaker indices."""
    files: list[str]
    speakers: np.ndarray
    audio: object | None = None     # where the names are read (an evaluation audio; None: they are paths)


@dataclass
class EvalPlan:
    """What an evaluation scores: the test lists, an optional validation list and an optional AS-norm cohort."""
    tests: list[TrialList]
    val: TrialList | None = None
    cohort: Cohort | None = None
    audio: object | None = None     # the trials' audio (a Kaldi data directory's utterances); None: test_path

    @property
    def lists(self) -> list[TrialList]:
        return self.tests + ([self.val] if self.val is not None else [])


def check_keys(list_path: str, trials: list[Trial], audio) -> None:
    """Every trial key names an item of ``audio`` (see :class:`~spknet.data.AudioFolder`); the first line with
    one that does not is an error naming it and how many keys are unknown."""
    keys = list(dict.fromkeys(key for trial in trials for key in (trial.enroll, trial.test)))
    unknown = audio.missing(keys)
    if not unknown:
        return
    unknown_set = set(unknown)
    more = f" ({len(unknown)} keys unknown in all)" if len(unknown) > 1 else ""
    for number, line in enumerate(read_lines(list_path), start=1):
        key = next((key for key in line.split() if key in unknown_set), None)
        if key is not None:
            raise located(list_path, number, f"trial key '{key}' not found: there is no {audio.describe(key)}{more}")


def read_trials(list_path: str, test_path: str, name: str, need_labels: str = "", audio=None) -> TrialList:
    """A trial list whose files exist (under ``test_path``, or every key an item of ``audio``, an evaluation
    audio such as a Kaldi data directory's utterances); ``need_labels`` (what needs them) also asks for both
    kinds of trial."""
    trials = read_trial_list(list_path)
    if audio is not None:
        check_keys(list_path, trials, audio)
    else:
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
              cohort: Cohort | None = None, audio=None) -> EvalPlan:
    """The lists to evaluate, read and checked before anything is written.

    ``steering`` names what needs labels on the first list (say, training's VEER); ``val_list`` is a held-out
    list whose EER steers training instead. ``audio`` (an evaluation audio, such as
    :class:`~spknet.data.kaldi.KaldiAudio`) is where the trial keys are read instead of files under ``test_path``.
    """
    if len(set(test_lists)) < len(test_lists):
        raise SpeakerNetError(f"{','.join(test_lists)}: names a list twice")
    tests = [read_trials(path, test_path, name, steering if i == 0 else "", audio)
             for i, (path, name) in enumerate(zip(test_lists, list_names(test_lists)))]
    val = read_trials(val_list, test_path, "val", "a validation list", audio) if val_list else None
    return EvalPlan(tests, val, cohort, audio)
