"""Checkpoint averaging (``inference.py average``): the exact mean, BatchNorm buffers, refusing other runs (each
difference named, as a resume names it; one run across the schema change), the output's contents and name, loading
it for --eval and load_embedder, resume ignoring it, and the CLI's errors."""

import os
import re

import pytest
import torch

import inference
import SpeakerNet
import trainSpeakerNet
from spknet import checkpoints
from spknet.errors import SpeakerNetError
from spknet.identity import run_differences
from spknet.specs import TrainingSpec, flag_destination
from spknet.training.run import run_identity
from spknet.training.trainer import ModelTrainer
from tests.helpers import run_cli, saved_run_checkpoint
from trainSpeakerNet import spec_from_argv

RUN = {"options": {"model": "M", "nOut": 4, "lr": 0.1}, "lists": {"train_list": "abc"}}


def synthetic_state(seed):
    generator = torch.Generator().manual_seed(seed)
    return {"__S__.fc.weight": torch.randn(4, 3, generator=generator),
            "__S__.bn.running_mean": torch.randn(3, generator=generator),
            "__S__.bn.running_var": torch.rand(3, generator=generator) + 0.5,
            "__S__.bn.num_batches_tracked": torch.tensor(100 * seed),
            "__L__.w": torch.randn((), generator=generator)}


