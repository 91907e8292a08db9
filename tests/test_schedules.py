"""Per-iteration LR schedules (warmup_exp, warmup_cosine), the margin schedule of the margin losses, their exact
resume, their flags, and the large-margin fine-tuning configs."""

import math
import signal
import subprocess

import pytest
import torch
import torch.nn.functional as F

import trainSpeakerNet
from spknet.errors import SpeakerNetError
from spknet.identity import run_differences
from spknet.loss import aamsoftmax, amsoftmax
from spknet.loss._metric import cosine_matrix
from spknet.margin import MarginSchedule, exponential_rise
from spknet.model import SpeakerNet
from spknet.specs import TrainingSpec
from spknet.training.run import run_identity
from spknet.training.trainer import EpochProgress, ModelTrainer
from tests.helpers import REPO, run_cli, start_held
from trainSpeakerNet import parse_args, spec_from_argv

LR, FINAL_LR = 0.1, 0.001


def lr_sequence(name, steps_per_epoch=4, max_epoch=3, warmup_epochs=0.5, final_lr=FINAL_LR):
    """The LR of every iteration of a run, read from the optimizer before each step."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=LR)
    from spknet import plugins
    scheduler = plugins.load("scheduler", name)(optimizer, lr=LR, max_epoch=max_epoch, warmup_epochs=warmup_epochs,
                                                final_lr=final_lr, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(steps_per_epoch * max_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# ---- LR schedules ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["warmup_exp", "warmup_cosine"])
def test_warmup_rises_linearly_from_near_zero_to_lr(name):
    lrs = lr_sequence(name, steps_per_epoch=10, max_epoch=5, warmup_epochs=2)     # 20 warm-up steps of 50
    assert lrs[0] == pytest.approx(LR / 20)
    assert lrs[:20] == pytest.approx([LR * (step + 1) / 20 for step in range(20)])
    assert lrs[19] == pytest.approx(LR) and lrs[20] == pytest.approx(LR)         # the decay starts at --lr


@pytest.mark.parametrize("name", ["warmup_exp", "warmup_cosine"])
@pytest.mark.parametrize("warmup_epochs", [0.0, 0.5, 1.25])
def test_decay_ends_at_final_lr_at_the_last_iteration(name, warmup_epochs):
    lrs = lr_sequence(name, steps_per_epoch=8, max_epoch=4, warmup_epochs=warmup_epochs)
    assert len(lrs) == 32 and lrs[-1] == pytest.approx(FINAL_LR, rel=1e-12)
    start = round(warmup_epochs * 8)
    assert lrs[start] == pytest.approx(LR)
    assert all(later < earlier for earlier, later in zip(lrs[start:], lrs[start + 1:]))      # strictly decaying
    if warmup_epochs == 0:
        assert lrs[0] == LR                                                       # no warm-up: --lr at once


def test_exponential_and_cosine_shapes():
    """Halfway through the decay: the geometric mean of --lr and --final_lr (exp), their mean (cosine)."""
    exp, cosine = lr_sequence("warmup_exp", 10, 1, 0.0), lr_sequence("warmup_cosine", 10, 1, 0.0)
    # 10 steps, no warm-up: step t is at fraction t / 9 of the decay; compare the closed forms at t = 3
    assert exp[3] == pytest.approx(LR * (FINAL_LR / LR) ** (3 / 9))
    assert cosine[3] == pytest.approx(FINAL_LR + (LR - FINAL_LR) * (1 + math.cos(math.pi * 3 / 9)) / 2)
    halfway = lr_sequence("warmup_exp", 11, 1, 0.0)[5], lr_sequence("warmup_cosine", 11, 1, 0.0)[5]
    assert halfway == pytest.approx((math.sqrt(LR * FINAL_LR), (LR + FINAL_LR) / 2))


def test_default_final_lr_is_a_thousandth_of_lr():
    assert lr_sequence("warmup_cosine", final_lr=None)[-1] == pytest.approx(LR / 1000)


@pytest.mark.parametrize("name,kwargs,message", [
    ("warmup_exp", {"final_lr": 0.0}, "must lie between above 0"),
    ("warmup_cosine", {"final_lr": 0.2}, "must lie between 0"),
    ("warmup_cosine", {"warmup_epochs": 3}, "leaves no step to decay"),
    ("warmup_cosine", {"steps_per_epoch": None}, "needs the number of steps per epoch"),
])
def test_schedule_plugins_refuse_impossible_shapes(name, kwargs, message):
    with pytest.raises(SpeakerNetError, match=message):
        lr_sequence(name, **kwargs)


def test_cosine_to_zero_is_allowed():
    assert lr_sequence("warmup_cosine", final_lr=0.0)[-1] == 0.0


# ---- the margin schedule -----------------------------------------------------------------------------------------

def test_margin_is_zero_then_rises_exponentially_then_stays():
    schedule = MarginSchedule(final=0.2, start_epoch=3, rampup_epochs=2, steps_per_epoch=10)
    assert [schedule.at(epoch, batch) for epoch in (1, 2) for batch in range(10)] == [0.0] * 20
    assert schedule.at(3, 0) == 0.0                                               # the rise starts here
    assert schedule.at(3, 2) == pytest.approx(0.2 * (1 - 1e-3 ** 0.1) / (1 - 1e-3))   # 2 of 20 ramp steps
    rise = [schedule.at(epoch, batch) for epoch in (3, 4) for batch in range(10)]
    assert all(b > a for a, b in zip(rise, rise[1:])) and rise[-1] < 0.2
    assert rise[2] > 4 * 0.2 * 2 / 20                   # fast at first: 4 times a linear ramp after 2 steps
    assert [schedule.at(epoch, batch) for epoch in (5, 9) for batch in range(10)] == [0.2] * 20


def test_margin_without_ramp_steps_to_the_full_margin_at_its_epoch():
    schedule = MarginSchedule(final=0.3, start_epoch=2, rampup_epochs=0.0, steps_per_epoch=5)
    assert [schedule.at(1, b) for b in range(5)] == [0.0] * 5 and schedule.at(2, 0) == 0.3


def test_fractional_ramp_and_rise_ends():
    schedule = MarginSchedule(final=0.4, start_epoch=1, rampup_epochs=0.5, steps_per_epoch=8)
    assert schedule.at(1, 2) == pytest.approx(0.4 * exponential_rise(0.5)) and schedule.at(1, 4) == 0.4
    assert exponential_rise(0.0) == 0.0 and exponential_rise(1.0) == 1.0


@pytest.mark.parametrize("module", [aamsoftmax, amsoftmax])
def test_margin_zero_is_the_scaled_cosine_softmax(module):
    torch.manual_seed(0)
    loss = module.LossFunction(nOut=8, nSpeakers=5, margin=0.3, scale=20.0)
    x, label = torch.randn(6, 1, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    loss.double()
    with_margin = loss(x, label)[0]
    loss.set_margin(0.0)
    weight = loss.weight if module is aamsoftmax else loss.W.t()
    plain = F.cross_entropy(20.0 * cosine_matrix(x[:, 0], weight), label)
    assert loss(x, label)[0].item() == pytest.approx(plain.item(), rel=1e-12)
    assert with_margin.item() > plain.item() + 0.1                               # the margin makes it harder
    loss.set_margin(0.3)
    assert loss(x, label)[0].item() == pytest.approx(with_margin.item(), rel=1e-12)


def test_set_margin_equals_a_loss_built_with_that_margin():
    """ArcFace's constants (cos m, sin m, the fallback threshold) follow set_margin, the fallback branch too."""
    torch.manual_seed(1)
    built = aamsoftmax.LossFunction(nOut=8, nSpeakers=5, margin=0.5).double()
    moved = aamsoftmax.LossFunction(nOut=8, nSpeakers=5, margin=0.1).double()
    moved.load_state_dict(built.state_dict())
    moved.set_margin(0.5)
    x, label = torch.randn(5, 1, 8, dtype=torch.float64), torch.arange(5)
    x[0, 0] = -built.weight[0].detach()                                            # theta = pi: the fallback
    assert (moved.cos_m, moved.sin_m, moved.th, moved.mm) == (built.cos_m, built.sin_m, built.th, built.mm)
    assert moved(x, label)[0].item() == built(x, label)[0].item()


