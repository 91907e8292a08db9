"""``python inference.py import --from wespeaker|pyannote``: the proof that an imported checkpoint computes what the
toolkit computes, and the errors of a file that is not what ``--from`` says.

The proof, without a download: WeSpeaker's own model classes (``wespeaker-unofficial``'s wespeaker/models/) and
pyannote's (``pyannote-audio``'s pyannote/audio/models/embedding/wespeaker/) are built with random weights and
random BatchNorm statistics, saved as each toolkit saves them, and their embedding of a waveform, computed by the
toolkit's own feature code, is compared with the embedding ``load_embedder`` gives of the imported file, for the
whole file and for each of ``--eval_frames``' crops. Both packages are installed without their dependencies
(pyproject.toml's ``oracles`` extra, with ``pip install --no-deps``: WeSpeaker's pull s3prl, whisper, silero-vad,
umap and hdbscan; pyannote's Lightning, pyannote.database, torchcodec and more), and only the modules the models
need are loaded (:func:`wespeaker_module`, :func:`pyannote_models`); the tests that need them skip where they are
absent.
"""

import ast
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import types
from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.compliance.kaldi as kaldi
import yaml

import inference
from spknet.checkpoints import read_checkpoint
from spknet.errors import SpeakerNetError
from spknet.importing import TOOLKITS, import_checkpoint
from spknet.inference import load_embedder
from tests.helpers import assert_export_agrees, eval_output, exported_runner, oracle_module, relative

SECONDS = 1.5
EVAL_FRAMES = 50            # ten crops of 0.5 s


# ----------------------------------------------------------------------------------------------------------------
# The originals, loaded from their packages without the packages' heavy imports
# ----------------------------------------------------------------------------------------------------------------

def _namespace(name: str, folder: str) -> None:
    """Register ``name`` as a package of ``folder`` without running its ``__init__.py``."""
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [folder]
        package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        package.__spec__.submodule_search_locations = [folder]
        sys.modules[name] = package


def wespeaker_module(name: str):
    """``wespeaker.<name>`` from wespeaker-unofficial (its ``wespeaker/__init__.py`` imports the CLI, which needs
    silero-vad, kaldiio, s3prl, ...: skipped); the test skips when the package is absent."""
    return oracle_module("wespeaker", name)


def wespeaker_features(wave: torch.Tensor, bins: int = 80) -> torch.Tensor:
    """WeSpeaker's features of a float waveform in [-1, 1], ``(1, frames, bins)``: its ``processor.compute_fbank``
    (``waveform * (1 << 15)``, ``kaldi.fbank`` with a Hamming window, no energy) with the ``dither 0`` that
    ``wespeaker/bin/extract.py`` sets, then its batch ``apply_cmvn`` (``dataset_utils.py``: the mean over frames
    subtracted). wespeaker-unofficial does not ship wespeaker/dataset/, so its two functions are these lines."""
    mat = kaldi.fbank(wave.unsqueeze(0) * (1 << 15), num_mel_bins=bins, frame_length=25, frame_shift=10, dither=0.0,
                      sample_frequency=16000, window_type="hamming", use_energy=False)
    feats = mat.unsqueeze(0)
    return feats - torch.mean(feats, dim=1, keepdim=True)


class _StubModel(torch.nn.Module):
    """What pyannote's ``WeSpeakerResNet*`` need of ``pyannote.audio.core.model.Model`` (a LightningModule, not
    installed): ``save_hyperparameters`` of the named arguments and ``on_save_checkpoint`` as pyannote 3.1 wrote it
    (the published checkpoints' ``versions`` carry torch's ``TorchVersion`` too)."""

    def __init__(self, sample_rate: int = 16000, num_channels: int = 1, task=None):
        super().__init__()

    def save_hyperparameters(self, *names):
        caller = inspect.currentframe().f_back.f_locals
        self.hparams = SimpleNamespace(**{name: caller[name] for name in names})

    def on_save_checkpoint(self, checkpoint):
        checkpoint["pyannote.audio"] = {
            "versions": {"torch": torch.__version__, "pyannote.audio": "3.1.0"},
            "architecture": {"module": self.__class__.__module__, "class": self.__class__.__name__},
            "specifications": self.specifications}


