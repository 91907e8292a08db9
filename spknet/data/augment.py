"""Training-time augmentation with MUSAN noise and simulated room impulse responses.

The behaviour of voxceleb_trainer's augmentation, written afresh:

* Each utterance gets one of ``none``, ``reverb``, ``music``, ``speech`` (babble) or ``noise``, uniformly
  (voxceleb_trainer draws ``randint(0, 4)``, 0 meaning no augmentation).
* Additive noise: ``noise`` mixes 1 file at 0-15 dB SNR, ``speech`` 3-7 files at 13-20 dB each (summed),
  ``music`` 1 file at 5-15 dB. Powers in dB are ``10*log10(mean(x^2) + 1e-4)`` of the clean crop and of each noise
  crop, and a noise is scaled by ``sqrt(10^((clean_db - noise_db - snr)/10))``.
* Reverberation: a random RIR, normalised to unit energy, convolved with the utterance ('full'), cut to the
  utterance's length.

Differences: noise files may have any length, rate and channel count (read by the one reader: 16 kHz, channels
averaged). A noise crop of the needed length is read with a seek and a partial
read (no whole-file decode), and a file shorter than the crop is tiled. Every random draw comes from the
``numpy.random.Generator`` passed in (the loader derives it from the group's crop seed), never from a global RNG,
so augmented batches do not depend on the number of loader workers.

Waves are float32 in the int16 range (the original's scale), 1-D, and come back with the same length and dtype.
"""

import glob
import os
from dataclasses import dataclass

import numpy as np

from spknet.data.audio import FLOAT, max_audio_samples, open_audio, read_audio
from spknet.errors import SpeakerNetError

AUGMENT_TYPES = ("none", "reverb", "music", "speech", "noise")
NOISE_CATEGORIES = ("noise", "speech", "music")
NOISE_SNR = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}
NOISE_COUNT = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}


def power_db(wave: np.ndarray) -> float:
    """voxceleb_trainer's level: ``10*log10(mean(x^2) + 1e-4)``."""
    wave = np.asarray(wave, dtype=np.float64)
    return float(10.0 * np.log10(np.mean(wave ** 2) + 1e-4))


def wav_files(folder: str) -> list[str]:
    """Every ``*.wav`` below ``folder`` (any depth), sorted, so that draws do not depend on the file system."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), "**", "*.wav"), recursive=True))


def read_noise_crop(path: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples (float64, int16 scale) from a random start of ``path``, read by the one reader (16 kHz,
    channels averaged; a partial read). A file shorter than ``length`` is read whole and tiled."""
    with open_audio(path, min_frames=1) as audio:
        total = audio.frames
        start = int(rng.integers(0, total - length + 1)) if total > length else 0
        crop = audio.read(start, min(total, length))
    crop = crop.astype(np.float64)
    if crop.shape[0] < length:
        crop = np.resize(crop, length)        # tiles the file (voxceleb_trainer pads with 'wrap')
    return crop


def read_rir(path: str) -> np.ndarray:
    """An impulse response (16 kHz, channels averaged, by the one reader) normalised to unit energy."""
    rir = read_audio(path, FLOAT, min_frames=1).astype(np.float64)
    energy = np.sqrt(np.sum(rir ** 2))
    if not np.isfinite(energy) or energy == 0:
        raise SpeakerNetError(f"{path}: impulse response is silent or not finite")
    return rir / energy


@dataclass(frozen=True)
class NoiseDraw:
    """One noise file to mix in, at ``snr`` dB below the clean utterance."""
    path: str
    snr: float


