"""3D-Speaker's networks (ERes2NetV2, its w24s4ep4 variant, and CAM++ as 3D-Speaker computes it): the published
parameter counts, and, where speakerlab (3D-Speaker's package, the ``oracles`` extra, installed without its
dependencies) is importable, its own classes: the same counts, the same state-dict keys and shapes, and the same
embedding of the same features with copied weights.

The big published configurations are built once per module, for counting and key layouts only; the forward checks
run narrower configurations of the same code on short inputs."""

import importlib.util

import pytest
import torch

import SpeakerNet
from spknet import plugins
from spknet.errors import SpeakerNetError
from tests.helpers import relative
from tests.oracles import count, layout, randomise, speakerlab_class, threedspeaker_embedding

HAS_SPEAKERLAB = importlib.util.find_spec("speakerlab") is not None
needs_speakerlab = pytest.mark.skipif(not HAS_SPEAKERLAB, reason="speakerlab (the oracles extra) is not installed")

# Counted from speakerlab 0.0.6's own classes (and ERes2NetV2's 17.86 M in its paper and model card)
PUBLISHED = {"ERes2NetV2": 17_859_632, "ERes2NetV2w24s4ep4": 53_513_632, "CAMPPlus3D": 6_848_544}
# speakerlab/bin/infer_sv.py's configurations of the same networks
ORACLE_ARGS = {"ERes2NetV2": dict(feat_dim=80, embedding_size=192, baseWidth=26, scale=2, expansion=2),
               "ERes2NetV2w24s4ep4": dict(feat_dim=80, embedding_size=192, baseWidth=24, scale=4, expansion=4),
               "CAMPPlus3D": dict(feat_dim=80, embedding_size=192)}
# Narrow versions for the forward checks: our options, speakerlab's arguments
SMALL = {"ERes2NetV2": ({"channels": 8, "n_mels": 24}, dict(m_channels=8, feat_dim=24)),
         "ERes2NetV2w24s4ep4": ({"channels": 8, "n_mels": 24}, dict(m_channels=8, feat_dim=24)),
         "CAMPPlus3D": ({"n_mels": 24}, dict(feat_dim=24))}


@pytest.fixture(scope="module")
def published():
    """Each published configuration, built once (default options: the published model)."""
    torch.manual_seed(0)
    return {name: plugins.load("models", name)() for name in PUBLISHED}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_are_the_published_ones(published, name):
    assert count(published[name]) == PUBLISHED[name]


def test_3dspeaker_voxceleb_campplus_is_512_d():
    """``iic/speech_campplus_sv_en_voxceleb_16k`` (CAMPPLUS_VOX): 512-d, WeSpeaker's count."""
    assert count(plugins.load("models", "CAMPPlus3D")(nOut=512)) == 7_176_224


@needs_speakerlab
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_same_counts_and_keys_as_speakerlab(published, name):
    oracle = speakerlab_class(name)(**ORACLE_ARGS[name])
    assert count(oracle) == count(published[name]) == PUBLISHED[name]
    assert layout(published[name]) == layout(oracle)              # key for key, shape for shape, in order
    assert list(published[name].state_dict()) == list(oracle.state_dict())


