"""voxceleb_trainer's RawNet3 and VGGVox: the key layout, shapes and parameter counts of voxceleb_trainer's own code
(tests/fixtures/voxceleb_trainer_layouts.json, taken from its definitions), the sinc filterbank against the
equations of the papers, loading voxceleb_trainer's checkpoints strictly (``load_embedder``, ``--eval``, ``inference.py
import --from voxceleb_trainer``), training with every loss, and the options."""

import copy
import json
import os

import numpy as np
import pytest
import torch
import yaml

import inference
import SpeakerNet
from spknet import plugins
from spknet.checkpoints import read_checkpoint
from spknet.errors import SpeakerNetError
from spknet.folding import fold_batch_norms
from spknet.importing import import_checkpoint
from spknet.inference import load_embedder
from spknet.models.RawNet3 import AnalyticSincFilterbank
from tests.helpers import assert_export_agrees, eval_output, exported_runner
from trainSpeakerNet import spec_from_argv

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LAYOUTS = json.load(open(os.path.join(FIXTURES, "voxceleb_trainer_layouts.json"), encoding="utf-8"))
# parameters() of voxceleb_trainer's own classes with the other options (counted by building them)
OTHER_COUNTS = {("RawNet3", "ASP", 256): 16_082_307, ("VGGVox", "TAP", 512): 3_769_280,
                ("VGGVox", "MAX", 512): 3_769_280, ("VGGVox", "SAP", 1024): 4_295_104}
FS = 16000
SMALL = {"RawNet3": {"channels": 32}, "VGGVox": {}}


def built(name: str, **options) -> torch.nn.Module:
    """The network, on the meta device where it can be (names and shapes without memory or initialisation time;
    torchaudio's mel banks cannot be made there)."""
    with torch.device("meta" if name == "RawNet3" else "cpu"):
        return plugins.load("models", name)(**options)


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def waves(batch=2, samples=16000, seed=0):
    return torch.rand(batch, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------------------------------------------
# Layout and parameter counts
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["RawNet3", "VGGVox"])
def test_keys_shapes_and_parameters_are_voxceleb_trainers(name):
    """Every key of voxceleb_trainer's state dict, in its order, with its shape and dtype; its parameter count."""
    net = built(name)
    ours = [[key, list(value.shape), str(value.dtype).replace("torch.", "")] for key, value in net.state_dict().items()]
    assert ours == LAYOUTS[name]["state"]
    assert parameters(net) == LAYOUTS[name]["parameters"]


def test_the_published_counts():
    assert LAYOUTS["RawNet3"]["parameters"] == 16_280_322 and LAYOUTS["VGGVox"]["parameters"] == 4_032_448
    for (name, encoder_type, nOut), count in OTHER_COUNTS.items():
        assert parameters(built(name, encoder_type=encoder_type, nOut=nOut)) == count, (name, encoder_type)


# ----------------------------------------------------------------------------------------------------------------
# The sinc filterbank against the equations
# ----------------------------------------------------------------------------------------------------------------

BANDS = [(300.0, 1000.0), (1000.0, 3000.0), (2500.0, 2900.0), (4000.0, 7500.0)]


def filterbank_with(bands):
    """RawNet3's filterbank with the cut-offs ``bands`` (Hz), set through its parametrisation f1 = 50 + |low_hz_|,
    f2 = f1 + 50 + |band_hz_| (negative parameters on purpose: only their magnitude counts)."""
    bank = AnalyticSincFilterbank(2 * len(bands))
    with torch.no_grad():
        bank.low_hz_.copy_(-torch.tensor([[low - 50.0] for low, _ in bands]))
        bank.band_hz_.copy_(-torch.tensor([[high - low - 50.0] for low, high in bands]))
    return bank


