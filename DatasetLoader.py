"""Data: audio loading and cropping, training lists, the training dataset and its batch sampler, the test dataset."""

import math
import os
import signal
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import Dataset

from core import SAMPLE_RATE
from core.errors import SpeakerNetError, located

NUM_EVAL = 10


def max_audio_samples(max_frames: int) -> int:
    """Samples in a crop of ``max_frames`` 10-ms frames (25-ms window: 240 extra samples)."""
    return max_frames * 160 + 240


# ----------------------------------------------------------------------------------------------------------------
# Lists
# ----------------------------------------------------------------------------------------------------------------

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


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process, which finishes its step and saves first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ----------------------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------------------

def open_audio(filename: str, min_frames: int = 160, mono: bool = True) -> sf.SoundFile:
    """Open a 16-kHz file, or raise an error naming it: unreadable, wrong rate, not mono, or too short."""
    try:
        handle = sf.SoundFile(filename)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise SpeakerNetError(f"{filename}: cannot read audio ({error})") from None
    problem = None
    if handle.samplerate != SAMPLE_RATE:
        problem = f"sample rate {handle.samplerate} Hz, expected {SAMPLE_RATE} Hz"
    elif mono and handle.channels != 1:
        problem = f"{handle.channels} channels, expected mono"
    elif handle.frames < min_frames:
        problem = (f"{handle.frames} samples, shorter than one 10-ms hop" if min_frames == 160
                   else f"{handle.frames} samples: empty audio file")
    if problem:
        handle.close()
        raise SpeakerNetError(f"{filename}: {problem}")
    return handle


AUDIO_SCALES = ("int16", "float")
PADS = ("zero", "wrap")
INT16_SCALE = 32768.0


@dataclass(frozen=True)
class AudioPipeline:
    """How samples are read and a file shorter than a crop is padded.

    ``scale``: ``int16`` (the original: samples in the int16 range) or ``float`` (voxceleb_trainer: [-1, 1]);
    ``pad``: ``zero`` (the original: zeros on both sides) or ``wrap`` (voxceleb_trainer: the file repeated at its
    end).
    """
    scale: str = "int16"
    pad: str = "zero"

    def read(self, handle: sf.SoundFile, frames: int = -1) -> np.ndarray:
        """``frames`` samples (all that is left with -1) as float32 in this pipeline's scale."""
        expected = handle.frames - handle.tell() if frames < 0 else frames
        if handle.subtype == "PCM_16":      # exact values, without libsndfile's float conversion (~2x faster)
            audio = handle.read(frames, dtype="int16").astype(np.float32)
            if self.scale == "float":
                audio /= INT16_SCALE
        else:
            audio = handle.read(frames, dtype="float32")
            if not np.isfinite(audio).all():
                raise SpeakerNetError(f"{handle.name}: non-finite (NaN/inf) samples")
            if self.scale == "int16":
                audio *= INT16_SCALE
        if audio.shape[0] < expected:
            raise SpeakerNetError(f"{handle.name}: truncated file: the header announces {handle.frames} samples, "
                                  f"{audio.shape[0]} could be read where {expected} were expected")
        return audio

    def pad_short(self, audio: np.ndarray, max_audio: int) -> np.ndarray:
        """A file no longer than one crop, padded to more than ``max_audio`` samples."""
        if self.pad == "wrap":
            return np.pad(audio, (0, max_audio - audio.shape[0] + 1), "wrap")
        shortage = (max_audio - audio.shape[0] + 1) // 2
        return np.pad(audio, (shortage, shortage))

    def to_int16_scale(self, wave: np.ndarray) -> np.ndarray:
        return wave if self.scale == "int16" else wave * INT16_SCALE

    def from_int16_scale(self, wave: np.ndarray) -> np.ndarray:
        return wave if self.scale == "int16" else wave / INT16_SCALE


ORIGINAL = AudioPipeline()