# ---- through ModelTrainer ------------------------------------------------------------------------------------------

class FakeLoader:
    """Fixed batches without audio, with the sampler hook the epoch driver calls (skipping a resumed epoch's
    start)."""

    def __init__(self, batches):
        self.batches, self.first = batches, 0

    def start_at(self, batch):
        self.first = batch

    def __iter__(self):
        return iter(self.batches[self.first:])

    def __len__(self):
        return len(self.batches) - self.first


STEPS, EPOCHS = 4, 3


def fake_batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1000, generator=generator) * 1000, torch.tensor([0, 1, 2, 3]), torch.ones(4))
            for _ in range(STEPS)]


def recording_trainer(records, scheduler="warmup_cosine", **options):
    """A small aamsoftmax trainer whose loss records (epoch-independent) the LR and margin of every forward."""
    torch.manual_seed(3)
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="aamsoftmax", nOut=16, nSpeakers=4, margin=0.3)
    settings = dict(optimizer="sgd", scheduler=scheduler, lr=LR, final_lr=FINAL_LR, warmup_epochs=0.5,
                    max_epoch=EPOCHS, margin_start_epoch=2, margin_rampup_epochs=1.0)
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(**{**settings, **options}), steps_per_epoch=STEPS)
    loss, forward = net.__L__, net.__L__.forward

    def recorded(x, label):
        records.append((trainer.lr, loss.m))
        return forward(x, label)

    loss.forward = recorded
    return trainer


