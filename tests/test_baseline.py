"""MFCC-statistics baseline: EER helper, features, CLI, and the difficulty of the default synthetic corpus."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import dct

from spknet import baseline
from spknet.data import synthetic as sc
from spknet.errors import SpeakerNetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The default corpus with fewer training speakers.  The test split (speaker names, audio, trials) is a function of
# the seed and the test-split arguments only, so these are exactly the default corpus's 480 test files and 3000
# trials; the training files only feed the baseline's z-normalisation statistics (40 speakers x 6 files instead
# of 300 x 12; the full default corpus measures 26.93 %, this configuration 26.27 %).
DEFAULT_TEST_SPLIT = {"speakers": 40, "utterances": 6}


def test_compute_eer_known_values():
    assert baseline.compute_eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert baseline.compute_eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 100.0
    # one of four non-targets above one of four targets
    assert baseline.compute_eer([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9]) == 25.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20000)
    assert abs(baseline.compute_eer(labels, rng.random(20000)) - 50.0) < 2.0
    # two unit-variance Gaussians 2 sigma apart: EER = Phi(-1) = 15.87 %
    scores = rng.standard_normal(20000) + 2.0 * labels
    assert abs(baseline.compute_eer(labels, scores) - 15.87) < 1.0


def test_mfcc_shapes_and_embedding(tmp_path):
    x = np.random.default_rng(1).standard_normal(16000)
    c = baseline.mfcc(x)
    assert c.shape == (98, baseline.N_MFCC) and np.isfinite(c).all()
    assert baseline.mfcc(np.zeros(100)).shape == (1, baseline.N_MFCC)
    # level only moves c0, which is not used (up to the log floor)
    np.testing.assert_allclose(baseline.mfcc(0.01 * x), baseline.mfcc(x), atol=5e-3)


def reference_mfcc(x):
    """The baseline's front end in numpy/scipy (its implementation before torchaudio): pre-emphasis, 25-ms
    symmetric Hamming frames every 10 ms from the first sample, 512-point power spectrum, 40 HTK triangles over
    20-7600 Hz, log(. + 1e-8), orthonormal DCT-II, c1..c20."""
    x = np.pad(x, (0, max(0, 400 - len(x))))
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    frames = sliding_window_view(x, 400)[::160] * np.hamming(400)
    power = np.abs(np.fft.rfft(frames, n=512, axis=1)) ** 2
    mel = 2595.0 * np.log10(1.0 + np.array([20.0, 7600.0]) / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(mel[0], mel[1], 42) / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(512, 1.0 / 16000)[None, :]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fbank = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return dct(np.log(power @ fbank.T + 1e-8), type=2, norm="ortho", axis=1)[:, 1:21]


def test_mfcc_matches_the_reference_front_end(tiny):
    """torchaudio.transforms.MFCC as configured gives the reference's coefficients (float32 rounding aside)."""
    wav_root = tiny["train_path"]
    paths = sorted(os.path.join(d, n) for d, _, names in os.walk(wav_root) for n in names)[::7]
    signals = [sf.read(p, dtype="float64")[0] for p in paths]
    signals.append(np.random.default_rng(3).standard_normal(1234) * 0.1)
    for x in signals:
        ref, got = reference_mfcc(x), baseline.mfcc(x)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=2e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return sc.make_corpus(str(tmp_path_factory.mktemp("tiny")), speakers=8, utterances=3, test_speakers=4,
                          test_utterances=4, trials=40, min_duration=1.5, max_duration=2.0, seed=2)


@pytest.mark.slow
def test_baseline_eer_and_cli(tiny):
    eer = baseline.baseline_eer(tiny["save_path"])
    assert 0.0 <= eer <= 100.0
    res = subprocess.run([sys.executable, "-m", "spknet.baseline", tiny["save_path"]],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    m = re.fullmatch(r"baseline EER (\d+\.\d\d)%\n", res.stdout)
    assert m and abs(float(m.group(1)) - eer) < 0.006


@pytest.mark.slow
def test_cli_errors(tmp_path):
    res = subprocess.run([sys.executable, "-m", "spknet.baseline", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert res.returncode == 2 and "train_list.txt does not exist" in res.stderr


def test_trial_list_format_errors(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("a.wav b.wav\n")
    with pytest.raises(SpeakerNetError, match=r"t.txt: the baseline needs a labelled trial list"):
        baseline.read_trials(str(bad))
    bad.write_text("1 a.wav b.wav\n2 a.wav b.wav\n")
    with pytest.raises(SpeakerNetError, match=r"t.txt:2: expected"):
        baseline.read_trials(str(bad))


@pytest.mark.slow
def test_default_corpus_difficulty(tmp_path):
    """The MFCC baseline lands in 15-35 % EER on the default test split (calibrated to about 26 %)."""
    info = sc.make_corpus(str(tmp_path / "c"), workers=min(2, os.cpu_count() or 1), **DEFAULT_TEST_SPLIT)
    defaults = sc.CorpusConfig()
    assert info["config"]["test_speakers"] == defaults.test_speakers
    assert info["config"]["trials"] == defaults.trials
    eer = baseline.baseline_eer(info["save_path"])
    print(f"baseline EER on the default test split: {eer:.2f}%")
    assert 15.0 <= eer <= 35.0
