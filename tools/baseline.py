#!/usr/bin/env python
"""Non-learned speaker-verification baseline: MFCC statistics + cosine scoring.

Per file: 20 MFCCs (c1..c20 of 40 log-mel bands, 25 ms Hamming windows every 10 ms; the energy coefficient c0 is
left out because the output level of the corpus is random), summarised by their mean and standard deviation over
all frames -> a 40-dimensional vector.  Vectors are z-normalised with the per-dimension mean / standard deviation of
(a subsample of) the training files, trials are scored by cosine similarity; lists are read and the EER computed as in training.

    python -m tools.baseline DIR      # DIR holds train_list.txt, veri_test.txt and wav/
    -> baseline EER xx.xx%
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import dct

from core.errors import SpeakerNetError
from core.evaluation import Trial, compute_metrics, read_trial_list
from DatasetLoader import read_train_list

SR = 16000
WIN, HOP, NFFT = 400, 160, 512
N_MELS, N_MFCC = 40, 20


def _mel_filterbank(n_mels: int = N_MELS, fmin: float = 20.0, fmax: float = 7600.0) -> np.ndarray:
    """Triangular HTK-mel filterbank, (n_mels, NFFT // 2 + 1)."""

    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    freqs = np.fft.rfftfreq(NFFT, 1.0 / SR)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


_FBANK = _mel_filterbank()
_WINDOW = np.hamming(WIN)


def mfcc(x: np.ndarray) -> np.ndarray:
    """(frames, N_MFCC) MFCCs c1..c20 of a float waveform at 16 kHz."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < WIN:
        x = np.pad(x, (0, WIN - len(x)))
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])  # pre-emphasis
    frames = sliding_window_view(x, WIN)[::HOP] * _WINDOW
    power = np.abs(np.fft.rfft(frames, n=NFFT, axis=1)) ** 2
    logmel = np.log(power @ _FBANK.T + 1e-8)
    return dct(logmel, type=2, norm="ortho", axis=1)[:, 1 : N_MFCC + 1]


def file_embedding(path: str) -> np.ndarray:
    """Mean and standard deviation of the MFCCs of one file (40 values)."""
    x, sr = sf.read(path, dtype="float64", always_2d=False)
    if sr != SR:
        raise ValueError(f"{path}: expected {SR} Hz, got {sr}")
    if x.ndim > 1:
        x = x.mean(axis=1)
    c = mfcc(x)
    return np.concatenate([c.mean(axis=0), c.std(axis=0)])


def compute_eer(labels, scores) -> float:
    """Equal error rate in percent, as the trainer reports it (:func:`tuneThreshold.compute_metrics`)."""
    return compute_metrics(scores, labels, p_targets=()).eer


def read_trials(path: str) -> list[Trial]:
    """A labelled trial list (the shared reader's formats and errors; labels are needed for an EER)."""
    trials = read_trial_list(path)
    if any(trial.label is None for trial in trials):
        raise SpeakerNetError(f"{path}: the baseline needs a labelled trial list ('<label> <enroll> <test>')")
    return trials


def train_statistics(train_files: list[str], max_files: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean / std of file embeddings over an evenly spaced subsample of ``train_files``."""
    if not train_files:
        raise ValueError("no training files for the normalisation statistics")
    idx = np.unique(np.linspace(0, len(train_files) - 1, min(max_files, len(train_files))).round().astype(int))
    emb = np.stack([file_embedding(train_files[i]) for i in idx])
    return emb.mean(axis=0), emb.std(axis=0) + 1e-8


def score_trials(trials: list[Trial], wav_root: str, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    files = sorted({p for t in trials for p in (t.enroll, t.test)})
    emb = {}
    for p in files:
        e = (file_embedding(os.path.join(wav_root, p)) - mean) / std
        emb[p] = e / (np.linalg.norm(e) + 1e-12)
    return np.array([float(emb[t.enroll] @ emb[t.test]) for t in trials])


def baseline_eer(corpus_dir: str, max_train_files: int = 1000) -> float:
    """EER (percent) of the MFCC-statistics cosine baseline on ``corpus_dir/veri_test.txt``."""
    wav_root = os.path.join(corpus_dir, "wav")
    train = read_train_list(os.path.join(corpus_dir, "train_list.txt"), wav_root)
    mean, std = train_statistics(train.files, max_train_files)
    trials = read_trials(os.path.join(corpus_dir, "veri_test.txt"))
    return compute_eer([t.label for t in trials], score_trials(trials, wav_root, mean, std))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_dir", help="directory with train_list.txt, veri_test.txt and wav/")
    parser.add_argument("--max_train_files", type=int, default=1000,
                        help="training files used for the z-normalisation statistics (evenly spaced subsample)")
    args = parser.parse_args(argv)
    for name in ("train_list.txt", "veri_test.txt", "wav"):
        if not os.path.exists(os.path.join(args.corpus_dir, name)):
            parser.error(f"{os.path.join(args.corpus_dir, name)} does not exist")
    if args.max_train_files < 1:
        parser.error("--max_train_files must be >= 1")
    try:
        print(f"baseline EER {baseline_eer(args.corpus_dir, args.max_train_files):.2f}%")
    except (SpeakerNetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
