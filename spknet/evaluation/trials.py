"""Trial lists, the evaluation plan (which lists, which cohort) and score files."""

import os
import re
from dataclasses import dataclass

import numpy as np

from spknet import atomic
from spknet.data import check_files_exist, read_lines, read_train_list
from spknet.errors import SpeakerNetError, located
from spknet.logs import log


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


# ----------------------------------------------------------------------------------------------------------------
# The published VoxCeleb1 lists, recognised by their trial count and the speakers they name
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublishedList:
    name: str               # Vox1-O, Vox1-E, Vox1-H
    original: str           # the first file published and its trial count
    original_trials: int
    cleaned: str            # the cleaned file (the one results are reported on) and its trial count
    cleaned_trials: int
    test_speakers_only: bool  # Vox1-O: only the VoxCeleb1 test speakers; E and H: the whole of VoxCeleb1


PUBLISHED_LISTS = (
    PublishedList("Vox1-O", "veri_test.txt", 37_720, "veri_test2.txt", 37_611, True),
    PublishedList("Vox1-E", "list_test_all.txt", 581_480, "list_test_all2.txt", 579_818, False),
    PublishedList("Vox1-H", "list_test_hard.txt", 552_536, "list_test_hard2.txt", 550_894, False),
)
VOX1_SPEAKERS = (10001, 11251)          # VoxCeleb1 speaker ids id10001 ... id11251
VOX1_TEST_SPEAKERS = (10270, 10309)     # its test split, the speakers of Vox1-O
SPEAKER = re.compile(r"^id(\d{5})[/\\-]")  # 'id10270/5r0dWxy17C8/00001.wav', or a Kaldi key 'id10270-...'


def _speakers_fit(trials: list[Trial], test_only: bool) -> bool:
    """Every file of ``trials`` is a VoxCeleb1 utterance (of the test speakers alone when ``test_only``)."""
    files = {trial.enroll for trial in trials} | {trial.test for trial in trials}
    numbers = set()
    for path in files:
        match = SPEAKER.match(path)
        if match is None:
            return False
        numbers.add(int(match[1]))
    low, high = VOX1_TEST_SPEAKERS if test_only else VOX1_SPEAKERS
    return low <= min(numbers) and max(numbers) <= high


def name_trial_list(trials: list[Trial]) -> tuple[str | None, str | None]:
    """The published name of a VoxCeleb1 trial list (``"Vox1-O (cleaned)"``, ``"Vox1-H (original)"``, ...) and,
    for an original list, a warning that names the cleaned one; ``(None, None)`` for any other list.

    A list is recognised by its trial count (the six published counts differ) and by the files it names:
    VoxCeleb1 utterances ``idNNNNN/...``, of the test speakers id10270-id10309 alone for Vox1-O.
    """
    for published in PUBLISHED_LISTS:
        cleaned = len(trials) == published.cleaned_trials
        if not (cleaned or len(trials) == published.original_trials):
            continue
        if not _speakers_fit(trials, published.test_speakers_only):
            return None, None
        if cleaned:
            return f"{published.name} (cleaned)", None
        return f"{published.name} (original)", (
            f"this is the original {published.name} list ({published.original}, {published.original_trials:,} "
            f"trials); published results use the cleaned list {published.cleaned} ({published.cleaned_trials:,} "
            f"trials), and EERs on the two are not comparable")
    return None, None


def read_trial_list(list_path: str) -> list[Trial]:
    """Parse a trial list in any format of :func:`read_trial_file`: ``<label> <enroll> <test>``,
    ``<enroll> <test>`` (no labels) or Kaldi's ``<enroll> <test> target|nontarget``."""
    return read_trial_file(list_path)[1]


@dataclass
class TrialList:
    """A trial list file: its path, a short name (its stem, for per-list output files), its trials and, for a
    published VoxCeleb1 list, its name (``Vox1-O (cleaned)``, see :func:`name_trial_list`)."""
    path: str
    name: str
    trials: list
    published: str | None = None

    def describe(self) -> str:
        """The path, with the published name when there is one: ``data/veri_test2.txt (Vox1-O (cleaned))``."""
        return f"{self.path} ({self.published})" if self.published else self.path

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
    published, warning = name_trial_list(trials)
    if warning:
        log.warning(f"{list_path}: {warning}")
    trial_list = TrialList(list_path, name, trials, published)
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