def stopper(after_batches):
    """A ``should_stop`` that asks to stop after ``after_batches`` batches of this call (None: never)."""
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] == after_batches

    return should_stop


def train_epochs(trainer, loader, epochs, progress=None, stop_after=None):
    """Epochs ``epochs`` as the epoch driver runs them; returns the unfinished progress when stopped."""
    for epoch in epochs:
        should_stop = stopper(stop_after[1] if stop_after and stop_after[0] == epoch else None)
        loader.start_at(progress.batches if progress is not None else 0)
        progress = trainer.train_network(loader, epoch, progress, should_stop, show_progress=False)
        if not progress.finished:
            return progress
        trainer.step_schedule(50.0)
        progress = None
    return None


def test_per_iteration_schedule_steps_after_every_batch_through_train_network():
    records = []
    trainer = recording_trainer(records)
    epoch_start_lrs = []
    loader = FakeLoader(fake_batches())
    for epoch in range(1, EPOCHS + 1):
        epoch_start_lrs.append(trainer.lr)
        train_epochs(trainer, loader, [epoch])
    lrs, margins = zip(*records)
    expected = [LR * trainer.scheduler.factor(step) for step in range(STEPS * EPOCHS)]
    assert list(lrs) == pytest.approx(expected)
    assert lrs[0] == pytest.approx(LR / 2) and lrs[1] == pytest.approx(LR) and lrs[-1] == pytest.approx(FINAL_LR)
    assert epoch_start_lrs == [lrs[0], lrs[STEPS], lrs[2 * STEPS]]               # the logged LR: at epoch start
    schedule = MarginSchedule(0.3, 2, 1.0, STEPS)
    assert list(margins) == [schedule.at(e, b) for e in range(1, EPOCHS + 1) for b in range(STEPS)]
    assert margins[:STEPS + 1] == (0.0,) * (STEPS + 1) and margins[2 * STEPS:] == (0.3,) * STEPS


def test_step_schedule_leaves_a_per_iteration_schedule_alone():
    trainer = recording_trainer([])
    before = trainer.lr, trainer.scheduler.last_epoch
    trainer.step_schedule(10.0)
    assert (trainer.lr, trainer.scheduler.last_epoch) == before


