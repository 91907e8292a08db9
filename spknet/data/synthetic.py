"""Synthetic, VoxCeleb-shaped speaker-verification corpus.

Every utterance is rendered by a small source-filter speech synthesiser (numpy/scipy only):

* **Source** - a Rosenberg glottal-flow pulse train (differentiated, i.e. flow derivative with lip radiation)
  driven by a per-utterance pitch contour around a speaker/session median F0, with per-cycle jitter and
  shimmer, plus pulsatile aspiration noise (breathiness) and a speaker-specific extra spectral tilt.
* **Filter** - a cascade of five formant resonators evaluated per 8 ms frame.  Vowel formant targets are
  textbook averages scaled by a speaker vocal-tract-length factor and shifted by a speaker-specific
  idiosyncratic offset per vowel and formant; F4/F5 and bandwidths are per speaker.  Consonants are
  nasals / approximants (voiced, own formant targets), voiceless and voiced fricatives (shaped noise with
  speaker-scaled spectra), stops (closure, burst, aspiration) and pauses, strung into syllables and words at a
  speaker-specific speaking rate; formant trajectories are smoothed so vowels have transitions.
* **Nuisances** - per session: a random channel EQ (smooth log-frequency bumps, tilt, band limits), coloured
  (sometimes modulated / humming) background noise at 5-30 dB SNR, sometimes reverberation (exponentially
  decaying noise impulse response) and a small shift of the speaker's voice (F0, tilt, breathiness, rate).
  Per utterance: content, duration, pitch contour, SNR jitter and output level (random peak level, never
  clipping).

Determinism: every random draw comes from ``numpy.random.SeedSequence([seed, role, stream, ...])`` keyed by the
speaker / session / utterance it belongs to, so the bytes of each file do not depend on the number of worker
processes or on the order files are rendered in, and the test split does not depend on how many training
speakers there are.

Where identity lives, and what removes it.  A speaker is F0 (bimodal, 25 % spread within each mode), intonation
range, jitter / shimmer, glottal open quotient, spectral tilt, breathiness, a vocal-tract-length factor scaling
every formant (5 % spread within each mode), per-vowel and per-consonant formant offsets (6 %), F4/F5,
bandwidths, sibilant spectra, speaking rate and pause habits.  Nothing trivial identifies a speaker: names are
a random permutation unrelated to generation order, durations and output levels are drawn per utterance from
the same distribution for everybody, sessions are numbered per speaker.  A CNN over 40 instance-normalised
log-mel bands sees pitch harmonics and per-frame formant patterns, which survive the channel EQ (static, so
mostly removed by the per-band normalisation); the utterance-level MFCC statistics of ``baseline.py`` do not
resolve harmonics and confound the long-term spectrum with channel and noise.

The defaults are 300 x 12 training utterances in 6-12 sessions per speaker, 40 x 12 test utterances in 3-4
sessions, 3000 trials, 2.1-4 s, seed 0 (what the baseline and the quickstart score on them: docs/results.md).
The training speakers get many short sessions (as a VoxCeleb speaker has many videos) so that a network learns
what stays the same across sessions; the test speakers keep 3-4 sessions and cross-session target trials. The
knobs that move a network most are the F0 spread and its steadiness across sessions and utterances (the network
reads the harmonics, which 20 MFCCs of 40 mel bands barely see); the nuisance levels in :func:`session_params`
(SNR distribution, reverberation rate) move both.

The public entry point is :func:`make_corpus`; ``dataprep.py --synthetic`` is its command-line front end.
With ``workers > 1`` it uses a ``spawn`` process pool, so a script calling it needs the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import scipy.fft
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import fftconvolve

from spknet.constants import SAMPLE_RATE as SR

N_FFT = 512
HOP = 128
FRAME_S = HOP / SR
FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SR)
_WIN = np.sqrt(np.hanning(N_FFT + 1)[:-1]).astype(np.float32)  # periodic sqrt-Hann: analysis * synthesis = Hann

# random streams (second element of the SeedSequence key after the role)
TRAIN, TEST = 0, 1
_S_SPEAKER, _S_SESSION, _S_UTT, _S_PLAN, _S_IDS, _S_TRIALS = range(6)

# --------------------------------------------------------------------------------------------------------
# phone inventory
# --------------------------------------------------------------------------------------------------------

# F1, F2, F3 (Hz) of ten vowels for an adult male reference vocal tract (rounded textbook averages)
VOWELS = np.array(
    [
        [270, 2290, 3010],  # i
        [390, 1990, 2550],  # I
        [530, 1840, 2480],  # E
        [660, 1720, 2410],  # ae
        [730, 1090, 2440],  # a
        [570, 840, 2410],  # o
        [440, 1020, 2240],  # U
        [300, 870, 2240],  # u
        [640, 1190, 2390],  # V
        [490, 1350, 1690],  # er
    ],
    dtype=np.float64,
)
# voiced sonorant consonants: F1, F2, F3 targets, relative amplitude, bandwidth factor
SONORANTS = np.array(
    [
        [280, 1100, 2300, 0.30, 1.8],  # m
        [280, 1600, 2500, 0.30, 1.8],  # n
        [300, 1900, 2700, 0.28, 1.8],  # ng (front-ish)
        [360, 1300, 2700, 0.55, 1.2],  # l
        [350, 1200, 1600, 0.55, 1.2],  # r
        [300, 700, 2200, 0.55, 1.1],  # w
        [280, 2200, 3000, 0.55, 1.1],  # j
    ],
    dtype=np.float64,
)
N_VOWELS, N_SONORANTS = len(VOWELS), len(SONORANTS)
# frication spectra: 0 = none, 1 s, 2 sh, 3 f/th, 4 alveolar burst, 5 velar burst, 6 labial burst
FRIC_NONE, FRIC_S, FRIC_SH, FRIC_F, BURST_T, BURST_K, BURST_P = range(7)
_FRIC_CENTRE = np.array([1000.0, 5200.0, 2900.0, 4500.0, 4000.0, 1900.0, 900.0])
_FRIC_WIDTH_OCT = np.array([1.0, 0.45, 0.55, 1.8, 0.9, 0.45, 1.4])
_FRIC_LEVEL = np.array([0.0, 1.0, 1.0, 0.35, 1.0, 1.0, 0.7])
# (fricative spectrum, voiced?) for the fricatives; stops are (burst spectrum, voiced?)
FRICATIVES = [(FRIC_S, False), (FRIC_SH, False), (FRIC_F, False), (FRIC_F, True), (FRIC_S, True), (FRIC_SH, True)]
STOPS = [(BURST_P, False), (BURST_T, False), (BURST_K, False), (BURST_P, True), (BURST_T, True), (BURST_K, True)]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(k) for k in key]]))


# --------------------------------------------------------------------------------------------------------
# speaker / session parameters
# --------------------------------------------------------------------------------------------------------


def speaker_params(seed: int, role: int, index: int) -> dict:
    """Voice of one speaker; a pure function of ``(seed, role, index)``."""
    r = _rng(seed, role, _S_SPEAKER, index)
    female = r.random() < 0.5
    vtl = (1.16 if female else 1.0) * np.exp(r.normal(0.0, 0.05))  # formant scaling (1/vocal-tract length)
    f0 = (205.0 if female else 118.0) * np.exp(r.normal(0.0, 0.25))
    return {
        "vtl": vtl,
        "f0": f0,
        "f0_range": r.uniform(1.5, 4.5),  # intonation range, semitones
        "jitter": r.uniform(0.003, 0.02),
        "shimmer": r.uniform(0.02, 0.12),
        "oq": r.uniform(0.45, 0.75),  # open quotient of the glottal pulse
        "sq": r.uniform(0.6, 0.8),  # opening share of the open phase
        "tilt": r.uniform(0.5, 3.5),  # extra spectral tilt, dB/octave above 300 Hz
        "breath": np.exp(r.uniform(np.log(0.02), np.log(0.35))),
        # idiosyncratic multiplicative offsets of F1-F3 per vowel / sonorant
        "vowel_off": np.exp(r.normal(0.0, 0.06, size=(N_VOWELS, 3))),
        "son_off": np.exp(r.normal(0.0, 0.06, size=(N_SONORANTS, 3))),
        "f45": np.array([3500.0, 4500.0]) * vtl * np.exp(r.normal(0.0, 0.05, size=2)),
        "bw": np.exp(r.normal(0.0, 0.25)),
        "fric_scale": vtl * np.exp(r.normal(0.0, 0.08)),
        "fric_off": np.exp(r.normal(0.0, 0.08, size=len(_FRIC_CENTRE))),
        "rate": r.uniform(0.75, 1.3),
        "pause_p": r.uniform(0.08, 0.35),
    }


def _channel_curve(c: dict, f: np.ndarray) -> np.ndarray:
    """Magnitude (linear) of a session's channel at frequencies ``f`` (Hz)."""
    lf = np.log2(np.maximum(f, 20.0))
    db = c["tilt"] * (lf - np.log2(1000.0))
    for centre, width, gain in zip(c["bump_c"], c["bump_w"], c["bump_g"]):
        db = db + gain * np.exp(-0.5 * ((lf - centre) / width) ** 2)
    ff = np.maximum(f, 1.0)
    db = db - 10.0 * np.log10(1.0 + (c["hp"] / ff) ** (2 * c["hp_order"]))
    db = db - 10.0 * np.log10(1.0 + (ff / c["lp"]) ** (2 * c["lp_order"]))
    return 10.0 ** (db / 20.0)


