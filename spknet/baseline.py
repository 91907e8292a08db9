#!/usr/bin/env python
"""Non-learned speaker-verification baseline: MFCC statistics + cosine scoring.

Per file: 20 MFCCs (``torchaudio.transforms.MFCC`` after a 0.97 pre-emphasis: c1..c20 of 40 log-mel bands, 25 ms
Hamming windows every 10 ms; the energy coefficient c0 is left out because the output level of the corpus is
random), summarised by their mean and standard deviation over all frames -> a 40-dimensional vector.  Vectors are
z-normalised with the per-dimension mean / standard deviation of (a subsample of) the training files, trials are
scored by cosine similarity; lists are read and the EER computed as in training.

    python -m spknet.baseline DIR      # DIR holds train_list.txt, veri_test.txt and wav/
    -> baseline EER xx.xx%
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np
import torch
import torchaudio

from spknet.constants import SAMPLE_RATE
from spknet.data import FLOAT, read_audio, read_train_list
from spknet.errors import SpeakerNetError
from spknet.evaluation import Trial, compute_metrics, read_trial_list

WIN, HOP, NFFT = 400, 160, 512
N_MELS, N_MFCC = 40, 20
PRE_EMPHASIS = 0.97
# torchaudio's MFCC takes log(mel + 1e-6); the baseline's floor is 1e-8.  Scaling the waveform by 10 (the power by
# 100) puts the fixed 1e-6 at 1e-8 of the signal's power, and the gain itself only moves c0, which is dropped.
LOG_FLOOR_GAIN = 10.0

# torchaudio's DCT includes c0, which is dropped.  pad: with center=False torch.stft puts the 400-sample window in
# the middle of each 512-sample FFT frame, so (NFFT - WIN) // 2 zeros on either side make frame k start at sample
# k * HOP, as a 25-ms window every 10 ms from the first sample.  Symmetric Hamming (periodic=False), power spectrum,
# unnormalised HTK triangles over 20-7600 Hz, natural log, orthonormal DCT-II.
_MFCC = torchaudio.transforms.MFCC(
    sample_rate=SAMPLE_RATE, n_mfcc=N_MFCC + 1, dct_type=2, norm="ortho", log_mels=True,
    melkwargs={"n_fft": NFFT, "win_length": WIN, "hop_length": HOP, "pad": (NFFT - WIN) // 2, "center": False,
               "f_min": 20.0, "f_max": 7600.0, "n_mels": N_MELS, "window_fn": torch.hamming_window,
               "wkwargs": {"periodic": False}, "power": 2.0, "mel_scale": "htk", "norm": None},
)


def mfcc(x: np.ndarray) -> np.ndarray:
    """(frames, N_MFCC) MFCCs c1..c20 of a float waveform at 16 kHz (pre-emphasis 0.97, then torchaudio)."""
    x = torch.as_tensor(LOG_FLOOR_GAIN * np.asarray(x, dtype=np.float32))
    if len(x) < WIN:
        x = torch.nn.functional.pad(x, (0, WIN - len(x)))
    with torch.no_grad():
        c = _MFCC(torchaudio.functional.preemphasis(x, PRE_EMPHASIS))
    return c[1:].T.numpy().astype(np.float64)


def file_embedding(path: str) -> np.ndarray:
    """Mean and standard deviation of the MFCCs of one file (40 values); the file is read by the one reader (any
    rate resampled to 16 kHz, channels averaged, samples in [-1, 1])."""
    c = mfcc(read_audio(path, FLOAT, min_frames=1))
    return np.concatenate([c.mean(axis=0), c.std(axis=0)])


def compute_eer(labels, scores) -> float:
    """Equal error rate in percent, as the trainer reports it (:func:`spknet.evaluation.compute_metrics`)."""
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


@contextlib.contextmanager
def _one_thread():
    """torch on one thread for the while: the per-file transforms are small, more intra-op threads only add
    overhead, and spin when the cores are busy (docs/results.md, "Why the code is as it is")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def baseline_eer(corpus_dir: str, max_train_files: int = 1000) -> float:
    """EER (percent) of the MFCC-statistics cosine baseline on ``corpus_dir/veri_test.txt``."""
    wav_root = os.path.join(corpus_dir, "wav")
    train = read_train_list(os.path.join(corpus_dir, "train_list.txt"), wav_root)
    trials = read_trials(os.path.join(corpus_dir, "veri_test.txt"))
    with _one_thread():
        mean, std = train_statistics(train.files, max_train_files)
        scores = score_trials(trials, wav_root, mean, std)
    return compute_eer([t.label for t in trials], scores)


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
