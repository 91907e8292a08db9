"""Training throughput on the CPU: ``--nproc`` gloo processes under torchrun next to one process, same run.

Both train the same command (``--trainfunc``, ``--batch_size`` speaker groups in the *global* batch, ``--max_frames``)
for ``--epochs`` epoch(s) on a synthetic corpus (``--corpus``, built when absent with ``--speakers`` x
``--utterances`` files); the single process uses ``--nproc`` intra-op threads, each rank one, so both use the same
cores. The table gives the training time of the last epoch (from the ``INFO epoch N: ... train X s`` line of
``scores.txt``), utterances per second and the ratio.

    python -m benchmarks.bench_distributed_cpu --corpus data/synthetic
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

from spknet.data import read_train_list
from spknet.data.synthetic import make_corpus
from tests.helpers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN_SECONDS = re.compile(r"^INFO epoch (\d+):.*train ([\d.]+) s", re.M)


def train_seconds(save_path: str) -> float:
    with open(os.path.join(save_path, "result", "scores.txt")) as handle:
        found = TRAIN_SECONDS.findall(handle.read())
    if not found:
        raise RuntimeError(f"{save_path}: no training time logged")
    return float(found[-1][1])


def run(command: list, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--corpus", default="data/synthetic", help="synthetic corpus folder (built when absent)")
    add("--speakers", type=int, default=300)
    add("--utterances", type=int, default=12)
    add("--nproc", type=int, default=2)
    add("--trainfunc", default="mp_balance")
    add("--batch_size", type=int, default=32)
    add("--max_frames", type=int, default=50)
    add("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.corpus, "train_list.txt")):
        make_corpus(args.corpus, speakers=args.speakers, utterances=args.utterances, workers=os.cpu_count() or 1)
    wav = os.path.join(args.corpus, "wav")
    utterances = len(read_train_list(os.path.join(args.corpus, "train_list.txt"), wav).files)
    common = ["--model", "ResNetSE34L", "--trainfunc", args.trainfunc, "--batch_size", str(args.batch_size),
              "--max_frames", str(args.max_frames), "--eval_frames", "0", "--max_epoch", str(args.epochs),
              "--test_interval", str(args.epochs), "--nDataLoaderThread", "1", "--device", "cpu",
              "--train_list", os.path.join(args.corpus, "train_list.txt"), "--train_path", wav,
              "--test_list", os.path.join(args.corpus, "veri_test.txt"), "--test_path", wav]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    work = tempfile.mkdtemp(prefix="bench_dist_")
    try:
        single, multi = os.path.join(work, "single"), os.path.join(work, "multi")
        run([sys.executable, os.path.join(REPO, "trainSpeakerNet.py"), *common, "--save_path", single], args.nproc)
        run([torchrun, "--nproc_per_node", str(args.nproc), "--master_port", str(free_port()),
             os.path.join(REPO, "trainSpeakerNet.py"), "--distributed", *common, "--save_path", multi], 1)
        seconds = {"1 process": train_seconds(single), f"{args.nproc} processes": train_seconds(multi)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.trainfunc}, global batch {args.batch_size} groups x {args.max_frames} frames, "
          f"{utterances} utterances per epoch, last of {args.epochs} epoch(s)")
    print(f"{'run':<14}{'train s':>9}{'utt/s':>9}")
    for name, value in seconds.items():
        print(f"{name:<14}{value:>9.1f}{utterances / value:>9.1f}")
    ratio = seconds["1 process"] / seconds[f"{args.nproc} processes"]
    print(f"{args.nproc} processes / 1 process: {ratio:.2f}x")
    return {"seconds": seconds, "ratio": ratio}


if __name__ == "__main__":
    main()
