"""The front ends (models/_frontend.py): the batched Kaldi fbank against torchaudio's per-utterance
``compliance.kaldi.fbank`` with WeSpeaker's and 3D-Speaker's options, its dither (training mode only, one int16 step
whatever the input scale), SpeechBrain's Fbank and sentence mean normalisation against SpeechBrain itself (the
``oracles`` extra), every existing network with every feature front end, the front end recorded in a checkpoint and
rebuilt by ``load_embedder``, and the export of a network with a Kaldi front end."""

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from spknet import plugins
from spknet.checkpoints import checkpoint_spec
from spknet.errors import SpeakerNetError
from spknet.inference import load_embedder
from spknet.model import SpeakerNet
from spknet.models._frontend import (
    FEATURE_FRONTENDS,
    FRONTENDS,
    KaldiFbank,
    SpeechBrainFbank,
    make_frontend,
    set_audio_scale,
)
from spknet.specs import ModelSpec
from tests.helpers import forget_lazy_modules, saved_run_checkpoint

KALDI_TOLERANCE = 1e-5              # the brief's; the implementation is bit-exact on CPU (max difference 0.0)
SPEECHBRAIN_TOLERANCE = 1e-4
ORIGINAL_NETWORKS = ("ResNetSE34L", "ResNetSE34V2", "ECAPA_TDNN", "ResNet34")
LENGTHS = (400, 401, 559, 16000 + 37, 3 * 16000)     # one frame, one frame and a sample, ..., 3 s: one batch each


