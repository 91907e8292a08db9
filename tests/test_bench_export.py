"""benchmarks/bench_export.py: every network exported with its front end and checked against PyTorch."""

import pytest

from benchmarks import bench_export


def test_unknown_networks_are_named():
    with pytest.raises(SystemExit, match="unknown network.*NoSuchNet"):
        bench_export.network_names("ResNetSE34L,NoSuchNet")
    assert "RawNet3" in bench_export.network_names("all")


@pytest.mark.slow
def test_a_network_exports_with_its_kaldi_front_end_and_agrees(capsys, one_thread):
    (row,) = bench_export.main(["--networks", "ResNet18", "--lengths", "0.7,1.3"])
    assert row["frontend"] == "kaldi_fbank" and "error" not in row
    assert row["torch_export"] >= 0.99999 and row["onnx"] >= 0.99999
    assert row["min_samples"] <= 8000
    assert "| ResNet18 | kaldi_fbank |" in capsys.readouterr().out
