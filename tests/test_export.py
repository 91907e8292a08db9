"""Export (core/export.py, ``inference.py export``): ONNX through onnxruntime and the torch.export program give the
embeddings of ``Embedder.embed``'s whole-file path; bad input is an error naming the file, with nothing left behind.

Two random-weight ResNetSE34L models stand for every case: SAP with float input from SpeakerNet's own checkpoint
(trainfunc proto: test_normalize false) and ASP with the original's int16-scale input from a flat state dict (the
keys tell the model; test_normalize true). Each is exported once per format for the module.
"""

import os
import sys

import numpy as np
import pytest
import torch

import inference
import spknet.export
from spknet import SAMPLE_RATE
from spknet.errors import SpeakerNetError
from spknet.export import METADATA_KEYS, ONNX_OPSET, export_model, export_program, load_program
from spknet.inference import load_embedder
from spknet.model import SpeakerNet
from tests.helpers import exported_runner

ort = pytest.importorskip("onnxruntime")
DURATIONS = (0.5, 4.0, 13.7)            # seconds
MODELS = ("sap_float", "asp_int16")
FORMATS = ("onnx", "torch_export")
SUFFIX = {"onnx": ".onnx", "torch_export": ".pt2"}


def randomise_batchnorm(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Running statistics and affine parameters away from the identity, so that eval-mode BatchNorm matters."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)


def save_model(folder, kind: str) -> str:
    """A checkpoint of a random network: SpeakerNet's own layout with its run options, or the original's flat
    state dict."""
    torch.manual_seed(1 if kind == "sap_float" else 2)
    encoder = "SAP" if kind == "sap_float" else "ASP"
    net = SpeakerNet.build("ResNetSE34L", nOut=24, encoder_type=encoder, with_loss=False)
    randomise_batchnorm(net, torch.Generator().manual_seed(3))
    path = str(folder / f"{kind}.model")
    if kind == "sap_float":
        options = {"model": "ResNetSE34L", "encoder_type": "SAP", "nOut": 24, "n_mels": 40, "log_input": True,
                   "window": "hann", "audio_scale": "float", "pad": "zero", "trainfunc": "proto"}
        torch.save({"model_state_dict": net.state_dict(), "run": {"options": options}}, path)
    else:
        torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    """kind -> (checkpoint, its whole-file embedder)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {kind: (path, load_embedder(path, device="cpu", eval_frames=0))
            for kind, path in ((kind, save_model(folder, kind)) for kind in MODELS)}


@pytest.fixture(scope="module")
def models(embedders, tmp_path_factory):
    """kind -> (checkpoint, embedder, {format: exported file}, {format: its runner}): every model exported in
    each format."""
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for kind, (checkpoint, embedder) in embedders.items():
        files = {fmt: str(folder / f"{kind}{SUFFIX[fmt]}") for fmt in FORMATS}
        program = export_program(embedder.network, embedder.config)      # one trace for both formats
        for fmt, path in files.items():
            export_model(embedder.network, embedder.config, path, fmt, embedder.test_normalize, program=program)
        out[kind] = (checkpoint, embedder, files, {fmt: exported_runner(path, fmt) for fmt, path in files.items()})
    return out


def waveform(seconds: float, seed: int) -> np.ndarray:
    """Noise in [-1, 1] with a slow envelope (a silent stretch would not test the front end)."""
    rng = np.random.default_rng(seed)
    samples = int(round(seconds * SAMPLE_RATE))
    envelope = 0.2 + 0.6 * np.abs(np.sin(np.linspace(0, 3 * np.pi, samples)))
    return np.clip(rng.standard_normal(samples) * 0.3 * envelope, -1, 1).astype(np.float32)


def agreement(got: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(cosine, max relative error): the largest absolute difference over the reference's largest value."""
    cosine = float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).min())
    return cosine, float((got - reference).abs().max() / reference.abs().max())


def assert_agrees(got: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    cosine, relative = agreement(got, reference)
    assert cosine >= 0.9999 and relative <= 1e-4, f"{what}: cosine {cosine:.7f}, max relative error {relative:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", MODELS)
def test_exports_give_the_embedders_whole_file_embeddings(models, kind, fmt):
    run, _ = models[kind][3][fmt]
    embedder = models[kind][1]
    for seed, seconds in enumerate(DURATIONS):
        wave = waveform(seconds, seed)
        assert_agrees(run(wave[None]), embedder.embed(wave), f"{kind} {fmt} {seconds} s")
    pair = np.stack([waveform(4.0, 10), waveform(4.0, 11)])         # a batch of two equal-length waveforms
    together = run(pair)
    assert together.shape == (2, 24)
    for row in range(2):
        assert_agrees(together[row:row + 1], embedder.embed(pair[row]), f"{kind} {fmt} batch row {row}")