def save_synthetic(model_dir, epoch, state, run=RUN):
    os.makedirs(model_dir, exist_ok=True)
    trainer_state = {"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    return checkpoints.save_epoch(str(model_dir), trainer_state, epoch, 10.0 + epoch, run)


@pytest.fixture
def three(tmp_path):
    model_dir = tmp_path / "run" / "model"
    states = [synthetic_state(seed) for seed in (1, 2, 3)]
    paths = [save_synthetic(model_dir, epoch, state) for epoch, state in zip((4, 5, 6), states)]
    return tmp_path / "run", paths, states


def test_the_mean_of_three_checkpoints_is_exact_and_buffers_are_averaged(three):
    _, paths, states = three
    averaged = checkpoints.average_checkpoints(paths)
    state = averaged["model_state_dict"]
    for key in ("__S__.fc.weight", "__S__.bn.running_mean", "__S__.bn.running_var", "__L__.w"):
        expected = (sum(s[key].double() for s in states) / 3).float()
        assert state[key].dtype == torch.float32 and torch.equal(state[key], expected), key
    assert not torch.equal(state["__S__.bn.running_var"], states[-1]["__S__.bn.running_var"])
    assert state["__S__.bn.num_batches_tracked"].item() == 300          # an integer buffer: the newest's
    assert state["__S__.bn.num_batches_tracked"].dtype == torch.int64
    assert averaged["run"] == RUN and averaged["averaged_epochs"] == [4, 5, 6]
    assert averaged["averaged_from"] == [os.path.basename(path) for path in paths]
    assert "optimizer_state_dict" not in averaged and "epoch" not in averaged


def test_checkpoints_of_other_runs_or_models_are_refused(three, tmp_path):
    _, paths, _ = three
    other = tmp_path / "other"
    bigger = {**synthetic_state(4), "__S__.fc.weight": torch.zeros(8, 3)}
    odd = save_synthetic(other, 1, bigger)
    with pytest.raises(SpeakerNetError, match=rf"{odd}: not the same model as .*__S__.fc.weight is \(8, 3\)"):
        checkpoints.average_checkpoints([paths[0], odd])
    fewer = synthetic_state(4)
    del fewer["__L__.w"]
    odd = save_synthetic(other, 2, fewer)
    with pytest.raises(SpeakerNetError, match=rf"{odd}: not the same model .*lacks __L__.w"):
        checkpoints.average_checkpoints([paths[0], odd])
    odd = save_synthetic(other, 3, synthetic_state(4), run={**RUN, "options": {**RUN["options"], "lr": 0.2}})
    refused = (rf"{odd}: not from the same run as .*model000000004.model \(--lr: 0.1 in model000000004.model, 0.2 in "
               rf"model000000003.model\); only")
    with pytest.raises(SpeakerNetError, match=refused):
        checkpoints.average_checkpoints([paths[0], odd])
    odd = save_synthetic(other, 4, synthetic_state(4), run={**RUN, "lists": {"train_list": "xyz"}})
    same_name = rf"\(--train_list: other contents in {odd} than in {paths[0]}\)"       # full paths: one file name
    with pytest.raises(SpeakerNetError, match=same_name):
        checkpoints.average_checkpoints([paths[0], odd])
    odd = save_synthetic(other, 5, synthetic_state(4), run=None)
    with pytest.raises(SpeakerNetError, match=rf"{odd} carries no run options"):
        checkpoints.average_checkpoints([paths[0], odd])


def test_the_cli_writes_the_average_under_its_default_names(three, capsys):
    run, paths, _ = three
    assert inference.main(["average", "--save_path", str(run), "--last", "2"]) == 0
    out = run / "model" / "average_last2.model"
    assert str(out) in capsys.readouterr().out
    written = torch.load(out, weights_only=True)
    assert written["averaged_epochs"] == [5, 6] and written["run"] == RUN
    assert torch.equal(written["model_state_dict"]["__S__.fc.weight"],
                       checkpoints.average_checkpoints(paths[1:])["model_state_dict"]["__S__.fc.weight"])
    assert inference.main(["average", "--save_path", str(run), "--epochs", "6,4"]) == 0
    assert torch.load(run / "model" / "average_4_6.model", weights_only=True)["averaged_epochs"] == [4, 6]
    chosen = run / "elsewhere.model"
    assert inference.main(["average", "--save_path", str(run), "--last", "3", "--out", str(chosen)]) == 0
    assert chosen.is_file() and not [name for name in os.listdir(run) if name.endswith(".tmp")]


def test_resume_and_eval_ignore_the_averaged_file(three):
    run, paths, _ = three
    assert inference.main(["average", "--save_path", str(run), "--last", "3"]) == 0
    model_dir = str(run / "model")
    assert checkpoints.epoch_checkpoints(model_dir)[-1] == (6, paths[-1])
    path, checkpoint = checkpoints.resume_point(model_dir)
    assert path == paths[-1] and "optimizer_state_dict" in checkpoint
    assert [epoch for epoch, _ in checkpoints.epoch_checkpoints(model_dir)] == [4, 5, 6]
    with pytest.raises(SpeakerNetError, match="a training run's own checkpoint"):
        checkpoints.save_averaged(os.path.join(model_dir, "model000000007.model"), checkpoint)
    with pytest.raises(SpeakerNetError, match="a training run's own checkpoint"):
        checkpoints.save_averaged(os.path.join(model_dir, checkpoints.RESUME_STATE), checkpoint)
    assert not os.path.exists(os.path.join(model_dir, "model000000007.model"))


@pytest.mark.parametrize("flags,message", [
    (["--epochs", "4,x"], "--epochs '4,x': expected epoch numbers separated by commas"),
    (["--epochs", "4,4"], "--epochs 4,4: an epoch is named twice"),
    (["--epochs", "4,9"], "model000000009.model: epoch checkpoint not found (--epochs 4,9; this run holds epochs "
                          "4, 5, 6)"),
    (["--last", "4"], "--last 4 needs 4 epoch checkpoints, this run holds 3 (epochs: 4, 5, 6)"),
    (["--last", "0"], "--last 0: must be at least 1"),
])
def test_bad_epochs_are_a_clear_error_and_exit_2(three, capsys, flags, message):
    run, _, _ = three
    assert inference.main(["average", "--save_path", str(run)] + flags) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert not [name for name in os.listdir(run / "model") if name.startswith("average")]


def test_last_and_epochs_exclude_each_other(three):
    run, _, _ = three
    with pytest.raises(SystemExit) as raised:
        inference.main(["average", "--save_path", str(run), "--last", "2", "--epochs", "4,5"])
    assert raised.value.code == 2


# ---- the run comparison is the resume's: every option worded, model options included; schema 1 reads as 2 -------

SMALL = ["--model", "ResNetSE34L", "--trainfunc", "softmax", "--nOut", "8", "--nSpeakers", "4"]


def test_runs_that_differ_in_one_model_option_are_refused_naming_it_and_both_values(tmp_path, capsys):
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    for epoch, window in ((1, "hann"), (2, "hamming")):
        saved_run_checkpoint([*SMALL, "--window", window], model_dir / f"model{epoch:09d}.model")
    assert inference.main(["average", "--save_path", str(tmp_path / "run"), "--last", "2"]) == 2
    first, second = model_dir / "model000000001.model", model_dir / "model000000002.model"
    assert capsys.readouterr().err == (
        f"error: {second}: not from the same run as {first} (--window: hann in model000000001.model, hamming in "
        f"model000000002.model); only checkpoints of one run can be averaged\n")
    assert not [name for name in os.listdir(model_dir) if name.startswith("average")]


def schema_1(run: dict) -> dict:
    """The entry that the code before the specs saved for the same run: the command line's flags, flat (a flag it
    had and schema 2 does not record, ``--preset``; none for what it did not have, ``--train_shards``)."""
    options = {flag_destination(key): value for key, value in run["options"].items() if key != "train_shards"}
    return {"options": {**options, **run["model"], "preset": None}, "lists": run["lists"]}


def test_a_run_resumed_across_the_schema_change_is_one_run(tmp_path, capsys):
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    old, new = model_dir / "model000000001.model", model_dir / "model000000002.model"
    saved_run_checkpoint(SMALL, old)
    saved_run_checkpoint(SMALL, new)
    checkpoint = torch.load(old, weights_only=True)
    checkpoint["run"] = schema_1(checkpoint["run"])
    assert "schema" not in checkpoint["run"] and checkpoint["run"]["options"]["nSpeakers"] == 4
    torch.save(checkpoint, old)
    saved, resumed = checkpoint["run"], torch.load(new, weights_only=True)["run"]
    assert run_differences(saved, resumed) == [] and run_differences(resumed, saved) == []   # resume, both ways
    assert inference.main(["average", "--save_path", str(tmp_path / "run"), "--last", "2"]) == 0
    averaged = torch.load(model_dir / "average_last2.model", weights_only=True)
    assert averaged["averaged_epochs"] == [1, 1] and averaged["run"] == resumed       # the newest's entry
    # a schema-1 entry's model options are compared too, under their schema-2 names
    other = {**resumed, "model": {**resumed["model"], "window": "hamming"},
             "options": {**resumed["options"], "classes": 8}}
    assert run_differences(saved, other) == [("classes", 4, 8), ("window", "hann", "hamming")]


MODEL_FLAGS = ["--model", "ResNetSE34L", "--trainfunc", "aamsoftmax", "--nOut", "16", "--nSpeakers", "40"]


@pytest.fixture
def trained_run(tiny_corpus, tmp_path):
    """Three epoch checkpoints of one real (untrained, perturbed) model with the run options a trainer saves."""
    data = ["--train_list", tiny_corpus["train_list"], "--test_list", tiny_corpus["test_list"],
            "--train_path", tiny_corpus["train_path"], "--test_path", tiny_corpus["test_path"]]
    spec = spec_from_argv(MODEL_FLAGS + data + ["--save_path", str(tmp_path / "run")])
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet(spec.model, spec.training.loss(40))
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.1))
    model_dir = str(tmp_path / "run" / "model")
    os.makedirs(model_dir)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for key, value in net.state_dict().items():
                if value.is_floating_point() and "torchfb" not in key:      # the front end's buffers stay
                    value.add_(0.01 * torch.randn_like(value))
                if key.endswith("running_var"):
                    value.abs_()
        checkpoints.save_epoch(model_dir, trainer.state_dict(), epoch, 40.0, run_identity(spec, net.spec))
    return tmp_path / "run", data