def max_difference(name: str, frames: int = 37) -> float:
    options, oracle_args = SMALL[name]
    torch.manual_seed(0)
    oracle = randomise(speakerlab_class(name)(**{**ORACLE_ARGS[name], **oracle_args})).eval()
    ours = plugins.load("models", name)(**options).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    features = torch.randn(3, options["n_mels"], frames, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        expected = oracle(features.transpose(1, 2).clone())         # (batch, frames, bands); it unsqueezes in place
        got = ours.embed(features)
    assert got.shape == expected.shape == (3, 192)
    return (got - expected).abs().max().item() / max(expected.abs().max().item(), 1.0)


@needs_speakerlab
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_forward_matches_speakerlab_on_the_same_features(name):
    assert max_difference(name) <= 1e-5


@needs_speakerlab
def test_campplus3d_computes_3dspeakers_pooling_not_wespeakers():
    """With WeSpeaker's pooling (``sqrt(var + 1e-7)``) a randomly initialised CAM++ is off by far more than 1e-5:
    the reason for a 3D-Speaker plugin beside WeSpeaker's ``CAMPPlus``."""
    options, oracle_args = SMALL["CAMPPlus3D"]
    oracle = randomise(speakerlab_class("CAMPPlus3D")(**{**ORACLE_ARGS["CAMPPlus3D"], **oracle_args})).eval()
    wespeakers = plugins.load("models", "CAMPPlus")(nOut=192, **options).eval()
    wespeakers.load_state_dict(oracle.state_dict(), strict=True)
    features = torch.randn(3, options["n_mels"], 37, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        assert (wespeakers.embed(features) - oracle(features.transpose(1, 2).clone())).abs().max() > 1e-5


@needs_speakerlab
@pytest.mark.parametrize("name", ["ERes2NetV2", "CAMPPlus3D"])
def test_waveform_embedding_is_speakerlabs_fbank_and_network(name):
    """The plugin on a float waveform = speakerlab's ``FBank(80, 16000, mean_nor=True)`` then its network, as
    3D-Speaker's infer_sv.py computes an embedding."""
    from speakerlab.process.processor import FBank

    options, oracle_args = SMALL[name]
    options, oracle_args = {**options, "n_mels": 80}, {**oracle_args, "feat_dim": 80}
    oracle = randomise(speakerlab_class(name)(**{**ORACLE_ARGS[name], **oracle_args})).eval()
    ours = plugins.load("models", name)(**options).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    wave = torch.rand(1, 8000, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = oracle(FBank(80, sample_rate=16000, mean_nor=True)(wave).unsqueeze(0))
        got = ours(wave)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_waveforms_in_embeddings_out(name):
    net = plugins.load("models", name)(**SMALL[name][0]).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 4000) * 2 - 1)
    assert out.shape == (2, 192) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_training_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet.build(model=name, trainfunc="aamsoftmax", nSpeakers=3, **SMALL[name][0])
    labels = torch.arange(3).repeat_interleave(net.utterances_per_speaker)
    loss, accuracy = net(torch.rand(len(labels), 3200) * 2 - 1, labels, 3)
    assert torch.isfinite(loss) and torch.isfinite(accuracy)
    loss.backward()
    missing = [key for key, parameter in net.__S__.named_parameters()
               if parameter.requires_grad and (parameter.grad is None or not torch.isfinite(parameter.grad).all())]
    assert not missing


def test_the_published_defaults_are_recorded():
    """The spec a run records: 3D-Speaker's 192-d embedding on 80 Kaldi fbanks with its povey window."""
    from spknet.specs import ModelSpec

    for name in PUBLISHED:
        spec = ModelSpec(model=name).resolved()
        assert (spec.nOut, spec.n_mels, spec.window, spec.frontend) == (192, 80, "povey", "kaldi_fbank"), name


def test_options_the_networks_do_not_have_are_user_errors():
    with pytest.raises(SpeakerNetError, match="encoder_type"):
        plugins.load("models", "ERes2NetV2")(encoder_type="ASP")
    with pytest.raises(SpeakerNetError, match="takes features"):
        plugins.load("models", "ERes2NetV2")(frontend="waveform")
    with pytest.raises(SpeakerNetError, match="at least 8 bands"):
        plugins.load("models", "ERes2NetV2")(n_mels=4)


# ----------------------------------------------------------------------------------------------------------------
# import --from 3dspeaker: a file saved as 3D-Speaker saves it, embedded as 3D-Speaker's infer_sv.py embeds
# ----------------------------------------------------------------------------------------------------------------

def speech_like_wave(path, seconds: float = 2.0, seed: int = 7):
    """A 16-kHz 16-bit WAV of a few harmonics under a slow envelope plus noise; its float samples as the file
    holds them (what torchaudio.load gives 3D-Speaker)."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((140, 280, 420, 910), 1))
    wave = 0.3 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.shape)
    soundfile.write(path, (wave / np.abs(wave).max() * 0.8).astype(np.float32), 16000, subtype="PCM_16")
    samples, _ = soundfile.read(path, dtype="float32")
    return torch.from_numpy(samples)


def three_d_speaker_config(path, **args) -> str:
    """A 3D-Speaker training config (conf/eres2netv2.yaml's model part, its <references> kept)."""
    import yaml

    config = {"fbank_dim": 80, "sample_rate": 16000, "embedding_size": 192, "m_channels": args.pop("m_channels"),
              "feature_extractor": {"obj": "speakerlab.process.processor.FBank",
                                    "args": {"n_mels": "<fbank_dim>", "sample_rate": "<sample_rate>",
                                             "mean_nor": True}},
              "embedding_model": {"obj": "speakerlab.models.eres2net.ERes2NetV2.ERes2NetV2",
                                  "args": {"feat_dim": "<fbank_dim>", "embedding_size": "<embedding_size>",
                                           "m_channels": "<m_channels>", **args}},
              "min_lr": 5e-5}
    path.write_text(yaml.safe_dump(config).replace("min_lr: 5.0e-05", "min_lr: !!float 5e-5"))
    return str(path)


IMPORTS = [  # (speakerlab class, its arguments, --config (None, a model id, a network name, or a config file), ours)
    ("CAMPPlus3D", dict(feat_dim=80, embedding_size=192), "iic/speech_campplus_sv_zh-cn_16k-common", "CAMPPlus3D"),
    ("CAMPPlus3D", dict(feat_dim=80, embedding_size=512), "damo/speech_campplus_sv_en_voxceleb_16k", "CAMPPlus3D"),
    ("ERes2NetV2", dict(ORACLE_ARGS["ERes2NetV2"], m_channels=8), None, "ERes2NetV2"),
    ("ERes2NetV2", dict(ORACLE_ARGS["ERes2NetV2"], m_channels=8), "ERes2NetV2", "ERes2NetV2"),
    ("ERes2NetV2w24s4ep4", dict(ORACLE_ARGS["ERes2NetV2w24s4ep4"], m_channels=8), "yaml", "ERes2NetV2w24s4ep4"),
]


@needs_speakerlab
@pytest.mark.parametrize("name,args,selector,expected_model", IMPORTS)
def test_import_gives_3dspeakers_embedding(tmp_path, name, args, selector, expected_model):
    from spknet.importing import import_checkpoint

    torch.manual_seed(0)
    oracle = randomise(speakerlab_class(name)(**args)).eval()
    published = tmp_path / "pretrained.ckpt"
    torch.save(oracle.state_dict(), published)                   # 3D-Speaker's file: the bare state dict
    if selector == "yaml":
        selector = three_d_speaker_config(tmp_path / "eres2netv2.yaml", m_channels=8, baseWidth=24, scale=4,
                                          expansion=4)
    out = tmp_path / "imported.model"
    report = import_checkpoint("3dspeaker", str(published), str(out), config_path=selector)
    spec = report.spec
    assert (spec.model, spec.nOut, spec.n_mels, spec.window, spec.frontend, spec.audio_scale) == \
        (expected_model, args["embedding_size"], 80, "povey", "kaldi_fbank", "float")
    assert report.keys == len(oracle.state_dict()) and not report.dropped

    wav = tmp_path / "speech.wav"
    samples = speech_like_wave(wav)
    whole = SpeakerNet.load_embedder(str(out), device="cpu")
    assert relative(whole.embed(str(wav))[0], threedspeaker_embedding(oracle, samples)) <= 1e-4

    cropped = SpeakerNet.load_embedder(str(out), device="cpu", eval_frames=60)
    crops = torch.from_numpy(cropped.crops(str(wav)))             # float scale: the samples themselves
    got = cropped.embed(str(wav))
    assert len(crops) == len(got) == 10
    for crop, embedding in zip(crops, got):
        assert relative(embedding, threedspeaker_embedding(oracle, crop)) <= 1e-4


@needs_speakerlab
@pytest.mark.parametrize("selector,message", [
    ("iic/speech_eres2netv2_sv_zh-cn_16k-common", "contradicts the weights: iic/speech_eres2netv2_sv_zh-cn_16k-common "
                                                  r"says model ERes2NetV2, the file's network \(its keys\) says "
                                                  "CAMPPlus3D"),
    ("iic/speech_campplus_sv_en_voxceleb_16k", "says nOut 512, the file's last layer"),
    ("iic/speech_eres2net_large_sv_zh-cn_3dspeaker_16k", "ERes2Net \\(large\\), which SpeakerNet does not carry"),
    ("ResNet34", "not a file, nor a 3D-Speaker model id")])
def test_a_config_that_contradicts_the_file_writes_nothing(tmp_path, selector, message):
    from spknet.importing import import_checkpoint

    published = tmp_path / "campplus_cn_common.bin"
    torch.save(speakerlab_class("CAMPPlus3D")(feat_dim=80, embedding_size=192).state_dict(), published)
    out = tmp_path / "imported.model"
    with pytest.raises(SpeakerNetError, match=message):
        import_checkpoint("3dspeaker", str(published), str(out), config_path=selector)
    assert not out.exists()


def test_files_that_are_not_3dspeaker_models_are_named(tmp_path):
    from spknet.importing import import_checkpoint

    classifier = tmp_path / "classifier.ckpt"
    torch.save({"weight": torch.randn(10, 192)}, classifier)         # speakerlab's CosineClassifier
    with pytest.raises(SpeakerNetError, match="classifier.ckpt: a 3D-Speaker classifier"):
        import_checkpoint("3dspeaker", str(classifier), str(tmp_path / "out.model"))
    wespeaker = tmp_path / "avg_model.pt"            # a WeSpeaker CAM++ with its projection head
    state = plugins.load("models", "CAMPPlus3D")(nOut=192).state_dict()
    torch.save({**state, "projection.weight": torch.randn(10, 192)}, wespeaker)
    with pytest.raises(SpeakerNetError, match="avg_model.pt: key projection.weight is not part of CAMPPlus3D"):
        import_checkpoint("3dspeaker", str(wespeaker), str(tmp_path / "out.model"))
    assert not (tmp_path / "out.model").exists()


@needs_speakerlab
def test_the_import_command_takes_a_model_id(tmp_path, capsys):
    import inference

    oracle = randomise(speakerlab_class("ERes2NetV2")(**dict(ORACLE_ARGS["ERes2NetV2"], m_channels=8))).eval()
    published = tmp_path / "pretrained_eres2netv2.ckpt"
    torch.save(oracle.state_dict(), published)
    out = tmp_path / "eres2netv2.model"
    assert inference.main(["import", "--from", "3dspeaker", str(published), "--model-id", "ERes2NetV2",
                           "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3dspeaker ERes2NetV2 (nOut 192, 80 Kaldi fbanks, window povey, audio_scale float)" in printed
    wav = tmp_path / "speech.wav"
    samples = speech_like_wave(wav, seconds=1.0)
    embedding = SpeakerNet.load_embedder(str(out), device="cpu").embed(str(wav))[0]
    assert relative(embedding, threedspeaker_embedding(oracle, samples)) <= 1e-4
    assert inference.main(["import", "--from", "wespeaker", str(published), "--model-id", "ERes2NetV2",
                           "--out", str(tmp_path / "other.model")]) != 0
    assert "--model-id: a wespeaker checkpoint is described by --config" in capsys.readouterr().err
    assert not (tmp_path / "other.model").exists()