@pytest.mark.slow
def test_the_files_record_what_using_them_needs(models):
    import onnx
    for kind, (_, embedder, files, runners) in models.items():
        proto = onnx.load(files["onnx"])
        assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) >= ONNX_OPSET
        session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
        (waveform_input,), (embedding,) = session.get_inputs(), session.get_outputs()
        assert waveform_input.name == "waveform" and waveform_input.type == "tensor(float)"
        assert all(isinstance(size, str) for size in waveform_input.shape)          # batch and samples dynamic
        assert embedding.name == "embedding" and embedding.shape[1] == 24
        onnx_metadata, pt2_metadata = runners["onnx"][1], runners["torch_export"][1]
        assert onnx_metadata == pt2_metadata and set(onnx_metadata) == set(METADATA_KEYS) - {"channels"}
        assert onnx_metadata["sample_rate"] == "16000" and onnx_metadata["embedding_dim"] == "24"
        assert onnx_metadata["test_normalize"] == ("true" if embedder.test_normalize else "false")
        assert onnx_metadata["input_scale"] == ("32768.0" if kind == "asp_int16" else "1.0")
        assert onnx_metadata["encoder_type"] == kind[:3].upper()
    assert [models[kind][1].test_normalize for kind in MODELS] == [False, True]


@pytest.mark.slow
def test_the_program_takes_half_a_second_to_thirty_seconds(models):
    run, metadata = models["asp_int16"][3]["torch_export"]
    assert int(metadata["min_samples"]) <= SAMPLE_RATE // 2
    for seconds in (0.5, 30.0):
        assert run(waveform(seconds, 5)[None]).shape == (1, 24)
    with pytest.raises(Exception, match="640"):       # the range torch.export found, enforced on the way in
        run(np.zeros((1, int(metadata["min_samples"]) - 1), dtype=np.float32))


@pytest.mark.slow
def test_the_command_line_exports_a_program_that_agrees(models, tmp_path, capsys):
    checkpoint, embedder = models["sap_float"][:2]
    out = tmp_path / "deep" / "model.pt2"
    assert inference.main(["export", "--initial_model", checkpoint, "--format", "torch_export",
                           "--out", str(out)]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    assert sorted(os.listdir(out.parent)) == ["model.pt2"]                     # no temporary left
    wave = waveform(2.3, 7)
    assert_agrees(exported_runner(str(out), "torch_export")[0](wave[None]), embedder.embed(wave), "command line")


def test_an_unknown_format_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as stop:
        inference.main(["export", "--initial_model", "m.model", "--format", "tflite", "--out", "m.tflite"])
    assert stop.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_an_unwritable_out_is_an_error_naming_it_and_leaves_nothing(embedders, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "model.onnx"
    assert inference.main(["export", "--initial_model", embedders["sap_float"][0], "--format", "onnx",
                           "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"error: {out}: cannot be written" in error and "Traceback" not in error
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_a_failed_export_leaves_nothing_behind(embedders, tmp_path, monkeypatch):

    def broken(*args, **kwargs):
        raise SpeakerNetError("model: torch.export failed (for the test)")
    monkeypatch.setattr(spknet.export, "export_program", broken)
    _, embedder = embedders["sap_float"]
    with pytest.raises(SpeakerNetError, match="torch.export failed"):
        export_model(embedder.network, embedder.config, str(tmp_path / "m.pt2"), "torch_export", True)
    assert os.listdir(tmp_path) == []


def test_missing_onnx_packages_say_what_to_install(embedders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)          # import onnxscript now raises ImportError
    _, embedder = embedders["sap_float"]
    out = tmp_path / "m.onnx"
    with pytest.raises(SpeakerNetError, match=rf"{out}: .*onnxscript.*pip install -r requirements-export.txt"):
        export_model(embedder.network, embedder.config, str(out), "onnx", True)
    assert os.listdir(tmp_path) == []


def test_a_file_that_is_not_a_program_is_an_error_naming_it(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_text("not a program")
    with pytest.raises(SpeakerNetError, match=rf"{path}: not a readable torch.export program"):
        load_program(str(path))


def test_the_metadata_records_every_model_option_the_network_has():
    """The export records the whole model spec: the width of an ECAPA or a ResNet34 (``channels``) and the padding
    included; ResNetSE34L has no width to record."""
    from spknet.export import metadata
    from spknet.specs import ModelSpec
    ecapa = ModelSpec(model="ECAPA_TDNN", pad="wrap", audio_scale="float").resolved()
    recorded = metadata(ecapa.record(), True, 192, 8000)
    assert recorded["channels"] == "512" and recorded["pad"] == "wrap" and recorded["model"] == "ECAPA_TDNN"
    assert "channels" not in metadata(ModelSpec().resolved().record(), True, 512, 8000)
