"""End to end through the command line on a tiny synthetic corpus: the original's training commands, logs,
checkpoints, resume, and the errors a user meets first."""

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch

import trainSpeakerNet
from tests.helpers import REPO, SUBPROCESS_ENV, fixture_file, run_cli

pytestmark = pytest.mark.slow      # subprocess runs of the command line (seconds each)

SCORE = re.compile(r"^IT (\d+), LR (\d+\.\d{6}), TEER/T1 (\d+\.\d{2}), TLOSS (-?\d+\.\d{6}), VEER (\d+\.\d{4})$")
TRAIN = re.compile(r"^IT (\d+), LR (\d+\.\d{6}), TEER (\d+\.\d{2}), TLOSS (-?\d+\.\d{6})$")
# Appended to keep CI fast: 0.5-s crops, small batches, 2 loader workers (later flags override earlier ones).
FAST = ["--max_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "2"]


def readme_training_commands():
    text = fixture_file("seed-README.md").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("python ./trainSpeakerNet.py")]
    return [shlex.split(line)[2:] for line in lines if "--eval" not in line]


def with_data(argv, corpus, save_path):
    """The README's command with only the data paths (and the run folder) changed."""
    replace = {"--train_list": corpus["train_list"], "--test_list": corpus["test_list"],
               "--train_path": corpus["train_path"], "--test_path": corpus["test_path"], "--save_path": save_path}
    out = list(argv)
    for i, token in enumerate(out[:-1]):
        if token in replace:
            out[i + 1] = str(replace[token])
    return out


def log_lines(save_path):
    lines = (save_path / "result" / "scores.txt").read_text().splitlines()
    return [line for line in lines if line.startswith("IT ")]


@pytest.mark.parametrize("index", range(4), ids=["mp_balance", "mmp_balance2", "mp", "mmp"])
def test_original_training_commands(tiny_corpus, tmp_path, index):
    save_path = tmp_path / "run"
    argv = with_data(readme_training_commands()[index], tiny_corpus, save_path) + ["--max_epoch", "2"] + FAST
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = log_lines(save_path)
    assert len(lines) == 2 and all(SCORE.match(line) for line in lines), lines
    losses = [float(SCORE.match(line).group(4)) for line in lines]
    assert all(0 < loss < 100 for loss in losses)
    assert (save_path / "model" / "model000000002.model").is_file()
    assert (save_path / "model" / "model000000002.eer").read_text() == SCORE.match(lines[1]).group(5)
    header = (save_path / "result" / "scores.txt").read_text().splitlines()
    assert "model ResNetSE34L" in header and "encoder_type SAP" in header
    assert "epoch 2" in result.stdout and "utt_s=" in result.stdout      # the progress bar


