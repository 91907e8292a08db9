"""Audio: the one reader of every file the library hears, the original's crops, and speed changes."""

import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

from spknet import SAMPLE_RATE
from spknet.errors import SpeakerNetError

NUM_EVAL = 10


def max_audio_samples(max_frames: int) -> int:
    """Samples in a crop of ``max_frames`` 10-ms frames (25-ms window: 240 extra samples)."""
    return max_frames * 160 + 240


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