def test_a_skipped_batch_still_advances_the_schedule():
    records = []
    trainer = recording_trainer(records)
    real_step, calls = trainer._step, {"n": 0}

    def step(waves, labels, groups, progress):
        calls["n"] += 1
        if calls["n"] == 2:                     # as a non-finite loss: counted, no optimizer step
            progress.count_batch()
            return False
        return real_step(waves, labels, groups, progress)

    trainer._step = step
    train_epochs(trainer, FakeLoader(fake_batches()), [1])
    assert trainer.scheduler.last_epoch == STEPS
    assert trainer.lr == pytest.approx(LR * trainer.scheduler.factor(STEPS))


def test_no_margin_schedule_keeps_the_full_margin():
    records = []
    trainer = recording_trainer(records, scheduler="steplr", margin_start_epoch=None, margin_rampup_epochs=None)
    train_epochs(trainer, FakeLoader(fake_batches()), [1, 2])
    assert {margin for _, margin in records} == {0.3}
    assert [lr for lr, _ in records] == pytest.approx([LR] * STEPS + [LR * 0.95] * STEPS)   # steplr: per epoch


def test_margin_schedule_needs_a_loss_with_a_margin():
    """The spec's own check (the command line's too: test_schedule_flags_that_do_not_fit_are_errors)."""
    training = TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.1, margin_start_epoch=1)
    with pytest.raises(SpeakerNetError, match="--trainfunc mp_balance has no margin to schedule"):
        training.check("mp_balance")
    assert training.check("aamsoftmax") is training


def weights(trainer):
    return {key: value.clone() for key, value in trainer.net.state_dict().items()}


@pytest.mark.parametrize("stop_at", [(2, 2), (2, 0)], ids=["mid_epoch", "between_epochs"])
def test_stopped_and_resumed_run_follows_the_same_lr_and_margin(stop_at):
    """Stopped (after batch 2 of epoch 2, or after epoch 1) and resumed into a fresh trainer from its state, the
    run trains with the same per-iteration LR and margin, and ends with the same weights, as an uninterrupted
    run: the margin of the resumed position is applied before its first step."""
    epoch, batch = stop_at
    loader = FakeLoader(fake_batches())
    straight_records, resumed_records = [], []
    straight = recording_trainer(straight_records)
    train_epochs(straight, loader, range(1, EPOCHS + 1))

    first = recording_trainer(resumed_records)
    if batch:
        progress = train_epochs(first, loader, range(1, epoch + 1), stop_after=(epoch, batch))
        assert progress.batches == batch
    else:
        progress = train_epochs(first, loader, range(1, epoch))
    state = {**first.state_dict(), "progress": progress.state() if progress else None}

    second = recording_trainer(resumed_records)    # a new process: built afresh, then loaded
    second.net.load_state_dict(state["model_state_dict"])
    second.load_state_dict(state, None if progress else epoch - 1)
    assert second.lr == first.lr and second.net.__L__.m == 0.3       # the margin is recomputed, not loaded
    resumed_progress = EpochProgress(**state["progress"]) if state["progress"] else None
    train_epochs(second, loader, range(epoch, EPOCHS + 1), progress=resumed_progress)

    assert len(resumed_records) == len(straight_records) == STEPS * EPOCHS
    assert resumed_records == straight_records
    final, expected = weights(second), weights(straight)
    assert all(torch.equal(final[key], expected[key]) for key in expected)


# ---- flags -------------------------------------------------------------------------------------------------------

def flags(*extra):
    return ["--model", "ResNetSE34L", "--max_epoch", "10", *extra]


def identity(*extra):
    spec = spec_from_argv(flags(*extra))
    return run_identity(spec, spec.model.resolved())


