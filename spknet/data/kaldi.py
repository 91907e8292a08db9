"""Kaldi data directories: parse and check ``wav.scp``, ``utt2spk``/``spk2utt``, ``segments``, ``utt2dur`` and
``reco2dur``, and open an utterance (a whole file, a segment of it, or a pipe command's output) through the one
audio reader (:func:`~spknet.data.audio.open_audio`: any rate or channel count, as 16-kHz mono).

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

Segment ends. A segment may end past its recording by less than ``max_overshoot`` seconds (0.5 by default, as
Kaldi's ``extract-segments --max-overshoot``): such an end is cut at the recording's end, since corpus tools write
segment times with two or three decimals, which round past the last sample. One that ends further, or starts at
or past the end, is an error naming its ``segments`` line. :func:`_check_bounds` is the one check: at parse time
(``reco2dur``), before a run (the recordings' headers) and when a recording is opened (a pipe's output).

Not supported: ``ark:offset`` entries and standard input (``-``).
"""

import gc
import io
import math
import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from operator import itemgetter
from types import MappingProxyType

import numpy as np

from spknet.constants import SAMPLE_RATE
from spknet.data.audio import HOP_SAMPLES, ORIGINAL, AudioFile, AudioPipeline, open_audio
from spknet.data.sources import UtteranceSource
from spknet.errors import SpeakerNetError, located
from spknet.files import files_digest, shortened
from spknet.logs import log

REQUIRED = "wav.scp and utt2spk (or spk2utt)"
SHOWN = 5           # unknown keys named in an error before "... and N more"
MAX_OVERSHOOT = 0.5     # seconds: Kaldi's extract-segments --max-overshoot default


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


def _kaldi_data(values: dict) -> "KaldiData":
    return KaldiData(**values)


