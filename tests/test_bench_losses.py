"""benchmarks/bench_losses.py at a tiny size: the reference (the original's per-step work) agrees with our losses."""

import pytest
import torch

from benchmarks import bench_losses as bench

TINY = {"batch": 8, "classes": 50, "dim": 16}


@pytest.mark.parametrize("name", bench.LOSSES)
def test_reference_matches_ours(name):
    module = bench.make_loss(name, TINY["classes"], TINY["dim"], "cpu")
    with torch.no_grad():
        module.w.fill_(3.0)     # away from saturation, so that the gradients say something
    imbalanced = module.utterances_per_speaker == bench.IMBALANCED
    x, label = bench.make_inputs(imbalanced, TINY["batch"], TINY["classes"], TINY["dim"], "cpu", seed=1)
    diffs = bench.compare(module, x, label)
    assert abs(diffs["loss"]) > 0.1
    assert diffs["loss_diff"] < 1e-5
    assert diffs["accuracy_diff"] == 0
    assert diffs["x_grad_diff"] < 1e-5 and diffs["proxy_grad_diff"] < 1e-5


@pytest.mark.parametrize("name", ["mp", "mmp"])
def test_reference_regrouping_with_a_single_utterance_class_and_shuffled_batch(name):
    """A class seen once has no anchor (dropped by the reference, masked by ours); the order does not matter."""
    module = bench.make_loss(name, 20, 8, "cpu").double()
    label = torch.tensor([3, 7, 3, 11, 7, 5, 3, 11, 0])             # 5 and 0 appear once
    x = torch.nn.functional.normalize(torch.randn(len(label), 8, dtype=torch.float64), dim=1).requires_grad_()
    diffs = bench.compare(module, x, label)
    assert diffs["loss_diff"] < 1e-12 and diffs["x_grad_diff"] < 1e-12 and diffs["proxy_grad_diff"] < 1e-12
    assert diffs["accuracy_diff"] == 0


def test_benchmark_rows_and_table():
    rows = bench.benchmark(bench.LOSSES, "cpu", repeats=1, warmup=0, **TINY)
    assert [row.loss for row in rows] == list(bench.LOSSES)
    for row in rows:
        assert row.loss_diff < 1e-5 and row.grad_diff < 1e-5
        assert row.ours_ms > 0 and row.reference_ms > 0 and row.ratio > 0
    table = bench.format_table(rows)
    assert table.splitlines()[0].split()[:6] == ["loss", "batch", "ours", "ms", "ref", "ms"]
    assert len(table.splitlines()) == 2 + len(rows)
    assert rows[0].batch.startswith("imbalanced") and rows[2].batch == "balanced, 8x2"


def test_main_prints_device_and_table(capsys):
    assert bench.main(["--batch", "4", "--classes", "12", "--dim", "8", "--repeats", "1", "--warmup", "0",
                       "--losses", "mp_balance", "mmp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: cpu")
    assert "mp_balance" in out and "mmp" in out and "target >= 1.5x" in out


def test_batch_larger_than_classes_is_refused():
    with pytest.raises(ValueError, match="at least as many classes"):
        bench.make_inputs(False, 10, 5, 4, "cpu")
