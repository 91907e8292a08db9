"""Using a trained model outside the trainer: load_embedder and inference.py on any checkpoint SpeakerNet loads."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import SpeakerNet
from spknet.checkpoints import checkpoint_spec, infer_model_config
from spknet.errors import SpeakerNetError
from spknet.specs import SCHEMA, ModelSpec
from tests.helpers import REPO, SUBPROCESS_ENV, fixture_file, saved_run_checkpoint

SEED_MODEL = "seed_mp_balance_sap.model"


def fixture(*parts):
    return str(fixture_file(*parts))


@pytest.fixture(scope="module")
def seed_embedder():
    return SpeakerNet.load_embedder(fixture(SEED_MODEL), device="cpu", eval_frames=400)


def test_the_original_checkpoint_reproduces_its_embeddings_and_scores(seed_embedder):
    expected = np.load(fixture("seed_embeddings.npz"))
    embeddings = {name: seed_embedder.embed(fixture("wav", f"{name}.wav")) for name in "abc"}
    for name in "abc":
        reference = torch.from_numpy(expected[name] if name in expected.files else expected[f"{name}.wav"])
        assert embeddings[name].shape == (10, 512)
        assert torch.allclose(embeddings[name], reference, rtol=1e-5, atol=1e-5)
    scores = json.loads(open(fixture("seed_scores.json")).read())
    for pair, score in scores.items():
        first, second = pair.split("_")
        assert seed_embedder.score_embeddings(embeddings[first], embeddings[second]) == pytest.approx(score, abs=1e-5)
    assert seed_embedder.score(fixture("wav", "a.wav"), fixture("wav", "b.wav")) == pytest.approx(scores["a_b"],
                                                                                                  abs=1e-5)


def test_the_keys_tell_the_model():
    state = torch.load(fixture(SEED_MODEL), weights_only=True)
    assert infer_model_config(state, "seed") == {
        "model": "ResNetSE34L", "encoder_type": "SAP", "nOut": 512, "n_mels": 40, "window": "hann",
        "log_input": True, "audio_scale": "int16", "pad": "zero", "trainfunc": ""}
    asp = SpeakerNet.SpeakerNet.build("ResNetSE34L", nOut=64, encoder_type="ASP", n_mels=64,
                                      window="hamming").state_dict()
    config = infer_model_config(asp, "asp")
    assert (config["encoder_type"], config["nOut"], config["n_mels"], config["window"]) == ("ASP", 64, 64, "hamming")
    del state["__S__.fc.weight"]
    with pytest.raises(SpeakerNetError, match=r"seed: cannot tell the model from its keys .*--nOut"):
        infer_model_config(state, "seed")


def test_own_checkpoints_carry_their_model_options(tmp_path):
    path = tmp_path / "model000000001.model"
    saved_run_checkpoint(["--model", "ResNetSE34L", "--trainfunc", "proto", "--nOut", "24", "--encoder", "ASP",
                          "--audio_scale", "float", "--pad", "wrap", "--window", "hamming", "--nSpeakers", "4"], path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["run"]["schema"] == SCHEMA
    assert checkpoint_spec(checkpoint, str(path)) == ModelSpec(
        model="ResNetSE34L", encoder_type="ASP", nOut=24, n_mels=40, log_input=True, window="hamming",
        channels=None, frontend="logmel", audio_scale="float", pad="wrap", trainfunc="proto")
    embedder = SpeakerNet.load_embedder(str(path), device="cpu")
    assert embedder.test_normalize is False and embedder.pipeline.scale == "float"     # proto scores raw crops
    assert checkpoint_spec(checkpoint, str(path), {"nOut": 32, "pad": None}).nOut == 32   # explicit options win
    with pytest.raises(SpeakerNetError, match=r"model option nOut=32 \(the checkpoint's: 24\) does not fit"):
        SpeakerNet.load_embedder(str(path), device="cpu", nOut=32)


def test_schema_1_run_entries_still_load(tmp_path):
    """A checkpoint saved before the specs (its run entry the command line's flag names) keeps its model."""
    path = tmp_path / "model000000001.model"
    saved_run_checkpoint(["--model", "ResNetSE34L", "--trainfunc", "proto", "--nOut", "24", "--encoder", "ASP",
                          "--audio_scale", "float"], path)
    checkpoint = torch.load(path, weights_only=True)
    model = checkpoint["run"].pop("model")
    checkpoint["run"] = {"options": {**model, "nPerSpeaker": None, "nSpeakers": 4, "lr": 0.001}, "lists": {}}
    assert checkpoint_spec(checkpoint, str(path)) == ModelSpec(**model)


def test_any_audio_form_gives_the_same_embedding(seed_embedder, tmp_path):
    audio, rate = sf.read(fixture("wav", "b.wav"), dtype="int16")
    reference = seed_embedder.embed(fixture("wav", "b.wav"))
    assert torch.allclose(seed_embedder.embed(audio), reference, atol=1e-5)                      # int16 array
    assert torch.allclose(seed_embedder.embed(audio / 32768.0), reference, atol=1e-5)            # float array
    stereo = np.stack([audio, audio], axis=1)
    assert torch.allclose(seed_embedder.embed(stereo), reference, atol=1e-5)                     # soundfile layout
    assert torch.allclose(seed_embedder.embed(torch.from_numpy(stereo.T.copy())), reference, atol=1e-5)  # torchaudio
    both = seed_embedder.embed([audio, fixture("wav", "b.wav")])
    assert len(both) == 2 and torch.allclose(both[0], both[1], atol=1e-5)
    # another sample rate is resampled: 8 kHz audio gives the embedding of its 16-kHz resampling
    import torchaudio
    low = torchaudio.functional.resample(torch.from_numpy(audio / 32768.0).float(), 16000, 8000)
    sf.write(tmp_path / "low.wav", low.numpy(), 8000, subtype="FLOAT")
    back = torchaudio.functional.resample(low, 8000, 16000)
    assert torch.allclose(seed_embedder.embed(str(tmp_path / "low.wav")), seed_embedder.embed(back), atol=1e-5)


@pytest.mark.parametrize("case,message", [
    ("missing", "cannot read audio"), ("not_audio", "cannot read audio"), ("zeros", "all samples are zero"),
    ("short", "shorter than the network's 400-sample analysis window"), ("empty", "shorter than the network's")])
def test_bad_audio_is_an_error_naming_the_file(seed_embedder, tmp_path, case, message):
    path = tmp_path / f"{case}.wav"
    if case == "not_audio":
        path.write_text("hello")
    elif case == "zeros":
        sf.write(path, np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    elif case in ("short", "empty"):
        sf.write(path, np.ones(300 if case == "short" else 0, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(SpeakerNetError, match=rf"{path}: .*{message}"):
        seed_embedder.embed(str(path))


def test_a_checkpoint_of_another_architecture_than_the_flags_say_is_an_error():
    with pytest.raises(SpeakerNetError, match="does not fit the model"):
        SpeakerNet.load_embedder(fixture(SEED_MODEL), device="cpu", nOut=256)


@pytest.mark.slow
def test_the_command_line(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, str(REPO / "inference.py"), *argv], capture_output=True, text=True,
                              timeout=300, env={**SUBPROCESS_ENV, "PATH": "/usr/bin:/bin"})
    wav = [fixture("wav", f"{name}.wav") for name in "abc"]
    out = tmp_path / "emb.npz"
    result = run("embed", "--initial_model", fixture(SEED_MODEL), *wav, "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    saved = np.load(out)
    assert sorted(saved.files) == sorted(wav) and saved[wav[0]].shape == (1, 512)
    result = run("verify", "--initial_model", fixture(SEED_MODEL), wav[0], wav[1], "--eval_frames", "400",
                 "--device", "cpu")
    expected = json.loads(open(fixture("seed_scores.json")).read())["a_b"]
    assert result.returncode == 0 and abs(float(result.stdout.split()[-1]) - expected) < 1e-5
    missing = run("verify", "--initial_model", fixture(SEED_MODEL), wav[0], str(tmp_path / "none.wav"))
    assert missing.returncode == 2 and "none.wav: cannot read audio" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("eval_frames", [0, 40])
def test_embed_files_batches_and_gives_what_embed_gives(tmp_path, eval_frames):
    torch.manual_seed(4)
    path = tmp_path / "small.model"
    torch.save(SpeakerNet.SpeakerNet.build("ResNetSE34L", nOut=16, with_loss=False).state_dict(), path)
    embedder = SpeakerNet.load_embedder(str(path), device="cpu", eval_frames=eval_frames)
    rng = np.random.default_rng(0)
    files = []
    # equal lengths (one of them 8-kHz stereo: the same length once resampled), other lengths, short files; with
    # max_samples 20000 the short files' buckets together pass 40000 samples before any is full, and run early
    sizes = [("a", 1.5, 16000, 1), ("b", 1.0, 16000, 1), ("c", 1.5, 16000, 1), ("d", 1.5, 8000, 2),
             ("e", 0.3, 16000, 1), ("f", 1.0, 16000, 1)]
    sizes += [(f"s{index}", seconds, 16000, 1) for index, seconds in enumerate((0.4, 0.5, 0.45, 0.35, 0.55, 0.5, 0.3))]
    for name, seconds, rate, channels in sizes:
        files.append(str(tmp_path / f"{name}.wav"))
        audio = rng.uniform(-0.5, 0.5, (int(seconds * rate), channels)).astype(np.float32)
        sf.write(files[-1], audio, rate, subtype="PCM_16")
    one_by_one = [embedder.embed(file) for file in files]
    for options in ({}, {"files_per_batch": 2}, {"max_samples": 20000}):
        batched = embedder.embed_files(files, **options)
        assert len(batched) == len(files)
        for file, got, expected in zip(files, batched, one_by_one):
            assert got.shape == expected.shape == ((1 if eval_frames == 0 else 10), 16)
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (file, options)
    with pytest.raises(SpeakerNetError, match="missing.wav: cannot read audio"):
        embedder.embed_files([files[0], str(tmp_path / "missing.wav")])