def _noise_curve(n: dict, f: np.ndarray) -> np.ndarray:
    lf = np.log2(np.maximum(f, 30.0))
    db = -3.0 * n["slope"] * (lf - np.log2(500.0))
    db = db + n["bump_g"] * np.exp(-0.5 * ((lf - n["bump_c"]) / n["bump_w"]) ** 2)
    return 10.0 ** (db / 20.0)


def session_params(seed: int, role: int, index: int, session: int) -> dict:
    """Recording conditions of one session and the speaker's state in it."""
    r = _rng(seed, role, _S_SESSION, index, session)
    nb = r.integers(1, 4)
    narrow = r.random() < 0.15
    channel = {
        "tilt": r.normal(0.0, 2.0),
        "bump_c": r.uniform(np.log2(150.0), np.log2(6500.0), size=nb),
        "bump_w": r.uniform(0.25, 1.2, size=nb),
        "bump_g": r.normal(0.0, 6.0, size=nb),
        "hp": np.exp(r.uniform(np.log(50.0), np.log(350.0))),
        "hp_order": int(r.integers(1, 4)),
        "lp": r.uniform(3300.0, 4500.0) if narrow else r.uniform(5500.0, 7900.0),
        "lp_order": int(r.integers(2, 6)),
    }
    noise = {
        "snr": 30.0 - 25.0 * r.random() ** 3,  # 5-30 dB, mostly clean-ish (median 27 dB, 12 % below 13 dB)
        "slope": r.uniform(-0.5, 2.0),  # 0 white, 1 pink, 2 brown-ish
        "bump_c": r.uniform(np.log2(200.0), np.log2(5000.0)),
        "bump_w": r.uniform(0.3, 1.5),
        "bump_g": r.uniform(0.0, 12.0),
        "modulated": bool(r.random() < 0.3),
        "hum": float(r.uniform(0.05, 0.4)) if r.random() < 0.15 else 0.0,
        "hum_f": 50.0 if r.random() < 0.5 else 60.0,
    }
    reverb = None
    if r.random() < 0.25:
        rt60 = r.uniform(0.2, 0.8)
        n_ir = int(rt60 * SR)
        t = np.arange(n_ir) / SR
        tail = r.standard_normal(n_ir) * np.exp(-6.9078 * t / rt60)
        # high frequencies decay faster: smooth the tail a little
        tail = np.convolve(tail, np.ones(3) / 3.0, mode="same")
        tail[: int(0.002 * SR)] = 0.0
        drr_db = r.uniform(-3.0, 10.0)
        tail *= 1.0 / np.sqrt(np.sum(tail**2) * 10.0 ** (drr_db / 10.0))
        tail[0] = 1.0
        reverb = tail
    voice = {
        "f0_shift": r.normal(0.0, 0.3),  # semitones
        "tilt_shift": r.normal(0.0, 1.5),
        "breath": np.exp(r.normal(0.0, 0.3)),
        "rate": np.exp(r.normal(0.0, 0.06)),
        "formant": np.exp(r.normal(0.0, 0.015)),
    }
    return {"channel": channel, "noise": noise, "reverb": reverb, "voice": voice}