def cli_error(argv, capsys) -> str:
    """The error line of a command line that fails before reading any file (the flags are checked first)."""
    assert trainSpeakerNet.main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--trainfunc", "mp_balance", "--margin_start_epoch", "2"], "--trainfunc mp_balance has no margin"),
    (["--trainfunc", "aamsoftmax", "--margin_rampup_epochs", "2"], "--margin_rampup_epochs needs"),
    (["--trainfunc", "aamsoftmax", "--warmup_epochs", "1"], "--warmup_epochs applies to the per-iteration"),
    (["--trainfunc", "aamsoftmax", "--scheduler", "steplr", "--final_lr", "1e-5"], "--final_lr applies to"),
    (["--trainfunc", "aamsoftmax", "--scheduler", "warmup_exp", "--warmup_epochs", "10"],
     "--warmup_epochs 10 must be shorter than --max_epoch 10"),
    (["--trainfunc", "aamsoftmax", "--scheduler", "warmup_exp", "--final_lr", "0"], "must be above 0 and at most"),
    (["--trainfunc", "aamsoftmax", "--scheduler", "warmup_cosine", "--final_lr", "0.01"], "at most --lr 0.001"),
])
def test_schedule_flags_that_do_not_fit_are_errors(extra, message, capsys):
    assert message in cli_error(flags(*extra), capsys)


@pytest.mark.parametrize("loss", ["aamsoftmax", "amsoftmax", "proxyanchor", "triplet"])
def test_losses_with_a_margin_take_the_margin_schedule(loss, capsys):
    """The flags pass their checks: the run goes on to ask for its lists."""
    error = cli_error(flags("--trainfunc", loss, "--margin_start_epoch", "3", "--margin_rampup_epochs", "1.5",
                            "--scheduler", "warmup_cosine", "--warmup_epochs", "0.5", "--final_lr", "0"), capsys)
    assert "is required for training" in error


def test_a_margin_or_scale_given_to_a_loss_without_it_is_said_not_silently_ignored(capsys):
    def warnings_for(*extra) -> str:
        trainSpeakerNet.main(flags(*extra))         # warns, then stops: no lists
        lines = capsys.readouterr().err.splitlines()
        return "\n".join(line.removeprefix("WARNING: ") for line in lines if line.startswith("WARNING: "))

    said = warnings_for("--trainfunc", "mp_balance", "--margin", "0.3", "--scale", "20")
    assert "--margin 0.3 and --scale 20: --trainfunc mp_balance has no such option, ignored" in said
    assert "aamsoftmax" in said
    assert warnings_for("--trainfunc", "proxynca", "--margin", "0.3", "--scale", "20").startswith(
        "--margin 0.3: --trainfunc proxynca")      # proxynca has a scale only
    assert warnings_for("--trainfunc", "aamsoftmax", "--margin", "0.3", "--scale", "20") == ""
    assert warnings_for("--trainfunc", "mp_balance") == ""


def test_negative_or_fractional_schedule_flags_fail_when_parsed(capsys):
    for flag, value in [("--warmup_epochs", "-1"), ("--margin_rampup_epochs", "nan"), ("--margin_start_epoch", "0"),
                        ("--final_lr", "-0.1")]:
        with pytest.raises(SystemExit):
            parse_args([flag, value])
        assert f"argument {flag}" in capsys.readouterr().err


def test_schedule_options_count_in_the_resume_check(tmp_path):
    """The new options change the run; under a per-iteration schedule --max_epoch does too (the decay ends there)."""
    base = ["--trainfunc", "aamsoftmax", "--scheduler", "warmup_cosine"]
    saved = identity(*base)
    for extra, option in [(["--warmup_epochs", "1"], "warmup_epochs"), (["--final_lr", "1e-6"], "final_lr"),
                          (["--margin_start_epoch", "2"], "margin_start_epoch"),
                          (["--max_epoch", "20"], "max_epoch")]:
        assert [field for field, _, _ in run_differences(saved, identity(*base, *extra))] == [option]
    per_epoch = identity("--trainfunc", "aamsoftmax", "--scheduler", "steplr")
    assert run_differences(per_epoch, identity("--trainfunc", "aamsoftmax", "--scheduler", "steplr",
                                               "--max_epoch", "20")) == []


@pytest.mark.parametrize("config", ["lmft_aamsoftmax", "lmft_mp_balance"])
def test_fine_tuning_configs_parse_and_fit(config, capsys):
    args = parse_args(["--config", str(REPO / "configs" / f"{config}.yaml")])
    assert "is required for training" in cli_error(["--config", str(REPO / "configs" / f"{config}.yaml")], capsys)
    assert args.max_frames == 600 and args.scheduler == "warmup_exp" and args.lr <= 1e-3
    if config == "lmft_aamsoftmax":
        assert args.trainfunc == "aamsoftmax" and args.margin == 0.5 and args.margin_start_epoch is None
    else:
        assert args.trainfunc == "mp_balance" and args.margin is None


