"""Session fixtures: one tiny synthetic corpus (40 training speakers) shared by the end-to-end tests."""

import pytest

from spknet.data.synthetic import make_corpus

TINY = dict(speakers=40, utterances=6, test_speakers=8, test_utterances=6, trials=200, min_duration=2.5,
            max_duration=2.5, seed=7)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Paths of a tiny corpus: train_list, test_list, train_path, test_path."""
    corpus = make_corpus(str(tmp_path_factory.mktemp("tiny_corpus")), **TINY)
    return {key: corpus[key] for key in ("train_list", "test_list", "train_path", "test_path")}
