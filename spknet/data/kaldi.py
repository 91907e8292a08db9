"""Kaldi data directories: parse and check ``wav.scp``, ``utt2spk``/``spk2utt``, ``segments``, ``utt2dur`` and
``reco2dur``, and read an utterance's samples (a whole file, a segment of it, or a pipe command's output).

A data directory is read once into a frozen :class:`KaldiData`: utterances in ``utt2spk`` order (``spk2utt``
order when only that file exists), speakers numbered by sorted name as in a training list. Every inconsistency
Kaldi's ``validate_data_dir.sh`` would reject is a :class:`~spknet.errors.SpeakerNetError` naming the file and line.

Paths. Kaldi opens a relative path in ``wav.scp`` relative to the *current directory* of the process (not the
data directory), and so does :func:`read_kaldi_dir` by default; pass ``root`` to resolve relative paths against
that directory instead (pipe commands then run with ``root`` as their working directory).

Pipes. A ``wav.scp`` entry ending in ``|`` is a shell command whose standard output is the audio. Running it runs
whatever the file says with this process's rights, so it is refused unless ``allow_pipes`` is given. A command
without shell syntax runs directly (no shell); Kaldi's usual pipelines (``sox ... | ...``, redirections,
variables) need ``/bin/sh``. A pipe's audio is decoded whole from memory on every read.

Only what soundfile can read in one piece is supported: no ``ark:offset`` entries or standard input (``-``).
"""

import gc
import hashlib
import io
import math
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from operator import itemgetter
from types import MappingProxyType

import numpy as np
import soundfile as sf

from spknet import SAMPLE_RATE
from spknet.data.audio import HOP_SAMPLES, ORIGINAL, AudioFile, AudioPipeline, open_audio
from spknet.data.sources import UtteranceSource
from spknet.errors import SpeakerNetError, located

REQUIRED = "wav.scp and utt2spk (or spk2utt)"
SHOWN = 5           # unknown keys named in an error before "... and N more"


# ----------------------------------------------------------------------------------------------------------------
# The description
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """Where a recording's audio is: a file ``path``, or a shell ``command`` whose standard output is the audio.

    ``cwd`` is the working directory a command runs in (None: the current one); ``origin`` is the ``wav.scp``
    line that names it (``data/train/wav.scp:12``), for error messages.
    """
    path: str | None = None
    command: str | None = None
    cwd: str | None = None
    origin: str = ""

    @property
    def is_pipe(self) -> bool:
        return self.command is not None

    def __str__(self) -> str:
        what = f"pipe '{self.command} |'" if self.is_pipe else self.path
        return f"{self.origin}: {what}" if self.origin else str(what)


@dataclass(frozen=True)
class Utterance:
    """One utterance: a whole recording, or the ``[start, end)`` seconds of one (``end`` None: to its end)."""
    key: str
    speaker: str
    recording: str              # recording id (the utterance's own key when there is no segments file)
    location: Location
    start: float | None = None  # seconds into the recording; None: the whole recording
    end: float | None = None    # None: to the end of the recording (a whole recording, or a segment ending -1)
    duration: float | None = None   # seconds, from utt2dur, the segment or reco2dur; None when unknown
    file: str = ""              # the segments (or wav.scp) file and line that define it, for error messages
    line: int | None = None


