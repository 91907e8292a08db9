"""``python inference.py import --from wespeaker|pyannote``: the proof that an imported checkpoint computes what the
toolkit computes, and the errors of a file that is not what ``--from`` says.

The proof, without a download: WeSpeaker's own model classes (``wespeaker-unofficial``'s wespeaker/models/) and
pyannote's (``pyannote-audio``'s pyannote/audio/models/embedding/wespeaker/) are built with random weights and
random BatchNorm statistics, saved as each toolkit saves them, and their embedding of a waveform, computed by the
toolkit's own feature code, is compared with the embedding ``load_embedder`` gives of the imported file, for the
whole file and for each of ``--eval_frames``' crops. Both packages are installed without their dependencies
(pyproject.toml's ``oracles`` extra, with ``pip install --no-deps``: WeSpeaker's pull s3prl, whisper, silero-vad,
umap and hdbscan; pyannote's Lightning, pyannote.database, torchcodec and more), and only the modules the models
need are loaded (tests/oracles.py's ``wespeaker_module`` and ``pyannote_models``, beside the builders and savers
these tests use); the tests that need them skip where they are absent.
"""

import ast
import inspect
import os
import re
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
import yaml

import inference
from spknet.checkpoints import read_checkpoint
from spknet.importing import TOOLKITS, import_checkpoint
from spknet.inference import load_embedder
from tests.helpers import eval_output, relative
from tests.oracles import (
    assert_imported_exports,
    compare,
    pyannote_file,
    pyannote_layout_file,
    pyannote_models,
    refused,
    speech_like,
    wespeaker_config,
    wespeaker_embedding,
    wespeaker_file,
    wespeaker_layout_file,
)

# ----------------------------------------------------------------------------------------------------------------
# The proof
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ResNet18", "ResNet50", pytest.param("ResNet34", marks=pytest.mark.slow),
                                  pytest.param("CAMPPlus", marks=pytest.mark.slow)])
def test_an_imported_wespeaker_network_computes_what_wespeaker_computes(tmp_path, one_thread, name):
    path, model = wespeaker_file(tmp_path, name)
    out = str(tmp_path / "imported.model")
    report = import_checkpoint("wespeaker", path, out)
    assert report.spec.model == name and report.spec.frontend == "kaldi_fbank"
    assert report.spec.audio_scale == "int16" and report.dropped == {"projection.weight": (7, report.spec.nOut)}
    whole, crops = compare(out, speech_like(tmp_path / "a.wav"), wespeaker_embedding(model))
    print(f"wespeaker {name}: max relative difference {whole:.2e} (whole file), {crops:.2e} (crops)")
    assert whole < 1e-4 and crops < 1e-4


