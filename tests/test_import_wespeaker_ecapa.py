"""WeSpeaker's ECAPA-TDNNs (models/_wespeaker_ecapa.py: the plugins ECAPA_TDNN_c512, ECAPA_TDNN_GLOB_c512,
ECAPA_TDNN_c1024, ECAPA_TDNN_GLOB_c1024) and their import, ``python inference.py import --from wespeaker``.

The proof, as for the other WeSpeaker networks (tests/test_import_wespeaker.py; the helpers are tests/oracles.py's):
WeSpeaker's own classes (wespeaker-unofficial's wespeaker/models/ecapa_tdnn.py) at 80 fbanks and 192-d, with random
weights and random BatchNorm statistics, saved as WeSpeaker saves them with the ``config.yaml`` its recipe writes,
imported by the command line, then embedded by ``load_embedder`` and by WeSpeaker's own feature code and model. The
counts, keys and shapes are WeSpeaker's to the parameter; a config that contradicts the weights is one error naming the
file and the key, and nothing is written. The tests that need WeSpeaker's package skip without it.
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

# WeSpeaker's own classes at feat_dim 80, embed_dim 192, ASTP (its README gives the published GLOB ones as 6.19 M
# and 14.65 M)
COUNTS = {"ECAPA_TDNN_c512": 5_797_504, "ECAPA_TDNN_GLOB_c512": 6_190_720,
          "ECAPA_TDNN_c1024": 14_263_872, "ECAPA_TDNN_GLOB_c1024": 14_657_088}
NAMES = tuple(COUNTS)
ECAPA_ARGS = {"feat_dim": 80, "embed_dim": 192, "pooling_func": "ASTP"}     # WeSpeaker's conf/ecapa_tdnn*.yaml
SECONDS = 2.0
MOST_RELATIVE = 1e-4


def shapes(module: torch.nn.Module) -> list:
    """Keys (in order) and shapes of every parameter and buffer the state dict holds."""
    return list(layout(module).items())


def wespeaker_ecapa(name: str) -> torch.nn.Module:
    """WeSpeaker's factory ``name`` (``ECAPA_TDNN_GLOB_c512``, ...) at 80 fbanks, 192-d, ASTP."""
    return getattr(wespeaker_module("models.ecapa_tdnn"), name)(**ECAPA_ARGS)


def ecapa_config(folder, model: str = "ECAPA_TDNN_GLOB_c512", **model_args) -> str:
    """The ``config.yaml`` WeSpeaker's ECAPA recipe writes (the parts SpeakerNet reads): its ``model_args`` are
    feat_dim, embed_dim and pooling_func only (its ECAPA_TDNN takes no two_emb_layer)."""
    path = wespeaker_config(folder, model, **{**ECAPA_ARGS, **model_args})
    with open(path) as handle:
        config = yaml.safe_load(handle)
    if "two_emb_layer" not in model_args:
        del config["model_args"]["two_emb_layer"]
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


def oracle_file(folder, name: str, classes: int = 7, seed: int = 1) -> tuple[str, torch.nn.Module]:
    """WeSpeaker's ``name`` with random weights and BatchNorm statistics, saved as its ``save_checkpoint`` saves it
    (``torch.save(model.state_dict())``, the arc-margin classifier ``projection.weight`` beside the network)."""
    torch.manual_seed(seed)
    model = randomise(wespeaker_ecapa(name), seed)
    state = model.state_dict()
    state["projection.weight"] = torch.randn(classes, ECAPA_ARGS["embed_dim"])
    path = os.path.join(str(folder), "avg_model.pt")
    torch.save(state, path)
    return path, model