def band_pass(low: float, high: float, taps: int = 251) -> tuple[np.ndarray, np.ndarray]:
    """The even filter from the SincNet equation, g[n] = 2 f2 sinc(2 f2 n) - 2 f1 sinc(2 f1 n) (frequencies in Hz,
    n in seconds; numpy's normalised sinc) times the symmetric Hamming window, over 2 (f2 - f1); and the odd filter,
    its Hilbert transform (cos(2 pi f1 n) - cos(2 pi f2 n)) / (pi n) with the same window and scale (0 at n = 0)."""
    n = np.arange(-(taps // 2), taps // 2 + 1) / FS
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(taps) / (taps - 1))
    even = (2 * high * np.sinc(2 * high * n) - 2 * low * np.sinc(2 * low * n)) * window / (2 * (high - low))
    with np.errstate(divide="ignore", invalid="ignore"):
        odd = np.where(n == 0, 0.0, (np.cos(2 * np.pi * low * n) - np.cos(2 * np.pi * high * n)) / (np.pi * n))
    return even, odd * window / (2 * (high - low))


def test_the_cutoffs_are_the_parametrised_ones():
    low, high = filterbank_with(BANDS).cutoffs()
    assert torch.allclose(torch.cat((low, high), 1), torch.tensor(BANDS), atol=1e-3)
    clamped = filterbank_with([(6000.0, 9000.0)])          # the high cut-off stops at the Nyquist frequency
    assert clamped.cutoffs()[1].item() == FS / 2


def test_the_filters_are_the_windowed_band_pass_sincs_and_their_hilbert_transforms():
    filters = filterbank_with(BANDS).filters().detach().squeeze(1).double().numpy()
    assert filters.shape == (2 * len(BANDS), 251)
    for index, (low, high) in enumerate(BANDS):
        even, odd = band_pass(low, high)
        assert np.abs(filters[index] - even).max() <= 1e-5, (low, high)
        assert np.abs(filters[len(BANDS) + index] - odd).max() <= 1e-5, (low, high)


def test_their_frequency_responses_pass_the_band_and_stop_outside():
    """|H(f)| normalised by its ideal pass-band gain fs / (2 (f2 - f1)): within 3 % of 1 inside the band and below
    1 % outside, 250 Hz away from the cut-offs (the Hamming window's transition over 251 taps is about 210 Hz);
    the even and odd filters of a band form an analytic pair: together they pass the positive frequencies only."""
    bank = filterbank_with(BANDS)
    filters = bank.filters().detach().squeeze(1).double().numpy()
    points = 16384
    freqs = np.fft.fftfreq(points, 1 / FS)
    margin = 250.0
    for index, (low, high) in enumerate(BANDS):
        gain = FS / (2 * (high - low))
        even, odd = filters[index], filters[len(BANDS) + index]
        inside = (np.abs(freqs) > low + margin) & (np.abs(freqs) < high - margin)
        outside = (np.abs(freqs) < low - margin) | (np.abs(freqs) > high + margin)
        for taps in (even, odd):
            response = np.abs(np.fft.fft(taps, points)) / gain
            assert np.all(np.abs(response[inside] - 1) < 0.03), (low, high)
            assert np.all(response[outside] < 0.01), (low, high)
        analytic = np.abs(np.fft.fft(even + 1j * odd, points)) / gain
        assert np.all(analytic[inside & (freqs < 0)] < 0.01)
        assert np.all(np.abs(analytic[inside & (freqs > 0)] - 2) < 0.06)


def test_the_initial_bands_tile_the_spectrum_on_the_mel_scale():
    """From 80 Hz (50 + 30) to the Nyquist frequency, each band overlapping the next by the 50-Hz floor, wider with
    frequency as the mel scale spaces them."""
    low, high = AnalyticSincFilterbank(256).cutoffs()
    assert low.shape == (128, 1) and low[0].item() == pytest.approx(80.0, abs=1e-3) and high[-1].item() == FS / 2
    assert torch.allclose(high[:-1], low[1:] + 50.0, atol=1e-2)
    widths = (high - low).squeeze(1)
    assert torch.all(widths[1:] > widths[:-1])


# ----------------------------------------------------------------------------------------------------------------
# Training and inference
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["RawNet3", "VGGVox"])
@pytest.mark.parametrize("trainfunc", sorted(plugins.choices("loss")))
def test_trains_with_every_loss(name, trainfunc, one_thread):
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet.build(model=name, trainfunc=trainfunc, nSpeakers=3, nOut=16, **SMALL[name])
    per_group = 2 if net.utterances_per_speaker == "imbalanced" else net.utterances_per_speaker
    labels = torch.arange(3).repeat_interleave(per_group)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loss, _ = net(waves(len(labels), 11000), labels, 3)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert all(torch.isfinite(parameter).all() for parameter in net.parameters())


