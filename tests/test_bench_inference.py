"""benchmarks/bench_inference.py at a tiny size: every path gives a rate and the same embeddings as
``inference.py embed``'s; ``--rtf`` gives each named network's real-time factor beside WeSpeaker's."""

import math

import pytest

from benchmarks import bench_inference as bench


@pytest.mark.slow
def test_every_path_gives_a_rate_and_the_same_embeddings():
    pytest.importorskip("onnxruntime")
    result = bench.main(["--files", "5", "--lengths", "0.6,0.9", "--rounds", "1", "--nOut", "16", "--threads", "1"])
    assert set(result["arms"]) == {"inference.py embed", "per-file embed", "--eval extraction", "onnxruntime"}
    for name, arm in result["arms"].items():
        assert math.isfinite(arm["files_per_s"]) and arm["files_per_s"] > 0, name
        assert arm["cosine_distance"] < 1e-4, name
    assert result["arms"]["inference.py embed"]["ratio"] == 1.0
    assert result["export_seconds"] > 0


def test_rtf_of_named_networks_on_one_thread(capsys):
    result = bench.main(["--rtf", "VGGVox,ResNetSE34L", "--rounds", "1"])
    assert result["threads"] == 1 and list(result["rtf"]) == ["VGGVox", "ResNetSE34L"]
    assert all(math.isfinite(factor) and factor > 0 for factor in result["rtf"].values())
    out = capsys.readouterr().out
    assert "VGGVox" in out and "5-s waveform" in out


def test_wespeaker_figures_name_our_networks():
    from spknet import plugins
    assert set(bench.WESPEAKER_RTF) <= set(plugins.choices("models"))


def test_an_unknown_rtf_network_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--rtf", "NoSuchNet"])
    assert exit_info.value.code == 2
    assert "NoSuchNet" in capsys.readouterr().err
