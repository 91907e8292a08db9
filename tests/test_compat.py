"""Compatibility with the original code: its checkpoint, embeddings and scores; every checkpoint format loads."""

import json

import numpy as np
import pytest
import torch

import trainSpeakerNet
from spknet.checkpoints import load_model_state, read_checkpoint
from spknet.data import load_wav
from spknet.errors import SpeakerNetError
from spknet.model import SpeakerNet
from tests.helpers import fixture_file, run_cli

SEED_MODEL = "seed_mp_balance_sap.model"


def seed_net(**overrides):
    settings = dict(model="ResNetSE34L", trainfunc="mp_balance", nOut=512, encoder_type="SAP", nSpeakers=20)
    return SpeakerNet.build(**{**settings, **overrides})


def test_state_dict_keys_equal_the_originals():
    listed = {}
    for line in fixture_file("seed_state_dict_keys.txt").read_text().splitlines():
        key, shape, _ = line.split("\t")
        listed[key] = tuple(json.loads(shape))
    ours = {key: tuple(value.shape) for key, value in seed_net().state_dict().items()}
    assert ours == listed


def test_seed_checkpoint_loads_every_key_and_reproduces_embeddings():
    net = seed_net()
    report = load_model_state(net, read_checkpoint(str(fixture_file(SEED_MODEL)))["model_state_dict"],
                              SEED_MODEL)
    assert not report.missing and not report.unexpected and not report.misshapen
    net.eval()
    reference = np.load(fixture_file("seed_embeddings.npz"))
    for name in "abc":
        crops = torch.from_numpy(load_wav(str(fixture_file("wav", f"{name}.wav")), 400))
        with torch.no_grad():
            embeddings = net.__S__(crops).numpy()
        relative = np.abs(embeddings - reference[name]).max() / np.abs(reference[name]).max()
        assert relative <= 1e-4, (name, relative)


@pytest.mark.slow
def test_original_eval_command_reproduces_fixture_scores(tmp_path):
    """The README's evaluation command, data paths changed, with the seed checkpoint and a trial list."""
    wav = fixture_file("wav")
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav b.wav\n0 a.wav c.wav\n1 b.wav c.wav\n")
    scores_file = tmp_path / "scores.tsv"
    result = run_cli("--model", "ResNetSE34L", "--encoder", "SAP", "--trainfunc", "mmp_balance", "--optimizer", "sgd",
                     "--save_path", tmp_path / "res", "--batch_size", "200", "--lr", "0.2", "--max_frames", "400",
                     "--train_list", "unused.txt", "--test_list", trials, "--train_path", "unused",
                     "--test_path", wav, "--eval", "--initial_model", fixture_file(SEED_MODEL),
                     "--save_scores", scores_file, "--nDataLoaderThread", "0")
    assert result.returncode == 0, result.stderr
    expected = json.loads(fixture_file("seed_scores.json").read_text())
    lines = [line.split() for line in scores_file.read_text().splitlines()]
    assert [line[1:] for line in lines] == [["1", "a.wav", "b.wav"], ["0", "a.wav", "c.wav"], ["1", "b.wav", "c.wav"]]
    for line, key in zip(lines, ["a_b", "a_c", "b_c"]):
        assert abs(float(line[0]) - expected[key]) <= 1e-4
    assert "EER " in result.stdout and "minDCF(p=0.05)" in result.stdout
    # mmp_balance has no w2/b2 and 5994 proxies: the loss keys differ, the model keys all load
    assert "WARNING" not in result.stderr or "__S__" not in result.stderr


@pytest.mark.parametrize("wrap", ["flat", "module", "trainer_dict"])
def test_every_checkpoint_format_loads(tmp_path, wrap):
    source = seed_net()
    state = source.state_dict()
    if wrap == "module":
        obj = {f"module.{key}": value for key, value in state.items()}
    elif wrap == "trainer_dict":
        obj = {"model_state_dict": state, "optimizer_state_dict": {}, "scheduler_state_dict": {}, "epoch": 3}
    else:
        obj = state
    path = tmp_path / "x.model"
    torch.save(obj, path)
    target = seed_net()
    report = load_model_state(target, read_checkpoint(str(path))["model_state_dict"], str(path))
    assert not report.missing and not report.misshapen
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key])


def test_misshapen_keys_are_skipped_with_a_warning(tmp_path, capsys, console_log):
    path = tmp_path / "x.model"
    torch.save(seed_net().state_dict(), path)
    target = seed_net(nSpeakers=7)
    console_log()
    report = load_model_state(target, read_checkpoint(str(path))["model_state_dict"], str(path))
    assert report.misshapen == ["__L__.proxies (model (7, 512), file (20, 512))"]
    assert capsys.readouterr().err == (f"WARNING: {path}: misshapen key(s) skipped: __L__.proxies (model (7, 512), "
                                       f"file (20, 512))\n")


def test_loss_keys_left_as_initialised_are_a_note(tmp_path, logged):
    state = {key: value for key, value in seed_net().state_dict().items() if key.startswith("__S__.")}
    report = load_model_state(seed_net(), state, "x.model")
    assert report.missing[0] == "__L__.proxies" and not report.misshapen and not report.unexpected
    [record] = logged.records
    assert record.levelname == "INFO"
    assert record.getMessage().startswith(f"note: x.model: {len(report.missing)} missing loss key(s) (__L__.proxies")
    assert record.getMessage().endswith(") left as initialised")


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.model"
    path.write_bytes(content)
    with pytest.raises(SpeakerNetError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(str(path))


def test_checkpoint_of_another_model_names_the_keys(tmp_path):
    path = tmp_path / "other.model"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(SpeakerNetError, match="no key of this checkpoint matches"):
        load_model_state(seed_net(), read_checkpoint(str(path))["model_state_dict"], str(path))
    torch.save([1, 2, 3], path)
    with pytest.raises(SpeakerNetError, match="not a SpeakerNet checkpoint"):
        read_checkpoint(str(path))


@pytest.mark.slow
def test_eval_builds_the_network_from_the_checkpoint(tmp_path, capsys):
    """``--eval --initial_model M --test_list T --test_path D`` needs no model flag: the original's flat checkpoint
    is read by its keys (ResNetSE34L, SAP, 512) and scores as the README's command does; a model flag that does not
    fit the weights is an error naming it, before anything is written."""
    wav = fixture_file("wav")
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav b.wav\n0 a.wav c.wav\n1 b.wav c.wav\n")
    common = ["--eval", "--initial_model", str(fixture_file(SEED_MODEL)), "--test_list", str(trials), "--test_path",
              str(wav), "--eval_frames", "400", "--nDataLoaderThread", "0"]
    bare = tmp_path / "bare.tsv"
    assert trainSpeakerNet.main(common + ["--save_path", str(tmp_path / "a"), "--save_scores", str(bare)]) == 0
    expected = json.loads(fixture_file("seed_scores.json").read_text())
    scores = [float(line.split()[0]) for line in bare.read_text().splitlines()]
    assert scores == pytest.approx([expected[key] for key in ("a_b", "a_c", "b_c")], abs=1e-5)
    capsys.readouterr()
    misfit = tmp_path / "misfit.tsv"
    code = trainSpeakerNet.main(common + ["--save_path", str(tmp_path / "b"), "--save_scores", str(misfit),
                                          "--nOut", "256"])
    error = capsys.readouterr().err
    assert code == 2 and "model option nOut=256 (the checkpoint's: 512) does not fit" in error
    assert not misfit.exists() and not (tmp_path / "b").exists()
