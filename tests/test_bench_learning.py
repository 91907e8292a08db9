"""benchmarks/bench_learning.py at a tiny size: both arms give one finite VEER per seed; the reference is
deterministic for a seed; the sweep of networks and losses gives its table, resumes from its JSON and refuses bad
input before training."""

import json
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


def sweep_args(tmp_path, networks: str, *extra: str) -> list[str]:
    return ["--corpus", str(tmp_path / "corpus"), *TINY_RUN, "--seeds", "1", "--networks", networks,
            "--results", str(tmp_path / "runs.json"), *extra]


@pytest.mark.slow
def test_the_sweep_gives_a_table_of_networks_and_losses_and_resumes_from_its_json(tmp_path, monkeypatch):
    make_corpus(str(tmp_path / "corpus"), **TINY_CORPUS)
    argv = sweep_args(tmp_path, "ResNetSE34L,ReDimNetB0", "--losses", "mp_balance,aamsoftmax")
    result = bench.main(argv)
    assert [(row["network"], row["loss"]) for row in result["rows"]] == [
        ("ResNetSE34L", "mp_balance"), ("ResNetSE34L", "aamsoftmax"),
        ("ReDimNetB0", "mp_balance"), ("ReDimNetB0", "aamsoftmax")]
    for row in result["rows"]:
        assert len(row["veer"]) == 1 and math.isfinite(row["veer"][0]) and 0.0 <= row["veer"][0] <= 100.0, row
        assert row["mean"] == row["veer"][0] and math.isnan(row["spread"]) and row["seconds"] > 0
    params = {row["network"]: row["params"] for row in result["rows"]}
    assert params == {"ResNetSE34L": 1_437_078, "ReDimNetB0": 1_001_851}      # docs/networks.md's counts
    lines = result["table"].splitlines()
    assert lines[0] == "| network | loss | params | VEER seed 1 | mean +- sd | s per run |"
    assert len(lines) == 2 + 4 and lines[2].startswith("| ResNetSE34L | mp_balance | 1,437,078 | ")
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert len(saved["runs"]) == 4 and saved["settings"] == result["settings"]

    def no_training(argv):
        raise AssertionError(f"trained again: {argv}")

    monkeypatch.setattr(bench.trainSpeakerNet, "main", no_training)
    again = bench.main(argv)
    assert again["table"] == result["table"]


def test_the_sweep_refuses_the_reference_arm_and_losses_without_networks(tmp_path, capsys):
    for argv in (sweep_args(tmp_path, "ResNetSE34L", "--only", "both"), ["--losses", "mp_balance"]):
        with pytest.raises(SystemExit) as stop:
            bench.main(argv)
        assert stop.value.code == 2
    assert "--networks runs our trainer only" in capsys.readouterr().err


def test_the_sweep_refuses_crops_a_network_cannot_take_before_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "corpus" / "wav").mkdir(parents=True)          # the check reads no audio: empty lists will do
    for name in ("train_list.txt", "veri_test.txt"):
        (tmp_path / "corpus" / name).write_text("")
    monkeypatch.setattr(bench.trainSpeakerNet, "main", lambda argv: pytest.fail("trained"))
    with pytest.raises(SystemExit) as stop:                     # VGGVox's poolings take 63 frames
        bench.main(sweep_args(tmp_path, "ResNetSE34L,VGGVox"))
    assert stop.value.code == 2
    assert "VGGVox takes crops of at least 10320 samples; --max_frames 20 crops 3440 (--max_frames 63" in (
        capsys.readouterr().err)
    assert not (tmp_path / "runs.json").exists()


def test_a_results_file_of_other_settings_is_refused(tmp_path, capsys):
    settings = bench.sweep_settings(bench.build_parser().parse_args(sweep_args(tmp_path, "ResNetSE34L")), None)
    bench.save_runs(str(tmp_path / "runs.json"), {**settings, "epochs": 7}, [])
    with pytest.raises(SystemExit) as stop:
        bench.main(sweep_args(tmp_path, "ResNetSE34L"))
    assert stop.value.code == 2
    assert "holds runs of other settings (epochs 7 there, 1 here)" in capsys.readouterr().err
