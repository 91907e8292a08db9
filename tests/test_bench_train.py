"""benchmarks/bench_train.py at a tiny size: every network plugin by name, its FLOP count, and our step's rate
against ResNetSE34L's and against the voxceleb_trainer-style step."""

import pytest
import torch

from benchmarks import bench_train as bench
from spknet import plugins
from spknet.errors import SpeakerNetError


def test_all_is_every_network_plugin_and_a_list_is_checked():
    assert bench.network_names("all") == plugins.choices("models")
    assert bench.network_names("VGGVox, CAMPPlus") == ["VGGVox", "CAMPPlus"]
    with pytest.raises(SpeakerNetError, match="NoSuchNet"):
        bench.network_names("ResNet34,NoSuchNet")


def test_an_unknown_network_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--networks", "NoSuchNet"])
    assert exit_info.value.code == 2
    assert "NoSuchNet" in capsys.readouterr().err


@pytest.mark.slow     # the first FlopCounterMode imports torch's dispatch machinery (slow)
def test_gflops_count_two_flops_per_multiply_add_of_a_2_s_waveform():
    linear = torch.nn.Linear(32000, 3, bias=False)
    assert bench.gflops(linear) == pytest.approx(2 * 32000 * 3 / 1e9)
    assert bench.gflops(torch.nn.Linear(16000, 3, bias=False), seconds=1.0) == pytest.approx(2 * 16000 * 3 / 1e9)


@pytest.mark.slow
def test_each_network_gets_its_row_and_the_ratio_to_resnetse34l():
    rows = bench.measure_networks(["VGGVox", "ECAPA_TDNN"], groups=2, per_group=2, frames=70, steps=1, repeats=1)
    assert list(rows) == ["VGGVox", "ECAPA_TDNN"]
    assert rows["VGGVox"]["parameters"] == 4_032_448 and rows["VGGVox"]["frontend"] == "logmel"
    assert rows["VGGVox"]["gflops"] == pytest.approx(1.07, abs=0.01)
    for row in rows.values():
        assert row["utt_per_s"] > 0 and row["ratio"] > 0
    baseline = bench.measure_networks(["ResNetSE34L"], groups=2, per_group=2, frames=70, steps=1, repeats=1)
    assert baseline["ResNetSE34L"]["ratio"] == 1.0


def test_bench_train_runs_our_step_in_bfloat16_against_the_float32_reference(capsys):
    bench.main(["--device", "cpu", "--trainfunc", "mp_balance", "--groups", "2", "--frames", "20", "--steps", "1",
                "--repeats", "1", "--mixedprec", "bf16"])
    out = capsys.readouterr().out
    assert "ours (bf16)" in out and "voxceleb_trainer-style" in out and "ratio ours / reference" in out
