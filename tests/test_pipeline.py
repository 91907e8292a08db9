"""voxceleb_trainer's input pipeline as an option: float samples, wrap padding, the Hamming window; short files
embedded whole."""

import numpy as np
import pytest
import soundfile as sf
import torch

from spknet import evaluation
from spknet.checkpoints import load_model_state
from spknet.data import ORIGINAL, AudioPipeline, TrainDataset, TrainList, load_wav, max_audio_samples
from spknet.models.ResNetSE34L import MainModel
from tests.helpers import FixedRandom, original_loadwav, write_wav
from trainSpeakerNet import parse_args, spec_from_argv

VOXCELEB_TRAINER = AudioPipeline(scale="float", pad="wrap")


def voxceleb_trainer_loadwav(audio, max_frames, evalmode, num_eval=10, random_value=0.0):
    """voxceleb_trainer's ``loadWAV`` on an in-memory int16 array: float scale, wrap padding at the end."""
    max_audio = max_frames * 160 + 240
    audio = audio.astype(np.float64) / 32768.0
    if audio.shape[0] <= max_audio:
        audio = np.pad(audio, (0, max_audio - audio.shape[0] + 1), "wrap")
    if evalmode:
        starts = np.linspace(0, audio.shape[0] - max_audio, num=num_eval)
    else:
        starts = np.array([np.int64(random_value * (audio.shape[0] - max_audio))])
    return np.stack([audio[int(s):int(s) + max_audio] for s in starts])


@pytest.mark.parametrize("length", [3000, 16240, 16241, 50000])
@pytest.mark.parametrize("evalmode", [True, False])
def test_voxceleb_trainer_pipeline_matches_its_loadwav(tmp_path, length, evalmode):
    audio = np.random.default_rng(length).integers(-30000, 30000, length).astype(np.int16)
    path = write_wav(tmp_path / "x.wav", audio)
    got = load_wav(path, 100, evalmode=evalmode, rng=FixedRandom(0.37), pipeline=VOXCELEB_TRAINER)
    want = voxceleb_trainer_loadwav(audio, 100, evalmode, random_value=0.37)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.allclose(got, want, rtol=0, atol=1e-7) and np.abs(got).max() <= 1.0
    # and the original pipeline is still the original's
    original = load_wav(path, 100, evalmode=evalmode, rng=FixedRandom(0.37), pipeline=ORIGINAL)
    assert np.array_equal(original, original_loadwav(audio, 100, evalmode, random_value=0.37))


def test_float_files_read_in_either_scale(tmp_path):
    audio = np.random.default_rng(1).uniform(-0.9, 0.9, 4000).astype(np.float32)
    path = tmp_path / "f.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    as_float = load_wav(str(path), 0, pipeline=VOXCELEB_TRAINER)[0]
    as_int16 = load_wav(str(path), 0)[0]
    assert np.array_equal(as_float, audio) and np.allclose(as_int16, audio * 32768.0)


def test_training_crops_follow_the_pipeline(tmp_path):
    audio = np.random.default_rng(2).integers(-30000, 30000, 20000).astype(np.int16)
    files = [write_wav(tmp_path / f"{i}.wav", audio) for i in range(2)]
    train_list = TrainList(files, np.array([0, 1]), ["a", "b"])
    group = type("G", (), {"crop_seed": 5, "files": (0, 1), "label": 0})()
    original, _ = TrainDataset(train_list, 50)[group]
    floats, _ = TrainDataset(train_list, 50, pipeline=VOXCELEB_TRAINER)[group]
    assert np.allclose(floats * 32768.0, original)


def audio_pipeline(argv):
    return spec_from_argv(argv).model.pipeline()


def test_flags_choose_the_pipeline_and_the_window():
    assert audio_pipeline(["--audio_scale", "float", "--pad", "wrap", "--window", "hamming"]) == VOXCELEB_TRAINER
    assert audio_pipeline([]) == ORIGINAL
    hamming = MainModel(nOut=16, window="hamming")
    assert torch.equal(hamming.torchfb.spectrogram.window, torch.hamming_window(400))
    # a checkpoint keeps its own window: a Hann model's state makes the Hamming model Hann
    load_model_state(hamming, MainModel(nOut=16).state_dict(), "hann.model")
    assert torch.equal(hamming.torchfb.spectrogram.window, torch.hann_window(400))


def test_the_preset_sets_the_pipeline_and_explicit_values_win(tmp_path):
    preset = parse_args(["--preset", "voxceleb_trainer"])
    assert audio_pipeline(["--preset", "voxceleb_trainer"]) == VOXCELEB_TRAINER and preset.window == "hamming"
    assert parse_args(["--preset", "voxceleb_trainer", "--pad", "zero"]).pad == "zero"     # a flag wins
    original = parse_args(["--preset", "original"])
    assert audio_pipeline(["--preset", "original"]) == ORIGINAL and original.window == "hann"
    config = tmp_path / "run.yaml"
    config.write_text("preset: voxceleb_trainer\nwindow: hann\n")
    from_yaml = parse_args(["--config", str(config)])
    assert (from_yaml.audio_scale, from_yaml.pad, from_yaml.window) == ("float", "wrap", "hann")  # a key wins
    overridden = parse_args(["--config", str(config), "--preset", "original"])
    assert (overridden.audio_scale, overridden.pad, overridden.window) == ("int16", "zero", "hann")


@pytest.mark.parametrize("pipeline", [ORIGINAL, VOXCELEB_TRAINER])
def test_short_files_embedded_whole(tmp_path, pipeline):
    """With ``short_files="whole"`` a file no longer than one crop gets the embedding of the whole file for each
    of its crops; longer files are cropped as always."""
    torch.manual_seed(0)
    model = MainModel(nOut=16).eval()
    rng = np.random.default_rng(3)
    lengths = [6000, 7000, max_audio_samples(50), 20000]         # the third is exactly one crop: short
    names = [write_wav(tmp_path / f"{i}.wav", rng.integers(-20000, 20000, n)) for i, n in enumerate(lengths)]
    padded = evaluation.extract_embeddings(model, names, "", 50, show_progress=False, pipeline=pipeline)
    whole = evaluation.extract_embeddings(model, names, "", 50, short_files="whole", show_progress=False,
                                          pipeline=pipeline)
    alone = evaluation.extract_embeddings(model, names, "", 0, show_progress=False, pipeline=pipeline)
    assert whole.shape == padded.shape == (4, 10, 16)
    for i in range(3):
        assert torch.allclose(whole[i], alone[i].expand(10, -1), atol=1e-5)
    for i in range(2):                                         # padding really changed these
        assert not torch.allclose(whole[i], padded[i], atol=1e-3)
    assert torch.allclose(whole[3], padded[3], atol=1e-6)
