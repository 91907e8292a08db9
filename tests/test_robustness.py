"""Never lose a run: SIGKILL during an epoch and during a save, non-finite losses, fuzzed lists and configs."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spknet.data import read_train_list
from spknet.errors import SpeakerNetError
from spknet.evaluation import read_trial_list
from spknet.model import SpeakerNet
from spknet.training.trainer import ModelTrainer
from tests.helpers import REPO, SUBPROCESS_ENV, run_cli
from trainSpeakerNet import parse_args

FAST = ["--max_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "0", "--model", "ResNetSE34L",
        "--trainfunc", "mp_balance"]

# Runs the real CLI, but SIGKILLs itself inside the first checkpoint save, after the temporary file is written
# and before it replaces the checkpoint: the worst moment for a crash.
KILL_DURING_SAVE = """
import os, signal, sys
from spknet import atomic
real_replace = os.replace
def replace(source, target):
    if target.endswith({suffix!r}):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, target)
atomic.os.replace = replace
import trainSpeakerNet
sys.exit(trainSpeakerNet.main(sys.argv[1:]))
"""


def corpus_flags(corpus):
    return [f"--{key}={value}" for key, value in corpus.items()]


@pytest.mark.slow
def test_sigkill_during_a_save_then_resume(tiny_corpus, tmp_path):
    save_path = tmp_path / "run"
    argv = [*FAST, *corpus_flags(tiny_corpus), "--save_path", str(save_path), "--max_epoch", "2"]
    script = KILL_DURING_SAVE.format(suffix="model000000002.model")
    killed = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=600,
                            cwd=REPO, env={**os.environ, **SUBPROCESS_ENV})
    assert killed.returncode == -signal.SIGKILL
    model_dir = save_path / "model"
    assert (model_dir / "model000000001.model").is_file()                 # the last complete epoch
    assert not (model_dir / "model000000002.model").exists()              # never half-written
    assert any(name.endswith(".tmp") for name in os.listdir(model_dir))   # the interrupted save's temporary
    resumed = run_cli(*argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch 1" in resumed.stdout
    assert (model_dir / "model000000002.model").is_file()
    assert not any(name.endswith(".tmp") for name in os.listdir(model_dir))
    lines = [line for line in (save_path / "result" / "scores.txt").read_text().splitlines() if line.startswith("IT")]
    assert [line.split(",")[0] for line in lines] == ["IT 1", "IT 2"]


@pytest.mark.slow
def test_sigkill_during_an_epoch_then_resume(tiny_corpus, tmp_path):
    save_path = tmp_path / "run"
    argv = [*FAST, *corpus_flags(tiny_corpus), "--save_path", str(save_path), "--max_epoch", "2"]
    process = subprocess.Popen([sys.executable, str(REPO / "trainSpeakerNet.py"), *argv],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **SUBPROCESS_ENV})
    first = save_path / "model" / "model000000001.model"
    deadline = time.time() + 300
    while time.time() < deadline and not first.exists():
        time.sleep(0.05)
    time.sleep(1.0)                                                       # into epoch 2
    process.kill()
    process.wait()
    assert first.is_file() and not (save_path / "model" / "model000000002.model").exists()
    resumed = run_cli(*argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch 1" in resumed.stdout
    assert (save_path / "model" / "model000000002.model").is_file()


class FakeLoader(list):
    """Batches without audio, with the sampler hook the trainer calls."""

    class batch_sampler:  # noqa: N801 (mimics DataLoader.batch_sampler)
        @staticmethod
        def start_at(batch):
            assert batch == 0


def nan_trainer(bad_steps):
    net = SpeakerNet(model="ResNetSE34L", trainfunc="mp_balance", nOut=16, nSpeakers=4)
    trainer = ModelTrainer(net, torch.device("cpu"), optimizer="sgd", scheduler="plateau", lr=0.1)
    real_forward = net.forward
    calls = {"n": 0}

    def forward(waves, labels, groups):
        loss, accuracy = real_forward(waves, labels, groups)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in bad_steps else loss), accuracy

    net.forward = forward
    batch = (torch.randn(8, 1000) * 1000, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([2, 2, 2, 2]))
    return trainer, FakeLoader([batch] * 8)


def test_non_finite_loss_skips_the_step_with_a_warning(capsys):
    trainer, loader = nan_trainer(bad_steps={2, 5})
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    progress = trainer.train_network(loader, epoch=1, show_progress=False)
    assert progress.finished and progress.steps == 6 and progress.batches == 8
    assert math.isfinite(progress.mean_loss)                              # the mean over the good steps
    err = capsys.readouterr().err
    assert "epoch 1, batch 1: non-finite loss" in err and "epoch 1, batch 4: non-finite loss" in err
    assert any(not torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())


def test_several_non_finite_losses_in_a_row_stop_the_run():
    trainer, loader = nan_trainer(bad_steps=set(range(1, 9)))
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    with pytest.raises(SpeakerNetError, match="5 non-finite losses in a row"):
        trainer.train_network(loader, epoch=1, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())   # nothing was applied


# ---- fuzzing: any input ends in the project's own error, never a traceback ----------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
LINES = st.lists(st.one_of(TEXT, st.sampled_from(["id1 a.wav", "1 a.wav b.wav", "a.wav b.wav", "", "  ",
                                                    "0 x y z"])), max_size=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(lines=LINES, raw=st.binary(max_size=64))
def test_fuzz_list_parsing(tmp_path, lines, raw):
    path = tmp_path / "list.txt"
    for content in ("\n".join(lines).encode("utf-8", "surrogatepass"), raw):
        path.write_bytes(content)
        for parse in (lambda p: read_train_list(p, "root"), read_trial_list):
            try:
                parse(str(path))
            except SpeakerNetError as error:
                assert str(path) in str(error)


YAML_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)
KEYS = st.one_of(st.sampled_from(["lr", "batch_size", "eval", "encoder_type", "model", "nClasses", "margin",
                                  "log_input", "max_frames", "test_list"]), TEXT)


@FUZZ
@given(config=st.one_of(st.dictionaries(KEYS, YAML_VALUES, max_size=4), YAML_VALUES), raw=TEXT)
def test_fuzz_config_parsing(tmp_path, config, raw):
    import yaml
    path = tmp_path / "config.yaml"
    for content in (yaml.safe_dump(config, allow_unicode=True), raw):
        path.write_text(content, encoding="utf-8")
        try:
            parse_args(["--config", str(path)])
        except SpeakerNetError as error:
            assert str(path) in str(error)


def test_atomic_writes_get_the_permissions_a_plain_open_gives(tmp_path):
    from spknet import atomic
    previous = os.umask(0o022)
    try:
        atomic.write_text(str(tmp_path / "scores.txt"), "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "scores.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
