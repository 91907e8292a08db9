"""A narrow-band telephone channel, to test a model on speech it never heard in training.

A 16-kHz recording becomes what a telephone line delivers: resampled to 8 kHz (``torchaudio.functional.resample``),
band-limited to 300-3,400 Hz (the ITU-T G.712 voice band; a Butterworth band-pass run forwards and backwards, so
no phase shift), and encoded as G.711 mu-law (FFmpeg's ``pcm_mulaw`` through PyAV) in a WAV container: 8 bits a
sample, 64 kbit/s. The reader (:func:`spknet.data.audio.open_audio`) decodes such a file with FFmpeg and resamples
it back to 16 kHz, as it does any 8-kHz recording a user trains or scores on.

    write_telephone(audio_16k, "out.wav")       # one file
    telephone_copy(root, relative_paths, out)   # a corpus: the same relative paths under ``out``
"""

import os

import av
import numpy as np
import torch
import torchaudio
from scipy.signal import butter, sosfiltfilt

from spknet.atomic import atomic_path
from spknet.constants import SAMPLE_RATE
from spknet.data.audio import read_audio

TELEPHONE_RATE = 8000
VOICE_BAND = (300.0, 3400.0)        # Hz
BAND_ORDER = 6                      # per edge; sosfiltfilt doubles it (24 dB/octave x 2 beyond the band edges)
INT16_PEAK = 32767


def telephone_band(audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``audio`` (1-D, float, any scale) at 8 kHz, limited to the voice band; same scale as the input."""
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    narrow = torchaudio.functional.resample(wave, rate, TELEPHONE_RATE).numpy().astype(np.float64)
    sections = butter(BAND_ORDER, VOICE_BAND, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    return sosfiltfilt(sections, narrow).astype(np.float32)


def write_mulaw(audio: np.ndarray, path: str) -> None:
    """``audio`` (8 kHz, int16 scale) as a G.711 mu-law WAV file, written atomically; samples beyond the int16
    range are clipped, as a line card would."""
    samples = np.clip(np.round(audio), -INT16_PEAK - 1, INT16_PEAK).astype(np.int16)[None, :]
    with atomic_path(path, durable=False) as temporary:
        with av.open(temporary, "w", format="wav") as container:
            stream = container.add_stream("pcm_mulaw", rate=TELEPHONE_RATE, layout="mono")
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = TELEPHONE_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)


def write_telephone(audio: np.ndarray, path: str, rate: int = SAMPLE_RATE) -> None:
    """A recording (int16 scale, ``rate`` Hz) through the telephone channel into ``path``."""
    write_mulaw(telephone_band(audio, rate), path)


def telephone_copy(root: str, files: list[str], out: str) -> int:
    """Every file of ``files`` (paths relative to ``root``, read by the one reader at 16 kHz) through the
    telephone channel, at the same relative path under ``out``; a file already there is kept (an interrupted copy
    resumes). Returns how many files were written."""
    written = 0
    for relative in files:
        target = os.path.join(out, relative)
        if os.path.exists(target):
            continue
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        write_telephone(read_audio(os.path.join(root, relative)), target)
        written += 1
    return written
