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

import io
import math
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import soundfile as sf

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


@dataclass(frozen=True, eq=False)
class KaldiData:
    """A parsed Kaldi data directory, usable as an utterance source.

    ``labels[i]`` is the index in ``speakers`` (sorted names) of utterance ``i``'s speaker; ``recordings`` maps
    each recording id of ``wav.scp`` to its location, ``recording_lengths`` the ones ``reco2dur`` (or, without
    segments, ``utt2dur``) gives to their length in seconds. ``max_overshoot`` is how far (seconds) a segment
    may end past its recording and be cut at the end, as Kaldi's ``extract-segments`` allows.
    """
    path: str
    utterances: tuple[Utterance, ...]
    speakers: tuple[str, ...]
    labels: np.ndarray
    recordings: Mapping[str, Location]
    recording_lengths: Mapping[str, float]
    max_overshoot: float = 0.0
    index: Mapping[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.labels.setflags(write=False)
        object.__setattr__(self, "index", MappingProxyType({u.key: i for i, u in enumerate(self.utterances)}))

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def keys(self) -> list[str]:
        return [utterance.key for utterance in self.utterances]

    def display_name(self, i: int) -> str:
        """How utterance ``i`` is named in logs and score files: its key."""
        return self.utterances[i].key

    def read(self, i: int, offset: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
        """Samples (float32, [-1, 1]) and sample rate of utterance ``i``: all of it, or ``frames`` samples from
        ``offset`` samples into it (fewer where it ends first). A file is read only where the window falls."""
        return read_utterance(self.utterances[i], offset, frames, self.max_overshoot)


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """One non-blank line of a data-directory file: its fields and where it is."""
    file: str
    line: int
    fields: tuple[str, ...]
    rest: str           # the line after its first field, stripped (wav.scp's location)

    def error(self, message: str) -> SpeakerNetError:
        return located(self.file, self.line, message)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _read_entries(path: str) -> list[_Entry]:
    """The non-blank lines of ``path`` split into fields."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise located(path, None, f"cannot read ({error})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if fields:
            rest = line.strip()[len(fields[0]):].strip()
            entries.append(_Entry(path, number, tuple(fields), rest))
    return entries


def _keyed(entries: list[_Entry], fields: int | None, form: str) -> dict[str, _Entry]:
    """Entries by their first field; ``fields`` (None: at least 2) is how many each line must have."""
    keyed = {}
    for entry in entries:
        count = len(entry.fields)
        if (count != fields) if fields is not None else (count < 2):
            raise entry.error(f"expected '{form}', got {count} field(s): {' '.join(entry.fields)!r}")
        first = keyed.get(entry.fields[0])
        if first is not None:
            raise entry.error(f"duplicate key '{entry.fields[0]}' (first on line {first.line})")
        keyed[entry.fields[0]] = entry
    return keyed


def _seconds(entry: _Entry, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise entry.error(f"{what} must be a number of seconds, got {text!r}")
    return value


def _location(entry: _Entry, allow_pipes: bool, root: str | None) -> Location:
    """A ``wav.scp`` entry's location: a path (joined to ``root`` when relative) or a pipe command."""
    rest = entry.rest
    if not rest:
        raise entry.error("expected '<recording-id> <path>' or '<recording-id> <command> |', got no location")
    if rest.endswith("|"):
        command = rest[:-1].strip()
        if not command:
            raise entry.error("a pipe entry needs a command before its '|'")
        if not allow_pipes:
            raise entry.error(f"'{rest}' is a pipe: reading it runs that shell command; pass --allow_pipes "
                              f"(allow_pipes=True) to run wav.scp commands")
        return Location(command=command, cwd=root, origin=entry.where)
    if rest == "-" or rest.startswith("|"):
        raise entry.error(f"'{rest}': standard input and output pipes are not audio locations")
    path = os.path.join(root, rest) if root is not None else rest
    if ".ark:" in rest and not os.path.isfile(path):
        raise entry.error(f"'{rest}': archive offsets (ark:offset) are not supported; list the audio files or "
                          f"pipe commands")
    return Location(path=path, origin=entry.where)


def _recordings(file: str, allow_pipes: bool, root: str | None) -> dict[str, tuple[_Entry, Location]]:
    entries = _keyed(_read_entries(file), None, "<recording-id> <path>' or '<recording-id> <command> |")
    return {key: (entry, _location(entry, allow_pipes, root)) for key, entry in entries.items()}


@dataclass(frozen=True)
class _Segment:
    entry: _Entry
    recording: str
    start: float
    end: float | None   # None: to the end of the recording (-1 in the file)


def _segments(file: str, recordings: Mapping) -> dict[str, _Segment]:
    segments = {}
    for key, entry in _keyed(_read_entries(file), 4, "<utt-id> <recording-id> <start-s> <end-s>").items():
        recording = entry.fields[1]
        start = _seconds(entry, entry.fields[2], "the start")
        end = _seconds(entry, entry.fields[3], "the end")
        if recording not in recordings:
            raise entry.error(f"segment '{key}' names recording '{recording}', which is not in wav.scp")
        if start < 0:
            raise entry.error(f"segment '{key}' starts at {start:g} s: a start must not be negative")
        if end == -1:
            end = None
        elif end <= start:
            raise entry.error(f"segment '{key}' ends at {end:g} s, not after its start {start:g} s "
                              f"(an end of -1 means the end of the recording)")
        segments[key] = _Segment(entry, recording, start, end)
    return segments


def _speakers(directory: str, sources: Mapping[str, _Entry], source_name: str) -> dict[str, tuple[str, _Entry]]:
    """Speaker and defining entry per utterance, from ``utt2spk`` (checked against ``spk2utt`` when both exist)
    or ``spk2utt``; every utterance of ``sources`` (segments or wav.scp) must have one and no other."""
    utt2spk_file, spk2utt_file = os.path.join(directory, "utt2spk"), os.path.join(directory, "spk2utt")
    from_spk2utt = _invert_spk2utt(spk2utt_file) if os.path.isfile(spk2utt_file) else None
    if os.path.isfile(utt2spk_file):
        speakers = {key: (entry.fields[1], entry)
                    for key, entry in _keyed(_read_entries(utt2spk_file), 2, "<utt-id> <speaker-id>").items()}
        if from_spk2utt is not None:
            _check_agree(speakers, from_spk2utt, spk2utt_file)
    else:
        speakers = from_spk2utt
    for key, (_, entry) in speakers.items():
        if key not in sources:
            raise entry.error(f"utterance '{key}' is not in {source_name}")
    for key, entry in sources.items():
        if key not in speakers:
            named = os.path.basename(utt2spk_file if os.path.isfile(utt2spk_file) else spk2utt_file)
            raise entry.error(f"utterance '{key}' has no speaker in {named}")
    return speakers


def _invert_spk2utt(file: str) -> dict[str, tuple[str, _Entry]]:
    speakers = {}
    for speaker, entry in _keyed(_read_entries(file), None, "<speaker-id> <utt-id> [<utt-id> ...]").items():
        for key in entry.fields[1:]:
            if key in speakers:
                raise entry.error(f"utterance '{key}' is listed twice (first on line {speakers[key][1].line})")
            speakers[key] = (speaker, entry)
    return speakers


def _check_agree(utt2spk: Mapping, spk2utt: Mapping, spk2utt_file: str) -> None:
    """``spk2utt`` must be ``utt2spk`` inverted, as Kaldi's tools assume."""
    for key, (speaker, entry) in spk2utt.items():
        if key not in utt2spk:
            raise entry.error(f"utterance '{key}' is not in utt2spk")
        if utt2spk[key][0] != speaker:
            raise entry.error(f"utterance '{key}' is under speaker '{speaker}' here but '{utt2spk[key][0]}' in "
                              f"{utt2spk[key][1].where}")
    for key, (_, entry) in utt2spk.items():
        if key not in spk2utt:
            raise entry.error(f"utterance '{key}' is missing from {spk2utt_file}")


def _durations(file: str, keys: Mapping, what: str) -> dict[str, float]:
    """``<key> <seconds>`` lines covering exactly the keys of ``keys`` (``what``: utterance or recording)."""
    durations = {}
    for key, entry in _keyed(_read_entries(file), 2, f"<{what}-id> <seconds>").items():
        if key not in keys:
            raise entry.error(f"{what} '{key}' is not in the data directory")
        durations[key] = _seconds(entry, entry.fields[1], "a duration")
        if durations[key] <= 0:
            raise entry.error(f"{what} '{key}' has duration {durations[key]:g} s: durations must be positive")
    missing = [key for key in keys if key not in durations]
    if missing:
        raise located(file, None, f"lacks {len(missing)} {what}(s): {_names(missing)}")
    return durations


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
    given, is the directory relative ``wav.scp`` paths are resolved against (default: the current directory, as
    Kaldi does); ``max_overshoot`` (seconds) is how far a segment may end past its recording's known length.
    """
    directory = os.fspath(path)
    _check_directory(directory)
    file = os.path.join(directory, "wav.scp")
    recordings = _recordings(file, allow_pipes, root)
    segments_file = os.path.join(directory, "segments")
    segments = _segments(segments_file, recordings) if os.path.isfile(segments_file) else None
    sources = ({key: segment.entry for key, segment in segments.items()} if segments is not None
               else {key: entry for key, (entry, _) in recordings.items()})
    if not sources:
        raise located(segments_file if segments is not None else file, None, "holds no utterances")
    speakers = _speakers(directory, sources, os.path.basename(segments_file if segments is not None else file))
    reco2dur_file = os.path.join(directory, "reco2dur")
    lengths = _durations(reco2dur_file, recordings, "recording") if os.path.isfile(reco2dur_file) else {}
    utt2dur_file = os.path.join(directory, "utt2dur")
    durations = _durations(utt2dur_file, speakers, "utterance") if os.path.isfile(utt2dur_file) else {}
    if segments is None:
        lengths = {**durations, **lengths}
    utterances = tuple(_utterance(key, speaker, recordings, segments, durations, lengths)
                       for key, (speaker, _) in speakers.items())
    names = sorted({utterance.speaker for utterance in utterances})
    number = {name: i for i, name in enumerate(names)}
    labels = np.array([number[utterance.speaker] for utterance in utterances], dtype=np.int64)
    data = KaldiData(directory, utterances, tuple(names), labels,
                     MappingProxyType({key: location for key, (_, location) in recordings.items()}),
                     MappingProxyType(lengths), max_overshoot)
    if segments is not None:
        check_segment_bounds(data, lengths, max_overshoot)
    return data


def _utterance(key: str, speaker: str, recordings: Mapping, segments: Mapping | None, durations: Mapping,
               lengths: Mapping) -> Utterance:
    if segments is None:
        entry, location = recordings[key]
        return Utterance(key, speaker, key, location, duration=durations.get(key, lengths.get(key)),
                         file=entry.file, line=entry.line)
    segment = segments[key]
    duration = durations.get(key)
    if duration is None and segment.end is not None:
        duration = segment.end - segment.start
    elif duration is None and segment.recording in lengths:
        duration = lengths[segment.recording] - segment.start
    location = recordings[segment.recording][1]
    return Utterance(key, speaker, segment.recording, location, segment.start, segment.end, duration,
                     segment.entry.file, segment.entry.line)


def check_segment_bounds(description: KaldiData, recording_lengths: Mapping[str, float],
                         max_overshoot: float = 0.0) -> None:
    """Every segment of a recording whose length (seconds) is in ``recording_lengths`` lies inside it.

    A segment may end up to ``max_overshoot`` seconds past its recording (it is then cut at the end); one
    that starts at or past the end is always an error. :func:`read_kaldi_dir` runs this with ``reco2dur``; a
    reader can run it with lengths it measured (:func:`probe_recording_lengths`).
    """
    for utterance in description.utterances:
        length = recording_lengths.get(utterance.recording)
        if utterance.start is None or length is None:
            continue
        file, line = utterance.file, utterance.line
        if utterance.start >= length:
            raise located(file, line, f"segment '{utterance.key}' starts at {utterance.start:g} s, past "
                                               f"the end of recording '{utterance.recording}' ({length:g} s)")
        if utterance.end is not None and utterance.end > length + max_overshoot:
            raise located(file, line, f"segment '{utterance.key}' ends at {utterance.end:g} s, past the "
                                               f"end of recording '{utterance.recording}' ({length:g} s)")


def probe_recording_lengths(description: KaldiData) -> dict[str, float]:
    """Length in seconds of every file recording, from its header (pipe recordings are not run)."""
    lengths = {}
    for key, location in description.recordings.items():
        if not location.is_pipe:
            try:
                info = sf.info(location.path)
            except (sf.LibsndfileError, RuntimeError, OSError) as error:
                raise SpeakerNetError(f"{location}: cannot read audio ({error})") from None
            lengths[key] = info.frames / info.samplerate
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
    return result.stdout


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

    Only those frames are read (soundfile seeks to the start). Times become samples by rounding; an end up to
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
