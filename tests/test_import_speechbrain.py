"""``python inference.py import --from speechbrain``: SpeechBrain's ECAPA-TDNN as the plugin ``ECAPA_TDNN_SB``, the
proof that an imported ``embedding_model.ckpt`` computes what SpeechBrain computes, and the errors of files and
configs that are not what ``--from speechbrain`` takes.

The proof, without a download: SpeechBrain's own class (``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN``, the
``speechbrain`` package installed without its dependencies: requirements-oracles.txt) is built with random weights
and BatchNorm statistics, saved as SpeechBrain's checkpointer saves it (``torch.save(module.state_dict())``), and its
embedding of a waveform is computed as ``EncoderClassifier.encode_batch`` computes it for one file (its ``Fbank``,
``InputNormalization(norm_type="sentence", std_norm=False)`` with relative length 1, the network in eval mode); the
imported file's embedding through ``load_embedder`` must be the same within 1e-4 relative, for the whole file and
for each crop of ``--eval_frames`` (one utterance at a time, as SpeechBrain embeds a file).
"""

import os

import numpy as np
import pytest
import soundfile
import torch

import inference
from spknet import plugins
from spknet.errors import SpeakerNetError
from spknet.importing import TOOLKITS, import_checkpoint
from spknet.inference import load_embedder
from tests.helpers import assert_export_agrees, exported_runner, forget_lazy_modules, relative
from tests.oracles import count, randomise, speech_like

PUBLISHED_PARAMETERS = 20_767_552        # SpeechBrain's ECAPA_TDNN with spkrec-ecapa-voxceleb's hyperparams
SMALL_CHANNELS = 32                      # [32, 32, 32, 32, 96]: the published layout, narrow
EVAL_FRAMES = 50                         # ten crops of 0.5 s


def oracle_class():
    pytest.importorskip("speechbrain", reason="speechbrain is not installed (pip install --no-deps "
                                              "speechbrain==1.1.2 hyperpyyaml ruamel.yaml)")
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    return ECAPA_TDNN


def oracle(channels: int = SMALL_CHANNELS, lin_neurons: int = 192, seed: int = 1) -> torch.nn.Module:
    """SpeechBrain's ECAPA_TDNN of channels ``[C, C, C, C, 3C]`` with random weights and BN statistics."""
    torch.manual_seed(seed)
    model = oracle_class()(80, lin_neurons=lin_neurons, channels=[channels] * 4 + [3 * channels])
    return randomise(model, seed)


def speechbrain_embedding(model: torch.nn.Module):
    """SpeechBrain's embedding of each waveform of a batch (float, [-1, 1]), one utterance at a time, as
    ``EncoderClassifier.encode_batch`` computes it: Fbank, sentence mean normalisation, the network."""
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    fbank = Fbank(n_mels=80).eval()
    normalise = InputNormalization(norm_type="sentence", std_norm=False).eval()

    def embed(waves: torch.Tensor) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for wave in waves:
                lengths = torch.ones(1)
                rows.append(model(normalise(fbank(wave[None]), lengths), lengths)[:, 0])
        return torch.cat(rows)
    return embed


def saved(model: torch.nn.Module, folder, name: str = "embedding_model.ckpt") -> str:
    """The file as SpeechBrain's checkpointer writes it (``speechbrain.utils.checkpoints.torch_save``)."""
    path = os.path.join(str(folder), name)
    torch.save(model.state_dict(), path)
    return path


HYPERPARAMS = """\
# an ECAPA speaker model's hyperparams.yaml, as SpeechBrain's model cards lay it out
n_mels: 80
pretrained_path: speechbrain/spkrec-ecapa-voxceleb
out_n_neurons: 7205
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: {kernel_sizes}
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: {lin_neurons}
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {lin_neurons}
    out_neurons: !ref <out_n_neurons>
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        classifier: !ref <classifier>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
"""


def hyperparams(folder, channels: int = SMALL_CHANNELS, lin_neurons: int = 192, kernel_sizes="[5, 3, 3, 3, 1]",
                extra: str = "") -> str:
    path = os.path.join(str(folder), "hyperparams.yaml")
    with open(path, "w") as handle:
        handle.write(HYPERPARAMS.format(channels=[channels] * 4 + [3 * channels], lin_neurons=lin_neurons,
                                        kernel_sizes=kernel_sizes) + extra)
    return path