@pytest.mark.parametrize("name", ["RawNet3", "VGGVox"])
def test_a_training_step_reaches_every_trainable_parameter(name, one_thread):
    """The sinc cut-offs learn; RawNet3's bn1 and bn6, which voxceleb_trainer's forward never uses, are frozen."""
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet.build(model=name, trainfunc="aamsoftmax", nSpeakers=3, **SMALL[name])
    loss, _ = net(waves(3, 24000), torch.arange(3), 3)           # VGGVox's attention needs frames to weigh
    loss.backward()
    missing = [key for key, parameter in net.__S__.named_parameters()
               if parameter.requires_grad and (parameter.grad is None or not parameter.grad.abs().sum() > 0)]
    frozen = [key for key, parameter in net.__S__.named_parameters() if not parameter.requires_grad]
    assert not missing
    assert frozen == ([] if name == "VGGVox" else ["bn1.weight", "bn1.bias", "bn6.weight", "bn6.bias"])


def test_rawnet3_is_nearly_indifferent_to_the_sample_scale(one_thread):
    net = plugins.load("models", "RawNet3")(channels=32).eval()
    audio = waves(2, 4000)
    with torch.no_grad():
        assert torch.allclose(net(audio), net(audio * 32768), rtol=1e-3, atol=1e-3)


def test_vggvox_folds_its_batch_norms(one_thread):
    torch.manual_seed(0)
    net = plugins.load("models", "VGGVox")(nOut=16).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        audio = waves(2, 12000)
        expected = net(audio)
        folded = copy.deepcopy(net)
        assert fold_batch_norms(folded, audio) == 6
        assert torch.allclose(folded(audio), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("name,samples,match", [("RawNet3", 540, "RawNet3 needs at least 541 samples"),
                                                ("VGGVox", 9919, "VGGVox needs at least 63 frames")])
def test_too_short_an_input_is_an_error_saying_the_minimum(name, samples, match):
    net = plugins.load("models", name)(**SMALL[name]).eval()
    with pytest.raises(SpeakerNetError, match=match):
        net(waves(1, samples))
    with torch.no_grad():
        assert net(waves(1, samples + 160)).shape[0] == 1


# ----------------------------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["--model", "RawNet3"], ("waveform", 256, None, "ECA", None, 1024)),
    (["--model", "RawNet3", "--encoder_type", "ASP"], ("waveform", 256, None, "ASP", None, 1024)),
    (["--model", "VGGVox"], ("logmel", 512, 40, "SAP", "hann", None)),
    (["--model", "VGGVox", "--encoder_type", "TAP", "--frontend", "kaldi_fbank"],
     ("kaldi_fbank", 512, 40, "TAP", "hann", None))])
def test_unset_options_are_voxceleb_trainers(argv, expected):
    model = spec_from_argv(argv).model
    assert (model.frontend, model.nOut, model.n_mels, model.encoder_type, model.window, model.channels) == expected


@pytest.mark.parametrize("argv,match", [
    (["--model", "RawNet3", "--n_mels", "80"], "model RawNet3 has no option --n_mels"),
    (["--model", "RawNet3", "--window", "hamming"], "model RawNet3 has no option --window"),
    (["--model", "VGGVox", "--channels", "8"], "model VGGVox has no option --channels")])
def test_options_the_networks_lack_are_errors(argv, match):
    with pytest.raises(SpeakerNetError, match=match):
        spec_from_argv(argv)