def layout_file(folder, name: str = "ECAPA_TDNN_GLOB_c512", edit=None, seed: int = 1) -> str:
    """An ``avg_model.pt`` in WeSpeaker's layout without WeSpeaker's package: SpeakerNet's own ``name`` (its keys and
    shapes are WeSpeaker's: :func:`test_counts_keys_and_shapes_are_wespeakers_own`), random, with
    ``projection.weight``; ``edit(state)`` changes it first."""
    torch.manual_seed(seed)
    state = dict(randomise(plugins.load("models", name)(), seed).state_dict())
    state["projection.weight"] = torch.randn(7, state["linear.weight"].shape[0])
    if edit is not None:
        edit(state)
    path = os.path.join(str(folder), f"{name}.pt")
    torch.save(state, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# The networks: WeSpeaker's counts, keys and shapes; the plugins' defaults
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_counts_keys_and_shapes_are_wespeakers_own(name):
    ours = plugins.load("models", name)()
    theirs = wespeaker_ecapa(name)
    assert count(ours) == COUNTS[name] == count(theirs)
    assert shapes(ours) == shapes(theirs)


def test_the_embedding_bn_has_wespeakers_keys():
    """``emb_bn`` (off in the plugins and WeSpeaker's published models) adds WeSpeaker's ``bn2``."""
    from spknet.models._wespeaker_ecapa import WeSpeakerECAPA
    theirs = wespeaker_module("models.ecapa_tdnn").ECAPA_TDNN_c512(**ECAPA_ARGS, emb_bn=True)
    assert shapes(WeSpeakerECAPA(512, global_context=False, emb_bn=True)) == shapes(theirs)


@pytest.mark.parametrize("name", NAMES)
def test_the_plugins_defaults_are_wespeakers(name):
    spec = ModelSpec(model=name).resolved()
    assert (spec.frontend, spec.nOut, spec.n_mels, spec.encoder_type, spec.window, spec.channels) == \
        ("kaldi_fbank", 192, 80, "ASP", "hamming", None)
    with pytest.raises(SpeakerNetError, match=f"model {name} has no option --channels"):
        ModelSpec(model=name, channels=256).resolved()
    with pytest.raises(SpeakerNetError, match="unknown encoder_type 'TSTP': choose ASP"):
        plugins.load("models", name)(encoder_type="TSTP")


def test_a_training_step_and_folding(one_thread):
    """It trains with a loss head; folding finds no conv -> BN pair (each BN follows a ReLU or the pooling) and the
    CPU inference copy computes the same embeddings."""
    torch.manual_seed(0)
    net = SpeakerNet.build(model="ECAPA_TDNN_GLOB_c512", trainfunc="aamsoftmax", nSpeakers=2, nOut=16)
    net.train()
    waves = (torch.rand(4, 8000, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 3000
    loss, _ = net(waves, torch.tensor([0, 0, 1, 1]), 2)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all()
                                        for p in net.__S__.parameters())
    network = randomise(plugins.load("models", "ECAPA_TDNN_GLOB_c512")(nOut=16))
    with torch.no_grad():
        expected = network(waves[:2])
        assert torch.allclose(inference_copy(network, waves[:2], channels_last=True)(waves[:2]), expected,
                              rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert fold_batch_norms(network, waves[:2]) == 0


# ----------------------------------------------------------------------------------------------------------------
# The import: WeSpeaker's embeddings, the network from the keys
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ECAPA_TDNN_GLOB_c512", "ECAPA_TDNN_c512"])
def test_an_imported_ecapa_computes_wespeakers_embeddings(tmp_path, one_thread, capsys, name):
    path, model = oracle_file(tmp_path, name)
    out = tmp_path / "M.model"
    assert inference.main(["import", "--from", "wespeaker", path, "--config", ecapa_config(tmp_path, name),
                           "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wespeaker {name} (nOut 192, 80 Kaldi fbanks, window hamming, audio_scale int16)" in printed
    assert "dropped projection.weight 7x192" in printed
    record = read_checkpoint(str(out))["run"]["model"]
    assert (record["model"], record["encoder_type"], record["frontend"], record["channels"]) == \
        (name, "ASP", "kaldi_fbank", None)
    whole, crops = compare(str(out), speech_like(tmp_path / "a.wav", seconds=SECONDS), wespeaker_embedding(model))
    assert whole < MOST_RELATIVE and crops < MOST_RELATIVE


@pytest.mark.parametrize("name", NAMES)
def test_the_keys_alone_say_which_ecapa(tmp_path, name):
    """No config: C from ``layer1.conv.weight``, GLOB from ``pool.linear1.weight``'s input width."""
    report = import_checkpoint("wespeaker", layout_file(tmp_path, name), str(tmp_path / "M.model"))
    assert (report.spec.model, report.spec.nOut, report.spec.n_mels) == (name, 192, 80)


# ----------------------------------------------------------------------------------------------------------------
# What does not fit: one error naming the file and the key, nothing written
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config_args,match", [
    ({"embed_dim": 256}, "the config contradicts the weights: .*config.yaml key model_args.embed_dim says nOut 256, "
                         "the file's key linear.weight says 192"),
    ({"model": "ECAPA_TDNN_GLOB_c1024"}, r"config.yaml key model says model ECAPA_TDNN_GLOB_c1024, the file's keys "
                                         r"layer1.conv.weight \(C\) and pool.linear1.weight .* says "
                                         r"ECAPA_TDNN_GLOB_c512"),
    ({"model": "ECAPA_TDNN_c512"}, "key model says model ECAPA_TDNN_c512, .* says ECAPA_TDNN_GLOB_c512"),
    ({"feat_dim": 64}, "key model_args.feat_dim says n_mels 64, the file's key layer1.conv.weight's input width "
                       "says 80"),
    ({"pooling_func": "TSTP"}, r"key model_args.pooling_func says pooling_func TSTP, the file's keys "
                               r"pool.linear1.weight and pool.linear2.weight \(ASTP's attention\) says ASTP")])
def test_a_config_that_contradicts_the_weights_is_one_error_naming_both(tmp_path, config_args, match):
    path = layout_file(tmp_path)
    model = config_args.pop("model", "ECAPA_TDNN_GLOB_c512")
    config = ecapa_config(tmp_path, model, **config_args)
    message = refused(tmp_path, "wespeaker", path, match, config)
    assert message.startswith(f"{path}: ") and config in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("config_args,match", [
    ({"emb_bn": True}, "key model_args.emb_bn: True; SpeakerNet's ECAPA_TDNN_GLOB_c512 computes False only"),
    ({"two_emb_layer": False}, "key model_args.two_emb_layer: not an option of SpeakerNet's ECAPA_TDNN_GLOB_c512")])
def test_a_config_asking_for_what_the_plugins_lack_is_one_error_naming_it(tmp_path, config_args, match):
    config = ecapa_config(tmp_path, **config_args)
    message = refused(tmp_path, "wespeaker", layout_file(tmp_path), match, config)
    assert message.startswith(f"{config}: ") and len(message.splitlines()) == 1


@pytest.mark.parametrize("edit,match", [
    (lambda state: state.update({"bn2.weight": torch.ones(192), "bn2.bias": torch.zeros(192)}),
     "key bn2.weight: an ECAPA-TDNN with emb_bn True, which SpeakerNet does not carry"),
    (lambda state: state.pop("pool.linear1.weight"), "key pool.linear1.weight is missing: an ECAPA-TDNN whose pooling "
                                                     "is not ASTP"),
    (lambda state: state.update({"pool.linear1.weight": torch.zeros(128, 1000, 1)}),
     "key pool.linear1.weight takes 1000 channels"),
    (lambda state: state.update({"layer1.conv.weight": torch.zeros(256, 80, 5)}),
     "key layer1.conv.weight: an ECAPA-TDNN of 256 channels, which none of ECAPA_TDNN_c512"),
    (lambda state: state.pop("layer3.se_res2block.1.bns.6.running_var"),
     "key layer3.se_res2block.1.bns.6.running_var of ECAPA_TDNN_GLOB_c512 is missing from the file"),
    (lambda state: state.update({"layer4.se_res2block.3.linear2.bias": torch.zeros(5)}),
     r"key layer4.se_res2block.3.linear2.bias has shape \(5,\), ECAPA_TDNN_GLOB_c512 needs \(512,\)")])
def test_weights_that_are_no_plugin_are_one_error_naming_the_key(tmp_path, edit, match):
    refused(tmp_path, "wespeaker", layout_file(tmp_path, edit=edit), match)


# ----------------------------------------------------------------------------------------------------------------
# The imported model exported, its front end inside
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_imported_ecapa_exports_to_onnx_and_agrees(tmp_path, one_thread):
    metadata = assert_imported_exports(tmp_path, layout_file(tmp_path), ecapa_config(tmp_path))
    assert metadata["frontend"] == "kaldi_fbank" and metadata["model"] == "ECAPA_TDNN_GLOB_c512"
