"""Export a trained embedding network, from waveform to embedding, as ONNX or as a torch.export program.

What a file holds
    The whole network ``__S__`` with its front end (log-mel, instance norm): input ``waveform``, float32
    ``(batch, samples)`` in [-1, 1] at 16 kHz, any batch and any length (both axes dynamic; at least
    ``min_samples``, 640 for ResNetSE34L); output ``embedding``, float32 ``(batch, nOut)``: the raw embedding that
    ``__S__`` returns for the whole waveform, the one ``Embedder.embed`` gives with ``eval_frames=0``. A model
    trained on the original's int16-scale input (``audio_scale == "int16"``) multiplies by 32768 inside the graph,
    so every exported file takes [-1, 1] input. The embedding is not normalised: ``test_normalize`` (recorded in
    the file) says whether the model's scores L2-normalise it first, as ``--eval`` does; cosine scoring normalises
    anyway.

Metadata (:data:`METADATA_KEYS`)
    ``sample_rate`` (16000), ``test_normalize`` (``true``/``false``), ``embedding_dim``, ``min_samples``,
    ``input_scale`` (what the graph multiplies its input by), and the model options (``model``, ``encoder_type``,
    ``nOut``, ``n_mels``, ``window``, ``log_input``, ``audio_scale``, ``trainfunc``), all strings: in ONNX's
    ``metadata_props`` (onnxruntime: ``session.get_modelmeta().custom_metadata_map``) and in the ``.pt2`` as its
    extra file ``speakernet.json`` (:func:`load_program` returns it).

Dynamic shapes
    The time axis is ``Dim.DYNAMIC``: torch.export derives its valid range itself. After the two stride-2 stages
    the network has ``1 + samples // 640`` frames, and the attentive pooling's broadcast ``x * w`` (and the
    stride-2 shortcuts' contiguity checks) guard on that count not being 1 (``1 % (1 + samples // 640) != 0``), a
    condition that a named ``Dim`` with only a lower bound does not satisfy provably. The derived range,
    ``samples >= 640`` (40 ms; the embedder refuses under 400 samples anyway), is recorded as ``min_samples``;
    :func:`export_program` checks that it covers 0.5 s.

STFT
    torchaudio's MelSpectrogram runs ``torch.stft`` (centred, reflect padding); the dynamo exporter translates it
    into ONNX's ``STFT`` operator (opset 17+) with the model's own window buffer, and onnxruntime runs it; tests
    check the result against PyTorch.

Writes are atomic (:mod:`spknet.atomic`); a failure is a :class:`SpeakerNetError` naming the file, and leaves
nothing behind. onnx and onnxscript are imported only for ONNX export (``requirements-export.txt``).
"""

import copy
import json
import logging
import os
import warnings
import zipfile
from contextlib import contextmanager

import torch

from spknet import atomic
from spknet.constants import SAMPLE_RATE
from spknet.data import INT16_SCALE
from spknet.errors import SpeakerNetError
from spknet.specs import MODEL_FIELDS

FORMATS = ("onnx", "torch_export")
ONNX_OPSET = 18
REQUIREMENTS = "requirements-export.txt"
PT2_METADATA = "speakernet.json"          # the extra file of a .pt2 that holds the metadata
EXAMPLE_SAMPLES = 2 * SAMPLE_RATE         # the example input traced: 2 s (any length works afterwards)
SHORTEST_REQUIRED = SAMPLE_RATE // 2      # every export must accept 0.5 s, or the network's own minimum if longer
# the model spec's options (those a network has: ResNetSE34L records no channels)
METADATA_KEYS = ("sample_rate", "test_normalize", "embedding_dim", "min_samples", "input_scale", *MODEL_FIELDS)


class WaveformEmbedder(torch.nn.Module):
    """A [-1, 1] waveform to the network's raw embedding: the network with its input scale inside it."""

    def __init__(self, network: torch.nn.Module, input_scale: float):
        super().__init__()
        self.network, self.input_scale = network, float(input_scale)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:          # a Python constant: a float model's graph has no multiplication
            waveform = waveform * self.input_scale
        return self.network(waveform)


def input_scale(config: dict) -> float:
    """What the graph multiplies its [-1, 1] input by: 32768 for a model trained on int16-scale samples."""
    return INT16_SCALE if config.get("audio_scale", "int16") == "int16" else 1.0


def export_program(network: torch.nn.Module, config: dict, source: str = "model") -> torch.export.ExportedProgram:
    """The torch.export program of ``network`` (a CPU copy in eval mode, ``network`` itself untouched) with its
    input scale, batch and time dynamic. ``source`` names the file in errors."""
    module = WaveformEmbedder(copy.deepcopy(network).float().cpu().eval(), input_scale(config)).eval()
    example = torch.randn(2, EXAMPLE_SAMPLES).clamp(-1, 1) * 0.1
    dynamic = {"waveform": {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}}
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    except Exception as error:          # torch's export errors have no common base; all are a failed export
        raise SpeakerNetError(f"{source}: torch.export failed ({type(error).__name__}: {error})") from None
    shortest = min_samples(program, source)
    required = max(SHORTEST_REQUIRED, int(getattr(network, "min_samples", 0)))
    if shortest > required:
        raise SpeakerNetError(f"{source}: the exported program only accepts {shortest} samples or more, not "
                              f"{required} ({required / SAMPLE_RATE:g} s)")
    return program


