"""benchmarks/bench_inference.py at a tiny size: every path gives a rate and the same embeddings as
``inference.py embed``'s."""

import math

import pytest

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_every_path_gives_a_rate_and_the_same_embeddings():
    from benchmarks import bench_inference as bench  # after the importorskip: it exports to ONNX
    result = bench.main(["--files", "5", "--lengths", "0.6,0.9", "--rounds", "1", "--nOut", "16", "--threads", "1"])
    assert set(result["arms"]) == {"inference.py embed", "per-file embed", "--eval extraction", "onnxruntime"}
    for name, arm in result["arms"].items():
        assert math.isfinite(arm["files_per_s"]) and arm["files_per_s"] > 0, name
        assert arm["cosine_distance"] < 1e-4, name
    assert result["arms"]["inference.py embed"]["ratio"] == 1.0
    assert result["export_seconds"] > 0