RECIPES = {"recipe_resnet34_aamsoftmax": ("ResNet34", "aamsoftmax", 128),
           "recipe_ecapa_tdnn_aamsoftmax": ("ECAPA_TDNN", "aamsoftmax", 128),
           "recipe_resnet34_mp_balance": ("ResNet34", "mp_balance", 64)}


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_training_recipes_are_wespeaker_s_schedule_and_fit(config, capsys):
    """WeSpeaker's schedule in every recipe (6 epochs of warm-up to 0.1, exponential decay to 5e-5 at epoch 150,
    2-s crops, speed perturbation), its margin schedule where the loss has a margin, 128 utterances a batch."""
    model, loss, groups = RECIPES[config]
    args = parse_args(["--config", str(REPO / "configs" / f"{config}.yaml")])
    error = cli_error(["--config", str(REPO / "configs" / f"{config}.yaml")], capsys)    # checks the flags, warns
    assert "WARNING" not in error and "is required for training" in error       # no flag ignored, no flag misfits
    assert (args.model, args.trainfunc, args.batch_size, args.max_frames) == (model, loss, groups, 200)
    assert (args.scheduler, args.lr, args.final_lr, args.warmup_epochs, args.max_epoch) == \
        ("warmup_exp", 0.1, 5e-5, 6, 150)
    assert args.speed_perturb and args.weight_decay == 1e-4 and args.eval_frames == 0
    per_group = 1 if loss == "aamsoftmax" else 2
    assert groups * per_group == 128                         # the same utterances per batch for every loss
    if loss == "aamsoftmax":
        assert (args.margin, args.scale, args.margin_start_epoch, args.margin_rampup_epochs) == (0.2, 32, 21, 20)
    else:
        assert args.margin is None and args.margin_start_epoch is None
    assert (args.nOut, args.n_mels) == ((256, 80) if model == "ResNet34" else (192, 80))


# ---- the command line ----------------------------------------------------------------------------------------------