def _task_module() -> types.ModuleType:
    """``pyannote.audio.core.task``'s ``Problem``, ``Resolution`` and ``Specifications`` under their own names (so a
    checkpoint pickles them as pyannote's do); the real module needs Lightning and pyannote.database."""
    module = types.ModuleType("pyannote.audio.core.task")

    class Problem(Enum):
        BINARY_CLASSIFICATION = 0
        MONO_LABEL_CLASSIFICATION = 1
        MULTI_LABEL_CLASSIFICATION = 2
        REPRESENTATION = 3
        REGRESSION = 4

    class Resolution(Enum):
        FRAME = 1
        CHUNK = 2

    @dataclass
    class Specifications:
        problem: Problem
        resolution: Resolution
        duration: float
        min_duration: float | None = None
        warm_up: tuple | None = (0.0, 0.0)
        classes: list | None = None
        powerset_max_classes: int | None = None
        permutation_invariant: bool = False

    for item in (Problem, Resolution, Specifications):
        item.__module__, item.__qualname__ = module.__name__, item.__name__
        setattr(module, item.__name__, item)
    module.Task = object
    return module


def pyannote_models():
    """pyannote's ``pyannote.audio.models.embedding.wespeaker`` module, its code as published, with Lightning's
    ``Model`` stubbed (:class:`_StubModel`) and its package ``__init__``s skipped; the test skips without
    pyannote-audio or einops."""
    spec = importlib.util.find_spec("pyannote")
    audio = None if spec is None else os.path.join(spec.submodule_search_locations[0], "audio")
    if audio is None or not os.path.isdir(audio) or importlib.util.find_spec("einops") is None:
        pytest.skip("pyannote-audio and einops are not installed (pip install --no-deps pyannote-audio==4.0.7 "
                    "einops==0.8.2)")
    for name in ("", ".core", ".models", ".models.embedding", ".models.blocks", ".utils"):
        _namespace(f"pyannote.audio{name}", os.path.join(audio, *name.split(".")[1:]))
    sys.modules.setdefault("pyannote.audio.core.model", types.SimpleNamespace(Model=_StubModel))
    sys.modules.setdefault("pyannote.audio.core.task", _task_module())
    return importlib.import_module("pyannote.audio.models.embedding.wespeaker")


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------

def randomise(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (running means and variances too): no layer an identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.dim() == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5)
    return model.eval()


def speech_like(path, seconds: float = SECONDS, seed: int = 0) -> str:
    """A 16-bit wav: a random walk (low frequencies) plus noise, nothing silent."""
    rng = np.random.default_rng(seed)
    samples = int(seconds * 16000)
    audio = np.cumsum(rng.standard_normal(samples)) * 20 + rng.standard_normal(samples) * 800
    soundfile.write(str(path), np.clip(audio, -32768, 32767).astype(np.int16), 16000, subtype="PCM_16")
    return str(path)


def compare(out: str, wav: str, original) -> tuple[float, float]:
    """(whole file, crops) relative differences between ``load_embedder(out)`` and ``original(wave in [-1, 1])``
    (one row per waveform of the batch it is given)."""
    wave = torch.from_numpy(soundfile.read(wav, dtype="float32")[0])     # torchaudio.load's normalised samples
    whole = load_embedder(out, device="cpu").embed(wav)
    cropped = load_embedder(out, device="cpu", eval_frames=EVAL_FRAMES)
    crops = torch.from_numpy(cropped.crops(wav)) / 32768                 # the same crops, in [-1, 1]
    with torch.no_grad():
        reference_whole, reference_crops = original(wave.unsqueeze(0)), original(crops)
    return relative(whole, reference_whole), relative(cropped.embed(wav), reference_crops)