def _kaldi_data(values: dict) -> "KaldiData":
    return KaldiData(**values)


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True, eq=False)
class KaldiData:
    """A parsed Kaldi data directory, usable as an utterance source; :meth:`utterance` gives one utterance whole.

    It is held in columns (a million utterances parse in seconds and take little memory): per utterance ``i``
    its key, ``labels[i]`` (index in ``speakers``, the sorted speaker names), ``recording[i]`` (its row in the
    recording columns), ``starts``/``ends`` (seconds; NaN: the whole recording / to the recording's end),
    ``durations`` (NaN: unknown) and the line of ``defined_in`` (the segments file, or wav.scp without one) that
    defines it; per recording (``wav.scp`` order) its id, its target (a path, joined to ``root`` when that was
    given, or a pipe command), whether it is a pipe, its ``wav.scp`` line and its length in seconds from
    ``reco2dur`` (or, without segments, ``utt2dur``; NaN: unknown). ``max_overshoot`` is how far (seconds) a
    segment may end past its recording and be cut at the end, as Kaldi's ``extract-segments`` allows.
    """
    path: str
    keys: tuple[str, ...]
    speakers: tuple[str, ...]
    labels: np.ndarray
    recording: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    durations: np.ndarray
    lines: np.ndarray
    defined_in: str
    recording_ids: tuple[str, ...]
    targets: tuple[str, ...]
    pipes: np.ndarray
    recording_lines: np.ndarray
    recording_lengths: np.ndarray
    root: str | None = None
    max_overshoot: float = 0.0
    index: Mapping[str, int] | None = field(default=None, repr=False)             # key -> utterance; built if None
    recording_index: Mapping[str, int] | None = field(default=None, repr=False)   # id -> recording row

    def __post_init__(self):
        for column in (self.labels, self.recording, self.starts, self.ends, self.durations, self.lines, self.pipes,
                       self.recording_lines, self.recording_lengths):
            column.setflags(write=False)
        for name, keys in (("index", self.keys), ("recording_index", self.recording_ids)):
            index = getattr(self, name)
            object.__setattr__(self, name, MappingProxyType(index if index is not None else
                                                            {key: i for i, key in enumerate(keys)}))

    def __len__(self) -> int:
        return len(self.keys)

    def __reduce__(self):
        """Pickled without its key indexes (read-only mappings, which do not pickle; rebuilt when loaded), so a
        loader worker started by spawn or forkserver receives it."""
        values = {item.name: getattr(self, item.name) for item in fields(self)
                  if item.name not in ("index", "recording_index")}
        return _kaldi_data, (values,)

    def display_name(self, i: int) -> str:
        """How utterance ``i`` is named in logs and score files: its key."""
        return self.keys[i]

    def location(self, r: int) -> Location:
        """Where recording row ``r`` is."""
        origin = f"{os.path.join(self.path, 'wav.scp')}:{self.recording_lines[r]}"
        if self.pipes[r]:
            return Location(command=self.targets[r], cwd=self.root, origin=origin)
        return Location(path=self.targets[r], origin=origin)

    def utterance(self, i: int) -> Utterance:
        """Everything known of utterance ``i``."""
        r = int(self.recording[i])
        return Utterance(self.keys[i], self.speakers[self.labels[i]], self.recording_ids[r], self.location(r),
                         _optional(self.starts[i]), _optional(self.ends[i]), _optional(self.durations[i]),
                         self.defined_in, int(self.lines[i]))

    def read(self, i: int, offset: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
        """Samples (float32, [-1, 1]) and sample rate of utterance ``i``: all of it, or ``frames`` samples from
        ``offset`` samples into it (fewer where it ends first). A file is read only where the window falls."""
        return read_utterance(self.utterance(i), offset, frames, self.max_overshoot)


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------

def _read_text(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise located(path, None, f"cannot read ({error})") from None


class _Table:
    """A data-directory file: each non-blank line's number and fields, and the row of each first field (key).

    ``fields`` is how many fields every line has (None: at least 2); ``form`` how a line looks, for errors.
    """

    def __init__(self, file: str, fields: int | None, form: str):
        self.file = file
        self.text = _read_text(file)
        self.fields = list(map(str.split, self.text))
        self.numbers = list(range(1, len(self.fields) + 1))
        if not all(self.fields):        # blank lines: dropped, the others keep their numbers
            self.numbers = [number for number, split in zip(self.numbers, self.fields) if split]
            self.fields = [split for split in self.fields if split]
        counts = set(map(len, self.fields))
        if counts and (counts != {fields} if fields is not None else min(counts) < 2):
            wrong = next(row for row, split in enumerate(self.fields)
                         if (len(split) != fields if fields is not None else len(split) < 2))
            split = self.fields[wrong]
            raise self.error(wrong, f"expected '{form}', got {len(split)} field(s): {' '.join(split)!r}")
        self.index = dict(zip(self.column(0), range(len(self.fields))))
        if len(self.index) < len(self.fields):
            self._duplicate()

    def _duplicate(self):
        first = {}
        for row, split in enumerate(self.fields):
            if split[0] in first:
                raise self.error(row, f"duplicate key '{split[0]}' (first on line {self.numbers[first[split[0]]]})")
            first[split[0]] = row

    def error(self, row: int, message: str) -> SpeakerNetError:
        return located(self.file, self.numbers[row], message)

    def column(self, k: int) -> list[str]:
        return list(map(itemgetter(k), self.fields))

    def rest(self, row: int) -> str:
        """The line of ``row`` after its key, stripped."""
        line = self.text[self.numbers[row] - 1].strip()
        return line[len(self.fields[row][0]):].strip()

    def seconds(self, k: int, what: str) -> np.ndarray:
        """Column ``k`` as finite numbers of seconds."""
        column = self.column(k)
        try:
            values = np.array(column, dtype=np.float64)
        except ValueError:
            values = np.array([_number(text) for text in column], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise self.error(bad[0], f"{what} must be a number of seconds, got {column[bad[0]]!r}")
        return values

    def first_row(self, keys: set[str], k: int = 0) -> int:
        """The first row whose column ``k`` is in ``keys``."""
        return next(row for row, split in enumerate(self.fields) if split[k] in keys)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _wav_scp(file: str, allow_pipes: bool, root: str | None) -> tuple[_Table, list[str], np.ndarray]:
    """``wav.scp``: its table, each recording's target (a path, joined to ``root``, or a command) and pipe flag."""
    table = _Table(file, None, "<recording-id> <path>' or '<recording-id> <command> |")
    targets = table.column(1)
    pipes = np.zeros(len(targets), dtype=bool)
    unusual = [row for row, split in enumerate(table.fields) if len(split) != 2 or "|" in split[1]
               or split[1] == "-" or ".ark:" in split[1]]
    for row in unusual:
        targets[row], pipes[row] = _target(table, row, allow_pipes, root)
    if root is not None:
        targets = [target if pipe else os.path.join(root, target) for target, pipe in zip(targets, pipes.tolist())]
    return table, targets, pipes


def _target(table: _Table, row: int, allow_pipes: bool, root: str | None) -> tuple[str, bool]:
    """A ``wav.scp`` location other than a plain path: a pipe command, a path with spaces, or one refused."""
    rest = table.rest(row)
    if rest.endswith("|"):
        command = rest[:-1].strip()
        if not command:
            raise table.error(row, "a pipe entry needs a command before its '|'")
        if not allow_pipes:
            raise table.error(row, f"'{rest}' is a pipe: reading it runs that shell command; pass --allow_pipes "
                                   f"(allow_pipes=True) to run wav.scp commands")
        return command, True
    if rest == "-" or rest.startswith("|"):
        raise table.error(row, f"'{rest}': standard input and output pipes are not audio locations")
    if ".ark:" in rest and not os.path.isfile(os.path.join(root or "", rest)):
        raise table.error(row, f"'{rest}': archive offsets (ark:offset) are not supported; list the audio files "
                               f"or pipe commands")
    return rest, False


def _segments(file: str, wav: _Table) -> tuple[_Table, np.ndarray, np.ndarray, np.ndarray]:
    """``segments``: its table and per segment its recording row, start and end (NaN for -1, the end)."""
    table = _Table(file, 4, "<utt-id> <recording-id> <start-s> <end-s>")
    recordings = table.column(1)
    unknown = set(recordings) - wav.index.keys()
    if unknown:
        row = table.first_row(unknown, 1)
        raise table.error(row, f"segment '{table.fields[row][0]}' names recording '{recordings[row]}', which is "
                               f"not in wav.scp")
    starts, ends = table.seconds(2, "the start"), table.seconds(3, "the end")
    bad = np.flatnonzero(starts < 0)
    if bad.size:
        raise table.error(bad[0], f"segment '{table.fields[bad[0]][0]}' starts at {starts[bad[0]]:g} s: a start "
                                  f"must not be negative")
    to_end = ends == -1
    bad = np.flatnonzero(~to_end & (ends <= starts))
    if bad.size:
        row = bad[0]
        raise table.error(row, f"segment '{table.fields[row][0]}' ends at {ends[row]:g} s, not after its start "
                               f"{starts[row]:g} s (an end of -1 means the end of the recording)")
    ends[to_end] = np.nan
    rows = np.array(list(map(wav.index.__getitem__, recordings)), dtype=np.int64)
    return table, rows, starts, ends


@dataclass
class _Speakers:
    """Who speaks each utterance, in file order, and the file and line saying so."""
    file: str
    keys: list[str]
    speakers: list[str]
    numbers: list[int]
    index: dict[str, int]       # key -> row

    def error(self, row: int, message: str) -> SpeakerNetError:
        return located(self.file, self.numbers[row], message)


def _read_utt2spk(file: str) -> _Speakers:
    table = _Table(file, 2, "<utt-id> <speaker-id>")
    return _Speakers(file, table.column(0), table.column(1), table.numbers, table.index)


def _read_spk2utt(file: str) -> _Speakers:
    table = _Table(file, None, "<speaker-id> <utt-id> [<utt-id> ...]")
    keys = [key for split in table.fields for key in split[1:]]
    speakers = [split[0] for split in table.fields for _ in split[1:]]
    numbers = [number for number, split in zip(table.numbers, table.fields) for _ in split[1:]]
    result = _Speakers(file, keys, speakers, numbers, {key: row for row, key in enumerate(keys)})
    if len(result.index) < len(keys):
        first = {}
        for row, key in enumerate(keys):
            if key in first:
                raise result.error(row, f"utterance '{key}' is listed twice (first on line {numbers[first[key]]})")
            first[key] = row
    return result


def _check_agree(utt2spk: _Speakers, spk2utt: _Speakers) -> None:
    """``spk2utt`` must be ``utt2spk`` inverted, as Kaldi's tools assume."""
    speaker_of = dict(zip(utt2spk.keys, utt2spk.speakers))
    wrong = next((row for row, (key, speaker) in enumerate(zip(spk2utt.keys, spk2utt.speakers))
                  if speaker_of.get(key) != speaker), None)
    if wrong is not None:
        key, speaker = spk2utt.keys[wrong], spk2utt.speakers[wrong]
        if key not in speaker_of:
            raise spk2utt.error(wrong, f"utterance '{key}' is not in utt2spk")
        row = utt2spk.keys.index(key)
        raise spk2utt.error(wrong, f"utterance '{key}' is under speaker '{speaker}' here but '{speaker_of[key]}' "
                                   f"in {utt2spk.file}:{utt2spk.numbers[row]}")
    if len(spk2utt.keys) < len(utt2spk.keys):
        listed = set(spk2utt.keys)
        row = next(row for row, key in enumerate(utt2spk.keys) if key not in listed)
        raise utt2spk.error(row, f"utterance '{utt2spk.keys[row]}' is missing from {spk2utt.file}")


def _speakers(directory: str, sources: _Table) -> _Speakers:
    """Speakers from ``utt2spk`` (checked against ``spk2utt`` when both exist) or ``spk2utt``; every utterance
    of ``sources`` (segments or wav.scp) must have one and no other."""
    utt2spk_file, spk2utt_file = os.path.join(directory, "utt2spk"), os.path.join(directory, "spk2utt")
    if os.path.isfile(utt2spk_file):
        assigned = _read_utt2spk(utt2spk_file)
        if os.path.isfile(spk2utt_file):
            _check_agree(assigned, _read_spk2utt(spk2utt_file))
    else:
        assigned = _read_spk2utt(spk2utt_file)
    extra = assigned.index.keys() - sources.index.keys()
    if extra:
        row = next(row for row, key in enumerate(assigned.keys) if key in extra)
        raise assigned.error(row, f"utterance '{assigned.keys[row]}' is not in {os.path.basename(sources.file)}")
    if len(assigned.keys) < len(sources.fields):
        missing = sources.index.keys() - assigned.index.keys()
        row = sources.first_row(missing)
        raise sources.error(row, f"utterance '{sources.fields[row][0]}' has no speaker in "
                                 f"{os.path.basename(assigned.file)}")
    return assigned


def _durations(file: str, keys: Mapping[str, int], what: str) -> np.ndarray:
    """``<key> <seconds>`` lines covering exactly the keys of ``keys`` (key -> row), as a column in row order."""
    table = _Table(file, 2, f"<{what}-id> <seconds>")
    unknown = table.index.keys() - keys.keys()
    if unknown:
        row = table.first_row(unknown)
        raise table.error(row, f"{what} '{table.fields[row][0]}' is not in the data directory")
    values = table.seconds(1, "a duration")
    bad = np.flatnonzero(values <= 0)
    if bad.size:
        raise table.error(bad[0], f"{what} '{table.fields[bad[0]][0]}' has duration {values[bad[0]]:g} s: "
                                  f"durations must be positive")
    if len(table.index) < len(keys):
        missing = [key for key in keys if key not in table.index]
        raise located(file, None, f"lacks {len(missing)} {what}(s): {_names(missing)}")
    column = np.empty(len(keys))
    column[np.array(list(map(keys.__getitem__, table.column(0))), dtype=np.int64)] = values
    return column


def _names(keys: list[str]) -> str:
    more = f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _check_directory(directory: str) -> None:
    if not os.path.isdir(directory):
        raise SpeakerNetError(f"{directory}: not a Kaldi data directory (no such directory)")
    if not os.listdir(directory):
        raise SpeakerNetError(f"{directory}: the Kaldi data directory is empty; expected {REQUIRED}")
    has = {name: os.path.isfile(os.path.join(directory, name)) for name in ("wav.scp", "utt2spk", "spk2utt")}
    if not has["wav.scp"] or not (has["utt2spk"] or has["spk2utt"]):
        absent = [name for name in ("wav.scp", "utt2spk or spk2utt")
                  if not any(has[part] for part in name.split(" or "))]
        raise SpeakerNetError(f"{directory}: not a Kaldi data directory: no {' and no '.join(absent)} "
                              f"(expected {REQUIRED})")


def read_kaldi_dir(path: str, allow_pipes: bool = False, root: str | None = None,
                   max_overshoot: float = 0.0) -> KaldiData:
    """Read and check the Kaldi data directory ``path``.

    ``allow_pipes`` lets ``wav.scp`` pipe entries through (see the module's note on the risk); ``root``, when
    given, is the directory relative ``wav.scp`` paths are resolved against and pipe commands run in (default:
    the current directory, as Kaldi does); ``max_overshoot`` (seconds) is how far a segment may end past its
    recording's known length.
    """
    collecting = gc.isenabled()
    gc.disable()    # millions of small lists, none in a cycle: the collector's passes over them double the time
    try:
        return _read_kaldi_dir(os.fspath(path), allow_pipes, root, max_overshoot)
    finally:
        if collecting:
            gc.enable()


def _read_kaldi_dir(directory: str, allow_pipes: bool, root: str | None, max_overshoot: float) -> KaldiData:
    _check_directory(directory)
    wav, targets, pipes = _wav_scp(os.path.join(directory, "wav.scp"), allow_pipes, root)
    segments_file = os.path.join(directory, "segments")
    if os.path.isfile(segments_file):
        sources, recording, starts, ends = _segments(segments_file, wav)
    else:
        sources, recording = wav, np.arange(len(wav.fields))
        starts = ends = np.full(len(wav.fields), np.nan)
    if not sources.fields:
        raise located(sources.file, None, "holds no utterances")
    assigned = _speakers(directory, sources)
    order = np.array(list(map(sources.index.__getitem__, assigned.keys)), dtype=np.int64)
    recording, starts, ends = recording[order], starts[order], ends[order]
    lengths, durations = _lengths_and_durations(directory, wav, assigned, recording, starts, ends)
    names = sorted(set(assigned.speakers))
    number = {name: i for i, name in enumerate(names)}
    labels = np.array(list(map(number.__getitem__, assigned.speakers)), dtype=np.int64)
    keys, recording_ids, recording_index = tuple(assigned.keys), tuple(wav.column(0)), wav.index
    if recording_ids == keys:       # no segments, files in one order: one copy of the keys serves both
        recording_ids, recording_index = keys, assigned.index
    data = KaldiData(directory, keys, tuple(names), labels, recording, starts, ends, durations,
                     np.asarray(sources.numbers, dtype=np.int64)[order], sources.file, recording_ids,
                     tuple(targets), pipes, np.asarray(wav.numbers, dtype=np.int64), lengths, root, max_overshoot,
                     assigned.index, recording_index)
    if sources is not wav:
        _check_bounds(data, lengths, max_overshoot)
    return data


def _lengths_and_durations(directory: str, wav: _Table, assigned: _Speakers, recording: np.ndarray,
                           starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recording lengths (reco2dur, or utt2dur without segments) and utterance durations: utt2dur, else the
    segment's, else what the recording's length gives; NaN where unknown."""
    reco2dur, utt2dur = os.path.join(directory, "reco2dur"), os.path.join(directory, "utt2dur")
    lengths = _durations(reco2dur, wav.index, "recording") if os.path.isfile(reco2dur) else np.full(len(wav.fields),
                                                                                                    np.nan)
    if os.path.isfile(utt2dur):
        durations = _durations(utt2dur, assigned.index, "utterance")
        whole = np.isnan(starts)
        lengths[recording[whole]] = np.where(np.isnan(lengths[recording[whole]]), durations[whole],
                                             lengths[recording[whole]])
    else:
        durations = ends - starts
        unknown = np.isnan(durations)
        durations[unknown] = lengths[recording[unknown]] - np.nan_to_num(starts[unknown])
    return lengths, durations


def _check_bounds(description: KaldiData, lengths: np.ndarray, max_overshoot: float) -> None:
    """Every segment lies inside its recording where ``lengths`` (per recording row; NaN unknown) knows it."""
    length = lengths[description.recording]
    for late, which in ((description.starts >= length, "starts"),
                        (description.ends > length + max_overshoot, "ends")):
        bad = np.flatnonzero(late)
        if bad.size:
            i = bad[0]
            at = description.starts[i] if which == "starts" else description.ends[i]
            raise located(description.defined_in, int(description.lines[i]),
                          f"segment '{description.keys[i]}' {which} at {at:g} s, past the end of recording "
                          f"'{description.recording_ids[description.recording[i]]}' ({length[i]:g} s)")


def check_segment_bounds(description: KaldiData, recording_lengths: Mapping[str, float],
                         max_overshoot: float = 0.0) -> None:
    """Every segment of a recording whose length (seconds) is in ``recording_lengths`` lies inside it.

    A segment may end up to ``max_overshoot`` seconds past its recording (it is then cut at the end); one
    that starts at or past the end is always an error. :func:`read_kaldi_dir` runs this with ``reco2dur``; a
    reader can run it with lengths it measured (:func:`probe_recording_lengths`).
    """
    lengths = np.array([recording_lengths.get(key, np.nan) for key in description.recording_ids], dtype=np.float64)
    _check_bounds(description, lengths, max_overshoot)


def probe_recording_lengths(description: KaldiData) -> dict[str, float]:
    """Length in seconds of every file recording, from its header through the one reader (any format it reads;
    pipe recordings are not run)."""
    lengths = {}
    for r, key in enumerate(description.recording_ids):
        if not description.pipes[r]:
            location = description.location(r)
            with open_audio(location.path, 0, name=str(location)) as audio:
                lengths[key] = audio.frames / SAMPLE_RATE
    return lengths


# ----------------------------------------------------------------------------------------------------------------
# Reading audio
# ----------------------------------------------------------------------------------------------------------------

SHELL_SYNTAX = set("|&;<>()$`*?[]{}~\n\\")


def _argv(command: str) -> list[str] | None:
    """The command as an argument list when it has no shell syntax, else None (it needs ``/bin/sh``)."""
    if SHELL_SYNTAX & set(command):
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    return None if not argv or "=" in argv[0] else argv


def run_pipe(location: Location) -> bytes:
    """The standard output of a pipe entry's command; a failure is an error naming the ``wav.scp`` entry."""
    argv = _argv(location.command)
    try:
        result = subprocess.run(argv if argv is not None else location.command, shell=argv is None,
                                cwd=location.cwd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as error:
        raise SpeakerNetError(f"{location}: cannot run the command ({error})") from None
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise SpeakerNetError(f"{location}: the command failed (exit status {result.returncode})"
                              + (f": {stderr}" if stderr else ""))
    if not result.stdout:
        raise SpeakerNetError(f"{location}: the command wrote no audio")
    return _streamed_wav(result.stdout)


def _streamed_wav(data: bytes) -> bytes:
    """A WAV written to a pipe with its sizes left at 0 (its writer could not seek back to fill them), with the
    sizes filled in from what arrived, as Kaldi reads such a stream to its end; other audio is returned as is."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    position = 12
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        if chunk == b"data":
            if size == 0:
                patched = bytearray(data)
                patched[4:8] = (len(data) - 8).to_bytes(4, "little")
                patched[position + 4:position + 8] = (len(data) - position - 8).to_bytes(4, "little")
                return bytes(patched)
            return data
        position += 8 + size + (size & 1)
    return data


def _checked(samples: np.ndarray, channels: int, where) -> np.ndarray:
    if channels != 1:
        raise SpeakerNetError(f"{where}: {channels} channels, expected mono")
    if not np.isfinite(samples).all():
        raise SpeakerNetError(f"{where}: non-finite (NaN/inf) samples")
    return samples


def _open(source, where) -> sf.SoundFile:
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise SpeakerNetError(f"{where}: cannot read audio ({error})") from None


def read_recording(location: Location) -> tuple[np.ndarray, int]:
    """A whole recording's samples (float32, mono, [-1, 1]) and sample rate, from its file or its command."""
    source = io.BytesIO(run_pipe(location)) if location.is_pipe else location.path
    with _open(source, location) as handle:
        samples = handle.read(dtype="float32")
        return _checked(samples, handle.channels, location), handle.samplerate


def _frame_range(start_s: float | None, end_s: float | None, rate: int, total: int, max_overshoot: float,
                 where) -> tuple[int, int]:
    """First and end sample of ``[start_s, end_s)`` in a recording of ``total`` samples (rounded to samples)."""
    if total == 0:
        raise SpeakerNetError(f"{where}: empty audio (0 samples)")
    first = round((start_s or 0.0) * rate)
    stop = total if end_s is None or end_s == -1 else round(end_s * rate)
    if first >= total or stop > total + round(max_overshoot * rate):
        raise SpeakerNetError(f"{where}: segment {start_s or 0:g} to {-1 if end_s is None else end_s:g} s lies "
                              f"outside the recording ({total / rate:g} s)")
    return first, min(stop, total)


def _window(first: int, stop: int, offset: int, frames: int, where) -> tuple[int, int]:
    if offset < 0 or (offset > 0 and first + offset >= stop):
        raise SpeakerNetError(f"{where}: offset {offset} is outside the utterance ({stop - first} samples)")
    first += offset
    return first, stop if frames < 0 else min(stop, first + frames)


def _read_range(handle: sf.SoundFile, first: int, stop: int, where) -> np.ndarray:
    """Seek to ``first`` and read only up to ``stop``."""
    handle.seek(first)
    samples = handle.read(stop - first, dtype="float32")
    if samples.shape[0] < stop - first:
        raise SpeakerNetError(f"{where}: truncated file: {samples.shape[0]} samples read where {stop - first} "
                              f"were expected")
    return _checked(samples, handle.channels, where)


def read_segment(path: str, start_s: float, end_s: float | None, max_overshoot: float = 0.0
                 ) -> tuple[np.ndarray, int]:
    """The samples of ``[start_s, end_s)`` of a file (``end_s`` None or -1: to its end) and its sample rate.

    Only those frames are read (soundfile seeks to the start). Times become samples by rounding (Kaldi's
    ``extract-segments`` truncates, which turns 0.29 s at 16 kHz into sample 4639); an end up to
    ``max_overshoot`` seconds past the file is cut at its end.
    """
    with _open(path, path) as handle:
        first, stop = _frame_range(start_s, end_s, handle.samplerate, handle.frames, max_overshoot, path)
        return _read_range(handle, first, stop, path), handle.samplerate


def read_utterance(utterance: Utterance, offset: int = 0, frames: int = -1,
                   max_overshoot: float = 0.0) -> tuple[np.ndarray, int]:
    """An utterance's samples and sample rate: all, or ``frames`` samples from ``offset`` samples into it.

    A file is read only where the window falls; a pipe's output is decoded whole, then cut.
    """
    location = utterance.location
    where = f"{location} (utterance '{utterance.key}')"
    source = io.BytesIO(run_pipe(location)) if location.is_pipe else location.path
    with _open(source, where) as handle:
        first, stop = _frame_range(utterance.start, utterance.end, handle.samplerate, handle.frames, max_overshoot,
                                   where)
        first, stop = _window(first, stop, offset, frames, where)
        return _read_range(handle, first, stop, where), handle.samplerate


# ----------------------------------------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------------------------------------

def resolve_trial_keys(trials: Iterable, description: KaldiData, list_path: str = "") -> dict[str, int]:
    """Index in ``description`` of every enroll/test key of ``trials`` (Kaldi trial keys are utterance ids);
    keys the data directory lacks are counted and the first ones named."""
    keys = list(dict.fromkeys(key for trial in trials for key in (trial.enroll, trial.test)))
    unknown = [key for key in keys if key not in description.index]
    if unknown:
        where = f"{list_path}: " if list_path else ""
        raise SpeakerNetError(f"{where}{len(unknown)} trial key(s) not in the Kaldi data directory "
                              f"{description.path}: {_names(unknown)}")
    return {key: description.index[key] for key in keys}


# ----------------------------------------------------------------------------------------------------------------
# Through the one reader: training source, evaluation audio, the checks before a run
# ----------------------------------------------------------------------------------------------------------------

class SegmentAudio:
    """Samples ``[first, stop)`` (16 kHz) of an open recording as a :class:`~spknet.data.audio.Readable`: a read
    of a window reads only the recording's samples under it. Closing it closes the recording."""

    def __init__(self, audio: AudioFile, first: int, stop: int):
        self.audio, self.first, self.frames = audio, first, stop - first

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.audio.close()
        return False

    def read(self, start: int = 0, frames: int = -1, pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
        frames = self.frames - start if frames < 0 else frames
        return self.audio.read(self.first + start, frames, pipeline)


def open_utterance(data: KaldiData, i: int, min_frames: int = HOP_SAMPLES) -> SegmentAudio:
    """Utterance ``i`` of ``data`` through the one reader (any format, rate or channel count, as 16-kHz mono):
    its recording opened (a pipe's output decoded from memory) and cut to its segment. An error names the
    ``wav.scp`` entry, or the ``segments`` line of a segment that lies outside its recording."""
    r = int(data.recording[i])
    location = data.location(r)
    where = f"{location} (utterance '{data.keys[i]}')"
    source = io.BytesIO(run_pipe(location)) if location.is_pipe else location.path
    audio = open_audio(source, 0, name=where)
    start, end = data.starts[i], data.ends[i]
    first = 0 if math.isnan(start) else round(start * SAMPLE_RATE)
    stop = audio.frames if math.isnan(end) else round(end * SAMPLE_RATE)
    if first or stop != audio.frames:
        if first >= audio.frames or stop > audio.frames + round(data.max_overshoot * SAMPLE_RATE):
            audio.close()
            raise located(data.defined_in, int(data.lines[i]),
                          f"segment '{data.keys[i]}' ({start:g} to {-1 if math.isnan(end) else end:g} s) lies "
                          f"outside recording '{data.recording_ids[r]}' ({audio.frames / SAMPLE_RATE:g} s, "
                          f"{location})")
        stop = min(stop, audio.frames)
    if stop - first < min_frames:
        audio.close()
        raise SpeakerNetError(f"{where}: {stop - first} samples at 16 kHz, shorter than {min_frames}")
    return SegmentAudio(audio, first, stop)


class KaldiSource(UtteranceSource):
    """The utterances of a Kaldi data directory as training data: its speakers (sorted names) are the classes,
    each utterance (a whole recording or a segment of one) is read by window through the one reader."""

    def __init__(self, data: KaldiData):
        self.data, self.labels, self.speakers = data, data.labels, list(data.speakers)

    def name(self, index: int) -> str:
        return self.data.keys[index]

    def open(self, index: int) -> SegmentAudio:
        return open_utterance(self.data, index)


class KaldiAudio:
    """The utterances of a Kaldi data directory as evaluation audio (see
    :class:`~spknet.data.sources.AudioFolder`): Kaldi trial keys and cohort names are its utterance ids."""

    def __init__(self, data: KaldiData):
        self.data = data

    def describe(self, name: str) -> str:
        return f"utterance '{name}' of {self.data.path}"

    def missing(self, names) -> list[str]:
        return [name for name in names if name not in self.data.index]

    def open(self, name: str, min_frames: int = HOP_SAMPLES) -> SegmentAudio:
        return open_utterance(self.data, self.data.index[name], min_frames)


def load_kaldi_dir(path: str, allow_pipes: bool = False) -> KaldiData:
    """A data directory checked as a run needs it before anything is written: parsed (:func:`read_kaldi_dir`),
    every file recording present, and every segment inside its recording (lengths from ``reco2dur``, else from
    the recordings' headers). Relative ``wav.scp`` paths follow the current directory, as in Kaldi."""
    data = read_kaldi_dir(path, allow_pipes)
    wav_scp = os.path.join(data.path, "wav.scp")
    for r, target in enumerate(data.targets):
        if not data.pipes[r] and not os.path.isfile(target):
            raise located(wav_scp, int(data.recording_lines[r]),
                          f"recording '{data.recording_ids[r]}': no such audio file {target}")
    if data.defined_in != wav_scp and not os.path.isfile(os.path.join(data.path, "reco2dur")):
        check_segment_bounds(data, probe_recording_lengths(data), data.max_overshoot)
    return data


IDENTITY_FILES = ("wav.scp", "utt2spk", "spk2utt", "segments")


def data_dir_digest(path: str) -> str:
    """SHA-256 of what a data directory says (``wav.scp``, ``utt2spk``, ``spk2utt``, ``segments``, those it
    has): a run's identity records its training data by content, as it records a list."""
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            digest.update(name.encode() + b"\0")
            with open(file, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()
