"""benchmarks/bench_loader.py: the per-worker CPU and read accounting, and every arm of its formats sections."""

import re
import time

import pytest
import torch

from benchmarks import bench_loader as bench

BURN_SECONDS = 0.05
READ_BYTES = 200_000


class Burner(torch.utils.data.Dataset):
    """Items of two 'crops' that each cost the worker ``BURN_SECONDS`` of CPU and read ``READ_BYTES`` of a file."""

    def __init__(self, path):
        self.path = path

    def __getitem__(self, index):
        with open(self.path, "rb") as handle:
            handle.read()
        until = time.process_time() + BURN_SECONDS
        while time.process_time() < until:
            pass
        return (torch.zeros(2, 4),)

    def __len__(self):
        return 4


def test_timed_epoch_counts_the_workers_cpu_and_reads(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * READ_BYTES)
    others = bench.worker_pids()
    loader = torch.utils.data.DataLoader(Burner(path), batch_size=None, num_workers=1)
    crops, wall, spent = bench.timed_epoch(loader, others)
    assert crops == 8 and wall > 0
    cpu_ms_per_crop = 1000 * spent[0] / crops
    assert 0.8 * 1000 * BURN_SECONDS / 2 <= cpu_ms_per_crop <= 3 * 1000 * BURN_SECONDS / 2
    assert 4 * READ_BYTES <= spent[1] <= 4 * READ_BYTES + 2_000_000      # rchar: the four reads, and little else


def test_cores_per_gpu_is_crops_needed_over_crops_per_core():
    assert bench.gpu_cores(cpu_ms=10.0, crops_per_s=1000.0) == pytest.approx(10.0)
    assert bench.gpu_cores(cpu_ms=2.5, crops_per_s=400.0) == pytest.approx(1.0)


ROW = re.compile(r"^(?P<source>[a-z0-9 ]+?)\s+(?P<cache>warm|cold)\s+(?P<augment>yes|no)\s+(?P<numbers>[\d. ]+)$")


@pytest.mark.slow
def test_bench_loader_prints_every_format_arm_and_the_cores_per_gpu(capsys):
    bench.main(["--sections", "de", "--format_speakers", "6", "--format_utterances", "2", "--durations", "4", "5",
                "--format_frames", "100", "--format_batch", "3", "--shard_size", "4", "--format_seconds", "0.2",
                "--copies", "2", "--gpu_steps_per_s", "2"])
    output = capsys.readouterr().out
    arms = {}
    for line in output.splitlines():
        match = ROW.match(line)
        if match:
            numbers = [float(value) for value in match["numbers"].split()]
            arms[match["source"], match["cache"], match["augment"]] = numbers
    expected = {(source, cache, augment) for source in bench.SOURCES for cache in ("warm", "cold")
                for augment in ("yes", "no")}
    assert set(arms) == expected
    for source, cache, augment in expected:
        crops_per_s, cpu_ms, read_kib, _ = arms[source, cache, augment]
        assert crops_per_s > 0 and cpu_ms >= 0 and read_kib > 0      # CPU time comes in 10-ms ticks
    assert sum(numbers[1] for numbers in arms.values()) > 0
    # a shard is read whole; a wav crop of 100 frames reads about its 32 KiB
    assert arms["wav files", "warm", "no"][2] < arms["wav shards", "warm", "no"][2]
    assert "at 2 steps/s = 800 crops/s" in output
    for source in bench.SOURCES:
        cores = re.search(rf"^{source}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", output, re.MULTILINE)
        assert cores is not None, source
        warm = float(cores[1])
        assert warm == pytest.approx(800 * arms[source, "warm", "no"][1] / 1000, rel=0.05, abs=0.06)
    assert output.count("(target >= ") == 4 and "VoxCeleb2's m4a feeding one GPU" in output