def min_samples(program: torch.export.ExportedProgram, source: str = "model") -> int:
    """The fewest samples the program accepts: the lower bound torch.export found for the time axis."""
    (name,) = program.graph_signature.user_inputs
    waveform = next(node for node in program.graph.nodes if node.op == "placeholder" and node.name == name)
    samples = waveform.meta["val"].shape[1]
    if isinstance(samples, int):
        raise SpeakerNetError(f"{source}: the export fixed the input length to {samples} samples")
    return int(program.range_constraints[samples.node.expr].lower)


def metadata(config: dict, test_normalize: bool, embedding_dim: int, shortest: int) -> dict[str, str]:
    """The file's metadata, every value a string (ONNX's metadata_props hold strings)."""
    values = {"sample_rate": SAMPLE_RATE, "test_normalize": bool(test_normalize), "embedding_dim": embedding_dim,
              "min_samples": shortest, "input_scale": input_scale(config),
              **{key: config[key] for key in MODEL_FIELDS if config.get(key) is not None}}
    return {key: json.dumps(value) if isinstance(value, bool) else str(value) for key, value in values.items()}


def export_model(network: torch.nn.Module, config: dict, path: str, fmt: str, test_normalize: bool,
                 program: torch.export.ExportedProgram | None = None) -> dict:
    """Write ``network`` (an embedding network, ``__S__``) with the model options ``config`` to ``path`` in
    format ``fmt`` (:data:`FORMATS`); returns the metadata written. See the module docstring for what it holds.
    ``program``: this network's :func:`export_program`, to write several formats from one trace."""
    if fmt not in FORMATS:
        raise SpeakerNetError(f"{path}: unknown export format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx(path)
    with _writing(path) as handle:                  # the folder is checked before the (slow) export
        if program is None:
            program = export_program(network, config, path)
        info = metadata(config, test_normalize, embedding_dim(program), min_samples(program, path))
        if fmt == "onnx":
            handle.write(onnx_bytes(program, info, path))
        else:
            with _weights_on_cpu():
                torch.export.save(program, handle, extra_files={PT2_METADATA: json.dumps(info)})
    return info


def embedding_dim(program: torch.export.ExportedProgram) -> int:
    """The size of the program's output embedding, from the shape the export recorded."""
    output = next(node for node in program.graph.nodes if node.op == "output")
    return int(output.args[0][0].meta["val"].shape[1])


def onnx_bytes(program: torch.export.ExportedProgram, info: dict[str, str], source: str = "model") -> bytes:
    """The serialised ONNX model of ``program`` (opset :data:`ONNX_OPSET`) with ``info`` in its metadata_props."""
    # the exporter's registry warns, once per operator, that torchvision (which the network does not use) is absent
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=["waveform"], output_names=["embedding"], verbose=False)
    except Exception as error:          # the exporter raises its own and torch's errors
        raise SpeakerNetError(f"{source}: ONNX export failed ({type(error).__name__}: {error})") from None
    finally:
        registry.setLevel(level)
    proto = onnx_program.model_proto
    proto.doc_string = ("SpeakerNet embedding network: waveform float32 (batch, samples) in [-1, 1] at 16 kHz -> "
                        "raw embedding (batch, dim); L2-normalise when test_normalize is true")
    for key, value in info.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def require_onnx(source: str) -> None:
    """A clear error when ONNX export's packages are missing (they are not needed for anything else)."""
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise SpeakerNetError(f"{source}: ONNX export needs the package {package}: "
                                  f"pip install -r {REQUIREMENTS}") from None


@contextmanager
def _writing(path: str):
    """:func:`spknet.atomic.atomic_open` for an export: the folder made if missing, and an OSError (unwritable
    folder, disk full) turned into an error naming the file; the temporary file never stays behind."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic.atomic_open(path, "wb") as handle:
            yield handle
    except OSError as error:
        raise SpeakerNetError(f"{path}: cannot be written ({error.strerror or error})") from None


@contextmanager
def _weights_on_cpu():
    """Silence the .pt2 archive's warning that weights off the CPU may be stored wrongly: an export's weights
    are always on the CPU (:func:`export_program` copies the network there)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        yield


def load_program(path: str):
    """A saved ``.pt2`` as ``(module, metadata)``: the callable ``torch.export.load(path).module()`` and the
    metadata dict :func:`export_model` recorded."""
    extra = {PT2_METADATA: ""}
    try:
        with _weights_on_cpu():
            program = torch.export.load(path, extra_files=extra)
    except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as error:
        raise SpeakerNetError(f"{path}: not a readable torch.export program ({error})") from None
    return program.module(), json.loads(extra[PT2_METADATA] or "{}")
