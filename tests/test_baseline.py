"""MFCC-statistics baseline: EER helper, features, CLI, and the difficulty of the default synthetic corpus."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tools import baseline
from tools import synthetic_corpus as sc
from core.errors import SpeakerNetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The default corpus with fewer training speakers.  The test split (speaker names, audio, trials) is a function of
# the seed and the test-split arguments only, so these are exactly the default corpus's 480 test files and 3000
# trials; the training files only feed the baseline's z-normalisation statistics (40 speakers x 6 files instead
# of 300 x 12; the full default corpus measured 26.8 %, this configuration 26.9 %).
DEFAULT_TEST_SPLIT = dict(speakers=40, utterances=6)


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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return sc.make_corpus(str(tmp_path_factory.mktemp("tiny")), speakers=8, utterances=3, test_speakers=4,
                          test_utterances=4, trials=40, min_duration=1.5, max_duration=2.0, seed=2)


def test_baseline_eer_and_cli(tiny):
    eer = baseline.baseline_eer(tiny["save_path"])
    assert 0.0 <= eer <= 100.0
    res = subprocess.run([sys.executable, "-m", "tools.baseline", tiny["save_path"]],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    m = re.fullmatch(r"baseline EER (\d+\.\d\d)%\n", res.stdout)
    assert m and abs(float(m.group(1)) - eer) < 0.006


def test_cli_errors(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tools.baseline", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and "train_list.txt does not exist" in res.stderr


def test_trial_list_format_errors(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("a.wav b.wav\n")
    with pytest.raises(SpeakerNetError, match=r"t.txt: the baseline needs a labelled trial list"):
        baseline.read_trials(str(bad))
    bad.write_text("1 a.wav b.wav\n2 a.wav b.wav\n")
    with pytest.raises(SpeakerNetError, match=r"t.txt:2: expected"):
        baseline.read_trials(str(bad))


def test_default_corpus_difficulty(tmp_path):
    """The MFCC baseline lands in 15-35 % EER on the default test split (calibrated to about 26 %)."""
    info = sc.make_corpus(str(tmp_path / "c"), workers=min(2, os.cpu_count() or 1), **DEFAULT_TEST_SPLIT)
    defaults = sc.CorpusConfig()
    assert info["config"]["test_speakers"] == defaults.test_speakers
    assert info["config"]["trials"] == defaults.trials
    eer = baseline.baseline_eer(info["save_path"])
    print(f"baseline EER on the default test split: {eer:.2f}%")
    assert 15.0 <= eer <= 35.0
