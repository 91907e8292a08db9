"""Watching a run train: TensorBoard event files (what scores.txt says, per epoch and every few steps), the share
of each epoch spent waiting for data, and the per-epoch picture of several runs (summarise_runs.py --plot)."""

import re
import sys
import time

import pytest
import torch

import trainSpeakerNet
from spknet.model import SpeakerNet
from spknet.specs import TrainingSpec
from spknet.training import board
from spknet.training.trainer import ModelTrainer

FAST = ["--max_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "2"]
SCORE = re.compile(r"^IT (\d+), LR ([\d.]+), TEER/T1 ([\d.]+), TLOSS ([-\d.]+), VEER ([\d.]+)$")
INFO = re.compile(r"^INFO epoch (\d+): EER ([\d.]+), minDCF\(p=0\.05\) ([\d.]+), minDCF\(p=0\.01\) ([\d.]+), "
                  r"train [\d.]+ s, eval [\d.]+ s, data wait (\d+)%$")
BAR_END = re.compile(r"epoch (\d+): 100%.*?\| (\d+)/\2 \[")

from scripts import summarise_runs as summarise  # noqa: E402


def corpus_flags(corpus):
    return [f"--{key}={value}" for key, value in corpus.items()]


def scalars(folder) -> dict:
    """Every scalar tag of the event files in ``folder``: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


# ---- a training run's event files ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_resumed_two_epoch_run_logs_what_scores_txt_says(tiny_corpus, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(board, "STEP_INTERVAL", 5)
    save_path = tmp_path / "run"
    argv = ["--model", "ResNetSE34L", "--trainfunc", "aamsoftmax", "--margin", "0.2", "--scale", "15",
            *corpus_flags(tiny_corpus), "--save_path", str(save_path), *FAST]
    batches = {}
    for epochs in (1, 2):                           # epoch 2 in a second session: resumed into the same folder
        assert trainSpeakerNet.main([*argv, "--max_epoch", str(epochs)]) == 0
        batches.update({int(epoch): int(count) for epoch, count in BAR_END.findall(capsys.readouterr().out)})
    assert sorted(batches) == [1, 2]

    folder = save_path / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2          # one event file per session
    logged = scalars(folder)
    lines = (save_path / "result" / "scores.txt").read_text().splitlines()
    its = [SCORE.match(line).groups() for line in lines if line.startswith("IT ")]
    infos = [INFO.match(line).groups() for line in lines if line.startswith("INFO epoch")]
    assert len(its) == len(infos) == 2, lines

    for tag in ("epoch/loss", "epoch/accuracy", "epoch/lr", "epoch/margin", "epoch/utterances_per_s",
                "epoch/data_wait", "VEER/veri_test", "minDCF_p0.05/veri_test", "minDCF_p0.01/veri_test"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag
    for (epoch, lr, accuracy, loss, veer), (_, eer, dcf05, dcf01, wait) in zip(its, infos):
        at = int(epoch) - 1
        assert logged["epoch/loss"][at][1] == pytest.approx(float(loss), abs=1e-5)
        assert logged["epoch/accuracy"][at][1] == pytest.approx(float(accuracy), abs=5e-3)
        assert logged["epoch/lr"][at][1] == pytest.approx(float(lr), abs=1e-6)
        assert logged["VEER/veri_test"][at][1] == pytest.approx(float(veer), abs=1e-4) and eer == veer
        assert logged["minDCF_p0.05/veri_test"][at][1] == pytest.approx(float(dcf05), abs=1e-4)
        assert logged["minDCF_p0.01/veri_test"][at][1] == pytest.approx(float(dcf01), abs=1e-4)
        data_wait = logged["epoch/data_wait"][at][1]
        assert 0.0 <= data_wait <= 1.0 and abs(100 * data_wait - int(wait)) <= 1
        assert logged["epoch/margin"][at][1] == pytest.approx(0.2)
        assert logged["epoch/utterances_per_s"][at][1] > 0

    # every 5th batch, on one rising axis across both epochs and sessions: epoch e spans ((e - 1) * S, e * S] in
    # units of the first epoch's length S, also when its own length differs (the sampler's epochs may)
    first = batches[1]
    expected = [(epoch - 1) * first + round(batch * first / batches[epoch])
                for epoch in (1, 2) for batch in range(5, batches[epoch] + 1, 5)]
    assert expected == sorted(set(expected)) and expected[-1] <= 2 * first
    for tag in ("step/loss", "step/accuracy", "step/lr", "step/margin"):
        assert [step for step, _ in logged[tag]] == expected, tag
    assert [value for _, value in logged["step/margin"]] == pytest.approx([0.2] * len(expected))
    assert all(0 < value < 100 for _, value in logged["step/loss"])


@pytest.mark.slow
def test_tensorboard_false_writes_no_event_file(tiny_corpus, tmp_path, one_thread):
    save_path = tmp_path / "run"
    argv = ["--model", "ResNetSE34L", "--trainfunc", "mp_balance", *corpus_flags(tiny_corpus), *FAST,
            "--save_path", str(save_path), "--max_epoch", "1", "--test_interval", "2", "--tensorboard", "false"]
    assert trainSpeakerNet.main(argv) == 0
    assert (save_path / "result" / "scores.txt").is_file() and not (save_path / "tensorboard").exists()


@pytest.mark.slow
def test_without_the_package_the_run_trains_and_says_so_once(tiny_corpus, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setitem(sys.modules, "tensorboard", None)          # import tensorboard fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    save_path = tmp_path / "run"
    argv = ["--model", "ResNetSE34L", "--trainfunc", "mp_balance", *corpus_flags(tiny_corpus), *FAST,
            "--save_path", str(save_path), "--max_epoch", "2", "--test_interval", "3"]
    assert trainSpeakerNet.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("pip install tensorboard") == 1 and f"WARNING: {board.HINT}" in err
    assert not (save_path / "tensorboard").exists()
    info = [line for line in (save_path / "result" / "scores.txt").read_text().splitlines() if line.startswith("INFO")]
    assert len(info) == 2 and all(re.fullmatch(r"INFO epoch \d: train [\d.]+ s, data wait \d+%", line)
                                  for line in info)


def test_the_flag_takes_true_or_false():
    assert trainSpeakerNet.spec_from_argv([]).training.tensorboard is True
    assert trainSpeakerNet.spec_from_argv(["--tensorboard", "false"]).training.tensorboard is False
    assert trainSpeakerNet.spec_from_argv(["--tensorboard", "True"]).training.tensorboard is True
    with pytest.raises(SystemExit):
        trainSpeakerNet.parse_args(["--tensorboard", "maybe"])


def test_the_yaml_key_takes_a_boolean(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("tensorboard: false\n")
    assert trainSpeakerNet.spec_from_argv(["--config", str(config)]).training.tensorboard is False
    config.write_text("tensorboard: 3\n")
    assert trainSpeakerNet.main(["--config", str(config)]) == 2
    assert "key 'tensorboard' expects true or false, got 3" in capsys.readouterr().err


# ---- the trainer's timing and step monitor ---------------------------------------------------------------------

def small_trainer(steps_per_epoch=None):
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="mp_balance", nOut=16, nSpeakers=4)
    return ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.01),
                        steps_per_epoch=steps_per_epoch)


def batches(count):
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 1000, generator=generator) * 1000, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
             torch.tensor([2, 2, 2, 2]))
    return [batch] * count


class SlowLoader(list):
    """Batches that take ``delay`` seconds each to arrive."""

    def __init__(self, items, delay):
        super().__init__(items)
        self.delay = delay

    def __iter__(self):
        for item in list.__iter__(self):
            time.sleep(self.delay)
            yield item


def test_data_wait_is_the_share_of_the_loop_spent_waiting_for_batches(one_thread):
    trainer = small_trainer()
    fast = trainer.train_network(batches(4), epoch=1, show_progress=False)
    slow = trainer.train_network(SlowLoader(batches(4), delay=0.3), epoch=2, show_progress=False)
    assert slow.wait_seconds >= 4 * 0.3 and slow.loop_seconds >= slow.wait_seconds
    assert 0.0 <= fast.data_wait < slow.data_wait <= 1.0
    assert slow.utterances == 4 * 8 and slow.utterances_per_second == pytest.approx(32 / slow.loop_seconds)
    assert "wait_seconds" not in slow.state() and "loop_seconds" not in slow.state()     # not kept in checkpoints


class Recorder:
    step_interval = 3

    def __init__(self):
        self.calls = []

    def log_step(self, step, values):
        self.calls.append((step, values))


def test_the_monitor_gets_every_nth_step_on_one_axis(one_thread):
    trainer, monitor = small_trainer(steps_per_epoch=6), Recorder()
    for epoch in (1, 2):
        trainer.train_network(batches(6), epoch=epoch, show_progress=False, monitor=monitor)
    assert [step for step, _ in monitor.calls] == [3, 6, 9, 12]
    assert all(set(values) == {"loss", "accuracy", "lr"} for _, values in monitor.calls)     # mp_balance: no margin
    assert all(values["lr"] == 0.01 for _, values in monitor.calls)


def test_an_epoch_of_another_length_stays_in_its_span():
    trainer = small_trainer(steps_per_epoch=10)
    assert trainer.step_position(3, 10, 10) == 30
    assert [trainer.step_position(2, batches, 12) for batches in (1, 6, 12)] == [11, 15, 20]


# ---- summarise_runs.py --plot ----------------------------------------------------------------------------------

def scores_text(veers, losses):
    lines = ["trainfunc mp"]
    for epoch, (veer, loss) in enumerate(zip(veers, losses), start=1):
        if veer is None:
            lines += [f"IT {epoch}, LR 0.001000, TEER 10.00, TLOSS {loss:f}", f"INFO epoch {epoch}: train 1.0 s"]
        else:
            lines += [f"IT {epoch}, LR 0.001000, TEER/T1 10.00, TLOSS {loss:f}, VEER {veer:2.4f}",
                      f"INFO epoch {epoch}: EER {veer:2.4f}, minDCF(p=0.05) 0.5000, train 1.0 s, data wait 3%"]
    return "\n".join(lines) + "\n"


def test_plot_draws_veer_and_loss_per_epoch_of_each_run(tmp_path, capsys):
    runs = {"a": ([30.0, 25.0, 20.0], [5.0, 4.0, 3.5]), "b": ([None, 28.0, None, 22.0], [6.0, 5.0, 4.5, 4.0])}
    for name, (veers, losses) in runs.items():
        (tmp_path / name / "result").mkdir(parents=True)
        (tmp_path / name / "result" / "scores.txt").write_text(scores_text(veers, losses))
    out = tmp_path / "runs.png"
    assert summarise.main(["--plot", "--out", str(out), str(tmp_path), "a", "b"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {out}" in capsys.readouterr().out

    figure = summarise.plot_runs([summarise.summarise_run(str(tmp_path / name), name) for name in runs])
    veer_axes, loss_axes = figure.axes
    assert [line.get_label() for line in veer_axes.get_lines()] == ["a", "b"]
    assert [line.get_label() for line in loss_axes.get_lines()] == ["a", "b"]
    assert [list(line.get_xdata()) for line in veer_axes.get_lines()] == [[1, 2, 3], [2, 4]]
    assert list(veer_axes.get_lines()[1].get_ydata()) == [28.0, 22.0]
    assert [list(line.get_ydata()) for line in loss_axes.get_lines()] == [[5.0, 4.0, 3.5], [6.0, 5.0, 4.5, 4.0]]


def test_plot_needs_epochs_and_a_writable_place(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert summarise.main(["--plot", str(tmp_path), "empty"]) == 2
    assert "no run has an epoch" in capsys.readouterr().err
    (tmp_path / "a" / "result").mkdir(parents=True)
    (tmp_path / "a" / "result" / "scores.txt").write_text(scores_text([30.0], [5.0]))
    assert summarise.main(["--plot", "--out", str(tmp_path / "missing" / "x.png"), str(tmp_path), "a"]) == 2
    assert "error: --out" in capsys.readouterr().err
    assert summarise.main(["--plot", str(tmp_path), "a"]) == 0 and (tmp_path / "summary.png").is_file()
    with pytest.raises(SystemExit):
        summarise.main(["--out", "x.png", str(tmp_path), "a"])
