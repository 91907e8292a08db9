#!/usr/bin/env python3
"""Tar shards next to files (issue "Data at VoxCeleb2 scale", item 1): how close the shard stream's batches are to
the file sampler's, and whether training from shards learns as well.

(1) **batches**: over one epoch of a synthetic corpus, the distinct speakers per batch and the utterances seen per
    speaker (mean/min/max) of :class:`~spknet.data.sampler.GroupBatchSampler` (files) and of
    :class:`~spknet.data.shards.ShardStream` (shards; the batches' speakers only, nothing is cropped).
(2) **learning**: ``trainSpeakerNet.py`` from files and from the same utterances as shards, ``--seeds`` seeds
    each, same flags and budget, one run at a time (1 thread each); the final VEER of each run and mean +- sd.

    python -m benchmarks.bench_shards [--speakers 60 --utterances 8 --epochs 12 --seeds 3 --batch_size 24]

The learning arm is bench_learning.py's setting (its corpus, ResNetSE34L, mp_balance, SGD 0.2 constant, 24 groups
of 2, 1-s crops, whole test files): about 70 s a run alone on 2 cores.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np

from spknet.data import GroupBatchSampler, read_train_list
from spknet.data.shards import ShardStream, make_shards, resolve_shards
from spknet.data.synthetic import make_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VEER = re.compile(r"VEER (\d+\.\d+)")


class SpeakerStream(ShardStream):
    """The stream's batches as the speakers of their groups and the group sizes (no audio decoded)."""

    def _batch(self, groups):
        return [(utterances[0].speaker, len(utterances)) for utterances, _ in groups]


def batch_stats(batches: list[list[tuple[str, int]]], speakers: list[str]) -> dict:
    """Distinct speakers per batch (mean, min) and utterances per speaker in the epoch (mean, min, max)."""
    distinct = [len({speaker for speaker, _ in batch}) / len(batch) for batch in batches]
    seen = Counter()
    for batch in batches:
        for speaker, size in batch:
            seen[speaker] += size
    counts = [seen.get(speaker, 0) for speaker in speakers]
    return {"batches": len(batches), "distinct": f"{100 * np.mean(distinct):.1f}% (min {100 * min(distinct):.0f}%)",
            "utt/spk mean": f"{np.mean(counts):.2f}", "min": min(counts), "max": max(counts),
            "groups of 3": f"{np.mean([size == 3 for batch in batches for _, size in batch]):.2f}"}


def compare_batches(corpus: dict, shard_dir: str, batch_size: int, group_sizes: tuple, epochs: int) -> None:
    listed = read_train_list(corpus["train_list"], corpus["train_path"])
    shards = resolve_shards(os.path.join(shard_dir, "manifest.json"))
    print(f"\n(1) batches: {len(listed.files)} utterances of {len(listed.speakers)} speakers, batch {batch_size} "
          f"groups of {group_sizes}")
    for epoch in range(1, epochs + 1):
        sampler = GroupBatchSampler(listed.labels, group_sizes, batch_size, 100, seed=epoch)
        files = [[(listed.speakers[group.label], len(group.files)) for group in batch] for batch in sampler.batches()]
        stream = SpeakerStream(shards, group_sizes, batch_size, 20, 100, seed=epoch)
        streamed = list(stream)
        for name, batches in (("files", files), ("shards", streamed)):
            print(f"  epoch {epoch} {name:6s}: {batch_stats(batches, listed.speakers)}")


def train(corpus: dict, save_path: str, seed: int, data_flags: list[str], epochs: int, batch_size: int) -> float:
    command = [sys.executable, os.path.join(ROOT, "trainSpeakerNet.py"), *data_flags,
               "--test_list", corpus["test_list"], "--test_path", corpus["test_path"], "--model", "ResNetSE34L",
               "--trainfunc", "mp_balance", "--max_frames", "100", "--eval_frames", "0", "--batch_size",
               str(batch_size), "--max_epoch", str(epochs), "--test_interval", str(epochs), "--nDataLoaderThread", "0",
               "--seed", str(seed), "--save_path", save_path, "--device", "cpu", "--optimizer", "sgd", "--lr", "0.2",
               "--scheduler", "steplr", "--lr_decay", "1.0"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(save_path, "result", "scores.txt"), encoding="utf-8") as handle:
        return float(VEER.findall(handle.read())[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=60)
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=24)
    parser.add_argument("--shard_size", type=int, default=100)
    parser.add_argument("--skip_training", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        corpus = make_corpus(os.path.join(folder, "corpus"), speakers=args.speakers, utterances=args.utterances,
                             test_speakers=12, test_utterances=8, trials=600, seed=0)
        shard_dir = os.path.join(folder, "shards")
        make_shards(corpus["train_list"], corpus["train_path"], shard_dir, args.shard_size)
        for sizes in ((2,), (2, 3)):
            compare_batches(corpus, shard_dir, args.batch_size, sizes, epochs=2)
        if args.skip_training:
            return 0
        arms = {"files": ["--train_list", corpus["train_list"], "--train_path", corpus["train_path"]],
                "shards": ["--train_shards", os.path.join(shard_dir, "manifest.json")]}
        results = {arm: [] for arm in arms}
        print(f"\n(2) learning: ResNetSE34L mp_balance, SGD 0.2 constant, {args.epochs} epochs, batch "
              f"{args.batch_size} groups of 2, 1-s crops, whole test files")
        for seed in range(1, args.seeds + 1):
            for arm, flags in arms.items():
                eer = train(corpus, os.path.join(folder, f"{arm}{seed}"), seed, flags, args.epochs, args.batch_size)
                results[arm].append(eer)
                print(f"  seed {seed} {arm:6s}: VEER {eer:.2f}", flush=True)
        print("\n| data | " + " | ".join(f"seed {seed}" for seed in range(1, args.seeds + 1)) + " | mean +- sd |")
        print("|---" * (args.seeds + 2) + "|")
        for arm, eers in results.items():
            spread = statistics.stdev(eers) if len(eers) > 1 else 0.0
            print(f"| {arm} | " + " | ".join(f"{eer:.2f}" for eer in eers) +
                  f" | {statistics.mean(eers):.2f} +- {spread:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