def compare(out: str, wav: str, original) -> tuple[float, float]:
    """(whole file, crops) relative differences between ``load_embedder(out)`` and ``original`` on the same float
    samples (the model's scale is float: its crops are the samples themselves)."""
    wave = torch.from_numpy(soundfile.read(wav, dtype="float32")[0])
    whole = torch.as_tensor(load_embedder(out, device="cpu").embed(wav))
    cropped = load_embedder(out, device="cpu", eval_frames=EVAL_FRAMES)
    crops = torch.from_numpy(cropped.crops(wav))
    assert len(crops) == 10
    return (relative(whole, original(wave[None])),
            relative(torch.as_tensor(cropped.embed(wav)), original(crops)))


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------

def test_the_published_configuration_has_speechbrains_parameter_count():
    network = plugins.load("models", "ECAPA_TDNN_SB")()
    assert count(network) == PUBLISHED_PARAMETERS
    try:
        ecapa = oracle_class()
    except pytest.skip.Exception:
        return
    reference = ecapa(80, lin_neurons=192, channels=[1024, 1024, 1024, 1024, 3072])
    assert count(reference) == PUBLISHED_PARAMETERS
    assert {key: value.shape for key, value in network.state_dict().items()} == \
        {key: value.shape for key, value in reference.state_dict().items()}


def test_the_network_is_speechbrains_on_the_same_features():
    original = oracle(lin_neurons=24)
    ours = plugins.load("models", "ECAPA_TDNN_SB")(channels=SMALL_CHANNELS, nOut=24).eval()
    ours.load_state_dict(original.state_dict(), strict=True)
    waves = torch.rand(2, 9000, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        expected = torch.cat([speechbrain_embedding(original)(wave[None]) for wave in waves])
        got = ours(waves)
    assert got.shape == (2, 24) and relative(got, expected) < 1e-5


def test_the_published_defaults_are_recorded():
    from spknet.specs import ModelSpec

    spec = ModelSpec(model="ECAPA_TDNN_SB").resolved()
    assert (spec.nOut, spec.n_mels, spec.channels, spec.frontend, spec.encoder_type, spec.window) == \
        (192, 80, 1024, "speechbrain_fbank", "ASP", "hamming")


def test_a_training_step_reaches_every_parameter():
    from spknet.model import SpeakerNet

    torch.manual_seed(0)
    net = SpeakerNet.build(model="ECAPA_TDNN_SB", channels=16, nOut=16, trainfunc="aamsoftmax", nSpeakers=3,
                           audio_scale="float")
    labels = torch.arange(3).repeat_interleave(net.utterances_per_speaker)
    loss, _ = net(torch.rand(len(labels), 3200) * 2 - 1, labels, 3)
    loss.backward()
    assert torch.isfinite(loss)
    assert not [key for key, parameter in net.__S__.named_parameters()
                if parameter.grad is None or not torch.isfinite(parameter.grad).all()]


def test_options_it_does_not_have_are_errors():
    build = plugins.load("models", "ECAPA_TDNN_SB")
    with pytest.raises(SpeakerNetError, match="multiple of 8"):
        build(channels=12)
    with pytest.raises(SpeakerNetError, match="encoder_type"):
        build(channels=8, encoder_type="SAP")
    with pytest.raises(SpeakerNetError, match="at least 5 frames"):
        build(channels=8).eval()(torch.rand(1, 480))


# ----------------------------------------------------------------------------------------------------------------
# The proof
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [SMALL_CHANNELS, pytest.param(1024, marks=pytest.mark.slow)])
def test_an_imported_speechbrain_ecapa_computes_what_speechbrain_computes(tmp_path, one_thread, channels):
    original = oracle(channels)
    path = saved(original, tmp_path)
    out = str(tmp_path / "imported.model")
    report = import_checkpoint("speechbrain", path, out, hyperparams(tmp_path, channels))
    spec = report.spec
    assert (spec.model, spec.nOut, spec.n_mels, spec.channels, spec.frontend, spec.audio_scale) == \
        ("ECAPA_TDNN_SB", 192, 80, channels, "speechbrain_fbank", "float")
    assert report.keys == len(original.state_dict()) and report.dropped == {}
    whole, crops = compare(out, speech_like(tmp_path / "a.wav"), speechbrain_embedding(original))
    print(f"speechbrain ECAPA_TDNN C={channels}: max relative difference {whole:.2e} (whole file), "
          f"{crops:.2e} (crops)")
    assert whole < 1e-4 and crops < 1e-4


