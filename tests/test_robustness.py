"""Never lose a run: SIGKILL during an epoch and during a save, non-finite losses, fuzzed lists and configs."""

import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spknet.data import read_train_list
from spknet.errors import SpeakerNetError
from spknet.evaluation import read_trial_list
from spknet.lock import RunLock
from spknet.model import SpeakerNet
from spknet.specs import TrainingSpec
from spknet.training.trainer import ModelTrainer
from tests.helpers import REPO, SUBPROCESS_ENV, nan_trainer, run_cli, start_held, wait_until
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
    process = start_held(argv, epoch=2, batch=1, marker=tmp_path / "held")      # epoch 2's first step made
    process.kill()
    process.wait()
    first = save_path / "model" / "model000000001.model"
    assert first.is_file() and not (save_path / "model" / "model000000002.model").exists()
    resumed = run_cli(*argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch 1" in resumed.stdout
    assert (save_path / "model" / "model000000002.model").is_file()


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


# A DataLoader whose one worker (started with the loaders' worker_init_fn) writes its PID and then sleeps for 10
# minutes inside __getitem__, where torch's own watchdog never looks at the parent: it ends sooner only by dying with
# its main process.
SLEEPING_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import torch
from spknet.data import ignore_stop_signals
class Sleeper(torch.utils.data.Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, index):
        with open(sys.argv[1] + ".tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(600)
        return index
next(iter(torch.utils.data.DataLoader(Sleeper(), num_workers=1, worker_init_fn=ignore_stop_signals)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_loader_worker_dies_with_its_sigkilled_main_process(tmp_path):
    pid_file = tmp_path / "worker.pid"
    main = subprocess.Popen([sys.executable, "-c", SLEEPING_WORKER.format(repo=str(REPO)), str(pid_file)],
                            env={**os.environ, **SUBPROCESS_ENV})
    try:
        assert wait_until(pid_file.exists, 120), "the worker never started"
        worker = int(pid_file.read_text())
        assert alive(worker)
        main.kill()
        main.wait()
        # the parent-death signal ends it within milliseconds; 30 s leaves any loaded machine its time
        assert wait_until(lambda: not alive(worker), 30), "the worker outlived its killed main process"
    finally:
        main.kill()
        if pid_file.exists() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_with_loader_workers_then_the_same_command_resumes_at_once(tiny_corpus, tmp_path):
    save_path = tmp_path / "run"
    argv = [*FAST, *corpus_flags(tiny_corpus), "--save_path", str(save_path), "--max_epoch", "2",
            "--nDataLoaderThread", "2"]
    process = start_held(argv, epoch=2, batch=1, marker=tmp_path / "held")      # epoch 2's workers running
    workers = children(process.pid)
    assert len(workers) >= 2, "no loader workers"
    process.kill()
    process.wait()
    assert not (save_path / "model" / "model000000002.model").exists()       # killed during epoch 2
    with RunLock(str(save_path)):          # free at once: RunLock never retries, a held folder fails at once
        pass
    assert wait_until(lambda: not any(alive(worker) for worker in workers), 30), "workers outlived the run"
    resumed = run_cli(*argv)
    assert "another training run" not in resumed.stderr
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch 1" in resumed.stdout
    assert (save_path / "model" / "model000000002.model").is_file()


def test_non_finite_loss_skips_the_step_with_a_warning(logged):
    trainer, loader = nan_trainer(bad_steps={2, 5})
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    progress = trainer.train_network(loader, epoch=1, show_progress=False)
    assert progress.finished and progress.steps == 6 and progress.batches == 8
    assert math.isfinite(progress.mean_loss)                              # the mean over the good steps
    warnings = [record.getMessage() for record in logged.records if record.levelname == "WARNING"]
    assert warnings == ["epoch 1, batch 1: non-finite loss (nan); step skipped",
                        "epoch 1, batch 4: non-finite loss (nan); step skipped"]
    assert any(not torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())


def test_several_non_finite_losses_in_a_row_stop_the_run():
    trainer, loader = nan_trainer(bad_steps=set(range(1, 9)))
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    with pytest.raises(SpeakerNetError, match="5 non-finite losses in a row"):
        trainer.train_network(loader, epoch=1, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())   # nothing was applied


def test_an_unknown_mixed_precision_is_an_error_naming_the_choices():
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="mp_balance", nOut=16, nSpeakers=4)
    with pytest.raises(SpeakerNetError, match=r"unknown mixed precision 'fp8': choose None or fp16 or bf16"):
        ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="plateau", lr=0.1,
                                                            mixedprec="fp8"))
    with pytest.raises(SpeakerNetError, match=r"unknown optimizer 'adamw2'"):
        ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="adamw2", scheduler="plateau", lr=0.1))
    with pytest.raises(SpeakerNetError, match=r"unknown scheduler 'cosine2'"):
        ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="cosine2", lr=0.1))


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


def _sleep_forever():
    import time
    time.sleep(600)


def test_main_leaves_the_callers_child_processes_alone(tmp_path):
    """A caller that runs ``main()`` in-process keeps its own child processes: main ends only its loader's
    workers."""
    import multiprocessing

    import trainSpeakerNet
    child = multiprocessing.get_context("fork").Process(target=_sleep_forever, daemon=True)
    child.start()
    try:
        assert trainSpeakerNet.main(["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--save_path",
                                     str(tmp_path / "run")]) == 2       # fails: no lists
        assert child.is_alive()
    finally:
        child.kill()
        child.join()
