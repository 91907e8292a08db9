"""The other toolkits' own code as test oracles: builders, savers and runners of WeSpeaker's, pyannote's and
3D-Speaker's models (their packages are the ``oracles`` extra, installed without their dependencies), and what the
import tests compare with them.

A test proves that SpeakerNet computes what a toolkit computes by building the toolkit's own network with random
weights and BatchNorm statistics (:func:`randomise`), saving it as the toolkit saves it (:func:`wespeaker_file`,
:func:`pyannote_file`), embedding with the toolkit's own feature code (:func:`wespeaker_embedding`,
:func:`threedspeaker_embedding`) and comparing with what ``load_embedder`` gives of the imported file
(:func:`compare`). The toolkits' packages are loaded without their heavy ``__init__`` imports
(:func:`wespeaker_module`, :func:`pyannote_models`, :func:`speakerlab_class`); a test that needs one skips where it
is absent. The ``*_layout_file`` builders write files in a toolkit's key layout from SpeakerNet's own networks, for
the tests of the import itself, which need no oracle package.
"""

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
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
from torch import nn

from spknet.errors import SpeakerNetError
from spknet.importing import import_checkpoint
from spknet.inference import load_embedder
from tests.helpers import oracle_module, relative

SPEECH_SECONDS = 1.5        # speech_like's default length
EVAL_FRAMES = 50            # compare's crops: ten of 0.5 s


# ----------------------------------------------------------------------------------------------------------------
# Networks: counted, laid out, randomised
# ----------------------------------------------------------------------------------------------------------------

def count(module: nn.Module) -> int:
    """The number of parameters."""
    return sum(parameter.numel() for parameter in module.parameters())


def layout(module: nn.Module) -> dict:
    """Each state-dict key's shape."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def randomise(model: nn.Module, seed: int = 1, scale_vectors: bool = True) -> nn.Module:
    """Random weights and BatchNorm statistics (running means and variances too), so that no layer is an identity a
    bug could hide behind; returns the model in eval mode. Running variances and 1-D weights (BatchNorm's scales) are
    drawn in [0.5, 1.5), biases and running means N(0, 0.1²), the rest N(0, 1 / fan-in). The other 1-D tensors (a
    front end's analysis window, ``frontend.window``) are scales too with ``scale_vectors``, or N(0, 1) without."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.dim() == 1 and (scale_vectors or name.endswith("weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker (wespeaker-unofficial's wespeaker/models/)
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# pyannote (pyannote-audio's pyannote/audio/models/embedding/wespeaker/)
# ----------------------------------------------------------------------------------------------------------------

def _namespace(name: str, folder: str) -> None:
    """Register ``name`` as a package of ``folder`` without running its ``__init__.py``."""
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [folder]
        package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        package.__spec__.submodule_search_locations = [folder]
        sys.modules[name] = package


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
# 3D-Speaker (speakerlab)
# ----------------------------------------------------------------------------------------------------------------

def speakerlab_class(name: str):
    """speakerlab's (3D-Speaker's package) class of our network ``name``: CAM++ for ``CAMPPlus3D``, ERes2NetV2 for
    ``ERes2NetV2`` and its variants."""
    if name == "CAMPPlus3D":
        from speakerlab.models.campplus.DTDNN import CAMPPlus
        return CAMPPlus
    from speakerlab.models.eres2net.ERes2NetV2 import ERes2NetV2
    return ERes2NetV2


def threedspeaker_embedding(oracle: nn.Module, samples: torch.Tensor) -> torch.Tensor:
    """speakerlab/bin/infer_sv.py's compute_embedding: FBank(80, 16000, mean_nor=True), then the network."""
    from speakerlab.process.processor import FBank

    with torch.no_grad():
        return oracle(FBank(80, sample_rate=16000, mean_nor=True)(samples.unsqueeze(0)).unsqueeze(0))[0]


# ----------------------------------------------------------------------------------------------------------------
# What the import tests compare: a waveform, the embeddings, a refusal
# ----------------------------------------------------------------------------------------------------------------

def speech_like(path, seconds: float = SPEECH_SECONDS, seed: int = 0) -> str:
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


def refused(tmp_path, toolkit, path, match, config=None) -> str:
    """Importing ``path`` as ``toolkit`` (with ``config``) is one SpeakerNetError matching ``match`` that names the
    file or the config, and nothing is written (no output, no temporary file); returns the message."""
    out = tmp_path / "never.model"
    with pytest.raises(SpeakerNetError, match=match) as raised:
        import_checkpoint(toolkit, str(path), str(out), config)
    assert not out.exists() and not list(tmp_path.glob(".never.model.*"))
    assert str(path) in str(raised.value) or (config and str(config) in str(raised.value))
    return str(raised.value)


def assert_imported_exports(folder, path: str, config: str | None = None) -> dict:
    """Import WeSpeaker's ``path`` (with ``config``), export it to ONNX through ``inference.py export`` and check the
    program against ``load_embedder`` on 1-s and 2.5-s waveforms; the program's metadata."""
    import inference
    from tests.helpers import assert_export_agrees, exported_runner

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, onnx_path = str(folder / "M.model"), str(folder / "M.onnx")
    import_checkpoint("wespeaker", path, model, config)
    assert inference.main(["export", "--initial_model", model, "--format", "onnx", "--out", onnx_path]) == 0
    run, metadata = exported_runner(onnx_path, "onnx")
    embedder = load_embedder(model, device="cpu")
    assert_export_agrees(run, lambda waves: embedder.embed(waves[0]), (16000, 40000), batch=1)
    return metadata