def wespeaker_embedding(model, bins: int = 80):
    """WeSpeaker's embedding of a batch of waveforms: features (``bins`` fbanks) per waveform, then
    ``outputs[-1]`` as ``extract.py`` reads it."""
    def embed(waves: torch.Tensor) -> torch.Tensor:
        outputs = model(torch.cat([wespeaker_features(wave, bins) for wave in waves]))
        return outputs[-1] if isinstance(outputs, tuple) else outputs
    return embed


def wespeaker_file(folder, name: str = "ResNet18", classes: int = 7, seed: int = 1) -> tuple[str, torch.nn.Module]:
    """A WeSpeaker network with random weights, saved as ``wespeaker/utils/checkpoint.py``'s ``save_checkpoint``
    saves it (``torch.save(model.state_dict(), path)``) with an arc-margin classifier ``projection.weight`` (the
    file WeSpeaker trains); ResNet18 and ResNet50 at a narrow (8-channel) width, ResNet34, CAM++ and ReDimNet-B0
    (60 fbanks, 192-d) as published."""
    resnet = wespeaker_module("models.resnet")
    builders = {
        "ResNet18": lambda: resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], m_channels=8, feat_dim=80, embed_dim=32),
        "ResNet50": lambda: resnet.ResNet(resnet.Bottleneck, [3, 4, 6, 3], m_channels=8, feat_dim=80, embed_dim=32),
        "ResNet34": lambda: resnet.ResNet34(feat_dim=80, embed_dim=256),         # as published: 32 channels
        "CAMPPlus": lambda: wespeaker_module("models.campplus").CAMPPlus(feat_dim=80, embed_dim=512),
        "ReDimNetB0": lambda: wespeaker_module("models.redimnet").ReDimNetB0(feat_dim=60, embed_dim=192),
    }
    torch.manual_seed(seed)
    model = randomise(builders[name](), seed)
    state = model.state_dict()
    embed_dim = {"CAMPPlus": 512, "ResNet34": 256, "ReDimNetB0": 192}.get(name, 32)
    state["projection.weight"] = torch.randn(classes, embed_dim)
    path = os.path.join(str(folder), f"{name}.pt")
    torch.save(state, path)
    return path, model