def speech_like(samples: int, seed: int, int16: bool = True, silence: bool = True) -> torch.Tensor:
    """A voiced-speech stand-in: harmonics of a gliding 100-250 Hz pitch under a syllable-rate envelope, noise, a
    stretch of digital silence (where Kaldi's log floor matters) and a loud burst (where SpeechBrain's 80-dB clamp
    does); in int16 steps, or in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    pitch = 100 + 150 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = 0.2 + 0.8 * np.abs(np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi)))
    wave = 3000 * envelope * voiced + rng.normal(0, 30, samples)
    if samples >= 4000 and silence:
        wave[samples // 4: samples // 4 + 1200] = 0.0
        wave[samples // 2: samples // 2 + 200] *= 8
    wave = np.clip(np.round(wave), -32768, 32767)
    return torch.from_numpy(wave if int16 else wave / 32768).float()


def batch(length: int, seeds=(1, 2, 3), int16: bool = True) -> torch.Tensor:
    return torch.stack([speech_like(length, seed, int16) for seed in seeds])


def torchaudio_fbank(wave: torch.Tensor, window: str, dither: float = 0.0) -> torch.Tensor:
    """WeSpeaker's / 3D-Speaker's call (wespeaker/dataset/processor.py compute_fbank; speakerlab's FBank) of one
    utterance, then the utterance mean subtracted: ``(n_mels, frames)``."""
    features = kaldi.fbank(wave[None], num_mel_bins=80, frame_length=25, frame_shift=10, dither=dither,
                           sample_frequency=16000, window_type={"hann": "hanning"}.get(window, window),
                           energy_floor=0.0)
    return (features - features.mean(dim=0)).T


def test_the_api():
    assert FRONTENDS == ("logmel", "kaldi_fbank", "speechbrain_fbank", "waveform")
    waves = batch(16000)
    for name in FEATURE_FRONTENDS:
        features = make_frontend(name, 24)(waves.requires_grad_())
        assert features.shape[:2] == (3, 24) and features.dtype == torch.float32 and not features.requires_grad
    assert make_frontend("waveform", 80)(waves) is waves
    with pytest.raises(SpeakerNetError, match="unknown frontend 'mfcc'"):
        make_frontend("mfcc", 80)
    with pytest.raises(SpeakerNetError, match="log_input False applies to the logmel front end only"):
        make_frontend("kaldi_fbank", 80, log_input=False)


@pytest.mark.parametrize("window", ["povey", "hamming", "hann"])
@pytest.mark.parametrize("int16", [True, False], ids=["int16", "float"])
def test_batched_kaldi_fbank_is_torchaudios_per_utterance_fbank(window, int16):
    """WeSpeaker's (hamming, int16 scale) and 3D-Speaker's (povey, float scale) settings, in eval mode (dither 0):
    each crop length is one batch (a batch has one length), each utterance of it compared with its own fbank."""
    frontend = make_frontend("kaldi_fbank", 80, window).eval()
    worst = 0.0
    for length in LENGTHS:
        waves = batch(length, int16=int16)
        features = frontend(waves)
        assert features.shape == (3, 80, 1 + (length - 400) // 160)
        for wave, got in zip(waves, features):
            worst = max(worst, float((got - torchaudio_fbank(wave, window)).abs().max()))
    assert worst <= KALDI_TOLERANCE, f"max difference {worst:.2e}"


def test_a_crop_is_the_fbank_of_the_crop():
    """A crop of a batch (what the trainer and the crops scoring feed) is featurised as that crop alone: its own
    frames and its own mean, not a slice of the whole file's."""
    frontend = make_frontend("kaldi_fbank", 80).eval()
    whole = speech_like(3 * 16000, 4)
    crops = torch.stack([whole[start: start + 32240] for start in (0, 4000, 15760)])
    for crop, got in zip(crops, frontend(crops)):
        assert float((got - torchaudio_fbank(crop, "hamming")).abs().max()) <= KALDI_TOLERANCE


def test_the_utterance_mean_of_each_bin_is_subtracted():
    features = make_frontend("kaldi_fbank", 80).eval()(batch(16000))
    assert float(features.mean(dim=2).abs().max()) < 1e-5
    raw = KaldiFbank(80, mean_norm=False).eval()(batch(16000))
    assert torch.allclose(features, raw - raw.mean(dim=2, keepdim=True), atol=1e-5)


def test_dither_only_in_training_and_as_kaldis():
    """Training mode adds Kaldi's dither (for one utterance and the same seed, torchaudio's ``dither=1.0`` fbank
    exactly); eval mode none, so embeddings are deterministic."""
    frontend = make_frontend("kaldi_fbank", 80, "hamming")
    wave = speech_like(16000, 5)
    frontend.eval()
    assert torch.equal(frontend(wave[None]), frontend(wave[None]))
    frontend.train()
    torch.manual_seed(11)
    got = frontend(wave[None])[0]
    torch.manual_seed(11)
    reference = torchaudio_fbank(wave, "hamming", dither=1.0)
    assert float((got - reference).abs().max()) <= KALDI_TOLERANCE
    assert not torch.equal(frontend(wave[None]), frontend(wave[None]))
    assert not torch.allclose(got, torchaudio_fbank(wave, "hamming"), atol=1e-3)   # the dither did something
    assert make_frontend("kaldi_fbank", 80, dither=0.0).train()(wave[None]).equal(frontend.eval()(wave[None]))


def test_the_dither_is_one_int16_step_whatever_the_input_scale():
    """A network fed [-1, 1] input (``--audio_scale float``) dithers by 1/32768 once told its scale (SpeakerNet
    tells it when it builds the network): the same features as the int16-scale input with the same noise, away
    from Kaldi's floor (float32 eps), which float input's energies reach in digital silence and in the lowest bands
    (40-90 Hz, under this signal's 100-Hz pitch, which pre-emphasis all but removes): there 3D-Speaker's float input
    and WeSpeaker's int16 input give other features, so an import must give each toolkit its own scale."""
    wave = speech_like(16000, 6, silence=False)
    int16 = make_frontend("kaldi_fbank", 80).train()
    floating = set_audio_scale(make_frontend("kaldi_fbank", 80).train(), "float")
    torch.manual_seed(3)
    expected = int16(wave[None])[:, 3:]
    torch.manual_seed(3)
    assert float((floating(wave[None] / 32768)[:, 3:] - expected).abs().max()) < 1e-4
    torch.manual_seed(4)
    assert float((floating(wave[None] / 32768)[:, 3:] - expected).abs().max()) > 1e-2      # other noise
    assert SpeakerNet.build("ResNetSE34L", frontend="kaldi_fbank", audio_scale="float",
                            with_loss=False).__S__.frontend.int16_step == 1 / 32768
    assert SpeakerNet.build("ResNetSE34L", frontend="kaldi_fbank", with_loss=False).__S__.frontend.int16_step == 1


def test_speechbrains_fbank_and_sentence_normalisation():
    """``Fbank(n_mels)`` then ``InputNormalization(norm_type="sentence", std_norm=False)`` (SpeechBrain's ECAPA
    hyperparams.yaml), on a batch of float waveforms with silence and a burst 80 dB above the floor."""
    pytest.importorskip("speechbrain")
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    normalise = InputNormalization(norm_type="sentence", std_norm=False).eval()
    worst = 0.0
    for n_mels in (80, 40):
        reference_fbank = Fbank(n_mels=n_mels).eval()
        frontend = make_frontend("speechbrain_fbank", n_mels).eval()
        for length in (400, 16000 + 37, 2 * 16000):
            waves = batch(length, int16=False)
            reference = normalise(reference_fbank(waves), torch.ones(len(waves))).transpose(1, 2)
            got = frontend(waves)
            assert got.shape == reference.shape
            worst = max(worst, float((got - reference).abs().max()))
    assert worst <= SPEECHBRAIN_TOLERANCE, f"max difference {worst:.2e}"


def test_speechbrains_80_db_clamp_is_per_utterance():
    """SpeechBrain 1.x clamps each utterance at 80 dB below its own maximum: an utterance's features do not depend
    on the loudest other utterance of its batch."""
    frontend = SpeechBrainFbank(80).eval()
    quiet, loud = speech_like(16000, 7, int16=False) * 1e-4, speech_like(16000, 8, int16=False)
    assert torch.equal(frontend(torch.stack([quiet, loud]))[0], frontend(quiet[None])[0])


@pytest.mark.parametrize("network", ORIGINAL_NETWORKS)
def test_every_original_network_takes_every_feature_front_end(network):
    """logmel (default) keeps the network's layout (``torchfb``); the others, with any n_mels, add no key to the
    state dict (their banks are rebuilt from the spec); ``waveform`` is an error naming the network."""
    build = plugins.load("models", network)
    assert plugins.model_defaults(network)["frontend"] == "logmel"
    assert any(key.startswith("torchfb.") for key in build().state_dict())
    waves = batch(8000, seeds=(1, 2))
    for frontend in ("kaldi_fbank", "speechbrain_fbank"):
        net = build(frontend=frontend, n_mels=37).eval()
        assert not any(key.startswith(("torchfb.", "frontend.")) for key in net.state_dict())
        assert torch.isfinite(net(waves)).all()
    with pytest.raises(SpeakerNetError, match=f"network {network} takes features, not frontend 'waveform'"):
        build(frontend="waveform")


def test_the_logmel_front_end_is_the_networks_log_mel():
    """make_frontend("logmel") computes what ECAPA_TDNN's own log-mel path (``torchfb``, mean norm) computes."""
    net = plugins.load("models", "ECAPA_TDNN")(n_mels=40).eval()
    frontend = make_frontend("logmel", 40)
    waves = batch(16000)
    assert torch.equal(frontend(waves), net.features(waves))


def test_the_front_end_is_recorded_in_the_checkpoint_and_rebuilt(tmp_path):
    """``--frontend kaldi_fbank`` is recorded under run["model"]; load_embedder rebuilds that front end and gives
    the network's own embedding; a checkpoint recorded before front ends existed resolves to logmel."""
    path = tmp_path / "model000000001.model"
    net = saved_run_checkpoint(["--model", "ResNetSE34L", "--trainfunc", "proto", "--nOut", "16", "--n_mels", "24",
                                "--frontend", "kaldi_fbank", "--nSpeakers", "4"], path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["run"]["model"]["frontend"] == "kaldi_fbank"
    assert checkpoint_spec(checkpoint, str(path)).frontend == "kaldi_fbank"
    embedder = load_embedder(str(path), device="cpu")
    assert isinstance(embedder.network.frontend, KaldiFbank) and not embedder.network.frontend.training
    wave = speech_like(2 * 16000, 9)
    net.eval()
    with torch.no_grad():
        expected = net.__S__(wave[None])[0]
    assert torch.allclose(torch.as_tensor(embedder.embed(wave.numpy() / 32768)).flatten(), expected, atol=1e-5)
    del checkpoint["run"]["model"]["frontend"]
    assert checkpoint_spec(checkpoint, str(path)).resolved().frontend == "logmel"
    assert ModelSpec(model="ECAPA_TDNN").resolved().frontend == "logmel"
    with pytest.raises(SpeakerNetError, match="model option frontend 'mfcc'"):
        ModelSpec(frontend="mfcc").check()


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["kaldi_fbank", "speechbrain_fbank"])
def test_the_export_takes_the_front_end(frontend, tmp_path):
    """ONNX and torch.export carry the front end inside the graph (torch.stft / unfold + rfft) and compute what
    PyTorch computes, from [-1, 1] input."""
    ort = pytest.importorskip("onnxruntime")
    from spknet.export import export_model, export_program, load_program

    torch.manual_seed(0)
    net = SpeakerNet.build("ResNetSE34L", nOut=16, frontend=frontend, with_loss=False).eval()
    config = net.spec.record()
    program = export_program(net.__S__, config)
    onnx_path, pt2_path = str(tmp_path / "m.onnx"), str(tmp_path / "m.pt2")
    export_model(net.__S__, config, onnx_path, "onnx", True, program=program)
    export_model(net.__S__, config, pt2_path, "torch_export", True, program=program)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    module, metadata = load_program(pt2_path)
    assert metadata["frontend"] == frontend
    for seconds in (0.5, 2.0, 5.3):
        wave = speech_like(int(seconds * 16000), 10, int16=False)[None]
        with torch.no_grad():
            reference = net.__S__(wave * 32768)
            program = module(wave)
        for got in (torch.from_numpy(session.run(["embedding"], {"waveform": wave.numpy()})[0]), program):
            assert float(torch.nn.functional.cosine_similarity(got, reference).min()) >= 0.99999


@pytest.fixture(scope="module", autouse=True)
def _no_speechbrain_left_behind():
    yield
    forget_lazy_modules("speechbrain")