def test_the_average_of_a_real_run_loads_with_load_embedder(trained_run):
    run, _ = trained_run
    assert inference.main(["average", "--save_path", str(run), "--last", "3"]) == 0
    out = str(run / "model" / "average_last3.model")
    embedder = SpeakerNet.load_embedder(out, device="cpu")
    expected = checkpoints.average_checkpoints([p for _, p in checkpoints.epoch_checkpoints(str(run / "model"))])
    for key, value in embedder.network.state_dict().items():
        assert torch.equal(value, expected["model_state_dict"]["__S__." + key]), key
    samples = torch.randn(16000).numpy() * 0.1
    embedding = embedder.embed(samples)
    assert embedding.shape == (1, 16) and torch.isfinite(embedding).all()


@pytest.mark.slow
def test_the_average_loads_for_eval_through_the_command_line(trained_run, tmp_path):
    run, data = trained_run
    assert inference.main(["average", "--save_path", str(run), "--epochs", "1,2,3"]) == 0
    out = run / "model" / "average_1_2_3.model"
    result = run_cli("--eval", *MODEL_FLAGS, *data, "--initial_model", out, "--eval_frames", "0",
                     "--nDataLoaderThread", "0", "--save_path", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"Model {out} loaded!" in output and "EER " in output and "WARNING" not in output


# ---- the run's own final average (--average_epochs) -------------------------------------------------------------

AVERAGE_LINE = re.compile(r"^INFO average of epochs 2-3 \((.+average_last2\.model)\): EER ([\d.]+), minDCF\(p=0\.05\) "
                          r"[\d.]+, minDCF\(p=0\.01\) [\d.]+, eval [\d.]+ s$")


def average_lines(save_path):
    return [line for line in (save_path / "result" / "scores.txt").read_text().splitlines()
            if line.startswith("INFO average")]


@pytest.mark.slow
def test_a_run_scores_and_saves_the_mean_weights_of_its_last_epochs(tiny_corpus, tmp_path, capsys, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    save_path = tmp_path / "run"
    argv = ["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--optimizer", "sgd", "--lr", "0.2",
            "--test_interval", "2", "--max_epoch", "3", "--average_epochs", "2", "--eval_frames", "0",
            "--max_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "2", "--save_path", str(save_path),
            *[f"--{key}={value}" for key, value in tiny_corpus.items()]]
    assert trainSpeakerNet.main(argv) == 0
    model = save_path / "model"
    # epoch 2 was evaluated (its .eer), epoch 3 was not but is kept for the average; resume.state is retired
    assert sorted(os.listdir(model)) == ["average_last2.model", "model000000002.eer", "model000000002.model",
                                         "model000000003.model"]
    expected = checkpoints.average_checkpoints([str(model / "model000000002.model"),
                                                str(model / "model000000003.model")])
    saved = torch.load(model / "average_last2.model", weights_only=True)
    assert saved["averaged_epochs"] == [2, 3]
    for key, value in expected["model_state_dict"].items():
        assert torch.equal(saved["model_state_dict"][key], value), key
    lines = (save_path / "result" / "scores.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in lines if line.startswith("IT ")] == ["IT 1", "IT 2", "IT 3"]
    [line] = average_lines(save_path)
    path, eer = AVERAGE_LINE.match(line).groups()
    assert path == str(model / "average_last2.model")
    # the line's EER is the saved average's, as --eval scores it
    capsys.readouterr()
    assert trainSpeakerNet.main(["--eval", "--initial_model", path, "--eval_frames", "0", "--nDataLoaderThread", "0",
                                 "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"],
                                 "--save_path", str(tmp_path / "eval")]) == 0
    assert f"EER {eer}" in capsys.readouterr().out
    board = EventAccumulator(str(save_path / "tensorboard"))
    board.Reload()
    [(step, value)] = [(event.step, event.value) for event in board.Scalars(
        next(tag for tag in board.Tags()["scalars"] if tag.startswith("average_VEER/")))]
    assert step == 3 and value == pytest.approx(float(eer), abs=1e-4)
    # another session of the finished run adds nothing; one stopped before the average was saved scores it again
    assert trainSpeakerNet.main(argv) == 0
    assert len(average_lines(save_path)) == 1
    os.unlink(path)
    assert trainSpeakerNet.main(argv) == 0
    assert len(average_lines(save_path)) == 2 and os.path.isfile(path)
    # a longer run in the same folder averages its own last epochs, replacing the earlier end's average
    assert trainSpeakerNet.main([*argv, "--max_epoch", "4"]) == 0
    assert average_lines(save_path)[-1].startswith(f"INFO average of epochs 3-4 ({path})")
    assert torch.load(path, weights_only=True)["averaged_epochs"] == [3, 4]


def test_the_final_average_is_off_unless_asked_for(tmp_path):
    """Off by default, so that only evaluated epochs have checkpoints (the original's layout)."""
    spec = spec_from_argv(["--save_path", str(tmp_path), "--max_epoch", "4"])
    assert spec.training.average_epochs == 0
    assert spec_from_argv(["--average_epochs", "3"]).training.average_epochs == 3
    with pytest.raises(SystemExit):
        spec_from_argv(["--average_epochs", "-1"])
