"""Trust nothing: checkpoints that would run code, one run per folder, resumes of another run, exceptions with
loader workers running, damaged saved states and failed saves."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import trainSpeakerNet
from spknet import atomic, checkpoints
from spknet.checkpoints import DamagedCheckpoint, UnsafeCheckpoint, read_checkpoint, resume_point, save_checkpoint
from spknet.errors import SpeakerNetError
from spknet.identity import run_differences
from spknet.lock import RunLock
from spknet.model import SpeakerNet
from spknet.specs import TrainingSpec
from spknet.training.run import RunMismatch, run_identity
from spknet.training.trainer import ModelTrainer
from tests.helpers import REPO, SUBPROCESS_ENV, run_cli, start_held

FAST = ["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16", "--max_frames", "20",
        "--batch_size", "8", "--nDataLoaderThread", "0"]


class CreatesAFile:
    """A pickle that opens (creates) a file when it is loaded: code from the checkpoint running."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_checkpoint(path, marker):
    state = SpeakerNet.build("ResNetSE34L", "mp_balance", nOut=16, nSpeakers=40).state_dict()
    torch.save({"model_state_dict": state, "epoch": 1, "payload": CreatesAFile(marker)}, path)
    return path


def corpus_flags(corpus):
    return [f"--{key}={value}" for key, value in corpus.items()]


# ---- checkpoints that would run code -----------------------------------------------------------------------------

def test_a_pickle_that_runs_code_is_refused_naming_the_type(tmp_path):
    marker = tmp_path / "created"
    path = evil_checkpoint(tmp_path / "evil.model", marker)
    with pytest.raises(UnsafeCheckpoint, match=rf"{path}: refused: loading it would run code .*io\.open"):
        read_checkpoint(str(path))
    assert not marker.exists()
    loaded = read_checkpoint(str(path), trust=True)          # the explicit opt-in runs it
    loaded["payload"].close()
    assert marker.exists()


def test_own_checkpoints_load_without_trust(tmp_path):
    net = SpeakerNet.build("ResNetSE34L", "mp_balance", nOut=16, nSpeakers=4)
    for scheduler in ("plateau", "steplr"):
        trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="adam", scheduler=scheduler, lr=0.1,
                               mixedprec="fp16" if torch.cuda.is_available() else None))
        path = tmp_path / f"{scheduler}.model"
        save_checkpoint(str(path), trainer.state_dict(), 3, 12.5, {"epoch": 4, "batches": 2}, {"options": {}})
        assert read_checkpoint(str(path))["epoch"] == 3


@pytest.mark.parametrize("where", ["eval", "initial_model", "resume"])
def test_every_way_in_refuses_it(tiny_corpus, tmp_path, capsys, where):
    marker = tmp_path / "created"
    save_path = tmp_path / "run"
    argv = [*FAST, *corpus_flags(tiny_corpus), "--save_path", str(save_path), "--max_epoch", "1"]
    if where == "eval":
        argv += ["--eval", "--initial_model", str(evil_checkpoint(tmp_path / "evil.model", marker))]
    elif where == "initial_model":
        argv += ["--initial_model", str(evil_checkpoint(tmp_path / "evil.model", marker))]
    else:
        (save_path / "model").mkdir(parents=True)
        evil_checkpoint(save_path / "model" / "model000000001.model", marker)
    assert trainSpeakerNet.main(argv) == 2
    err = capsys.readouterr().err
    assert "refused: loading it would run code" in err and "--trust_checkpoint" in err
    assert not marker.exists()
    if where == "resume":                                     # refused, not mistaken for a damaged file
        assert (save_path / "model" / "model000000001.model").exists()


# ---- one run per folder ------------------------------------------------------------------------------------------

