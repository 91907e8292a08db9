"""Audio: the one reader of every file the library hears, the original's crops, and speed changes.

:func:`open_audio` opens any file libsndfile reads (wav, flac, ogg/vorbis and opus, mp3) and, through FFmpeg's
decoders (PyAV), what libsndfile cannot (m4a/aac as VoxCeleb2 ships, and any other format FFmpeg reads), as the
pipeline hears it: mono (the channels averaged) at 16 kHz (another rate is resampled with
``torchaudio.functional.resample``), float32 in the :class:`AudioPipeline`'s scale. Reads are partial: a crop
reads only its own samples (for another rate, the samples that map to it plus the resampling filter's reach; an
m4a is read by seeking in its index, see :class:`DecodedAudio`). Training crops, evaluation, inference, augmentation
noise and impulse responses, and the MFCC baseline all read through it.
"""

import io
import math
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio

from spknet.constants import SAMPLE_RATE
from spknet.errors import SpeakerNetError

NUM_EVAL = 10
HOP_SAMPLES = 160           # one 10-ms hop: the shortest file the reader takes by default
WINDOW_SAMPLES = 400        # one 25-ms analysis window
# torchaudio.functional.resample's defaults, which decide how far its filter reaches
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
# Lossy codecs whose decoder libsndfile restarts at a seek with other samples near it than a read from the start:
# a window of such a file is decoded from the file's start (exact, and slower)
INEXACT_SEEK_SUBTYPES = frozenset({"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})


def max_audio_samples(max_frames: int) -> int:
    """Samples in a crop of ``max_frames`` 10-ms frames (25-ms window: 240 extra samples)."""
    return max_frames * 160 + 240


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
FLOAT = AudioPipeline(scale="float")


def _too_short(frames: int, min_frames: int) -> str:
    """Why a file of ``frames`` samples (at 16 kHz) is refused when ``min_frames`` are needed."""
    if frames == 0 and min_frames <= 1:
        return "0 samples: empty audio file"
    needed = {HOP_SAMPLES: "one 10-ms hop",
              WINDOW_SAMPLES: f"the network's {WINDOW_SAMPLES}-sample analysis window"}.get(min_frames,
                                                                                        f"{min_frames} samples")
    return f"{frames} samples{': empty audio file,' if frames == 0 else ','} shorter than {needed}"


def _mix_down(audio: np.ndarray) -> np.ndarray:
    """The mean of the channels of ``(frames, channels)`` float32 samples (summed column by column: numpy's mean
    along the short axis is ~20x slower)."""
    mono = audio[:, 0].copy()
    for channel in range(1, audio.shape[1]):
        mono += audio[:, channel]
    mono /= np.float32(audio.shape[1])
    return mono


class AudioFile:
    """An open audio file as the pipeline hears it: ``frames`` samples, mono, at 16 kHz.

    :meth:`read` returns any window of those samples, reading only the file's samples that it needs: at 16 kHz a
    seek and a partial read (mono PCM_16 files give exactly the original's values; a lossy codec whose seek is not
    exact, such as Ogg Vorbis, is decoded from the start up to the window); at another rate the window's
    samples at the file's rate, widened by whole blocks of the rational resampler (``rate / gcd`` input samples
    per ``16000 / gcd`` outputs) so that the filter sees real signal wherever it reaches, resampled and trimmed
    (the samples of resampling the whole file, to float32 rounding). Made by :func:`open_audio`.
    """

    def __init__(self, handle: sf.SoundFile, name: str):
        self.handle, self.name = handle, name
        self.rate, self.channels = handle.samplerate, handle.channels
        common = math.gcd(self.rate, SAMPLE_RATE)
        self._block_in, self._block_out = self.rate // common, SAMPLE_RATE // common
        # torchaudio's resampled length: ceil(len * new / orig)
        self.frames = handle.frames if self.rate == SAMPLE_RATE else -(-handle.frames * self._block_out
                                                                          // self._block_in)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        self.handle.close()

    def read(self, start: int = 0, frames: int = -1, pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
        """``frames`` samples from sample ``start`` (at 16 kHz; -1: to the end) as float32 in ``pipeline``'s scale."""
        frames = self.frames - start if frames < 0 else frames
        if self.rate == SAMPLE_RATE:
            return self._read_at(start, frames, pipeline)
        return self._read_resampled(start, frames, pipeline)

    def _read_at(self, start: int, frames: int, pipeline: AudioPipeline) -> np.ndarray:
        """``frames`` samples from sample ``start`` at the file's rate, channels averaged."""
        if self.handle.subtype in INEXACT_SEEK_SUBTYPES:
            self.handle.seek(0)
            return self._read_file(start + frames, pipeline)[start:]
        self.handle.seek(start)
        return self._read_file(frames, pipeline)

    def _read_file(self, frames: int, pipeline: AudioPipeline) -> np.ndarray:
        """``frames`` samples from the current position at the file's rate, channels averaged."""
        handle, several = self.handle, self.channels > 1
        if handle.subtype == "PCM_16":      # exact values, without libsndfile's float conversion (~2x faster)
            audio = handle.read(frames, dtype="int16", always_2d=several).astype(np.float32)
            if several:
                audio = _mix_down(audio)
            if pipeline.scale == "float":
                audio /= INT16_SCALE
        else:
            audio = handle.read(frames, dtype="float32", always_2d=several)
            if not np.isfinite(audio).all():
                raise SpeakerNetError(f"{self.name}: non-finite (NaN/inf) samples")
            if several:
                audio = _mix_down(audio)
            if pipeline.scale == "int16":
                audio *= INT16_SCALE
        if audio.shape[0] < frames:
            raise SpeakerNetError(f"{self.name}: truncated file: the header announces {handle.frames} samples, "
                                  f"{audio.shape[0]} could be read where {frames} were expected")
        return audio

    def _read_resampled(self, start: int, frames: int, pipeline: AudioPipeline) -> np.ndarray:
        block_in, block_out = self._block_in, self._block_out
        # output block b (samples b*block_out ...) is made of input samples [b*block_in - reach, (b+1)*block_in
        # + reach): read whole blocks, starting on one, so the window's outputs are those of the whole file
        reach = math.ceil(LOWPASS_FILTER_WIDTH * block_in / (ROLLOFF * min(block_in, block_out)))
        margin = -(-reach // block_in)
        first = max(0, start // block_out - margin)
        last = -(-(start + frames) // block_out) + margin
        begin, end = first * block_in, min(last * block_in, self.handle.frames)
        raw = torch.from_numpy(np.ascontiguousarray(self._read_at(begin, end - begin, pipeline)))
        resampled = torchaudio.functional.resample(raw, self.rate, SAMPLE_RATE).numpy()
        offset = start - first * block_out
        audio = resampled[offset:offset + frames]
        if audio.shape[0] < frames:
            raise SpeakerNetError(f"{self.name}: truncated file: {frames} samples at 16 kHz from sample {start} "
                                  f"were asked of a file of {self.frames}")
        return audio


def open_audio(filename, min_frames: int = HOP_SAMPLES, name: str | None = None) -> AudioFile:
    """Open any audio file (a path, or a binary file object named ``name`` in errors) as 16-kHz mono
    (:class:`AudioFile`), or raise an error naming it: unreadable, or shorter than ``min_frames`` samples at
    16 kHz. libsndfile reads what it can; FFmpeg (:class:`DecodedAudio`) the rest."""
    name = str(filename) if name is None else name
    try:
        handle = sf.SoundFile(filename)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        if hasattr(filename, "seek"):
            filename.seek(0)
        handle = DecodedAudio.open(filename, name, str(error))
    audio = AudioFile(handle, name)
    if audio.frames < min_frames:
        audio.close()
        raise SpeakerNetError(f"{name}: {_too_short(audio.frames, min_frames)}")
    return audio


# Containers with a sample-accurate index (presentation times of every packet): a window is read by seeking
# there; other streams (ADTS .aac, raw streams) are decoded whole when opened.
INDEXED_CONTAINERS = ("mov", "mp4", "matroska", "webm")
PREROLL_FRAMES = 2          # codec frames decoded before a seek's window: the MDCT overlap of AAC and its kin


class DecodedAudio:
    """A file that libsndfile cannot open, decoded by FFmpeg (PyAV): the part of ``soundfile.SoundFile`` that
    :class:`AudioFile` uses (``samplerate``, ``channels``, ``frames``, ``subtype``, ``seek``, ``read``, ``close``).

    In an indexed container (mp4/m4a, Matroska/WebM) the length is the header's and a read seeks to
    :data:`PREROLL_FRAMES` codec frames before its window (the decoder's overlap state is rebuilt there, so the
    window's samples equal those of a decode from the start, to float rounding; FFmpeg decodes the file's last,
    end-trimmed AAC frame slightly differently after a seek, within the codec's own error) and decodes only up to
    the window's end. Any other
    stream is decoded whole once, when opened. Samples are float32; the encoder's priming samples are removed as
    the container's edit list says (mp4), so sample 0 is the source's first sample (a bare ADTS ``.aac`` stream
    has no such list: its first ~1024 samples are the encoder's priming).
    """

    def __init__(self, container, stream, name: str):
        self.container, self.stream, self.name = container, stream, name
        context = stream.codec_context
        self.samplerate, self.channels = context.sample_rate, context.channels
        self.subtype = context.name.upper()
        self.position, self._whole = 0, None
        indexed = any(part in container.format.name.split(",") for part in INDEXED_CONTAINERS)
        if indexed and stream.duration and stream.time_base:
            self.frames = int(round(stream.duration * stream.time_base * self.samplerate))
        else:
            self._whole = self._decode(0, None)
            self.frames = self._whole.shape[0]

    @classmethod
    def open(cls, source, name: str, soundfile_error: str = "") -> "DecodedAudio":
        """The file's first audio stream, or an error naming the file (with libsndfile's word on it too)."""
        try:
            container = av.open(source, "r")
        except (av.FFmpegError, OSError, ValueError) as error:
            said = getattr(error, "strerror", None) or str(error)
            why = f"{soundfile_error}; FFmpeg: {said}" if soundfile_error else f"FFmpeg: {said}"
            raise SpeakerNetError(f"{name}: cannot read audio ({' '.join(why.split())})") from None
        if not container.streams.audio:
            container.close()
            raise SpeakerNetError(f"{name}: cannot read audio (no audio stream in this {container.format.name} "
                                  f"file)")
        try:
            return cls(container, container.streams.audio[0], name)
        except SpeakerNetError:
            container.close()
            raise

    def seek(self, frame: int) -> int:
        self.position = frame
        return frame

    def read(self, frames: int = -1, dtype: str = "float32", always_2d: bool = False) -> np.ndarray:
        """``frames`` samples (float32, ``(frames, channels)``; ``(frames,)`` for mono without ``always_2d``) from
        the position; fewer where the file ends."""
        stop = self.frames if frames < 0 else min(self.frames, self.position + frames)
        if self._whole is not None:
            audio = self._whole[self.position:stop].copy()      # the reader scales what it gets in place
        else:
            audio = self._decode(self.position, stop)
        self.position += audio.shape[0]
        return audio if always_2d or self.channels > 1 else audio[:, 0]

    def _decode(self, start: int, stop: int | None) -> np.ndarray:
        """Samples ``[start, stop)`` (None: to the end), ``(samples, channels)`` float32."""
        stream, parts, first, end = self.stream, [], None, start
        # a time stamp in samples: round(pts * time_base * rate) in integers, since Fraction arithmetic on every
        # frame is a visible share of an m4a crop; divmod then round half to even, as round() of the Fraction does
        base = stream.time_base
        scaled, unit = (base.numerator * self.samplerate, base.denominator) if base else (0, 0)
        try:
            if start > 0:
                preroll = PREROLL_FRAMES * max(stream.codec_context.frame_size or 0, 1024)
                seconds = max(0, start - preroll) / self.samplerate
                self.container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
            for frame in self.container.decode(stream):
                # where the frame starts: its presentation time, else right after the previous frame
                at = end if frame.pts is None or not unit else _rounded_ratio(frame.pts * scaled, unit)
                samples = _frame_samples(frame, self.channels)
                end = at + samples.shape[0]
                if end <= start:
                    continue
                first = at if first is None else first
                parts.append(samples)
                if stop is not None and end >= stop:
                    break
        except av.FFmpegError as error:
            said = getattr(error, "strerror", None) or str(error)
            raise SpeakerNetError(f"{self.name}: cannot decode audio ({' '.join(said.split())})") from None
        audio = np.concatenate(parts) if parts else np.zeros((0, self.channels), np.float32)
        first = start if first is None else first
        audio = audio[max(0, start - first):]
        if not np.isfinite(audio).all():
            raise SpeakerNetError(f"{self.name}: non-finite (NaN/inf) samples")
        return audio if stop is None else audio[:stop - start]

    def close(self) -> None:
        self.container.close()


def _rounded_ratio(numerator: int, denominator: int) -> int:
    """``round(numerator / denominator)`` exactly (half to even), in integers."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    return quotient + (twice > denominator or (twice == denominator and quotient % 2 == 1))


def _frame_samples(frame, channels: int) -> np.ndarray:
    """A decoded frame as ``(samples, channels)`` float32 in [-1, 1] (planar or packed, integer or float)."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    if array.dtype.kind == "i" or array.dtype.kind == "u":
        bits = array.dtype.itemsize * 8
        array = (array.astype(np.float32) - (2 ** (bits - 1) if array.dtype.kind == "u" else 0)) / 2 ** (bits - 1)
    return np.ascontiguousarray(array.T, dtype=np.float32)


def open_audio_bytes(data: bytes, name: str, min_frames: int = HOP_SAMPLES) -> AudioFile:
    """An audio file held in memory (a tar shard's member) as :func:`open_audio` opens a file; ``name`` is what
    errors show."""
    return open_audio(io.BytesIO(data), min_frames, name=name)


def read_audio(filename: str, pipeline: AudioPipeline = ORIGINAL, min_frames: int = HOP_SAMPLES) -> np.ndarray:
    """All the samples of a file, mono at 16 kHz, float32 in ``pipeline``'s scale (see :func:`open_audio`)."""
    with open_audio(filename, min_frames) as audio:
        return audio.read(pipeline=pipeline)


class Readable(Protocol):
    """What a crop is cut from: ``frames`` samples (16 kHz, mono) and a window read (:class:`AudioFile`; a
    segment of a recording or an utterance held in memory can stand in for it)."""
    frames: int

    def read(self, start: int = 0, frames: int = -1, pipeline: AudioPipeline = ORIGINAL) -> np.ndarray: ...


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


def random_crop(audio: Readable, max_frames: int, rng, pipeline: AudioPipeline = ORIGINAL,
                speed: float = 1.0) -> np.ndarray:
    """One random ``(1, samples)`` training crop of ``max_frames`` frames of ``audio`` played at ``speed``.

    At 1.0 it is the original's training crop: a long utterance is read only where the crop falls, a short one
    is read whole and padded (zeros or wrapped). Otherwise the crop is cut after the speed change, so it is
    still ``max_frames`` long: a long utterance is read only where the crop falls (``max_audio * speed`` samples
    plus :data:`SPEED_MARGIN` each side, then resampled and trimmed); one too short for that is changed whole and
    then padded and cropped like a short one at 1.0.
    """
    max_audio = max_audio_samples(max_frames)
    needed = max_audio if speed == 1.0 else math.ceil(max_audio * speed) + 2 * SPEED_MARGIN
    total = audio.frames
    if total > needed:
        start = int(rng.random() * (total - needed))
        if speed == 1.0:
            return audio.read(start, max_audio, pipeline)[None, :]
        changed = change_speed(audio.read(start, needed, pipeline), speed)
        offset = round(SPEED_MARGIN / speed)
        return changed[None, offset:offset + max_audio]
    whole = audio.read(pipeline=pipeline)
    if speed != 1.0:
        whole = change_speed(whole, speed)
    if whole.shape[0] <= max_audio:
        whole = pipeline.pad_short(whole, max_audio)
    start = int(rng.random() * (whole.shape[0] - max_audio))
    return whole[None, start:start + max_audio]


def load_train_crop(filename: str, max_frames: int, rng, pipeline: AudioPipeline = ORIGINAL,
                    speed: float = 1.0) -> np.ndarray:
    """One random ``(1, samples)`` training crop of the file ``filename`` played at ``speed`` (:func:`random_crop`):
    at 1.0 it is :func:`load_wav`'s crop."""
    with open_audio(filename) as audio:
        return random_crop(audio, max_frames, rng, pipeline, speed)


def load_wav(filename: str, max_frames: int, evalmode: bool = True, num_eval: int = NUM_EVAL,
             rng=None, pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
    """The original's ``loadWAV``: ``(crops, samples)`` float32 (in the int16 range with the original pipeline).

    Training mode reads only the samples of its one random crop (:func:`random_crop`); evaluation reads the file
    once and takes ``num_eval`` evenly spaced crops, or the whole file when ``max_frames == 0``
    (:func:`eval_crops`).
    """
    with open_audio(filename) as audio:
        if not evalmode:
            return random_crop(audio, max_frames, rng or np.random.default_rng(), pipeline)
        return eval_crops(audio.read(pipeline=pipeline), max_frames, num_eval, pipeline)


def eval_crops(audio: np.ndarray, max_frames: int, num_eval: int = NUM_EVAL,
               pipeline: AudioPipeline = ORIGINAL) -> np.ndarray:
    """``(num_eval, samples)`` evenly spaced crops of an utterance's samples (padded when short), or ``(1, all)`` for
    ``max_frames == 0``."""
    if max_frames == 0:
        return audio[None, :]
    max_audio = max_audio_samples(max_frames)
    if audio.shape[0] <= max_audio:
        audio = pipeline.pad_short(audio, max_audio)
    starts = np.linspace(0, audio.shape[0] - max_audio, num=num_eval).astype(np.int64)
    return np.stack([audio[start:start + max_audio] for start in starts])