def load_wav(filename: str, max_frames: int, evalmode: bool = True, num_eval: int = NUM_EVAL,
             rng: np.random.Generator | None = None, pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
    """The original's ``loadWAV``: ``(crops, samples)`` float32 (in the int16 range with the original pipeline).

    Training mode reads only the bytes of its one random crop (seek + partial read); evaluation reads the file
    once and takes ``num_eval`` evenly spaced crops, or the whole file when ``max_frames == 0``.
    """
    max_audio = max_audio_samples(max_frames)
    with open_audio(filename) as handle:
        total = handle.frames
        if not evalmode and total > max_audio:
            start = int((rng or np.random.default_rng()).random() * (total - max_audio))
            handle.seek(start)
            return pipeline.read(handle, max_audio)[None, :]
        audio = pipeline.read(handle)
    if evalmode:
        return eval_crops(audio, max_frames, num_eval, pipeline)
    if audio.shape[0] <= max_audio:
        audio = pipeline.pad_short(audio, max_audio)
    start = int((rng or np.random.default_rng()).random() * (audio.shape[0] - max_audio))
    return audio[None, start:start + max_audio]


# Samples read beyond each end of a speed-perturbed crop: the resampling filter (6 zero crossings of its sinc)
# sees real signal there instead of the zeros it pads with, and the margin is cut off after resampling.
SPEED_MARGIN = 32


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """``audio`` played ``factor`` times faster: ``len / factor`` samples, every frequency times ``factor``.

    This is sox's ``speed`` effect (tempo and pitch together, as Kaldi's and WeSpeaker's speed perturbation):
    the samples are read as if recorded at ``16000 * factor`` Hz and resampled to 16 kHz with
    ``torchaudio.functional.resample`` (band-limited sinc interpolation; it reduces the rates by their GCD, so
    0.9 and 1.1 are 9/10 and 11/10 polyphase filters). ``torchaudio.functional.speed`` computes the same
    resampling but truncates ``16000 * factor`` instead of rounding it.
    """
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    changed = torchaudio.functional.resample(wave, orig_freq=round(SAMPLE_RATE * factor), new_freq=SAMPLE_RATE)
    return changed.numpy()


def load_train_crop(filename: str, max_frames: int, rng: np.random.Generator, pipeline: AudioPipeline = ORIGINAL,
                    speed: float = 1.0) -> np.ndarray:
    """One random ``(1, samples)`` training crop of ``max_frames`` frames, of the file played at ``speed``.

    At 1.0 it is :func:`load_wav`'s crop. Otherwise the crop is cut after the speed change, so it is still
    ``max_frames`` long: a long file is read only where the crop falls (``max_audio * speed`` samples plus
    :data:`SPEED_MARGIN` each side, then resampled and trimmed); a file too short for that is changed whole and
    then padded (zeros or wrapped) and cropped like a short file at 1.0.
    """
    if speed == 1.0:
        return load_wav(filename, max_frames, evalmode=False, rng=rng, pipeline=pipeline)
    max_audio = max_audio_samples(max_frames)
    needed = math.ceil(max_audio * speed) + 2 * SPEED_MARGIN
    with open_audio(filename) as handle:
        total = handle.frames
        if total > needed:
            handle.seek(int(rng.random() * (total - needed)))
            changed = change_speed(pipeline.read(handle, needed), speed)
            offset = round(SPEED_MARGIN / speed)
            return changed[None, offset:offset + max_audio]
        audio = pipeline.read(handle)
    changed = change_speed(audio, speed)
    if changed.shape[0] <= max_audio:
        changed = pipeline.pad_short(changed, max_audio)
    start = int(rng.random() * (changed.shape[0] - max_audio))
    return changed[None, start:start + max_audio]


def eval_crops(audio: np.ndarray, max_frames: int, num_eval: int = NUM_EVAL,
               pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
    """``(num_eval, samples)`` evenly spaced crops of a file's samples (padded when short), or ``(1, all)`` for
    ``max_frames == 0``."""
    if max_frames == 0:
        return audio[None, :]
    max_audio = max_audio_samples(max_frames)
    if audio.shape[0] <= max_audio:
        audio = pipeline.pad_short(audio, max_audio)
    starts = np.linspace(0, audio.shape[0] - max_audio, num=num_eval).astype(np.int64)
    return np.stack([audio[start:start + max_audio] for start in starts])


# ----------------------------------------------------------------------------------------------------------------
# Training data
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """Utterances of one speaker that go through the loss together; ``crop_seed`` fixes their random crops."""
    label: int
    files: tuple[int, ...]
    crop_seed: int


class TrainDataset(Dataset):
    """Maps a :class:`Group` to ``(waves (len(group), samples), label)``; each file is played at its entry's speed
    (:func:`speed_perturbed`) before it is cropped, and augmented after."""

    def __init__(self, train_list: TrainList, max_frames: int, augmenter=None, pipeline: AudioPipeline = ORIGINAL):
        self.files = train_list.files
        self.speeds = train_list.speeds
        self.max_frames = max_frames
        self.augmenter = augmenter
        self.pipeline = pipeline

    def __getitem__(self, group: Group):
        rng = np.random.default_rng(group.crop_seed)
        waves = np.concatenate([load_train_crop(self.files[i], self.max_frames, rng, self.pipeline,
                                                1.0 if self.speeds is None else float(self.speeds[i]))
                                for i in group.files])
        if self.augmenter is not None:       # the augmenter mixes in the int16 range
            waves = np.stack([self.pipeline.from_int16_scale(self.augmenter(self.pipeline.to_int16_scale(wave), rng))
                              for wave in waves])
        return waves, group.label

    def __len__(self):
        return len(self.files)


def collate_groups(items):
    """Concatenate groups into a flat ``(utterances, samples)`` batch with per-utterance labels."""
    waves = torch.from_numpy(np.concatenate([waves for waves, _ in items]))
    labels = torch.tensor([label for waves, label in items for _ in range(len(waves))], dtype=torch.long)
    sizes = torch.tensor([len(waves) for waves, _ in items], dtype=torch.long)
    return waves, labels, sizes


class GroupBatchSampler(torch.utils.data.Sampler):
    """Batches of ``batch_size`` groups with distinct speakers.

    Each epoch every speaker draws a group size from ``group_sizes`` ((2,) balanced, (2, 3) the original's
    imbalanced sampler, (1,) classification), its utterances (at most ``max_seg_per_spk``) are shuffled and cut
    into groups of that size, and the shuffled groups are packed into batches. A group whose speaker is already in
    the batch being filled waits for the next batch (the original dropped it). The order depends only on
    ``seed`` and the epoch, so a resumed run sees the same batches. Under torch.distributed the batches are
    global (``batch_size`` groups per rank, distinct speakers across all ranks) and each rank takes its slice:
    the shards are disjoint and equally long, and k ranks with ``batch_size`` B see exactly the batches of one
    process with ``batch_size`` k*B.

    ``copies`` > 1 takes a :func:`speed_perturbed` list (``copies`` blocks of the recorded list, block k's labels
    shifted by k * speakers) and keeps the epoch as long as without it, as WeSpeaker does: each epoch, every
    speaker's utterances (at most ``max_seg_per_spk``, counted over all speeds) are shuffled and dealt in turn to
    its ``copies`` classes, from a random first one, so each utterance is heard once, at one speed, and the
    classes of a speaker get equal shares (within one). Each class then draws its group size and is cut into
    groups as a speaker is.
    """

    def __init__(self, labels: np.ndarray, group_sizes: tuple[int, ...], batch_size: int, max_seg_per_spk: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, copies: int = 1):
        self.group_sizes = tuple(group_sizes)
        self.batch_size = batch_size
        self.max_seg_per_spk = max_seg_per_spk
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.copies = copies
        self.recorded = len(labels) // copies          # entries of one block
        self.speakers = int(labels.max()) // copies + 1 if copies > 1 else 0
        if copies > 1 and not np.array_equal(
                labels, np.concatenate([labels[:self.recorded] + k * self.speakers for k in range(copies)])):
            raise ValueError(f"labels are not {copies} speed blocks of one list (see speed_perturbed)")
        recorded = labels[:self.recorded]
        order = np.argsort(recorded, kind="stable")
        boundaries = np.flatnonzero(np.diff(recorded[order])) + 1
        self.files_by_speaker = [(int(recorded[chunk[0]]), chunk) for chunk in np.split(order, boundaries)]
        self._check_fillable()
        self.epoch = 0
        self._batches = None
        self.first_batch = 0

    def _usable_classes(self, files: int, needed: int) -> int:
        """Classes of one speaker with ``needed`` utterances in every epoch (its share of the dealt ones)."""
        kept = min(files, self.max_seg_per_spk)
        share, extra = divmod(kept, self.copies)
        return self.copies if share >= needed else extra if share + 1 >= needed else 0

    def _check_fillable(self):
        needed = min(self.group_sizes)
        usable = sum(self._usable_classes(len(files), needed) for _, files in self.files_by_speaker)
        if usable < self.batch_size * self.world_size:
            raise SpeakerNetError(
                f"batches of {self.batch_size} groups can never be filled: a batch needs {self.batch_size} distinct "
                f"{'classes' if self.copies > 1 else 'speakers'}{' per rank' if self.world_size > 1 else ''} with at "
                f"least {needed} utterance(s) each, and the training list has {usable}"
                f"{' (speaker x speed classes, each with its share of its speaker)' if self.copies > 1 else ''}")

    def set_epoch(self, epoch: int):
        if epoch != self.epoch:
            self.epoch, self._batches = epoch, None
        self.first_batch = 0

    def start_at(self, batch: int):
        """Skip this epoch's first ``batch`` batches (resuming an interrupted epoch)."""
        self.first_batch = batch

    def _make_groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        if self.copies > 1:
            return self._make_perturbed_groups(rng)
        groups = []
        for label, files in self.files_by_speaker:
            size = int(rng.choice(self.group_sizes))
            count = min(len(files), self.max_seg_per_spk) // size * size
            for chunk in rng.permutation(files)[:count].reshape(-1, size):
                groups.append((label, chunk))
        return groups

    def _make_perturbed_groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """Each speaker's shuffled utterances dealt to its speed classes, each class cut into groups."""
        groups = []
        for label, files in self.files_by_speaker:
            kept = rng.permutation(files)[:self.max_seg_per_spk]
            blocks = (np.arange(len(kept)) + rng.integers(self.copies)) % self.copies
            for block in range(self.copies):
                entries = kept[blocks == block] + block * self.recorded
                size = int(rng.choice(self.group_sizes))
                count = len(entries) // size * size
                groups += [(label + block * self.speakers, chunk) for chunk in entries[:count].reshape(-1, size)]
        return groups

    def _pack(self, groups, order) -> list[list[int]]:
        global_batch = self.batch_size * self.world_size
        batches, batch, speakers, waiting = [], [], set(), []

        def close_if_full():
            nonlocal batch, speakers, waiting
            while len(batch) == global_batch:
                batches.append(batch)
                batch, speakers, still = [], set(), []
                for index in waiting:
                    if len(batch) < global_batch and groups[index][0] not in speakers:
                        batch.append(index)
                        speakers.add(groups[index][0])
                    else:
                        still.append(index)
                waiting = still

        for index in order:
            if groups[index][0] in speakers:
                waiting.append(index)
                continue
            batch.append(index)
            speakers.add(groups[index][0])
            close_if_full()
        return batches

    def batches(self) -> list[list[Group]]:
        """This epoch's batches for this rank."""
        if self._batches is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            groups = self._make_groups(rng)
            order = rng.permutation(len(groups))
            crop_seeds = rng.integers(0, 2 ** 63 - 1, size=len(groups))
            # Global batches of batch_size groups per rank; this rank takes its own contiguous slice of each.
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            self._batches = [[Group(groups[i][0], tuple(int(f) for f in groups[i][1]), int(crop_seeds[i]))
                              for i in batch[mine]] for batch in self._pack(groups, order)]
        return self._batches

    def __iter__(self):
        return iter(self.batches()[self.first_batch:])

    def __len__(self):
        return max(len(self.batches()) - self.first_batch, 0)


# ----------------------------------------------------------------------------------------------------------------
# Test data
# ----------------------------------------------------------------------------------------------------------------

class TestDataset(Dataset):
    """Evaluation crops of each file: ``(num_eval, samples)``, or ``(1, whole file)`` with ``max_frames == 0``."""

    def __init__(self, files: list[str], test_path: str, max_frames: int, num_eval: int = NUM_EVAL,
                 pipeline: AudioPipeline = ORIGINAL):
        self.files = files
        self.test_path = test_path
        self.max_frames = max_frames
        self.num_eval = num_eval
        self.pipeline = pipeline

    def __getitem__(self, index):
        path = os.path.join(self.test_path, self.files[index])
        crops = load_wav(path, self.max_frames, evalmode=True, num_eval=self.num_eval, pipeline=self.pipeline)
        return torch.from_numpy(crops), index

    def num_samples(self, index) -> int:
        """Samples of a file from its header (whole-file evaluation batches files of equal length)."""
        with open_audio(os.path.join(self.test_path, self.files[index])) as handle:
            return handle.frames

    def __len__(self):
        return len(self.files)