def wespeaker_config(folder, model: str = "ResNet18", **model_args) -> str:
    """A WeSpeaker ``config.yaml`` as its recipes write it (the parts SpeakerNet reads)."""
    args = {"feat_dim": 80, "embed_dim": 32, "pooling_func": "TSTP", "two_emb_layer": False, **model_args}
    config = {"model": model, "model_args": args, "model_init": None,
              "dataset_args": {"resample_rate": 16000, "fbank_args": {"num_mel_bins": args["feat_dim"],
                                                                    "frame_shift": 10, "frame_length": 25,
                                                                    "dither": 1.0}},
              "projection_args": {"project_type": "arc_margin", "scale": 32.0}}
    path = os.path.join(str(folder), "config.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


def layout_state(name: str = "ResNet18", seed: int = 1, **options) -> dict:
    """A state dict in WeSpeaker's key layout without WeSpeaker's package: SpeakerNet's own network, whose keys and
    shapes are WeSpeaker's (``tests/test_networks_wespeaker.py`` checks them against WeSpeaker's code), random."""
    from spknet import plugins
    torch.manual_seed(seed)
    options = {"channels": 8, "nOut": 32, **options} if name.startswith("ResNet") else options
    network = plugins.load("models", name)(frontend="kaldi_fbank", **options)
    return dict(randomise(network, seed).state_dict())


def wespeaker_layout_file(folder, classes: int = 7, name: str = "ResNet18") -> str:
    """An ``avg_model.pt``-like file of an 8-channel ResNet18 (or ``name``: :func:`layout_state`) with
    ``projection.weight``: for the tests of the import itself, which need no oracle."""
    state = layout_state(name)
    state["projection.weight"] = torch.randn(classes, state["seg_1.weight"].shape[0])
    path = os.path.join(str(folder), f"{name}.pt")
    torch.save(state, path)
    return path


def pyannote_checkpoint(state: dict, name: str = "WeSpeakerResNet34") -> dict:
    """What pyannote's ``convert.py`` saves around a WeSpeaker ResNet's state dict (pyannote 3.1's
    ``on_save_checkpoint``: versions with torch's ``TorchVersion``, the architecture, the ``Specifications``)."""
    task = sys.modules.setdefault("pyannote.audio.core.task", _task_module())
    specifications = task.Specifications(problem=task.Problem.REPRESENTATION, resolution=task.Resolution.CHUNK,
                                         duration=5.0)
    return {"state_dict": {f"resnet.{key}": value for key, value in state.items()},
            "pyannote.audio": {"versions": {"torch": torch.__version__, "pyannote.audio": "3.1.0"},
                               "architecture": {"module": "pyannote.audio.models.embedding.wespeaker",
                                                "class": name},
                               "specifications": specifications},
            "pytorch-lightning_version": "2.1.3"}


def pyannote_layout_file(folder) -> str:
    """A ``pytorch_model.bin`` in pyannote's layout around an 8-channel ResNet34 (:func:`layout_state`), without
    pyannote's package: for the tests of the import itself."""
    path = os.path.join(str(folder), "pytorch_model.bin")
    torch.save(pyannote_checkpoint(layout_state("ResNet34")), path)
    return path


def pyannote_file(folder, seed: int = 2) -> tuple[str, torch.nn.Module]:
    """pyannote's ``WeSpeakerResNet34`` with random weights, its ``resnet`` at an 8-channel width, saved as
    pyannote's ``convert.py`` saves it: ``{"state_dict": model.state_dict()}``, ``on_save_checkpoint``, the
    Lightning version."""
    wespeaker = pyannote_models()
    model = wespeaker.WeSpeakerResNet34()
    model.resnet = wespeaker.resnet.ResNet(wespeaker.resnet.BasicBlock, [3, 4, 6, 3], m_channels=8, feat_dim=80,
                                           embed_dim=32, pooling_func="TSTP", two_emb_layer=False)
    task = sys.modules["pyannote.audio.core.task"]
    model.specifications = task.Specifications(problem=task.Problem.REPRESENTATION,
                                               resolution=task.Resolution.CHUNK, duration=5.0)
    torch.manual_seed(seed)
    randomise(model, seed)
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    checkpoint["pytorch-lightning_version"] = "2.1.3"
    path = os.path.join(str(folder), "pytorch_model.bin")
    torch.save(checkpoint, path)
    return path, model


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

def refused(tmp_path, toolkit, path, match, config=None):
    out = tmp_path / "never.model"
    with pytest.raises(SpeakerNetError, match=match) as raised:
        import_checkpoint(toolkit, str(path), str(out), config)
    assert not out.exists() and not list(tmp_path.glob(".never.model.*"))
    assert str(path) in str(raised.value) or (config and str(config) in str(raised.value))
    return str(raised.value)


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
    ({"model": "ECAPA_TDNN_GLOB_c512"}, "key model: 'ECAPA_TDNN_GLOB_c512' is not a WeSpeaker network")])
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
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = wespeaker_layout_file(tmp_path)
    model = str(tmp_path / "M.model")
    import_checkpoint("wespeaker", path, model)
    onnx_path = str(tmp_path / "M.onnx")
    assert inference.main(["export", "--initial_model", model, "--format", "onnx", "--out", onnx_path]) == 0
    run, metadata = exported_runner(onnx_path, "onnx")
    embedder = load_embedder(model, device="cpu")
    assert_export_agrees(run, lambda waves: embedder.embed(waves[0]), (16000, 40000), batch=1)
    assert metadata["frontend"] == "kaldi_fbank"


@pytest.mark.slow
def test_an_imported_model_is_scored_by_eval(tmp_path, tiny_corpus, capsys, console_log, one_thread):
    path = wespeaker_layout_file(tmp_path)
    model = str(tmp_path / "M.model")
    import_checkpoint("wespeaker", path, model)
    console_log()
    out = eval_output(model, tiny_corpus, tmp_path / "eval", capsys, "--device", "cpu")
    assert re.search(r"^EER \d+\.\d{4}$", out, re.MULTILINE)
