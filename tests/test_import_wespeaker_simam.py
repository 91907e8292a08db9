"""WeSpeaker's SimAM-ResNets (models/_wespeaker_simam.py: the plugins SimAM_ResNet34_ASP and SimAM_ResNet100_ASP)
and their import, ``python inference.py import --from wespeaker``.

The proof, as for the other WeSpeaker networks (tests/test_import_wespeaker.py; the helpers are tests/oracles.py's):
WeSpeaker's own classes (wespeaker-unofficial's wespeaker/models/samresnet.py), with random weights and random
BatchNorm statistics, saved as WeSpeaker saves them with the ``config.yaml`` its recipe writes, imported by the
command line, then embedded by ``load_embedder`` and by WeSpeaker's own feature code and model: SimAM_ResNet34_ASP
as published (in_planes 64, 256-d) and both networks at a narrow width (in_planes 8). The counts, keys and
shapes are WeSpeaker's to the parameter; a config that contradicts the weights is one error naming the file and the
key, and nothing is written. The tests that need WeSpeaker's package skip without it.
"""

import os

import pytest
import torch
import yaml

import inference
from spknet import plugins
from spknet.checkpoints import read_checkpoint
from spknet.errors import SpeakerNetError
from spknet.folding import fold_batch_norms, inference_copy
from spknet.importing import import_checkpoint
from spknet.model import SpeakerNet
from spknet.specs import ModelSpec
from tests.oracles import (
    assert_imported_exports,
    compare,
    count,
    layout,
    randomise,
    refused,
    speech_like,
    wespeaker_config,
    wespeaker_embedding,
    wespeaker_module,
)

# WeSpeaker's own classes at their defaults: in_planes 64, embed_dim 256, acoustic_dim 80 (its VoxCeleb README
# gives the published ones as 25.2 M and 50.2 M)
COUNTS = {"SimAM_ResNet34_ASP": 25_213_760, "SimAM_ResNet100_ASP": 50_232_896}
NAMES = tuple(COUNTS)
SIMAM_ARGS = {"in_planes": 64, "embed_dim": 256, "acoustic_dim": 80}   # WeSpeaker's samresnet.py defaults
NARROW = 8                  # the in_planes of the fast tests' networks
BRANCH_GAIN = 0.25          # tamed(): the residual branches' last BN scales, times this
SECONDS = 2.0
MOST_RELATIVE = 1e-4


def shapes(module: torch.nn.Module) -> list:
    """Keys (in order) and shapes of every parameter and buffer the state dict holds."""
    return list(layout(module).items())


def wespeaker_simam(name: str, **args) -> torch.nn.Module:
    """WeSpeaker's class ``name`` (``SimAM_ResNet34_ASP``, ...) at :data:`SIMAM_ARGS`, ``args`` changed."""
    return getattr(wespeaker_module("models.samresnet"), name)(**{**SIMAM_ARGS, **args})