def test_the_command_line_imports_and_embeds(tmp_path, capsys):
    original = oracle(lin_neurons=32)
    path = saved(original, tmp_path)
    out = str(tmp_path / "ecapa.model")
    assert inference.main(["import", "--from", "speechbrain", path, "--config",
                           hyperparams(tmp_path, lin_neurons=32), "--out", out]) == 0
    printed = capsys.readouterr().out
    assert f"{path}: speechbrain ECAPA_TDNN_SB (nOut 32, 80 SpeechBrain fbanks, window hamming, audio_scale " \
           f"float)" in printed
    assert "hyperparams.yaml: speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN with channels [32, 32, 32, 32, 96]" \
        in printed
    wav = speech_like(tmp_path / "a.wav", seconds=1.0)
    embeddings = tmp_path / "emb.npz"
    assert inference.main(["embed", "--initial_model", out, wav, "--out", str(embeddings), "--device", "cpu"]) == 0
    saved_embedding = np.load(embeddings)[wav]
    expected = speechbrain_embedding(original)(torch.from_numpy(soundfile.read(wav, dtype="float32")[0])[None])
    assert saved_embedding.shape == (1, 32) and relative(torch.from_numpy(saved_embedding), expected) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_the_imported_model_exports_with_its_front_end(tmp_path, fmt):
    """The export (front end inside) computes the embedder's whole-file embedding of three lengths."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    path = saved(oracle(), tmp_path)
    out = str(tmp_path / "ecapa.model")
    import_checkpoint("speechbrain", path, out)
    exported = str(tmp_path / ("ecapa.onnx" if fmt == "onnx" else "ecapa.pt2"))
    assert inference.main(["export", "--initial_model", out, "--format", fmt, "--out", exported]) == 0
    embedder = load_embedder(out, device="cpu")
    assert_export_agrees(exported_runner(exported, fmt)[0], lambda waves: embedder.embed(waves[0]),
                         (8000, 20800, 48000), batch=1, most_relative=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# hyperparams.yaml is data
# ----------------------------------------------------------------------------------------------------------------

def test_hyperparams_tags_are_read_as_data_and_never_run(tmp_path):
    """A tag that would call a function if hyperpyyaml loaded the file is a value like any other here."""
    executed = tmp_path / "executed"
    config = hyperparams(tmp_path, extra=f'side_effect: !apply:builtins.open ["{executed}", "w"]\n'
                                         f"module: !module:os\n")
    text = open(config).read().replace("    attention_channels: 128\n", "    attention_channels: 128\n"
                                       "    device: !ref <run_opts[device]>\n")   # ignored: not even resolved
    with open(config, "w") as handle:
        handle.write(text)
    read = TOOLKITS["speechbrain"].read_config(config)
    assert read["side_effect"].tag == "!apply:builtins.open" and read["side_effect"].value == [str(executed), "w"]
    assert read["embedding_model"].value["input_size"].tag == "!ref"
    import_checkpoint("speechbrain", saved(oracle(), tmp_path), str(tmp_path / "m.model"), config)
    assert not executed.exists()


def refused(tmp_path, path, match, config=None) -> str:
    out = tmp_path / "never.model"
    with pytest.raises(SpeakerNetError, match=match) as raised:
        import_checkpoint("speechbrain", str(path), str(out), config)
    assert not out.exists() and not list(tmp_path.glob(".never.model.*"))
    return str(raised.value)


@pytest.mark.parametrize("options,match", [
    ({"lin_neurons": 256}, "hyperparams.yaml key embedding_model.lin_neurons says nOut 256, the file's key "
                           "fc.conv.weight says 192"),
    ({"channels": 64}, "key embedding_model.channels says channels 64, the file's key blocks.0.conv.conv.weight "
                       "says 32"),
    ({"kernel_sizes": "[5, 3, 3, 3, 3]"}, r"key embedding_model.kernel_sizes: \[5, 3, 3, 3, 3\]; SpeakerNet's "
                                          r"ECAPA_TDNN_SB computes \[5, 3, 3, 3, 1\] only"),
])
def test_a_config_that_contradicts_the_weights_writes_nothing(tmp_path, options, match):
    message = refused(tmp_path, saved(oracle(), tmp_path), match, hyperparams(tmp_path, **options))
    assert "hyperparams.yaml" in message


@pytest.mark.parametrize("old,new,match", [
    ("    channels: [32, 32, 32, 32, 96]", "    channels: [32, 32, 32, 32, 64]",
     r"key embedding_model.channels: \[32, 32, 32, 32, 64\]; .* \[C, C, C, C, 3C\] only"),
    ("    n_mels: !ref <n_mels>", "    n_mels: 40", "key compute_features.n_mels: 40, but embedding_model.input_size "
                                                   "is 80"),
    ("    norm_type: sentence", "    norm_type: global", "key mean_var_norm.norm_type: 'global'"),
    ("    std_norm: False\nembedding_model", "embedding_model", "key mean_var_norm.std_norm: missing"),
    ("    input_size: !ref <n_mels>", "    input_size: !ref <n_mels> * 2", r"!ref <n_mels> \* 2 is not a plain"),
    ("    input_size: !ref <n_mels>", "    input_size: !ref <mels>", "refers to mels, which the config lacks"),
    ("    attention_channels: 128", "    attention_channels: 128\n    groups: [1, 1, 1, 1, 2]",
     "key embedding_model.groups"),
    ("embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
     "embedding_model: !new:speechbrain.lobes.models.Xvector.Xvector", "key embedding_model: !new:speechbrain"
                                                                        ".lobes.models.Xvector.Xvector is not"),
])
def test_a_config_speakernet_does_not_compute_is_named(tmp_path, old, new, match):
    config = hyperparams(tmp_path)
    text = open(config).read()
    assert old in text
    with open(config, "w") as handle:
        handle.write(text.replace(old, new, 1))
    refused(tmp_path, saved(oracle(), tmp_path), match, config)


def test_speechbrains_other_files_are_named(tmp_path):
    classifier = tmp_path / "classifier.ckpt"       # Classifier(input_size=192, out_neurons=7205).state_dict()
    torch.save({"weight": torch.randn(7205, 192)}, classifier)
    refused(tmp_path, classifier, "classifier.ckpt: SpeechBrain's classifier head .* key weight 7205x192.* import "
                                  "embedding_model.ckpt")
    statistics = tmp_path / "mean_var_norm_emb.ckpt"    # InputNormalization._save
    torch.save({"count": 5, "glob_mean": torch.zeros(192), "glob_std": torch.ones(192)}, statistics)
    refused(tmp_path, statistics, "mean_var_norm_emb.ckpt: SpeechBrain's embedding normalisation statistics")


def test_other_files_are_named(tmp_path):
    other = tmp_path / "avg_model.pt"               # a WeSpeaker CAM++
    torch.save(plugins.load("models", "CAMPPlus")().state_dict(), other)
    refused(tmp_path, other, "avg_model.pt: key blocks.0.conv.conv.weight missing: not SpeechBrain's ECAPA-TDNN")
    state = oracle().state_dict()
    state.pop("blocks.2.se_block.conv2.conv.bias")
    torch.save(state, tmp_path / "embedding_model.ckpt")
    refused(tmp_path, tmp_path / "embedding_model.ckpt", "key blocks.2.se_block.conv2.conv.bias of ECAPA_TDNN_SB is "
                                                          "missing from the file")
    bad = tmp_path / "hyperparams.yaml"
    bad.write_text("embedding_model: [unclosed\n")
    refused(tmp_path, saved(oracle(), tmp_path), "hyperparams.yaml: not a YAML config", str(bad))


@pytest.fixture(scope="module", autouse=True)
def _no_speechbrain_left_behind():
    yield
    forget_lazy_modules("speechbrain")