# --------------------------------------------------------------------------------------------------------
# utterance synthesis
# --------------------------------------------------------------------------------------------------------


def _segments(r: np.random.Generator, spk: dict, rate: float, duration: float) -> list:
    """Random phone string.  Each segment: (seconds, voice_amp, fric_amp, fric_type, asp_amp, F1-3 or None,
    bandwidth factor, is_vowel)."""
    segs: list = []
    total = 0.0

    def add(dur, voice=0.0, fric=0.0, ftype=FRIC_NONE, asp=0.0, formants=None, bwf=1.0, vowel=False):
        nonlocal total
        dur = max(dur / rate, FRAME_S)
        segs.append((dur, voice, fric, ftype, asp, formants, bwf, vowel))
        total += dur

    vt = spk["vtl"]
    add(r.uniform(0.03, 0.3))  # leading silence
    target = duration + 0.2
    while total < target:
        for _syl in range(int(r.integers(1, 4))):
            stress = r.uniform(0.6, 1.0)
            if r.random() < 0.75:
                _consonant(r, add, spk)
            v = int(r.integers(N_VOWELS))
            fv = VOWELS[v] * vt * spk["vowel_off"][v]
            add(r.uniform(0.06, 0.17) * (0.8 + 0.4 * stress), voice=stress, formants=fv, vowel=True)
            if r.random() < 0.3:
                _consonant(r, add, spk)
        if r.random() < spk["pause_p"]:
            add(r.uniform(0.08, 0.35))
    return segs