FAST = ["--max_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "0", "--model", "ResNetSE34L"]


def corpus_flags(corpus):
    return [f"--{key}={value}" for key, value in corpus.items()]


def log_lines(save_path):
    return [line for line in (save_path / "result" / "scores.txt").read_text().splitlines() if line.startswith("IT ")]


@pytest.mark.slow
def test_margin_flags_with_a_loss_without_margin_exit_2(tiny_corpus, tmp_path):
    result = run_cli(*FAST, "--trainfunc", "mp_balance", "--margin_start_epoch", "2", *corpus_flags(tiny_corpus),
                     "--save_path", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --margin_start_epoch: --trainfunc mp_balance")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_a_straight_run(tiny_corpus, tmp_path, capsys, console_log, one_thread):
    """Through the command line: warm-up + cosine decay and a margin ramp, stopped by SIGTERM inside epoch 1
    and resumed, give the straight run's log lines (LR, loss, EER) and weights (the stopped run in its own process,
    the others in this one)."""
    argv = [*FAST, "--trainfunc", "aamsoftmax", "--scheduler", "warmup_cosine", "--lr", "0.01", "--optimizer", "sgd",
            "--warmup_epochs", "0.5", "--final_lr", "0.001", "--margin_start_epoch", "1", "--margin_rampup_epochs",
            "1", "--max_epoch", "2", "--test_interval", "2", *corpus_flags(tiny_corpus)]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert trainSpeakerNet.main([*map(str, argv), "--save_path", str(straight)]) == 0
    # the run holds after its step on batch 3 of epoch 1 (inside the warm-up) until the signal comes
    process = start_held([*argv, "--save_path", stopped], epoch=1, batch=3, marker=tmp_path / "held",
                         stderr=subprocess.PIPE)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = torch.load(stopped / "model" / "resume.state", weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["batches"] == 3
    assert state["scheduler_state_dict"]["last_epoch"] == 3
    capsys.readouterr()
    assert trainSpeakerNet.main([*map(str, argv), "--save_path", str(stopped)]) == 0
    assert "Resuming epoch 1, batch 3" in capsys.readouterr().out
    assert log_lines(stopped) == log_lines(straight) and len(log_lines(straight)) == 2
    a = torch.load(straight / "model" / "model000000002.model", weights_only=True)
    b = torch.load(stopped / "model" / "model000000002.model", weights_only=True)
    assert all(torch.equal(a["model_state_dict"][key], b["model_state_dict"][key]) for key in a["model_state_dict"])
    assert a["scheduler_state_dict"] == b["scheduler_state_dict"]
    assert trainSpeakerNet.main([*map(str, argv), "--save_path", str(stopped), "--max_epoch", "3"]) == 2
    assert "--max_epoch: saved 2, given 3" in capsys.readouterr().err


@pytest.mark.slow
def test_the_ecapa_recipe_trains_with_its_warm_up_margin_ramp_and_speeds(tiny_corpus, tmp_path):
    """A tiny run of configs/recipe_ecapa_tdnn_aamsoftmax.yaml (its epochs, crops, batch and margin ramp cut for the
    test, and the network narrowed to 128 channels) trains and evaluates: 3 x 40 speed classes, the LR rising through
    the warm-up, then decaying."""
    save_path = tmp_path / "recipe"
    result = run_cli("--config", REPO / "configs" / "recipe_ecapa_tdnn_aamsoftmax.yaml", *corpus_flags(tiny_corpus),
                     "--save_path", save_path, "--channels", "128", "--max_epoch", "3", "--warmup_epochs", "1",
                     "--margin_start_epoch", "2", "--margin_rampup_epochs", "0.5", "--max_frames", "50",
                     "--batch_size", "16", "--test_interval", "3", "--nDataLoaderThread", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = log_lines(save_path)
    assert len(lines) == 3 and "VEER" in lines[-1]
    lrs = [float(line.split(",")[1].split()[1]) for line in lines]
    assert lrs[0] < lrs[1] and lrs[2] < lrs[1] <= 0.1           # warm-up over epoch 1, then the decay
    checkpoint = torch.load(save_path / "model" / "model000000003.model", weights_only=True)
    assert checkpoint["model_state_dict"]["__L__.weight"].shape == (3 * 40, 192)     # each speed its own speaker
    assert (save_path / "config.yaml").is_file() and "speed_perturb: true" in (save_path / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("config,loss", [("lmft_aamsoftmax", "aamsoftmax"), ("lmft_mp_balance", "mp_balance")])
def test_fine_tuning_from_a_checkpoint(tiny_corpus, tmp_path, config, loss):
    """A tiny run of each fine-tuning recipe from a trained run's checkpoint (its crops cut for the test)."""
    torch.manual_seed(0)
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc=loss, nOut=512, nSpeakers=40)
    initial = tmp_path / "trained.model"
    torch.save({"model_state_dict": net.state_dict(), "epoch": 10}, initial)
    save_path = tmp_path / "lmft"
    result = run_cli("--config", REPO / "configs" / f"{config}.yaml", *corpus_flags(tiny_corpus),
                     "--initial_model", initial, "--save_path", save_path, "--max_epoch", "2", "--warmup_epochs",
                     "0.5", "--max_frames", "100", "--eval_frames", "0", "--batch_size", "8",
                     "--nDataLoaderThread", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Initial model {initial} (sha256 " in result.stdout and "loss head: loaded" in result.stdout
    assert "skipped" not in result.stdout + result.stderr
    lines = log_lines(save_path)
    assert len(lines) == 2 and (save_path / "model" / "model000000002.model").is_file()
    first_lr = float(lines[0].split(",")[1].split()[1])
    recipe_lr = parse_args(["--config", str(REPO / "configs" / f"{config}.yaml")]).lr
    assert 0 < first_lr < recipe_lr / 4             # the warm-up's first step: far below the recipe's --lr