class Augmenter:
    """``Augmenter(musan_path, rir_path, max_frames)(wave, rng)``: voxceleb_trainer's augmentation.

    ``musan_path`` holds ``noise/``, ``speech/`` and ``music/`` with ``*.wav`` files at any depth (the 5-s
    ``musan_split`` of ``dataprep.py --musan``, or MUSAN itself); ``rir_path`` holds ``*.wav`` impulse responses at
    any depth (``RIRS_NOISES/simulated_rirs``). A missing folder, or one without wav files, is a
    :class:`SpeakerNetError` raised here, before training starts.
    """

    def __init__(self, musan_path: str, rir_path: str, max_frames: int, types: tuple[str, ...] = AUGMENT_TYPES):
        self.max_audio = max_audio_samples(max_frames)
        unknown = [kind for kind in types if kind not in AUGMENT_TYPES]
        if unknown or not types:
            raise SpeakerNetError(f"augmentation types must be among {AUGMENT_TYPES}, got {types}")
        self.types = tuple(types)
        self.noise_files = {}
        if any(kind in NOISE_CATEGORIES for kind in self.types):
            expected = ("a MUSAN folder with noise/, speech/ and music/ subfolders of 16 kHz wav files "
                        "(dataprep.py --musan makes data/musan_split)")
            if not os.path.isdir(musan_path):
                raise SpeakerNetError(f"MUSAN folder {musan_path}: folder not found; augmentation expects {expected}")
            for category in NOISE_CATEGORIES:
                self.noise_files[category] = self._wav_files_of(
                    os.path.join(musan_path, category), f"MUSAN folder {musan_path}: subfolder",
                    f"16 kHz wav files of MUSAN's '{category}' category there ({expected})")
        self.rir_files = []
        if "reverb" in self.types:
            self.rir_files = self._wav_files_of(rir_path, "impulse-response folder",
                                                "16 kHz wav room impulse responses (dataprep.py --rirs makes "
                                                "data/RIRS_NOISES/simulated_rirs)")

    @staticmethod
    def _wav_files_of(folder: str, what: str, expected: str) -> list[str]:
        if not os.path.isdir(folder):
            raise SpeakerNetError(f"{what} {folder}: folder not found; augmentation expects {expected}")
        files = wav_files(folder)
        if not files:
            raise SpeakerNetError(f"{what} {folder}: no .wav files in the folder; augmentation expects {expected}")
        return files

    # ------------------------------------------------------------------------------------------------------------

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        kind = self.types[int(rng.integers(len(self.types)))]
        if kind == "none":
            return wave
        if kind == "reverb":
            return self.reverberate(wave, rng)
        return self.additive_noise(kind, wave, rng)

    def reverberate(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy.signal import fftconvolve  # here: scipy.signal costs every command a second at its start

        rir = read_rir(self.rir_files[int(rng.integers(len(self.rir_files)))])
        return fftconvolve(wave.astype(np.float64), rir, mode="full")[:wave.shape[0]].astype(np.float32)

    def draw_noises(self, category: str, rng: np.random.Generator) -> list[NoiseDraw]:
        """Which files of ``category`` to mix, and at which SNRs (3-7 distinct talkers for ``speech``)."""
        files = self.noise_files[category]
        low, high = NOISE_COUNT[category]
        count = int(rng.integers(low, high + 1))
        picks = rng.choice(len(files), size=count, replace=len(files) < count)
        snr_low, snr_high = NOISE_SNR[category]
        return [NoiseDraw(files[int(i)], float(rng.uniform(snr_low, snr_high))) for i in picks]

    def add_noises(self, wave: np.ndarray, draws: list[NoiseDraw], rng: np.random.Generator) -> np.ndarray:
        """``wave`` plus each drawn noise scaled to its SNR against the clean ``wave``."""
        clean_db = power_db(wave)
        mixed = wave.astype(np.float64)
        for draw in draws:
            noise = read_noise_crop(draw.path, wave.shape[0], rng)
            mixed += np.sqrt(10.0 ** ((clean_db - power_db(noise) - draw.snr) / 10.0)) * noise
        return mixed.astype(np.float32)

    def additive_noise(self, category: str, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.add_noises(wave, self.draw_noises(category, rng), rng)
