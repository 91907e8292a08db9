"""Session fixtures: one tiny synthetic corpus (40 training speakers) shared by the end-to-end tests."""

import logging
import os

import pytest
import torch

from spknet import logs
from spknet.data.synthetic import make_corpus

# Under pytest-xdist every worker shares the cores with the others: one intra-op thread in each worker and in the
# processes its tests start, as the one_thread fixture does for one test. Two OpenMP threads per worker on two cores
# mostly wait for each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

TINY = dict(speakers=40, utterances=6, test_speakers=8, test_utterances=6, trials=200, min_duration=2.5,
            max_duration=2.5, seed=7)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Paths of a tiny corpus: train_list, test_list, train_path, test_path."""
    corpus = make_corpus(str(tmp_path_factory.mktemp("tiny_corpus")), **TINY)
    return {key: corpus[key] for key in ("train_list", "test_list", "train_path", "test_path")}


@pytest.fixture()
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine a second OpenMP thread mostly waits for a core
    and slows small forward passes down many times, and in-process training leaves the other core to the loader
    workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def logged(caplog, monkeypatch):
    """caplog with the ``speakernet`` logger's records, whatever console handlers an earlier CLI run set up."""
    monkeypatch.setattr(logs.log, "propagate", True)
    caplog.set_level(logging.INFO, logger=logs.log.name)
    return caplog


@pytest.fixture()
def console_log():
    """``console_log()`` in a test gives the logger the CLI's console handlers (:func:`spknet.logs.setup`) on the
    test's own stdout and stderr; its previous handlers, level and propagation are restored afterwards."""
    handlers, propagate, level = list(logs.log.handlers), logs.log.propagate, logs.log.level
    yield logs.setup
    for handler in list(logs.log.handlers):
        logs.log.removeHandler(handler)
    for handler in handlers:
        logs.log.addHandler(handler)
    logs.log.propagate = propagate
    logs.log.setLevel(level)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """An untrained ResNetSE34L (nOut 16, mp_balance, 40 classes) saved as the original saves it: a flat state
    dict."""
    import torch

    from spknet.model import SpeakerNet
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("model") / "random.model"
    torch.save(SpeakerNet.build("ResNetSE34L", "mp_balance", nOut=16, nSpeakers=40).state_dict(), path)
    return path