def test_an_imported_wespeaker_redimnet_computes_what_wespeaker_computes(tmp_path, one_thread, capsys):
    """WeSpeaker's ReDimNetB0 as published (60 fbanks, 192-d, ASTP) with its recipe's config, imported by the
    command line: SpeakerNet's ReDimNetB0 on WeSpeaker's features and pooling."""
    path, model = wespeaker_file(tmp_path, "ReDimNetB0")
    config = wespeaker_config(tmp_path, "ReDimNetB0", feat_dim=60, embed_dim=192, pooling_func="ASTP")
    out = str(tmp_path / "imported.model")
    assert inference.main(["import", "--from", "wespeaker", path, "--config", config, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "wespeaker ReDimNetB0 (nOut 192, 60 Kaldi fbanks, window hamming, audio_scale int16)" in printed
    assert "dropped projection.weight 7x192: wespeaker's training classifier" in printed
    model_spec = read_checkpoint(out)["run"]["model"]
    assert (model_spec["encoder_type"], model_spec["frontend"], model_spec["channels"]) == ("ASP", "kaldi_fbank", 10)
    whole, crops = compare(out, speech_like(tmp_path / "a.wav"), wespeaker_embedding(model, bins=60))
    print(f"wespeaker ReDimNetB0: max relative difference {whole:.2e} (whole file), {crops:.2e} (crops)")
    assert whole < 1e-4 and crops < 1e-4


def test_an_imported_pyannote_network_computes_what_pyannote_computes(tmp_path, one_thread):
    path, model = pyannote_file(tmp_path)
    out = str(tmp_path / "imported.model")
    report = import_checkpoint("pyannote", path, out)
    assert (report.spec.model, report.spec.channels, report.spec.nOut) == ("ResNet34", 8, 32)
    assert report.dropped == {} and "1e-7" in report.notes[0]
    # pyannote's forward: (batch, channel, samples) in [-1, 1], its compute_fbank, its ResNet
    whole, crops = compare(out, speech_like(tmp_path / "a.wav"), lambda waves: model(waves.unsqueeze(1)))
    print(f"pyannote WeSpeakerResNet34: max relative difference {whole:.2e} (whole file), {crops:.2e} (crops)")
    assert whole < 1e-4 and crops < 1e-4


def test_the_pyannote_file_is_read_without_running_its_pickled_types(tmp_path):
    """The file pickles pyannote's Specifications, enums and torch's TorchVersion: plain ``torch.load(weights_only
    =True)`` refuses it, the import reads those as inert records and uses the state dict alone."""
    path = pyannote_layout_file(tmp_path)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)
    needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    kit = TOOLKITS["pyannote"]
    assert needed and needed <= set(kit.records + kit.mappings)


def test_the_imported_checkpoint_records_the_spec_and_its_origin(tmp_path):
    path = wespeaker_layout_file(tmp_path)
    config = wespeaker_config(tmp_path)
    out = str(tmp_path / "imported.model")
    import_checkpoint("wespeaker", path, out, config)
    checkpoint = read_checkpoint(out)
    model = checkpoint["run"]["model"]
    assert (model["model"], model["nOut"], model["n_mels"], model["frontend"], model["window"], model["channels"],
            model["audio_scale"], model["encoder_type"]) == ("ResNet18", 32, 80, "kaldi_fbank", "hamming", 8,
                                                              "int16", "TSTP")
    assert all(key.startswith("__S__.") for key in checkpoint["model_state_dict"])
    assert checkpoint["imported"]["toolkit"] == "wespeaker" and checkpoint["imported"]["config"] == "config.yaml"
    assert checkpoint["imported"]["dropped"] == {"projection.weight": [7, 32]}
    assert len(checkpoint["imported"]["sha256"]) == 64


def test_an_averaged_model_imports(tmp_path):
    """WeSpeaker publishes ``avg_model.pt`` from ``wespeaker/bin/average_model.py``, which divides every tensor by
    the count, ``num_batches_tracked`` included (a float then); the import takes it as any state dict."""
    path, model = wespeaker_file(tmp_path)
    states = [torch.load(path, weights_only=True) for _ in range(2)]
    average = states[0]
    for key in average:
        average[key] += states[1][key]
    average = {key: torch.true_divide(value, 2) for key, value in average.items()}
    torch.save(average, path)
    out = str(tmp_path / "avg.model")
    import_checkpoint("wespeaker", path, out)
    wav = speech_like(tmp_path / "a.wav")
    with torch.no_grad():
        reference = wespeaker_embedding(model)(torch.from_numpy(soundfile.read(wav, dtype="float32")[0])[None])
    assert relative(load_embedder(out, device="cpu").embed(wav), reference) < 1e-4


# ----------------------------------------------------------------------------------------------------------------
# What a file that is not what --from says gives: one error naming the file and the key, nothing written
# ----------------------------------------------------------------------------------------------------------------

def edited(tmp_path, edit) -> str:
    path = wespeaker_layout_file(tmp_path)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


def test_a_missing_key_is_an_error_naming_it(tmp_path):
    path = edited(tmp_path, lambda state: state.pop("layer2.0.bn1.running_mean"))
    refused(tmp_path, "wespeaker", path, "key layer2.0.bn1.running_mean of ResNet18 is missing from the file")


def test_an_unused_key_is_an_error_naming_it(tmp_path):
    path = edited(tmp_path, lambda state: state.update({"layer1.0.extra.weight": torch.zeros(3)}))
    refused(tmp_path, "wespeaker", path, "key layer1.0.extra.weight is not part of ResNet18")


def test_a_misshapen_key_is_an_error_naming_it(tmp_path):
    path = edited(tmp_path, lambda state: state.update({"layer1.1.bn2.weight": torch.zeros(5)}))
    refused(tmp_path, "wespeaker", path, r"key layer1.1.bn2.weight has shape \(5,\), ResNet18 needs \(8,\)")


@pytest.mark.parametrize("config_args,match", [
    ({"model": "ResNet34"}, "the config contradicts the weights: .* says model ResNet34, .* says ResNet18"),
    ({"embed_dim": 256}, "says nOut 256, the file's key seg_1.weight"),
    ({"two_emb_layer": True}, "key model_args.two_emb_layer: True; SpeakerNet's ResNet18 computes False only"),
    ({"pooling_func": "ASTP"}, "key model_args.pooling_func: 'ASTP'"),
    ({"model": "ERes2Net34_Base"}, "key model: 'ERes2Net34_Base' is not a WeSpeaker network")])
def test_a_config_that_contradicts_the_weights_or_asks_for_more_is_an_error(tmp_path, config_args, match):
    path = wespeaker_layout_file(tmp_path)
    model = config_args.pop("model", "ResNet18")
    refused(tmp_path, "wespeaker", path, match, wespeaker_config(tmp_path, model, **config_args))


REDIMNET_ARGS = {"feat_dim": 60, "embed_dim": 192, "pooling_func": "ASTP"}


@pytest.mark.parametrize("config_args,match", [
    ({"model": "ReDimNetB2", "feat_dim": 72}, "config contradicts the weights: .* says model ReDimNetB2, the file's "
                                              r"keys layer\*/head\.\*/backbone\.\* \(the network\) says ReDimNetB0"),
    ({"embed_dim": 256}, "says nOut 256, the file's key seg_1.weight / xvector.dense.* says 192"),
    ({"feat_dim": 72}, "says n_mels 72, the file's first layer's input width says 60"),
    ({"pooling_func": "TSTP"}, "key model_args.pooling_func: 'TSTP'; SpeakerNet's ReDimNetB0 computes 'ASTP' only"),
    ({"two_emb_layer": True}, "key model_args.two_emb_layer: True; SpeakerNet's ReDimNetB0 computes False only"),
    ({"model": "ReDimNet2B0"}, "key model: 'ReDimNet2B0' is not a WeSpeaker network SpeakerNet has")])
def test_a_redimnet_config_that_contradicts_the_weights_is_an_error(tmp_path, config_args, match):
    path = wespeaker_layout_file(tmp_path, name="ReDimNetB0")
    model = config_args.pop("model", "ReDimNetB0")
    refused(tmp_path, "wespeaker", path, match, wespeaker_config(tmp_path, model, **{**REDIMNET_ARGS, **config_args}))


def test_a_redimnet_file_with_a_missing_or_misshapen_key_is_an_error_naming_it(tmp_path):
    path = wespeaker_layout_file(tmp_path, name="ReDimNetB0")
    state = torch.load(path, weights_only=True)
    assert import_checkpoint("wespeaker", path, str(tmp_path / "ok.model")).spec.model == "ReDimNetB0"
    key = "backbone.stage2.1.conv_block.bn1.running_mean"
    torch.save({name: value for name, value in state.items() if name != key}, path)
    refused(tmp_path, "wespeaker", path, f"key {key} of ReDimNetB0 is missing from the file")
    torch.save({**state, key: torch.zeros(3)}, path)
    refused(tmp_path, "wespeaker", path, rf"key {key} has shape \(3,\), ReDimNetB0 needs")
    torch.save({**state, "seg_2.weight": torch.zeros(192, 192)}, path)
    refused(tmp_path, "wespeaker", path, "key seg_2.weight: a ReDimNet with two_emb_layer True")


def test_a_config_with_another_front_end_is_an_error(tmp_path):
    path = wespeaker_layout_file(tmp_path)
    config = wespeaker_config(tmp_path)
    data = yaml.safe_load(open(config))
    data["dataset_args"]["cmvn_args"] = {"norm_var": True}
    yaml.safe_dump(data, open(config, "w"))
    refused(tmp_path, "wespeaker", path, "key dataset_args.cmvn_args", config)


def test_a_config_is_read_as_data_never_constructed(tmp_path):
    path = wespeaker_layout_file(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("model: !!python/object/apply:os.system ['touch hacked']\n")
    refused(tmp_path, "wespeaker", path, "not a YAML config SpeakerNet can read as data", str(config))
    assert not (tmp_path / "hacked").exists() and not os.path.exists("hacked")


def test_files_that_are_not_wespeaker_checkpoints_say_what_they_are(tmp_path, random_checkpoint):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    refused(tmp_path, "wespeaker", text, "not a readable PyTorch checkpoint")
    refused(tmp_path, "wespeaker", random_checkpoint, "not a WeSpeaker network SpeakerNet has")
    ours = tmp_path / "ours.model"
    torch.save({"model_state_dict": torch.load(random_checkpoint, weights_only=True)}, ours)
    refused(tmp_path, "wespeaker", ours, "it is a SpeakerNet or voxceleb_trainer checkpoint")
    head_only = tmp_path / "head.pt"
    torch.save({"projection.weight": torch.zeros(3, 4)}, head_only)
    refused(tmp_path, "wespeaker", head_only, "only a classifier head")


def test_a_file_that_pickles_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": SimpleNamespace(x=1)}, path)
    refused(tmp_path, "wespeaker", path, "refused: .*its pickle needs types.SimpleNamespace")


def test_the_wrong_toolkit_is_named(tmp_path):
    pyannote_path = pyannote_layout_file(tmp_path)
    refused(tmp_path, "wespeaker", pyannote_path, r"is it a pyannote checkpoint\? \(--from pyannote\)")
    wespeaker_path = wespeaker_layout_file(tmp_path)
    refused(tmp_path, "pyannote", wespeaker_path, r"a bare state dict; a WeSpeaker one\? \(--from wespeaker\)")


def test_a_pyannote_architecture_that_contradicts_its_weights_is_an_error(tmp_path):
    path = pyannote_layout_file(tmp_path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["pyannote.audio"]["architecture"]["class"] = "WeSpeakerResNet293"
    torch.save(checkpoint, path)
    refused(tmp_path, "pyannote", path, "architecture says WeSpeakerResNet293, the keys resnet.layer.* say ResNet34")
    checkpoint["pyannote.audio"]["architecture"]["class"] = "XVectorMFCC"
    torch.save(checkpoint, path)
    refused(tmp_path, "pyannote", path, "XVectorMFCC is not one of WeSpeaker's ResNets")


def test_pyannote_hyper_parameters_are_read_and_checked(tmp_path, monkeypatch):
    """A checkpoint Lightning's trainer saved also holds ``hyper_parameters``, an ``AttributeDict``: read as a
    plain dict, its fbank options checked against what kaldi_fbank computes."""
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    data = types.ModuleType("lightning.fabric.utilities.data")
    attribute_dict = type("AttributeDict", (dict,), {"__module__": data.__name__})
    data.AttributeDict = attribute_dict
    monkeypatch.setitem(sys.modules, data.__name__, data)
    path = pyannote_layout_file(tmp_path)
    checkpoint = torch.load(path, weights_only=False)
    hyper = {"sample_rate": 16000, "num_channels": 1, "num_mel_bins": 80, "frame_length": 25, "frame_shift": 10,
             "dither": 0.0, "window_type": "hamming", "use_energy": False}
    checkpoint["hyper_parameters"] = attribute_dict(hyper)
    torch.save(checkpoint, path)
    assert import_checkpoint("pyannote", path, str(tmp_path / "ok.model")).spec.window == "hamming"
    checkpoint["hyper_parameters"] = attribute_dict({**hyper, "num_mel_bins": 64})
    torch.save(checkpoint, path)
    refused(tmp_path, "pyannote", path, "key hyper_parameters.num_mel_bins: 64, but the weights")
    checkpoint["hyper_parameters"] = attribute_dict({**hyper, "fbank_centering_span": 3.0})
    torch.save(checkpoint, path)
    refused(tmp_path, "pyannote", path, "key hyper_parameters.fbank_centering_span: 3.0")


def test_the_parsed_stub_of_pyannote_is_pyannotes_own_code():
    """The stubs replace Lightning's bookkeeping only: the fbank and the ResNet are pyannote's published code."""
    module = pyannote_models()
    source = ast.parse(inspect.getsource(module))
    classes = {node.name for node in source.body if isinstance(node, ast.ClassDef)}
    assert {"BaseWeSpeakerResNet", "WeSpeakerResNet34"} <= classes
    assert module.resnet.__file__.endswith(os.path.join("wespeaker", "resnet.py"))


# ----------------------------------------------------------------------------------------------------------------
# The command line, and the imported model used as one of ours
# ----------------------------------------------------------------------------------------------------------------

def test_the_command_line_imports_names_the_head_and_exits_2_on_an_error(tmp_path, capsys):
    path = wespeaker_layout_file(tmp_path)
    out = tmp_path / "M.model"
    assert inference.main(["import", "--from", "wespeaker", path, "--config", wespeaker_config(tmp_path),
                           "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wespeaker ResNet18 (nOut 32, 80 Kaldi fbanks" in printed
    assert "dropped projection.weight 7x32: wespeaker's training classifier" in printed and out.exists()
    broken = edited(tmp_path, lambda state: state.pop("seg_1.bias"))
    assert inference.main(["import", "--from", "wespeaker", broken, "--out", str(tmp_path / "N.model")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "key seg_1.bias" in error[0] and broken in error[0]
    assert not (tmp_path / "N.model").exists()


def test_an_imported_model_embeds_and_verifies_as_ours(tmp_path, one_thread, capsys):
    path = wespeaker_layout_file(tmp_path)
    model = str(tmp_path / "M.model")
    import_checkpoint("wespeaker", path, model)
    wav = speech_like(tmp_path / "a.wav")
    assert inference.main(["embed", "--initial_model", model, wav, "--out", str(tmp_path / "e.npz"),
                           "--device", "cpu"]) == 0
    stored = np.load(tmp_path / "e.npz")
    assert np.allclose(stored[wav], load_embedder(model, device="cpu").embed(wav).numpy(), rtol=1e-5, atol=1e-6)
    other = speech_like(tmp_path / "b.wav", seed=1)
    capsys.readouterr()
    assert inference.main(["verify", "--initial_model", model, wav, other, "--device", "cpu"]) == 0
    score = float(capsys.readouterr().out.split()[1])
    assert score == pytest.approx(load_embedder(model, device="cpu").score(wav, other), abs=1e-5)


@pytest.mark.slow
def test_an_imported_model_exports_to_onnx_with_its_front_end(tmp_path, one_thread):
    assert assert_imported_exports(tmp_path, wespeaker_layout_file(tmp_path))["frontend"] == "kaldi_fbank"


@pytest.mark.slow
def test_an_imported_model_is_scored_by_eval(tmp_path, tiny_corpus, capsys, console_log, one_thread):
    path = wespeaker_layout_file(tmp_path)
    model = str(tmp_path / "M.model")
    import_checkpoint("wespeaker", path, model)
    console_log()
    out = eval_output(model, tiny_corpus, tmp_path / "eval", capsys, "--device", "cpu")
    assert re.search(r"^EER \d+\.\d{4}$", out, re.MULTILINE)
