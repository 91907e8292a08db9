"""Shared test helpers: the repository's fixture files, importing scripts by path, running the CLI, and the small
pieces several test modules use (wav writers, the original's crop arithmetic, a fixed random source, a trainer
whose loss turns NaN). The other toolkits' code as test oracles is tests/oracles.py."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"      # files made by the original code (see its README.txt)
# One compute thread per training subprocess: its loader workers need the other core, and oversubscribing
# 2 cores makes every step several times slower.
SUBPROCESS_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def fixture_file(*parts) -> Path:
    """A file of ``tests/fixtures``; a missing one fails the test (the repository carries them all)."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path}: fixture missing from the repository")
    return path


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run ``trainSpeakerNet.py`` in a subprocess; returns the CompletedProcess (text)."""
    environment = {**os.environ, **SUBPROCESS_ENV, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "trainSpeakerNet.py"), *map(str, args)], cwd=cwd or REPO,
                          check=False, capture_output=True, text=True, timeout=timeout, env=environment)


def wait_until(condition, seconds: float) -> bool:
    """Whether ``condition()`` holds within ``seconds`` (polled every 20 ms)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def start_held(argv, epoch: int, batch: int, marker: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``trainSpeakerNet.py argv`` held by the run itself after its step on batch ``batch`` of epoch ``epoch``
    (``SPKNET_TEST_HOLD``, spknet/training/run.py); returns once the run has written ``marker`` to say it is there.
    The run waits there for a stop request (SIGINT/SIGTERM: it then saves and exits 128 + the signal) or a SIGKILL;
    the caller ends it."""
    from spknet.training.run import TEST_HOLD
    environment = {**os.environ, **SUBPROCESS_ENV, TEST_HOLD: f"{epoch}:{batch}:{marker}"}
    process = subprocess.Popen([sys.executable, str(REPO / "trainSpeakerNet.py"), *map(str, argv)],
                               stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=environment)
    if not wait_until(lambda: marker.exists() or process.poll() is not None, 600) or not marker.exists():
        process.kill()
        _, errors = process.communicate()
        pytest.fail(f"the run never reached epoch {epoch}, batch {batch} (exit {process.returncode})"
                    + (f": {errors[-2000:]}" if errors else ""))
    assert int(marker.read_text()) == process.pid
    return process


def free_port() -> int:
    """A TCP port free on this machine now, for a local MASTER_PORT (tests, benchmarks)."""
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def saved_run_checkpoint(argv, path, classes: int = 4, randomise=None):
    """A checkpoint as a training run saves it, for the model and options of command line ``argv`` (its weights as
    initialised, or changed by ``randomise(net)``): the built SpeakerNet."""
    import torch

    from spknet.checkpoints import save_checkpoint
    from spknet.model import SpeakerNet
    from spknet.training.run import run_identity
    from spknet.training.trainer import ModelTrainer
    from trainSpeakerNet import spec_from_argv

    spec = spec_from_argv(argv)
    net = SpeakerNet(spec.model, spec.training.loss(spec.training.classes or classes))
    if randomise is not None:
        randomise(net)
    trainer = ModelTrainer(net, torch.device("cpu"), spec.training)
    save_checkpoint(str(path), trainer.state_dict(), 1, 20.0, None, run_identity(spec, net.spec))
    return net


def oracle_module(package: str, name: str):
    """``package.name`` of an installed oracle package (requirements-oracles.txt) without running the package's own
    ``__init__.py``, which imports dependencies the tests do not install (wespeaker's CLI: silero-vad, kaldiio, ...).
    The package is registered as a namespace of its folder, with a spec, so later imports and ``find_spec`` of its
    other modules work in the same process. Skips the test when the package is not installed."""
    import importlib.machinery
    import importlib.util
    import types

    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        if spec is None:
            pytest.skip(f"{package} is not installed (pip install --no-deps -r requirements-oracles.txt)")
        folder = list(spec.submodule_search_locations)
        stand_in = types.ModuleType(package)
        stand_in.__path__ = folder
        stand_in.__spec__ = importlib.machinery.ModuleSpec(package, None, is_package=True)
        stand_in.__spec__.submodule_search_locations = folder
        sys.modules[package] = stand_in
    return importlib.import_module(f"{package}.{name}")


def forget_lazy_modules(prefix: str) -> None:
    """Drop the lazy placeholders ``prefix`` registered in ``sys.modules`` (speechbrain registers modules that are
    imported on first touch and fail without its optional dependencies, when hypothesis or inspect walks
    ``sys.modules``), so a test module that imports it leaves none behind for the tests after it; the modules it
    really imported stay."""
    import types
    for name, module in list(sys.modules.items()):
        if (name == prefix or name.startswith(prefix + ".")) and type(module) is not types.ModuleType:
            del sys.modules[name]


def eval_output(model, corpus: dict, save_path, capsys, *flags) -> str:
    """What ``trainSpeakerNet.py --eval`` prints (in this process) scoring checkpoint ``model`` on ``corpus``'s test
    list, whole files (``--eval_frames 0``), with ``flags`` added; the run must succeed."""
    import trainSpeakerNet

    capsys.readouterr()
    assert trainSpeakerNet.main(["--eval", "--initial_model", str(model), "--eval_frames", "0", "--nDataLoaderThread",
                                 "0", "--test_list", corpus["test_list"], "--test_path", corpus["test_path"],
                                 "--save_path", str(save_path), *flags]) == 0
    return capsys.readouterr().out


def relative(got, reference) -> float:
    """The largest relative difference of rows: ``|got - reference| / |reference|``."""
    return float(((got - reference).norm(dim=-1) / reference.norm(dim=-1)).max())


def exported_runner(path: str, fmt: str):
    """``(run, metadata)`` of an exported file (``onnx`` or ``torch_export``): ``run`` takes a (batch, samples)
    float32 array and returns the (batch, dim) embeddings; ``metadata`` is what the file records."""
    import torch

    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return (lambda waves: torch.from_numpy(session.run(["embedding"], {"waveform": waves})[0]),
                session.get_modelmeta().custom_metadata_map)
    from spknet.export import load_program

    module, metadata = load_program(path)
    return (lambda waves: module(torch.from_numpy(waves)).detach()), metadata


def assert_export_agrees(run, reference, lengths=(8000, 16000, 37000), batch: int = 2, least_cosine: float = 0.99999,
                         most_relative: float | None = None) -> None:
    """An export (``run``) computes ``reference``'s embeddings: both take (batch, samples) float32 noise in [-1, 1] of
    each length (seeded by it); every row's cosine is at least ``least_cosine`` (and its :func:`relative` difference
    at most ``most_relative``)."""
    import numpy as np
    import torch

    for samples in lengths:
        waves = np.clip(np.random.default_rng(samples).standard_normal((batch, samples)) * 0.3, -1, 1)
        waves = waves.astype(np.float32)
        with torch.no_grad():
            got, expected = torch.as_tensor(run(waves)), torch.as_tensor(reference(waves))
        cosine = float(torch.nn.functional.cosine_similarity(got, expected, dim=-1).min())
        assert cosine >= least_cosine, f"{samples} samples: cosine {cosine:.8f}"
        if most_relative is not None:
            assert relative(got, expected) <= most_relative, f"{samples} samples: {relative(got, expected):.2e}"


def write_wav(path, samples, rate: int = 16000, channels: int = 1) -> str:
    """A 16-bit wav of ``samples`` (cast to int16 as they are), the same samples in each of ``channels``."""
    import numpy as np
    import soundfile

    data = np.asarray(samples, dtype=np.int16)
    if channels > 1:
        data = np.stack([data] * channels, axis=1)
    soundfile.write(path, data, rate, subtype="PCM_16")
    return str(path)


def write_audio(path, samples, subtype: str = "PCM_16", rate: int = 16000) -> str:
    """A mono file of ``samples`` (its folders made): 16-bit samples clipped to int16's range, or ``samples`` as they
    are for another ``subtype`` (``FLOAT``)."""
    import numpy as np
    import soundfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.clip(samples, -32767, 32767).astype(np.int16) if subtype == "PCM_16" else samples
    soundfile.write(path, data, rate, subtype=subtype)
    return str(path)


def make_folders(root, seed=0):
    """musan/{noise,speech,music} (lengths from 0.3 s, shorter than a crop, to 4 s) and rirs/ with a delta RIR."""
    import numpy as np

    rng = np.random.default_rng(seed)
    musan, rirs = root / "musan", root / "rirs"
    for category, count in (("noise", 3), ("speech", 8), ("music", 2)):
        for index in range(count):
            seconds = 0.3 if index == 0 else rng.uniform(1.0, 4.0)
            write_audio(musan / category / "src" / f"{category}{index}" / "00000.wav",
                        rng.standard_normal(int(seconds * 16000)) * rng.uniform(500, 5000))
    decay = np.exp(-np.arange(3000) / 400.0)
    write_audio(rirs / "medium" / "Room001" / "decay.wav", rng.standard_normal(3000) * decay * 0.5, subtype="FLOAT")
    delta = np.zeros(500)
    delta[0] = 0.5
    write_audio(root / "delta" / "delta.wav", delta, subtype="FLOAT")
    return str(musan), str(rirs), str(root / "delta")


def original_loadwav(audio, max_frames, evalmode, num_eval=10, random_value=0.0):
    """The original's algorithm on an in-memory int16 array (reference for the crop arithmetic)."""
    import numpy as np

    max_audio = max_frames * 160 + 240
    audio = audio.astype(np.float64)
    if audio.shape[0] <= max_audio:
        shortage = int(np.floor((max_audio - audio.shape[0] + 1) / 2))
        audio = np.pad(audio, (shortage, shortage), "constant", constant_values=0)
    if evalmode:
        starts = np.linspace(0, audio.shape[0] - max_audio, num=num_eval)
    else:
        starts = np.array([np.int64(random_value * (audio.shape[0] - max_audio))])
    if evalmode and max_frames == 0:
        return audio[None]
    return np.stack([audio[int(s):int(s) + max_audio] for s in starts])


class FixedRandom:
    """A random source whose ``random()`` is always ``value``: the crop a loader draws, chosen."""

    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


class FakeLoader(list):
    """Batches without audio."""


def nan_trainer(bad_steps):
    """A ModelTrainer of a small ResNetSE34L (mp_balance, 4 speakers, SGD at lr 0.1) whose loss is NaN on the steps
    numbered (from 1) in ``bad_steps``, and a :class:`FakeLoader` of 8 batches for it."""
    import torch

    from spknet.model import SpeakerNet
    from spknet.specs import TrainingSpec
    from spknet.training.trainer import ModelTrainer

    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="mp_balance", nOut=16, nSpeakers=4)
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="plateau", lr=0.1))
    real_forward = net.forward
    calls = {"n": 0}

    def forward(waves, labels, groups):
        loss, accuracy = real_forward(waves, labels, groups)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in bad_steps else loss), accuracy

    net.forward = forward
    batch = (torch.randn(8, 1000) * 1000, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([2, 2, 2, 2]))
    return trainer, FakeLoader([batch] * 8)