@pytest.mark.parametrize("name,options,match", [
    ("RawNet3", {"frontend": "kaldi_fbank"}, "RawNet3 takes the raw waveform"),
    ("RawNet3", {"encoder_type": "SAP"}, "encoder_type"),
    ("RawNet3", {"channels": 100}, "multiple of 8"),
    ("VGGVox", {"frontend": "waveform"}, "takes features"),
    ("VGGVox", {"encoder_type": "ECA"}, "encoder_type"),
    ("VGGVox", {"n_mels": 64}, r"SAP needs one \(n_mels 39 to 46\)"),
    ("VGGVox", {"n_mels": 20, "encoder_type": "TAP"}, "needs at least one")])
def test_options_out_of_range_are_errors(name, options, match):
    with pytest.raises(SpeakerNetError, match=match):
        built(name, **options)


def test_vggvox_takes_any_height_with_tap_and_max(one_thread):
    net = plugins.load("models", "VGGVox")(n_mels=80, encoder_type="MAX", nOut=8).eval()
    with torch.no_grad():
        assert net(waves(1, 12000)).shape == (1, 8)


# ----------------------------------------------------------------------------------------------------------------
# voxceleb_trainer's checkpoints
# ----------------------------------------------------------------------------------------------------------------

def published_state(name: str, seed: int = 0) -> dict:
    """Random tensors with the keys and shapes of voxceleb_trainer's table (not built from our network)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in LAYOUTS[name]["state"]:
        if dtype == "int64":
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(("low_hz_", "band_hz_")):
            state[key] = torch.rand(shape, generator=generator) * 3000
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def small_state(name: str, seed: int = 0, **options) -> dict:
    generator = torch.Generator().manual_seed(seed)
    net = plugins.load("models", name)(**{**SMALL[name], **options})
    state = {}
    for key, value in net.state_dict().items():
        if value.is_floating_point() and key.endswith("running_var"):
            value = torch.rand(value.shape, generator=generator) + 0.5
        elif value.is_floating_point() and not key.endswith(("window_", "n_", "window", "fb", "flipped_filter")):
            value = value + torch.randn(value.shape, generator=generator) * 0.05
        state[key] = value
    return state


def trainer_file(path, state: dict, classes: int = 5, nOut: int = 256) -> str:
    """As voxceleb_trainer's ``saveParameters`` writes: the network under ``__S__.``, AAM-softmax's class weights
    under ``__L__.``, with the optimizer's and scheduler's state and the epoch."""
    torch.save({"model_state_dict": {**{f"__S__.{key}": value for key, value in state.items()},
                                     "__L__.weight": torch.randn(classes, nOut)},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
                "scheduler_state_dict": {"step_size": 1, "gamma": 0.75, "last_epoch": 3}, "epoch": 3}, path)
    return str(path)


def reference(name: str, state: dict, **options) -> torch.nn.Module:
    net = plugins.load("models", name)(**options).eval()
    net.load_state_dict(state, strict=True)
    return net


def test_the_published_rawnet3_layout_loads_strictly_through_load_embedder(tmp_path, one_thread):
    state = published_state("RawNet3")
    path = trainer_file(tmp_path / "model000000003.model", state)
    embedder = load_embedder(path, device="cpu", calibration=None)
    spec = embedder.config
    assert (spec["model"], spec["nOut"], spec["encoder_type"], spec["channels"], spec["frontend"]) == \
        ("RawNet3", 256, "ECA", 1024, "waveform")
    assert (spec["audio_scale"], spec["pad"]) == ("float", "wrap")       # voxceleb_trainer's input
    loaded = embedder.network.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[key], state[key]) for key in state)


def test_the_published_model_pt_format_loads_and_gets_the_network_prefix(tmp_path, one_thread):
    """voxceleb_trainer's models/weights/RawNet3/model.pt is {"model": network state}."""
    state = small_state("RawNet3")
    path = str(tmp_path / "model.pt")
    torch.save({"model": state}, path)
    assert sorted(read_checkpoint(path)["model_state_dict"]) == sorted(f"__S__.{key}" for key in state)
    embedder = load_embedder(path, device="cpu", calibration=None)
    audio = waves(1, 8000)[0].numpy()
    expected = reference("RawNet3", state, channels=32)(torch.from_numpy(audio)[None])
    assert torch.allclose(embedder.network(torch.from_numpy(audio)[None]), expected)


