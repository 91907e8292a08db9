"""The README's main command (``quickstart.py``) on a tiny corpus: baseline, training, evaluation, plots."""

import os
import re
import subprocess
import sys

import pytest

from spknet import baseline
from tests.helpers import REPO, SUBPROCESS_ENV
from trainSpeakerNet import parse_args

pytestmark = pytest.mark.slow      # subprocess runs of the command line (seconds each)


def run_quickstart(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "quickstart.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **SUBPROCESS_ENV},
                          check=False)


def test_quickstart_config_is_valid():
    args = parse_args(["--config", str(REPO / "configs" / "quickstart.yaml")])
    assert (args.model, args.encoder_type, args.trainfunc) == ("ResNetSE34L", "SAP", "mp_balance")
    assert args.eval_frames == 0 and args.max_epoch % args.test_interval == 0   # the last epoch is evaluated


def test_quickstart_trains_evaluates_and_plots(tiny_corpus, tmp_path):
    corpus = os.path.dirname(tiny_corpus["train_list"])
    save_path = tmp_path / "run"
    result = run_quickstart("--corpus", corpus, "--config", REPO / "configs" / "quickstart.yaml",
                            "--max_epoch", 2, "--test_interval", 1, "--max_frames", 20, "--batch_size", 8,
                            "--nDataLoaderThread", 0, "--save_path", save_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = re.search(r"MFCC-statistics baseline on .*veri_test.txt: EER (\d+\.\d\d)%", result.stdout)
    assert printed and printed.group(1) == f"{baseline.baseline_eer(corpus):.2f}"
    # the evaluations printed are the ones written to the run's scores.txt, each with its IT line's VEER
    printed_info = re.findall(r"^INFO epoch \d+: .*$", result.stdout, re.MULTILINE)
    scores = (save_path / "result" / "scores.txt").read_text()
    assert printed_info == re.findall(r"^INFO epoch \d+: .*$", scores, re.MULTILINE)
    evaluations = re.findall(r"^INFO epoch (\d): EER (\d+\.\d+), minDCF\(p=0.05\) ([\d.]+), minDCF\(p=0.01\) ([\d.]+)",
                             scores, re.MULTILINE)
    veers = re.findall(r"^IT (\d+), .*, VEER (\S+)$", scores, re.MULTILINE)
    assert [(epoch, eer) for epoch, eer, *_ in evaluations] == veers and [e for e, _ in veers] == ["1", "2"]
    # normalised minDCF: at most 1, and no lower for the rarer target prior
    assert all(float(dcf05) <= float(dcf01) <= 1.0001 for _, _, dcf05, dcf01 in evaluations), evaluations
    assert re.search(r"quickstart finished in \d+ s \(exit code 0\)", result.stdout)
    for name in ("det.png", "score_hist.png", "scores.txt"):
        assert (save_path / "result" / name).stat().st_size > 0
    assert not (tmp_path / "data").exists()           # the given corpus was used, nothing else was built


def test_own_lists_replace_the_synthetic_corpus(tiny_corpus, tmp_path):
    """With --train_list/--test_list (e.g. VoxCeleb) no synthetic corpus is built or scored."""
    absent = tmp_path / "no_corpus_here"
    save_path = tmp_path / "run"
    result = run_quickstart("--corpus", absent, "--max_epoch", 1, "--test_interval", 1, "--max_frames", 20,
                            "--batch_size", 8,
                            "--nDataLoaderThread", 0, "--save_path", save_path,
                            *[f"--{key}={value}" for key, value in tiny_corpus.items()], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not absent.exists() and "baseline" not in result.stdout
    assert (save_path / "model" / "model000000001.model").exists()
