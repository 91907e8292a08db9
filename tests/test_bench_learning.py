"""benchmarks/bench_learning.py at a tiny size: both arms give one finite VEER per seed; the reference is
deterministic for a seed."""

import math

import pytest

from benchmarks import bench_learning as bench
from spknet.data.synthetic import make_corpus

TINY_CORPUS = {"speakers": 16, "utterances": 4, "test_speakers": 4, "test_utterances": 4, "trials": 40,
               "min_duration": 1.0, "max_duration": 1.5, "seed": 0}
TINY_RUN = ["--epochs", "1", "--batch_size", "8", "--max_frames", "20", "--eval_frames", "0", "--device", "cpu"]


@pytest.mark.slow
def test_both_arms_give_a_veer_per_seed_and_the_reference_repeats(tmp_path):
    make_corpus(str(tmp_path / "corpus"), **TINY_CORPUS)
    corpus = ["--corpus", str(tmp_path / "corpus")]
    result = bench.main([*corpus, *TINY_RUN, "--seeds", "1,2"])
    assert result["seeds"] == [1, 2]
    for arm in ("ours", "reference"):
        veers = result[arm]["veer"]
        assert len(veers) == 2
        assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in veers), (arm, veers)
        assert math.isfinite(result[arm]["mean"]) and math.isfinite(result[arm]["spread"])
    assert result["difference"] == pytest.approx(result["ours"]["mean"] - result["reference"]["mean"])
    again = bench.main([*corpus, *TINY_RUN, "--seeds", "1", "--only", "reference"])
    assert again["reference"]["veer"] == [result["reference"]["veer"][0]]
    assert "ours" not in again