def rawnet3_config(tmp_path, **changes) -> str:
    """configs/RawNet3_AAM.yaml's values, with ``changes``."""
    config = {"model": "RawNet3", "encoder_type": "ECA", "nOut": 256, "sinc_stride": 10, "max_frames": 300,
              "batch_size": 32, "eval_frames": 400, "trainfunc": "aamsoftmax", "lr_decay": 0.75,
              "weight_decay": 5e-05, "max_seg_per_spk": 500, "augment": True, "save_path": "exps/RawNet3_AAM"}
    path = tmp_path / "RawNet3_AAM.yaml"
    path.write_text(yaml.safe_dump({**config, **changes}))
    return str(path)


def test_import_from_voxceleb_trainer_writes_a_checkpoint_that_embeds_as_voxceleb_trainer(tmp_path, capsys,
                                                                                          one_thread):
    state = small_state("RawNet3")
    path = trainer_file(tmp_path / "model000000003.model", state)
    out = tmp_path / "M.model"
    assert inference.main(["import", "--from", "voxceleb_trainer", path, "--config", rawnet3_config(tmp_path),
                           "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "voxceleb_trainer RawNet3 (nOut 256, the raw waveform, audio_scale float)" in printed
    assert "dropped __L__.weight 5x256: voxceleb_trainer's training classifier" in printed
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["imported"]["toolkit"] == "voxceleb_trainer"
    assert checkpoint["run"]["model"]["model"] == "RawNet3" and checkpoint["run"]["model"]["pad"] == "wrap"
    audio = waves(2, 9000)
    with torch.no_grad():
        expected = reference("RawNet3", state, channels=32)(audio)
        assert torch.allclose(load_embedder(str(out), device="cpu", calibration=None).network(audio), expected)


def test_import_of_a_vggvox_with_its_loss_head(tmp_path, one_thread):
    state = small_state("VGGVox", encoder_type="TAP", nOut=8)
    path = trainer_file(tmp_path / "vgg.model", state, nOut=8)
    config = tmp_path / "vgg.yaml"
    config.write_text(yaml.safe_dump({"model": "VGGVox", "encoder_type": "TAP", "nOut": 8, "log_input": True}))
    with pytest.raises(SpeakerNetError, match="TAP or MAX pooling, which have the same keys: give its config"):
        import_checkpoint("voxceleb_trainer", path, str(tmp_path / "N.model"))
    report = import_checkpoint("voxceleb_trainer", path, str(tmp_path / "M.model"), str(config))
    assert report.dropped == {"__L__.weight": (5, 8)} and report.spec.encoder_type == "TAP"
    audio = waves(2, 12000)
    with torch.no_grad():
        expected = reference("VGGVox", state, encoder_type="TAP", nOut=8)(audio)
        got = load_embedder(str(tmp_path / "M.model"), device="cpu", calibration=None).network(audio)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "N.model").exists()


def test_load_embedder_reads_a_vggvox_checkpoint_by_its_keys(tmp_path, one_thread):
    state = small_state("VGGVox", nOut=8)
    embedder = load_embedder(trainer_file(tmp_path / "vgg.model", state, nOut=8), device="cpu", calibration=None)
    assert (embedder.config["model"], embedder.config["encoder_type"], embedder.config["n_mels"],
            embedder.config["window"]) == ("VGGVox", "SAP", 40, "hann")
    tap = trainer_file(tmp_path / "tap.model", small_state("VGGVox", encoder_type="MAX", nOut=8), nOut=8)
    with pytest.raises(SpeakerNetError, match="cannot tell encoder_type"):
        load_embedder(tap, device="cpu", calibration=None)
    assert load_embedder(tap, device="cpu", calibration=None, encoder_type="MAX").config["encoder_type"] == "MAX"


@pytest.mark.parametrize("changes,match", [
    ({"nOut": 512}, r"r.model: the config contradicts the weights: .*\.yaml says nOut 512, the file's network "
                    r"\(its __S__.\* keys\) says 256"),
    ({"encoder_type": "ASP"}, "says encoder_type ASP, the file's network .* says ECA"),
    ({"model": "ResNetSE34V2"}, "r.model: the config contradicts the weights: .* says model ResNetSE34V2, the "
                                "file's network .* says RawNet3"),
    ({"sinc_stride": 5}, "key sinc_stride: 5; SpeakerNet's RawNet3 computes stride 10 only")])
def test_a_config_that_contradicts_the_weights_is_an_error(tmp_path, changes, match):
    path = trainer_file(tmp_path / "r.model", small_state("RawNet3"))
    with pytest.raises(SpeakerNetError, match=match):
        import_checkpoint("voxceleb_trainer", path, str(tmp_path / "M.model"), rawnet3_config(tmp_path, **changes))
    assert not (tmp_path / "M.model").exists()


def test_files_that_are_not_voxceleb_trainer_checkpoints_say_so(tmp_path, capsys):
    wespeaker = tmp_path / "avg_model.pt"
    torch.save({"conv1.weight": torch.zeros(2, 1, 3, 3), "seg_1.weight": torch.zeros(4, 8)}, wespeaker)
    assert inference.main(["import", "--from", "voxceleb_trainer", str(wespeaker), "--out",
                           str(tmp_path / "M.model")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(wespeaker) in error[0] and "key conv1.weight" in error[0]
    state = small_state("RawNet3")
    state.pop("layer2.conv3.bias")
    broken = trainer_file(tmp_path / "b.model", state)
    with pytest.raises(SpeakerNetError, match="key layer2.conv3.bias of RawNet3 is missing"):
        import_checkpoint("voxceleb_trainer", broken, str(tmp_path / "M.model"))
    assert not (tmp_path / "M.model").exists()
    other = tmp_path / "list.pt"
    torch.save([1, 2], other)
    with pytest.raises(SpeakerNetError, match="not a voxceleb_trainer checkpoint .*found a list"):
        import_checkpoint("voxceleb_trainer", str(other), str(tmp_path / "M.model"))




@pytest.mark.slow
def test_an_imported_rawnet3_is_scored_by_eval_and_exported(tmp_path, tiny_corpus, capsys, console_log, one_thread):
    import re

    path = str(tmp_path / "model.pt")
    torch.save({"model": small_state("RawNet3")}, path)
    model = str(tmp_path / "M.model")
    import_checkpoint("voxceleb_trainer", path, model)
    console_log()
    out = eval_output(model, tiny_corpus, tmp_path / "eval", capsys, "--device", "cpu")
    assert re.search(r"^EER \d+\.\d{4}$", out, re.MULTILINE)
    program_path = str(tmp_path / "M.pt2")
    assert inference.main(["export", "--initial_model", model, "--format", "torch_export", "--out", program_path]) == 0
    run, info = exported_runner(program_path, "torch_export")
    assert info["min_samples"] == "541" and info["model"] == "RawNet3"
    network = load_embedder(model, device="cpu", calibration=None).network
    assert_export_agrees(run, lambda audio: network(torch.from_numpy(audio)))


@pytest.mark.slow
def test_vggvox_exports_down_to_its_own_shortest_input(tmp_path, one_thread):
    """VGGVox needs 0.62 s (63 frames) before its last pooling, so the export is held to that, not to 0.5 s. The
    program torch.export makes also specialises a pooled length of 1, so it runs from 0.94 s (15,040 samples) on."""
    from spknet.export import export_program, min_samples

    network = load_embedder(import_small(tmp_path, "VGGVox"), device="cpu", calibration=None).network
    program = export_program(network, {"audio_scale": "float"}, "VGGVox")
    assert min_samples(program) <= network.min_samples
    module = program.module()
    assert_export_agrees(lambda audio: module(torch.from_numpy(audio)), lambda audio: network(torch.from_numpy(audio)),
                         (15040, 16000, 37000))


def import_small(tmp_path, name: str) -> str:
    path = str(tmp_path / f"{name}.pt")
    torch.save({"model": small_state(name)}, path)
    model = str(tmp_path / f"{name}.model")
    import_checkpoint("voxceleb_trainer", path, model)
    return model