def test_interval_lines_and_exact_resume(tiny_corpus, tmp_path, capsys, console_log, one_thread):
    """Epochs without evaluation log the short line; a run stopped after epoch 1 and resumed ends with exactly
    the weights of an uninterrupted run (the three runs in this process, as a second command would run them)."""
    base = ["--model", "ResNetSE34L", "--trainfunc", "mp", "--optimizer", "sgd", "--lr", "0.2", "--test_interval",
            "2", *[f"--{k}={v}" for k, v in tiny_corpus.items()], *FAST]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert trainSpeakerNet.main([*base, "--save_path", str(straight), "--max_epoch", "2"]) == 0
    assert trainSpeakerNet.main([*base, "--save_path", str(resumed), "--max_epoch", "1"]) == 0
    assert (resumed / "model" / "resume.state").is_file()
    capsys.readouterr()
    assert trainSpeakerNet.main([*base, "--save_path", str(resumed), "--max_epoch", "2"]) == 0
    assert "Resuming after epoch 1" in capsys.readouterr().out
    assert TRAIN.match(log_lines(resumed)[0]) and SCORE.match(log_lines(resumed)[1])
    assert log_lines(resumed) == log_lines(straight)
    a = torch.load(straight / "model" / "model000000002.model", weights_only=True)["model_state_dict"]
    b = torch.load(resumed / "model" / "model000000002.model", weights_only=True)["model_state_dict"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not (resumed / "model" / "resume.state").exists()


# Runs the real CLI, and sends itself SIGTERM the instant the run makes its first file in its folder (the audit
# event of that mkdir or open, before it runs): the stop handlers must already be in place, or the run dies (-15).
SIGTERM_AT_FIRST_FILE = """
import os, signal, sys
folder = os.path.abspath(sys.argv[sys.argv.index("--save_path") + 1])
sent = []
def hook(event, args):
    makes = event == "os.mkdir" or (event == "open" and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if sent or not makes or not isinstance(args[0], (str, os.PathLike)):
        return
    path = os.path.abspath(os.fspath(args[0]))
    if path == folder or path.startswith(folder + os.sep):
        sent.append(path)
        os.kill(os.getpid(), signal.SIGTERM)
sys.addaudithook(hook)
import trainSpeakerNet
code = trainSpeakerNet.main(sys.argv[1:])
assert sent, "nothing made in the run folder"
sys.exit(code)
"""


def test_sigterm_at_the_first_file_of_the_run_saves_and_resumes(tiny_corpus, tmp_path):
    """The stop handlers are in place before the run makes any file: a SIGTERM at that instant stops it after its
    first step, saved, with 143; the same command resumes from there."""
    save_path = tmp_path / "run"
    argv = ["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--save_path", save_path, "--max_epoch", "3",
            *[f"--{k}={v}" for k, v in tiny_corpus.items()], *FAST[:-1], "0", "--batch_size", "4"]
    stopped = subprocess.run([sys.executable, "-c", SIGTERM_AT_FIRST_FILE, *map(str, argv)], capture_output=True,
                             text=True, timeout=600, cwd=REPO, env={**os.environ, **SUBPROCESS_ENV})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "SIGTERM received" in stopped.stderr and "Traceback" not in stopped.stderr
    assert "Stopped during epoch 1 after 1 batches" in stopped.stderr
    assert "Run the same command again to resume" in stopped.stderr
    state = torch.load(save_path / "model" / "resume.state", weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["batches"] == 1
    result = run_cli(*argv, "--max_epoch", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming epoch 1, batch 1" in result.stdout
    assert (save_path / "model" / "model000000001.model").is_file()


@pytest.mark.parametrize("case", ["missing_audio", "malformed_line", "unfillable", "unknown_model", "missing_list"])
def test_bad_input_fails_cleanly(tiny_corpus, tmp_path, case):
    train_list = tmp_path / "train.txt"
    lines = open(tiny_corpus["train_list"]).read().splitlines()
    args = {"model": "ResNetSE34L", "trainfunc": "mp_balance", "batch_size": "8", **tiny_corpus,
            "train_list": train_list, "save_path": tmp_path / "run"}
    if case == "missing_audio":
        lines += ["idX idX/none1.wav", "idX idX/none2.wav"]
        expected = r"train.txt: 2 audio file\(s\) listed but not found:\n  .*none1.wav"
    elif case == "malformed_line":
        lines.insert(3, "id00001")
        expected = r"train.txt:4: expected '<speaker> <path.wav>' \(2 fields\), got 1"
    elif case == "unfillable":
        args["batch_size"] = "41"
        expected = r"--batch_size 41: batches of 41 groups can never be filled: .* has 40"
    elif case == "unknown_model":
        args["model"] = "ResNet"
        expected = r"unknown --model 'ResNet'; choices: .*ResNetSE34L"
    else:
        args["train_list"] = tmp_path / "nope.txt"
        expected = r"nope.txt: list file not found"
    train_list.write_text("\n".join(lines) + "\n")
    result = run_cli(*[item for key, value in args.items() for item in (f"--{key}", value)])
    assert result.returncode == 2
    assert re.search(expected, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()          # nothing half-written