@dataclass(frozen=True, eq=False)
class KaldiData:
    """A parsed Kaldi data directory (:func:`open_utterance` opens one of its utterances).

    It is held in columns (a million utterances parse in seconds and take little memory): per utterance ``i``
    its key, ``labels[i]`` (index in ``speakers``, the sorted speaker names), ``recording[i]`` (its row in the
    recording columns), ``starts``/``ends`` (seconds; NaN: the whole recording / to the recording's end),
    ``durations`` (NaN: unknown) and the line of ``defined_in`` (the segments file, or wav.scp without one) that
    defines it; per recording (``wav.scp`` order) its id, its target (a path, joined to ``root`` when that was
    given, or a pipe command), whether it is a pipe, its ``wav.scp`` line and its length in seconds from
    ``reco2dur`` (or, without segments, ``utt2dur``; NaN: unknown). A segment ending past its recording by less
    than ``max_overshoot`` seconds is cut at the recording's end, as Kaldi's ``extract-segments`` does.
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
    max_overshoot: float = MAX_OVERSHOOT
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

    def location(self, r: int) -> Location:
        """Where recording row ``r`` is."""
        origin = f"{os.path.join(self.path, 'wav.scp')}:{self.recording_lines[r]}"
        if self.pipes[r]:
            return Location(command=self.targets[r], cwd=self.root, origin=origin)
        return Location(path=self.targets[r], origin=origin)


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
        raise located(file, None, f"lacks {len(missing)} {what}(s): {shortened(missing, SHOWN)}")
    column = np.empty(len(keys))
    column[np.array(list(map(keys.__getitem__, table.column(0))), dtype=np.int64)] = values
    return column


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
                   max_overshoot: float = MAX_OVERSHOOT) -> KaldiData:
    """Read and check the Kaldi data directory ``path``.

    ``allow_pipes`` lets ``wav.scp`` pipe entries through (see the module's note on the risk); ``root``, when
    given, is the directory relative ``wav.scp`` paths are resolved against and pipe commands run in (default:
    the current directory, as Kaldi does); a segment may end past its recording's length (from ``reco2dur``)
    by less than ``max_overshoot`` seconds (see the module's note on segment ends).
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
        _check_segments(data, lengths)
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


def _check_bounds(data: KaldiData, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The one check of segment bounds: utterances ``rows`` of ``data``, whose recordings are ``lengths`` seconds
    long (NaN: unknown, unchecked), start inside their recording and end past it by less than
    ``data.max_overshoot`` (Kaldi's rule: at ``max_overshoot`` or more the segment is refused). Returns which of
    ``rows`` end past their recording (within the allowance): they are cut at its end. An error names the first
    offending ``segments`` line."""
    starts, ends = data.starts[rows], data.ends[rows]
    with np.errstate(invalid="ignore"):
        early = starts >= lengths
        over = ends - lengths
        late = (over > 0) & (over >= data.max_overshoot)
    bad = np.flatnonzero(early | late)
    if bad.size:
        k = bad[np.argmin(data.lines[rows[bad]])]
        i, length = int(rows[k]), lengths[k]
        recording = f"recording '{data.recording_ids[data.recording[i]]}' ({length:g} s)"
        if early[k]:
            message = f"segment '{data.keys[i]}' starts at {starts[k]:g} s, past the end of {recording}"
        else:
            message = (f"segment '{data.keys[i]}' ends at {ends[k]:g} s, past the end of {recording} by "
                       f"{over[k]:.4g} s, not less than --max_overshoot {data.max_overshoot:g} s")
        raise located(data.defined_in, int(data.lines[i]), message)
    return over > 0


def _check_segments(data: KaldiData, lengths: np.ndarray) -> None:
    """Every segment of ``data`` against its recording's length (``lengths`` per recording row, NaN unknown),
    with one INFO line counting the segments cut at their recording's end."""
    cut = np.flatnonzero(_check_bounds(data, np.arange(len(data)), lengths[data.recording]))
    if cut.size:
        over = data.ends[cut] - lengths[data.recording[cut]]
        log.info(f"{data.defined_in}: {cut.size} segment(s) end past their recording, by {over.max():.4g} s at "
                 f"most (less than --max_overshoot {data.max_overshoot:g} s): cut at the recording's end")


def _probe_lengths(data: KaldiData) -> np.ndarray:
    """Length in seconds of every file recording (per recording row), from its header through the one reader
    (any format it reads); NaN for pipe recordings, which are not run."""
    lengths = np.full(len(data.recording_ids), np.nan)
    for r in np.flatnonzero(~data.pipes):
        location = data.location(r)
        with open_audio(location.path, 0, name=str(location)) as audio:
            lengths[r] = audio.frames / SAMPLE_RATE
    return lengths


# ----------------------------------------------------------------------------------------------------------------
# Pipe recordings
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
    ``wav.scp`` entry, or the ``segments`` line of a segment that lies outside its recording; a segment ending
    past its recording by less than ``data.max_overshoot`` is cut at the recording's end."""
    location = data.location(int(data.recording[i]))
    where = f"{location} (utterance '{data.keys[i]}')"
    source = io.BytesIO(run_pipe(location)) if location.is_pipe else location.path
    audio = open_audio(source, 0, name=where)
    start, end = data.starts[i], data.ends[i]
    if not math.isnan(start):       # a segment: checked against the length opened (a pipe's is known only now)
        try:
            _check_bounds(data, np.array([i]), np.array([audio.frames / SAMPLE_RATE]))
        except SpeakerNetError:
            audio.close()
            raise
    first = 0 if math.isnan(start) else round(start * SAMPLE_RATE)
    stop = audio.frames if math.isnan(end) else min(round(end * SAMPLE_RATE), audio.frames)
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


def load_kaldi_dir(path: str, allow_pipes: bool = False, max_overshoot: float = MAX_OVERSHOOT) -> KaldiData:
    """A data directory checked as a run needs it before anything is written: parsed (:func:`read_kaldi_dir`),
    every file recording present, and every segment inside its recording (lengths from ``reco2dur``, else from
    the recordings' headers; ends past it by less than ``max_overshoot`` seconds are cut there). Relative
    ``wav.scp`` paths follow the current directory, as in Kaldi."""
    data = read_kaldi_dir(path, allow_pipes, max_overshoot=max_overshoot)
    wav_scp = os.path.join(data.path, "wav.scp")
    for r, target in enumerate(data.targets):
        if not data.pipes[r] and not os.path.isfile(target):
            raise located(wav_scp, int(data.recording_lines[r]),
                          f"recording '{data.recording_ids[r]}': no such audio file {target}")
    if data.defined_in != wav_scp and not os.path.isfile(os.path.join(data.path, "reco2dur")):
        _check_segments(data, _probe_lengths(data))
    return data


IDENTITY_FILES = ("wav.scp", "utt2spk", "spk2utt", "segments")


def data_dir_digest(path: str) -> str:
    """SHA-256 of what a data directory says (``wav.scp``, ``utt2spk``, ``spk2utt``, ``segments``, those it
    has, each behind its name): a run's identity records its training data by content, as it records a list."""
    files = (os.path.join(path, name) for name in IDENTITY_FILES)
    return files_digest([file for file in files if os.path.isfile(file)], named=True)