def tamed(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (randomised) with every block's last BN scale (``bn2.weight``, before SimAM and the sum) times
    :data:`BRANCH_GAIN`: at randomise's scales in [0.5, 1.5) the 16 (ResNet34) or 49 (ResNet100) residual branches
    add up to activations of 1e5, ASP's attention turns one-hot and its weighted variance, ``E[x²] - mean²`` as
    WeSpeaker computes it, is all float32 rounding; tamed, the maps stay below 100 and the comparison measures the
    code, not the rounding (a trained ResNet's last BN scales are small too)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("bn2.weight"):
                value.mul_(BRANCH_GAIN)
    return model


def simam_config(folder, model: str = "SimAM_ResNet34_ASP", **model_args) -> str:
    """The ``config.yaml`` WeSpeaker's recipe writes (the parts SpeakerNet reads): its ``model_args`` are the
    class's own arguments (in_planes, embed_dim, acoustic_dim, dropout; no feat_dim, pooling_func or
    two_emb_layer), ``in_planes`` :data:`NARROW` unless given."""
    args = {**SIMAM_ARGS, "in_planes": NARROW, **model_args}
    path = wespeaker_config(folder, model)
    with open(path) as handle:
        config = yaml.safe_load(handle)
    config["model_args"] = args
    config["dataset_args"]["fbank_args"]["num_mel_bins"] = args["acoustic_dim"]
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


def oracle_file(folder, name: str, in_planes: int = NARROW, classes: int = 7,
                seed: int = 1) -> tuple[str, torch.nn.Module]:
    """WeSpeaker's ``name`` with random weights and BatchNorm statistics (:func:`tamed`), saved as its
    ``save_checkpoint`` saves it (``torch.save(model.state_dict())``, the arc-margin classifier ``projection.weight``
    beside the network)."""
    torch.manual_seed(seed)
    model = tamed(randomise(wespeaker_simam(name, in_planes=in_planes), seed))
    state = model.state_dict()
    state["projection.weight"] = torch.randn(classes, SIMAM_ARGS["embed_dim"])
    path = os.path.join(str(folder), "avg_model.pt")
    torch.save(state, path)
    return path, model


def layout_file(folder, name: str = "SimAM_ResNet34_ASP", edit=None, seed: int = 1, **options) -> str:
    """An ``avg_model.pt`` in WeSpeaker's layout without WeSpeaker's package: SpeakerNet's own ``name`` (its keys and
    shapes are WeSpeaker's: :func:`test_counts_keys_and_shapes_are_wespeakers_own`) at in_planes :data:`NARROW`
    (or ``options``), random (:func:`tamed`), with ``projection.weight``; ``edit(state)`` changes it first."""
    torch.manual_seed(seed)
    network = plugins.load("models", name)(**{"channels": NARROW, **options})
    state = dict(tamed(randomise(network, seed)).state_dict())
    state["projection.weight"] = torch.randn(7, state["bottleneck.weight"].shape[0])
    if edit is not None:
        edit(state)
    path = os.path.join(str(folder), f"{name}.pt")
    torch.save(state, path)
    return path


def without(prefix: str):
    """An ``edit`` that removes every key starting with ``prefix``."""
    def edit(state: dict) -> None:
        for key in [key for key in state if key.startswith(prefix)]:
            del state[key]
    return edit


# ----------------------------------------------------------------------------------------------------------------
# The networks: WeSpeaker's counts, keys and shapes; the plugins' defaults
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_counts_keys_and_shapes_are_wespeakers_own(name):
    ours = plugins.load("models", name)()
    theirs = wespeaker_simam(name)
    assert count(ours) == COUNTS[name] == count(theirs)
    assert shapes(ours) == shapes(theirs)


@pytest.mark.parametrize("name", NAMES)
def test_the_plugins_defaults_are_wespeakers(name):
    spec = ModelSpec(model=name).resolved()
    assert (spec.frontend, spec.nOut, spec.n_mels, spec.encoder_type, spec.window, spec.channels) == \
        ("kaldi_fbank", 256, 80, "ASP", "hamming", 64)
    with pytest.raises(SpeakerNetError, match="unknown encoder_type 'TSTP': choose ASP"):
        plugins.load("models", name)(encoder_type="TSTP")
    with pytest.raises(SpeakerNetError, match="takes features, not frontend 'waveform'"):
        plugins.load("models", name)(frontend="waveform")


def test_a_training_step_and_folding(one_thread):
    """It trains with a loss head; every conv -> BN pair (stem, blocks, shortcuts) folds, SimAM reading the BN's
    output, and the CPU inference copy computes the same embeddings."""
    torch.manual_seed(0)
    net = SpeakerNet.build(model="SimAM_ResNet34_ASP", trainfunc="aamsoftmax", nSpeakers=2, nOut=16, channels=4)
    net.train()
    waves = (torch.rand(4, 8000, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 3000
    loss, _ = net(waves, torch.tensor([0, 0, 1, 1]), 2)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all()
                                        for p in net.__S__.parameters())
    network = randomise(plugins.load("models", "SimAM_ResNet34_ASP")(nOut=16, channels=4))
    with torch.no_grad():
        expected = network(waves[:2])
        assert torch.allclose(inference_copy(network, waves[:2], channels_last=True)(waves[:2]), expected,
                              rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    stages = (3, 4, 6, 3)
    assert fold_batch_norms(network, waves[:2]) == 1 + 2 * sum(stages) + 3     # stem, 2 per block, 3 shortcuts


# ----------------------------------------------------------------------------------------------------------------
# The import: WeSpeaker's embeddings, the network from the keys
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,in_planes", [("SimAM_ResNet34_ASP", 64), ("SimAM_ResNet34_ASP", NARROW),
                                            ("SimAM_ResNet100_ASP", NARROW)])
def test_an_imported_simam_computes_wespeakers_embeddings(tmp_path, one_thread, capsys, name, in_planes):
    path, model = oracle_file(tmp_path, name, in_planes)
    out = tmp_path / "M.model"
    config = simam_config(tmp_path, name, in_planes=in_planes)
    assert inference.main(["import", "--from", "wespeaker", path, "--config", config, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wespeaker {name} (nOut 256, 80 Kaldi fbanks, window hamming, audio_scale int16)" in printed
    assert "dropped projection.weight 7x256" in printed
    record = read_checkpoint(str(out))["run"]["model"]
    assert (record["model"], record["encoder_type"], record["frontend"], record["channels"]) == \
        (name, "ASP", "kaldi_fbank", in_planes)
    whole, crops = compare(str(out), speech_like(tmp_path / "a.wav", seconds=SECONDS), wespeaker_embedding(model))
    print(f"wespeaker {name} (in_planes {in_planes}): max relative difference {whole:.2e} (whole file), "
          f"{crops:.2e} (crops)")
    assert whole < MOST_RELATIVE and crops < MOST_RELATIVE


@pytest.mark.parametrize("name,options", [("SimAM_ResNet34_ASP", {}), ("SimAM_ResNet100_ASP", {}),
                                          ("SimAM_ResNet34_ASP", {"channels": 16, "n_mels": 64, "nOut": 192})])
def test_the_keys_alone_say_which_simam(tmp_path, name, options):
    """No config: the network from the blocks per stage, in_planes from ``front.conv1.weight``, the bands from the
    pooling's rows, nOut from ``bottleneck.weight``."""
    report = import_checkpoint("wespeaker", layout_file(tmp_path, name, **options), str(tmp_path / "M.model"))
    expected = {"channels": NARROW, "n_mels": 80, "nOut": 256, **options}
    assert (report.spec.model, report.spec.nOut, report.spec.n_mels, report.spec.channels) == \
        (name, expected["nOut"], expected["n_mels"], expected["channels"])


def test_a_config_with_dropout_imports(tmp_path):
    """WeSpeaker's dropout acts in training only and has no weights: any value imports."""
    config = simam_config(tmp_path, dropout=0.5)
    report = import_checkpoint("wespeaker", layout_file(tmp_path), str(tmp_path / "M.model"), config)
    assert report.spec.model == "SimAM_ResNet34_ASP"


# ----------------------------------------------------------------------------------------------------------------
# What does not fit: one error naming the file and the key, nothing written
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config_args,match", [
    ({"embed_dim": 192}, "the config contradicts the weights: .*config.yaml key model_args.embed_dim says nOut 192, "
                         "the file's key bottleneck.weight says 256"),
    ({"model": "SimAM_ResNet100_ASP"}, r"config.yaml key model says model SimAM_ResNet100_ASP, the file's keys "
                                       r"front.layer1-4.\* \(blocks per stage\) says SimAM_ResNet34_ASP"),
    ({"acoustic_dim": 64}, r"key model_args.acoustic_dim says n_mels 64, the file's key pooling.attention.0.weight's "
                           r"input width \(in_planes x n_mels\) says 80"),
    ({"in_planes": 32}, r"key model_args.in_planes says channels 32, the file's key front.conv1.weight \(in_planes\) "
                        r"says 8")])
def test_a_config_that_contradicts_the_weights_is_one_error_naming_both(tmp_path, config_args, match):
    path = layout_file(tmp_path)
    model = config_args.pop("model", "SimAM_ResNet34_ASP")
    config = simam_config(tmp_path, model, **config_args)
    message = refused(tmp_path, "wespeaker", path, match, config)
    assert message.startswith(f"{path}: ") and config in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("config_args,match", [
    ({"pooling_func": "ASP"}, "key model_args.pooling_func: not an option of SpeakerNet's SimAM_ResNet34_ASP"),
    ({"feat_dim": 80}, "key model_args.feat_dim: not an option of SpeakerNet's SimAM_ResNet34_ASP")])
def test_a_config_with_arguments_wespeakers_class_lacks_is_one_error_naming_it(tmp_path, config_args, match):
    config = simam_config(tmp_path, **config_args)
    message = refused(tmp_path, "wespeaker", layout_file(tmp_path), match, config)
    assert message.startswith(f"{config}: ") and len(message.splitlines()) == 1


@pytest.mark.parametrize("edit,match", [
    (without("front.layer3.5."), "a WeSpeaker SimAM-ResNet with blocks 3-4-5-3 per stage .*, which is none of "
                                 r"SimAM_ResNet34_ASP, SimAM_ResNet100_ASP \(3-4-6-3, 6-16-24-3\)"),
    (without("pooling.attention.0."), "key pooling.attention.0.weight of a WeSpeaker SimAM-ResNet .* is missing or "
                                      "misshapen"),
    (lambda state: state.update({"pooling.attention.0.weight": torch.zeros(128, 700, 1)}),
     "key pooling.attention.0.weight takes 700 rows, not a multiple of the 64 channels"),
    (without("front.layer2.0.downsample.1.running_var"),
     "key front.layer2.0.downsample.1.running_var of SimAM_ResNet34_ASP is missing from the file"),
    (lambda state: state.update({"front.layer4.2.bn2.bias": torch.zeros(5)}),
     r"key front.layer4.2.bn2.bias has shape \(5,\), SimAM_ResNet34_ASP needs \(64,\)"),
    (lambda state: state.update({"front.layer1.0.extra.weight": torch.zeros(3)}),
     "key front.layer1.0.extra.weight is not part of SimAM_ResNet34_ASP")])
def test_weights_that_are_no_plugin_are_one_error_naming_the_key(tmp_path, edit, match):
    refused(tmp_path, "wespeaker", layout_file(tmp_path, edit=edit), match)


# ----------------------------------------------------------------------------------------------------------------
# The imported model exported, its front end inside
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_imported_simam_exports_to_onnx_and_agrees(tmp_path, one_thread):
    metadata = assert_imported_exports(tmp_path, layout_file(tmp_path), simam_config(tmp_path))
    assert metadata["frontend"] == "kaldi_fbank" and metadata["model"] == "SimAM_ResNet34_ASP"