def _consonant(r, add, spk):
    u = r.random()
    vt = spk["vtl"]
    if u < 0.3:  # stop
        ftype, voiced = STOPS[int(r.integers(len(STOPS)))]
        add(r.uniform(0.035, 0.08), voice=0.06 if voiced else 0.0)
        add(r.uniform(0.008, 0.018), fric=0.8, ftype=ftype)
        if not voiced:
            add(r.uniform(0.02, 0.06), asp=0.35)
    elif u < 0.55:  # fricative
        ftype, voiced = FRICATIVES[int(r.integers(len(FRICATIVES)))]
        if voiced:
            add(r.uniform(0.05, 0.1), voice=0.35, fric=0.3, ftype=ftype, formants=VOWELS[1] * vt)
        else:
            add(r.uniform(0.07, 0.15), fric=0.6, ftype=ftype)
    elif u < 0.62:  # h
        add(r.uniform(0.04, 0.08), asp=0.4)
    else:  # nasal / approximant
        k = int(r.integers(N_SONORANTS))
        f1, f2, f3, amp, bwf = SONORANTS[k]
        add(r.uniform(0.045, 0.09), voice=amp, formants=np.array([f1, f2, f3]) * vt * spk["son_off"][k], bwf=bwf)


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    """Hann smoothing along axis 0 with edge padding."""
    if n <= 1:
        return x
    k = np.hanning(n + 2)[1:-1]
    k /= k.sum()
    pad = n // 2
    xp = np.pad(x, [(pad, n - 1 - pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    if x.ndim == 1:
        return np.convolve(xp, k, mode="valid")
    return np.stack([np.convolve(xp[:, j], k, mode="valid") for j in range(x.shape[1])], axis=1)


def _stft(x: np.ndarray, n_frames: int) -> np.ndarray:
    """(n_frames, N_FFT // 2 + 1) complex64 STFT, frame k centred on sample k * HOP (single precision is plenty
    for 16-bit output and twice as fast)."""
    xp = np.pad(x.astype(np.float32), (N_FFT // 2, N_FFT // 2 + HOP))
    frames = sliding_window_view(xp, N_FFT)[::HOP][:n_frames]
    return scipy.fft.rfft(frames * _WIN, axis=1)


@functools.lru_cache(maxsize=64)
def _ola_norm(n_frames: int) -> np.ndarray:
    """1 / (overlap-added squared window) for ``n_frames`` frames, trimmed like :func:`_istft`'s output."""
    wsum = np.zeros((n_frames - 1) * HOP + N_FFT)
    for j in range(N_FFT // HOP):
        wsum[j * HOP : j * HOP + n_frames * HOP] += np.tile(_WIN[j * HOP : (j + 1) * HOP] ** 2, n_frames)
    return (1.0 / np.maximum(wsum[N_FFT // 2 :], 1e-3)).astype(np.float32)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    frames = scipy.fft.irfft(spec, n=N_FFT, axis=1)
    frames *= _WIN
    n_frames = frames.shape[0]
    out = np.zeros((n_frames - 1) * HOP + N_FFT, np.float32)
    for j in range(N_FFT // HOP):
        out[j * HOP : j * HOP + n_frames * HOP] += frames[:, j * HOP : (j + 1) * HOP].reshape(-1)
    return out[N_FFT // 2 : N_FFT // 2 + length] * _ola_norm(n_frames)[:length]




def _power(spec: np.ndarray) -> float:
    """Signal energy (up to a constant) from one-sided STFT frames: twice every bin but DC and Nyquist."""
    edges = spec[:, [0, -1]]
    return 2.0 * float(np.vdot(spec, spec).real) - float(np.vdot(edges, edges).real)


_COS1 = np.cos(2.0 * np.pi * FREQS / SR).astype(np.float32)
_COS2 = np.cos(4.0 * np.pi * FREQS / SR).astype(np.float32)


def _formant_envelope(formants: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """|H| of a cascade of digital resonators (unit DC gain); formants/bws (frames, K) -> (frames, bins).

    Resonator k: H(z) = (1 - c + r^2) / (1 - c z^-1 + r^2 z^-2), c = 2 r cos(2 pi F / fs), r = exp(-pi B / fs),
    |denominator|^2 = 1 + c^2 + r^4 - 2 c (1 + r^2) cos(w) + 2 r^2 cos(2 w).  float32 is accurate enough
    (bandwidths >= 40 Hz keep the denominator far above the rounding error) and three times faster.
    """
    r = np.exp(-np.pi * bws / SR)
    c = 2.0 * r * np.cos(2.0 * np.pi * formants / SR)
    r2 = r * r
    num = np.prod(1.0 - c + r2, axis=1).astype(np.float32)[:, None]
    a0 = (1.0 + c * c + r2 * r2).astype(np.float32)
    a1 = (2.0 * c * (1.0 + r2)).astype(np.float32)
    a2 = (2.0 * r2).astype(np.float32)
    den = np.ones((formants.shape[0], len(FREQS)), np.float32)
    for k in range(formants.shape[1]):
        den *= a0[:, k : k + 1] - a1[:, k : k + 1] * _COS1 + a2[:, k : k + 1] * _COS2
    return num / np.sqrt(np.maximum(den, 1e-30))


def _fric_spectra(spk: dict) -> np.ndarray:
    lf = np.log2(np.maximum(FREQS, 50.0))
    centre = np.log2(_FRIC_CENTRE * spk["fric_off"])
    centre[1:3] += np.log2(spk["fric_scale"])  # sibilant resonances scale with the front cavity
    g = -0.5 * ((lf[None, :] - centre[:, None]) / _FRIC_WIDTH_OCT[:, None]) ** 2
    lin = _FRIC_LEVEL[:, None] * (np.exp(g) + 0.03)
    lin[:, FREQS < 200.0] *= 0.1
    return lin


_PULSE_LEN = 2048


def _rosenberg(oq: float, sq: float) -> np.ndarray:
    """One period of Rosenberg glottal flow sampled at ``_PULSE_LEN`` phases: a raised-cosine opening over
    ``oq * sq`` of the period, a quarter-cosine closing over the rest of the open phase, then closed."""
    ph = np.arange(_PULSE_LEN) / _PULSE_LEN
    tp, tn = oq * sq, oq * (1.0 - sq)
    flow = np.where(ph < tp, 0.5 * (1.0 - np.cos(np.pi * ph / tp)), 0.0)
    closing = (ph >= tp) & (ph < tp + tn)
    return np.where(closing, np.cos(0.5 * np.pi * (ph - tp) / tn), flow)


def synthesize(spk: dict, ses: dict, r: np.random.Generator, duration: float) -> np.ndarray:
    """Render one utterance (float64, arbitrary scale) of ``duration`` seconds."""
    voice = ses["voice"]
    length = round(duration * SR)
    rate = spk["rate"] * voice["rate"] * np.exp(r.normal(0.0, 0.05))
    segs = _segments(r, spk, rate, duration)

    # ---- per-frame parameter tracks ------------------------------------------------------------------
    n_frames = length // HOP + 1
    bounds = np.round(np.cumsum([0.0] + [s[0] for s in segs]) / FRAME_S).astype(int)
    counts = np.diff(bounds)
    seg_idx = np.repeat(np.arange(len(segs)), counts)
    if len(seg_idx) < n_frames:  # cannot happen (segments overshoot), but keep the tracks long enough
        seg_idx = np.concatenate([seg_idx, np.full(n_frames - len(seg_idx), len(segs) - 1)])
    seg_idx = seg_idx[:n_frames]
    va = np.array([s[1] for s in segs])[seg_idx]
    fa = np.array([s[2] for s in segs])[seg_idx]
    ft = np.array([s[3] for s in segs])[seg_idx]
    aa = np.array([s[4] for s in segs])[seg_idx]
    bwf = np.array([s[6] for s in segs])[seg_idx]
    f123 = np.array([s[5] if s[5] is not None else [np.nan] * 3 for s in segs])[seg_idx]
    valid = ~np.isnan(f123[:, 0])
    if not valid.any():
        f123[:] = VOWELS[4] * spk["vtl"]
    else:
        idx = np.arange(n_frames)
        for j in range(3):
            f123[:, j] = np.interp(idx, idx[valid], f123[valid, j])
    logf = np.log(f123 * voice["formant"])
    logf = _smooth(logf, max(3, round(0.05 / FRAME_S / rate)))
    f123 = np.exp(logf)
    f45 = np.broadcast_to(spk["f45"] * voice["formant"], (n_frames, 2))
    formants = np.concatenate([f123, f45], axis=1)
    formants = np.minimum(formants, 0.45 * SR)
    base_bw = np.array([55.0, 75.0, 110.0, 200.0, 280.0]) * spk["bw"]
    bws = base_bw[None, :] * _smooth(bwf, 3)[:, None] * (1.0 + 0.3 * formants / 1000.0) / 1.3
    va = _smooth(va, 3)
    aa = _smooth(aa, 3)

    # pitch contour (semitones around the session median)
    t = np.arange(n_frames) * FRAME_S
    rng_st = spk["f0_range"]
    st = r.normal(0.0, 0.35) + r.normal(-1.5, 0.6) * t / max(duration, 1.0) * rng_st / 3.0
    drift = _smooth(r.standard_normal(n_frames), max(3, int(0.3 / FRAME_S)))
    st = st + drift / (np.std(drift) + 1e-9) * 0.25 * rng_st
    vowel_frames = np.array([s[7] for s in segs])[seg_idx]
    starts = np.flatnonzero(np.diff(np.concatenate([[0], vowel_frames.astype(int)])) == 1)
    for s0 in starts:
        if r.random() < 0.35:
            st = st + r.uniform(0.3, 1.0) * rng_st * np.exp(-0.5 * ((t - t[s0] - 0.05) / 0.1) ** 2)
    f0_track = spk["f0"] * 2.0 ** ((voice["f0_shift"] + st) / 12.0)

    # ---- glottal source (sample domain) ----------------------------------------------------------------
    n_src = length + N_FFT
    ts = np.arange(n_src) / SR
    f0 = np.interp(ts, t, f0_track)
    cyc0 = np.floor(np.cumsum(f0) / SR).astype(int)
    n_cyc = cyc0[-1] + 2
    f0 = f0 * (1.0 + spk["jitter"] * r.standard_normal(n_cyc))[cyc0]
    phase = np.cumsum(f0) * (_PULSE_LEN / SR)  # in pulse-table samples
    pos = phase.astype(np.int64)
    cyc = pos // _PULSE_LEN
    amp = np.exp(spk["shimmer"] * r.standard_normal(cyc[-1] + 2))
    flow = _rosenberg(spk["oq"], spk["sq"])[pos % _PULSE_LEN] * amp[cyc]
    dflow = np.diff(flow, prepend=0.0)
    dflow /= np.sqrt(np.mean(dflow**2)) + 1e-12
    breath = spk["breath"] * voice["breath"]
    asp = r.standard_normal(n_src) * (0.3 + flow)
    asp = np.diff(asp, prepend=0.0) * 0.7  # aspiration is high-pass
    src = dflow + breath * asp

    # ---- filter (frame domain) -------------------------------------------------------------------------
    tract = _formant_envelope(formants, bws)
    tilt = spk["tilt"] + voice["tilt_shift"]
    tilt_curve = (10.0 ** (-tilt / 20.0 * np.log2(np.maximum(FREQS, 300.0) / 300.0))).astype(np.float32)
    src_spec = _stft(src[:length], n_frames)
    noise_spec = _stft(r.standard_normal(length, dtype=np.float32), n_frames)
    fric = _fric_spectra(spk).astype(np.float32)[ft]
    va, fa, aa = va.astype(np.float32), fa.astype(np.float32), aa.astype(np.float32)
    env_v = tract * (tilt_curve[None, :] * va[:, None])
    env_n = fric * fa[:, None] + tract * (0.25 * aa)[:, None]

    # ---- session nuisances (reverberation, background noise and channel in the STFT domain) -------------
    spec = src_spec * env_v
    spec += noise_spec * env_n
    if ses["reverb"] is not None:
        spec = _stft(fftconvolve(_istft(spec, length), ses["reverb"])[:length], n_frames)
    # background noise re-uses the white-noise STFT of the frication source (a different colour, level and
    # time course; frication is sparse, so sharing the random numbers is inaudible and saves an STFT)
    nz = ses["noise"]
    bg = noise_spec * _noise_curve(nz, FREQS).astype(np.float32)
    if nz["modulated"]:  # babble-like: slowly fluctuating level
        env = _smooth(r.standard_normal(n_frames // 2 + 2), 6)
        env = np.exp(1.2 * env / (np.std(env) + 1e-9))
        bg *= np.interp(np.arange(n_frames), np.arange(len(env)) * 2.0, env).astype(np.float32)[:, None]
    snr = np.clip(nz["snr"] + r.normal(0.0, 2.0), 3.0, 35.0)
    bg *= np.sqrt(_power(spec) / (_power(bg) + 1e-20) / 10.0 ** (snr / 10.0))
    spec += bg
    spec *= _channel_curve(ses["channel"], FREQS).astype(np.float32)
    mix = _istft(spec, length)
    if nz["hum"] > 0:  # mains hum picked up after the microphone
        n = np.arange(length) / SR
        hum = sum(np.sin(2.0 * np.pi * k * nz["hum_f"] * n + k) / k for k in (1, 2, 3))
        mix = mix + hum * (nz["hum"] * np.sqrt(np.mean(mix**2)) * 10.0 ** (-snr / 20.0) * 2.0)
    return mix


def to_int16(x: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Peak-normalise to a random level between -20 and -1 dBFS and convert (never clips)."""
    x = x - np.mean(x)
    peak = np.max(np.abs(x))
    target = 10.0 ** (r.uniform(-20.0, -1.0) / 20.0) * 32767.0
    y = np.round(x * (target / peak)) if peak > 0 else np.zeros_like(x)
    return np.clip(y, -32767, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------------------------
# corpus layout
# --------------------------------------------------------------------------------------------------------


def _option(default, help_text: str):
    """A :class:`CorpusConfig` field: its default and the help text of its ``dataprep.py --NAME`` flag."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class CorpusConfig:
    """What a corpus is a pure function of.  Each field is a keyword of :func:`make_corpus` and a ``dataprep.py``
    flag of the same name, default and help."""

    speakers: int = _option(300, "training speakers")
    utterances: int = _option(12, "utterances per training speaker")
    test_speakers: int = _option(40, "held-out speakers for veri_test.txt")
    test_utterances: int = _option(12, "utterances per test speaker")
    trials: int = _option(3000, "verification trials")
    min_duration: float = _option(2.1, "shortest utterance, seconds")
    max_duration: float = _option(4.0, "longest utterance, seconds")
    seed: int = _option(0, "random seed")

    def validate(self) -> None:
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)

        for name in ("speakers", "utterances", "test_speakers", "test_utterances", "trials", "seed"):
            need(isinstance(getattr(self, name), (int, np.integer)), f"{name} must be an integer")
        need(self.speakers >= 1, f"speakers must be >= 1 (got {self.speakers})")
        need(self.utterances >= 1, f"utterances must be >= 1 (got {self.utterances})")
        need(self.test_speakers >= 2, f"test_speakers must be >= 2 (got {self.test_speakers})")
        need(self.test_utterances >= 2, f"test_utterances must be >= 2 (got {self.test_utterances})")
        need(self.trials >= 2, f"trials must be >= 2 (got {self.trials})")
        need(self.seed >= 0, f"seed must be >= 0 (got {self.seed})")
        need(0.1 <= self.min_duration <= self.max_duration <= 60.0,
             f"need 0.1 <= min_duration <= max_duration <= 60 (got {self.min_duration}, {self.max_duration})")
        need(self.speakers + self.test_speakers <= 99999, "at most 99999 speakers in total")
        max_targets = self.test_speakers * self.test_utterances * (self.test_utterances - 1) // 2
        need(self.trials // 2 <= max_targets,
             f"{self.trials} trials need {self.trials // 2} target pairs but only {max_targets} exist; "
             "lower --trials or raise --test_speakers / --test_utterances")


def _speaker_plan(cfg: CorpusConfig, role: int, index: int, n_utt: int) -> list[int]:
    """Session index of each utterance of a speaker (every session non-empty)."""
    r = _rng(cfg.seed, role, _S_PLAN, index)
    lo, hi = (max(3, n_utt // 2), max(6, n_utt)) if role == TRAIN else (3, 4)
    n_ses = int(min(n_utt, r.integers(lo, hi + 1)))
    return list(r.permutation(np.arange(n_utt) % n_ses) + 1)


def _speaker_ids(cfg: CorpusConfig) -> tuple[list[str], list[str]]:
    """Random distinct ``idNNNNN`` names, unrelated to generation order or voice parameters.

    One random permutation of 00001..99999 per seed: test speakers take names from its front, training speakers
    from its back, so the test split (names, audio, trials) does not depend on the number of training speakers.
    """
    perm = _rng(cfg.seed, 0, _S_IDS).permutation(np.arange(1, 100000))
    test = [f"id{n:05d}" for n in perm[: cfg.test_speakers]]
    train = [f"id{n:05d}" for n in perm[len(perm) - cfg.speakers :]]
    return train, test


@dataclass(frozen=True)
class _Job:
    seed: int
    role: int
    speaker: int
    session: int
    utterance: int
    min_duration: float
    max_duration: float
    path: str


def render_job(job: _Job) -> float:
    """Synthesise and write one file; returns its duration in seconds."""
    spk = speaker_params(job.seed, job.role, job.speaker)
    ses = session_params(job.seed, job.role, job.speaker, job.session)
    r = _rng(job.seed, job.role, _S_UTT, job.speaker, job.utterance)
    duration = r.uniform(job.min_duration, job.max_duration)
    y = to_int16(synthesize(spk, ses, r, duration), r)
    os.makedirs(os.path.dirname(job.path), exist_ok=True)
    sf.write(job.path, y, SR, subtype="PCM_16", format="WAV")
    return len(y) / SR


def _plan(cfg: CorpusConfig, train_root: str, test_root: str):
    train_ids, test_ids = _speaker_ids(cfg)
    jobs: list[_Job] = []
    train_lines: list[str] = []
    test_files: list[tuple[int, int, str]] = []  # (test speaker, session, relative path)
    for role, ids, n_utt in ((TRAIN, train_ids, cfg.utterances), (TEST, test_ids, cfg.test_utterances)):
        for index, spk_id in enumerate(ids):
            sessions = _speaker_plan(cfg, role, index, n_utt)
            per_session: dict[int, int] = {}
            for u, s in enumerate(sessions):
                per_session[s] = per_session.get(s, 0) + 1
                rel = f"{spk_id}/sess{s:02d}/{per_session[s]:05d}.wav"
                jobs.append(_Job(cfg.seed, role, index, s, u, cfg.min_duration, cfg.max_duration,
                                 os.path.join(train_root if role == TRAIN else test_root, rel)))
                if role == TRAIN:
                    train_lines.append((spk_id, rel))
                else:
                    test_files.append((index, s, rel))
    train_lines.sort()
    return jobs, [f"{a} {b}" for a, b in train_lines], test_files


def _trials(cfg: CorpusConfig, files: list[tuple[int, int, str]], draw: int = 0) -> list[str]:
    """About half target trials (cross-session pairs first), the rest random different-speaker pairs; ``draw``
    1, 2, ... gives other lists of the same files (draw 0 is ``veri_test.txt``)."""
    r = _rng(cfg.seed, TEST, _S_TRIALS, cfg.test_speakers, cfg.test_utterances, cfg.trials, *([draw] if draw else []))
    n_target = cfg.trials // 2
    n_non = cfg.trials - n_target
    cross, same = [], []
    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            if files[i][0] == files[j][0]:
                (cross if files[i][1] != files[j][1] else same).append((i, j))
    cross = [cross[k] for k in r.permutation(len(cross))]
    same = [same[k] for k in r.permutation(len(same))]
    targets = (cross + same)[:n_target]
    spk = np.array([f[0] for f in files])
    nontargets: set = set()
    while len(nontargets) < n_non:
        a, b = r.integers(len(files), size=2)
        if spk[a] != spk[b]:
            nontargets.add((int(min(a, b)), int(max(a, b))))
    trials = [(1, i, j) for i, j in targets] + [(0, i, j) for i, j in sorted(nontargets)]
    order = r.permutation(len(trials))
    flips = r.random(len(trials)) < 0.5
    lines = []
    for k in order:
        lab, i, j = trials[k]
        if flips[k]:
            i, j = j, i
        lines.append(f"{lab} {files[i][2]} {files[j][2]}")
    return lines


def make_corpus(save_path: str, *, workers: int = 1, progress: bool = False, voxceleb_layout: bool = False,
                **config) -> dict:
    """Write a synthetic corpus under ``save_path`` and return its paths and statistics.

    ``config``: the :class:`CorpusConfig` fields by name (keywords only), each defaulting to the field's default;
    an unknown name is a ``TypeError``.

    Layout: ``save_path/wav/idNNNNN/sessSS/UUUUU.wav`` (16 kHz mono PCM_16), ``save_path/train_list.txt``
    (``speaker relative/path.wav`` over the training speakers) and ``save_path/veri_test.txt``
    (``label enroll.wav test.wav`` over the held-out speakers; paths relative to ``save_path/wav``).
    The files are a pure function of the arguments other than ``workers`` / ``progress``.

    ``voxceleb_layout``: VoxCeleb's layout instead, as the recipe (``recipes/voxceleb/run.sh``) expects it: the
    training speakers under ``save_path/voxceleb2``, the test speakers under ``save_path/voxceleb1``,
    ``train_list.txt`` relative to the first, and two trial lists relative to the second under the VoxCeleb site's
    names: ``veri_test2.txt`` (the same trials as ``veri_test.txt``) and ``list_test_all2.txt`` (as many trials
    again, another draw over the same files).

    Returns a dict with ``train_list``, ``test_list`` (the first of ``test_lists``), ``train_path`` (the training
    files' root), ``test_path``,
    ``save_path``, ``files``, ``seconds`` (audio), ``bytes`` (wav data on disk), ``elapsed`` and ``config``.
    A tiny corpus for unit tests (``speakers=40, utterances=6, test_speakers=8, test_utterances=6,
    trials=200, min_duration=max_duration=2.5``) renders in a few seconds.
    """
    cfg = CorpusConfig(**config)
    types = typing.get_type_hints(CorpusConfig)
    cfg = replace(cfg, **{f.name: float(getattr(cfg, f.name)) for f in fields(cfg) if types[f.name] is float})
    cfg.validate()
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer (got {workers})")
    save_path = os.path.abspath(save_path)
    train_root, test_root = (os.path.join(save_path, "voxceleb2"), os.path.join(save_path, "voxceleb1")) \
        if voxceleb_layout else (os.path.join(save_path, "wav"),) * 2
    jobs, train_lines, test_files = _plan(cfg, train_root, test_root)
    trial_lists = {"veri_test2.txt": _trials(cfg, test_files), "list_test_all2.txt": _trials(cfg, test_files, 1)} \
        if voxceleb_layout else {"veri_test.txt": _trials(cfg, test_files)}

    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="file", desc="synthesising", dynamic_ncols=True, mininterval=0.5)
    seconds = 0.0
    if workers == 1:
        for job in jobs:
            seconds += render_job(job)
            if bar is not None:
                bar.update(1)
    else:
        # spawn: the parent may hold threads (torch, pytest plugins); workers only need numpy/scipy
        with mp.get_context("spawn").Pool(workers) as pool:
            for dur in pool.imap_unordered(render_job, jobs, chunksize=8):
                seconds += dur
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0

    train_list = os.path.join(save_path, "train_list.txt")
    with open(train_list, "w") as f:
        f.write("\n".join(train_lines) + "\n")
    for name, trial_lines in trial_lists.items():
        with open(os.path.join(save_path, name), "w") as f:
            f.write("\n".join(trial_lines) + "\n")
    test_list = os.path.join(save_path, next(iter(trial_lists)))
    n_bytes = sum(os.path.getsize(j.path) for j in jobs)
    return {
        "save_path": save_path,
        "train_list": train_list,
        "test_list": test_list,
        "test_lists": [os.path.join(save_path, name) for name in trial_lists],
        "train_path": train_root,
        "test_path": test_root,
        "files": len(jobs),
        "seconds": seconds,
        "bytes": n_bytes,
        "elapsed": elapsed,
        "config": asdict(cfg),
    }
