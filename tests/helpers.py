"""Shared test helpers: the repository's fixture files, importing scripts by path, and running the CLI."""

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