def test_a_held_folder_refuses_a_second_lock_naming_the_holder(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(SpeakerNetError, match=rf"{tmp_path}: another training run \(PID {os.getpid()}\)"):
            with RunLock(str(tmp_path)):
                pass
    with RunLock(str(tmp_path)):                              # released with its holder
        pass


# Takes the folder's lock, forks a child that keeps the lock file open (as a DataLoader worker does), prints the
# child's PID and waits to be killed.
HOLD_AND_FORK = """
import os, sys, time
sys.path.insert(0, {repo!r})
from spknet.lock import RunLock
with RunLock(sys.argv[1]):
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
"""


def test_a_killed_holder_s_lock_is_free_at_once_though_its_forked_child_lives(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK.format(repo=str(REPO)), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(SpeakerNetError, match=rf"another training run \(PID {holder.pid}\)"):
            with RunLock(str(tmp_path)):
                pass
        holder.kill()
        holder.wait()
        os.kill(child, 0)                                     # the child still runs, with the lock file open
        with RunLock(str(tmp_path)):                          # yet the folder is free at once, no retry
            pass
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_exits_at_once(tiny_corpus, tmp_path):
    save_path = tmp_path / "run"
    argv = [*FAST, *corpus_flags(tiny_corpus), "--save_path", str(save_path), "--max_epoch", "50"]
    # held by the run itself after the first step of epoch 2: everything it makes at its start (the TensorBoard
    # folder comes with the first epoch) exists, however fast the machine
    first = start_held(argv, 2, 1, tmp_path / "held")
    try:
        before = sorted(os.listdir(save_path))
        second = run_cli(*argv, timeout=120)
        assert second.returncode == 2
        assert f"{save_path}: another training run (PID {first.pid}) is using this folder" in second.stderr
        assert "Traceback" not in second.stderr and sorted(os.listdir(save_path)) == before
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the killed run's lock: a new run takes the folder
    with RunLock(str(save_path)):
        pass


# ---- resuming another run ----------------------------------------------------------------------------------------

def test_differences_list_the_options_that_change_the_run(tiny_corpus, tmp_path):
    argv = [*FAST, *corpus_flags(tiny_corpus)]
    def identity(argv):
        spec = trainSpeakerNet.spec_from_argv(argv)
        return run_identity(spec, spec.model.resolved())

    saved = identity(argv)
    moved = tmp_path / "train.txt"
    shutil.copy(tiny_corpus["train_list"], moved)
    same = identity([*argv, "--train_list", str(moved), "--max_epoch", "9", "--nDataLoaderThread", "3",
                     "--test_interval", "2"])
    assert run_differences(saved, same) == []
    moved.write_text(moved.read_text().splitlines()[0] + "\n")
    other = identity([*argv, "--train_list", str(moved), "--nOut", "32", "--lr", "0.01", "--window", "hamming",
                      "--nPerSpeaker", "3"])
    differences = run_differences(saved, other)
    assert differences == [("per_speaker", None, 3), ("lr", 0.001, 0.01), ("nOut", 16, 32),
                           ("window", "hann", "hamming"), ("train_list", None, None)]
    message = str(RunMismatch(str(tmp_path / "run"), "model000000001.model", differences))
    assert message.splitlines()[1:6] == ["  --nPerSpeaker: saved None, given 3", "  --lr: saved 0.001, given 0.01",
                                         "  --nOut: saved 16, given 32", "  --window: saved hann, given hamming",
                                         "  --train_list: other contents than the saved run's list"]


@pytest.mark.slow
def test_a_resume_refuses_another_run_and_accepts_session_options(tiny_corpus, tmp_path, capsys, console_log,
                                                                   one_thread):
    save_path = tmp_path / "run"
    argv = [*FAST, *corpus_flags(tiny_corpus), "--save_path", str(save_path)]
    assert trainSpeakerNet.main([*argv, "--max_epoch", "1"]) == 0
    for changed, message in [(["--nOut", "32"], "--nOut: saved 16, given 32"),
                             (["--optimizer", "sgd"], "--optimizer: saved adam, given sgd"),
                             (["--trainfunc", "angleproto"], "--trainfunc: saved mp_balance, given angleproto")]:
        capsys.readouterr()
        assert trainSpeakerNet.main([*argv, "--max_epoch", "2", *changed]) == 2
        error = capsys.readouterr().err
        assert message in error and "holds a run with other options" in error and "Traceback" not in error, error
    assert trainSpeakerNet.main([*argv, "--max_epoch", "2", "--test_interval", "1", "--nDataLoaderThread", "1"]) == 0
    assert "Resuming after epoch 1" in capsys.readouterr().out


# ---- an exception ends the process -------------------------------------------------------------------------------

FAIL_IN_A_STEP = """
import sys
from spknet.training import trainer as training
real_step, calls = training.ModelTrainer._step, []
def step(self, *args):
    calls.append(1)
    if len(calls) == 2:
        raise RuntimeError("injected failure in a step")
    return real_step(self, *args)
training.ModelTrainer._step = step
import trainSpeakerNet
sys.exit(trainSpeakerNet.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_exception_with_loader_workers_running_ends_the_process(tiny_corpus, tmp_path):
    argv = [*FAST[:-2], "--nDataLoaderThread", "2", *corpus_flags(tiny_corpus), "--save_path", str(tmp_path / "r"),
            "--max_epoch", "1"]
    started = time.time()
    result = subprocess.run([sys.executable, "-c", FAIL_IN_A_STEP, *argv], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, **SUBPROCESS_ENV})
    assert result.returncode == 1 and "RuntimeError: injected failure in a step" in result.stderr
    assert time.time() - started < 90


# ---- damaged states and failed saves ------------------------------------------------------------------------------

@pytest.fixture()
def trainer_state():
    net = SpeakerNet.build("ResNetSE34L", "mp_balance", nOut=16, nSpeakers=4)
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.1))
    return trainer.state_dict()


def test_a_damaged_newest_state_is_set_aside_and_the_newest_good_one_resumed(tmp_path, trainer_state, logged):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for epoch in (1, 2):
        save_checkpoint(str(model_dir / f"model{epoch:09d}.model"), trainer_state, epoch, 30.0, None)
    save_checkpoint(str(model_dir / "resume.state"), trainer_state, 3, 30.0, None)
    newest = (model_dir / "model000000002.model").read_bytes()
    (model_dir / "model000000002.model").write_bytes(newest[: len(newest) // 2])      # truncated
    (model_dir / "resume.state").write_bytes(b"\x00" * 100)                             # overwritten
    path, checkpoint = resume_point(str(model_dir))
    assert path == str(model_dir / "model000000001.model") and checkpoint["epoch"] == 1
    assert sorted(os.listdir(model_dir)) == ["model000000001.model", "model000000002.model.corrupt",
                                             "resume.state.corrupt"]
    warnings = "\n".join(record.getMessage() for record in logged.records if record.levelname == "WARNING")
    assert "model000000002.model: not a readable PyTorch checkpoint" in warnings
    assert "resume.state.corrupt now" in warnings
    with pytest.raises(DamagedCheckpoint):
        read_checkpoint(str(model_dir / "model000000002.model.corrupt"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, trainer_state, monkeypatch, code):
    path = tmp_path / "model000000001.model"
    save_checkpoint(str(path), trainer_state, 1, 30.0, None)
    before = path.read_bytes()

    def fail(descriptor):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(SpeakerNetError, match=rf"{path}: could not be saved \({os.strerror(code)}\)\. The previous "
                                              r"checkpoint is intact"):
        checkpoints.save_checkpoint(str(path), trainer_state, 2, 20.0, None)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


def test_inference_refuses_it_too(tmp_path):
    import SpeakerNet as speakernet
    marker = tmp_path / "created"
    path = evil_checkpoint(tmp_path / "evil.model", marker)
    with pytest.raises(UnsafeCheckpoint, match="refused: loading it would run code"):
        speakernet.load_embedder(str(path), device="cpu")
    assert not marker.exists()
