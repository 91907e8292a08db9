"""The training recipe's parts, measured: LR warm-up, the margin schedule and checkpoint averaging, each against
the same run without it (issue "The backbones and training recipe", item 6).

Every arm trains ``trainSpeakerNet.main`` in this process with the same network, loss, data, crops, batch and
seed; all but ``constant`` share the LR decay (``warmup_cosine`` down to ``--final_lr`` at the last iteration).
They differ only in

- ``constant``:       no decay at all (``steplr`` with factor 1: the bench_learning table's schedule), the arm
                      where averaging has the most to smooth;
- ``plain``:          no warm-up, the full margin from the first step;
- ``warmup``:         a linear LR warm-up over ``--warmup_epochs``;
- ``warmup_margin``:  the warm-up and the margin schedule (margin 0 until ``--margin_start_epoch``, then rising
                      over ``--margin_rampup_epochs``), for a loss with a margin.

Every epoch is evaluated and saved (``--test_interval 1``), so each run gives its last epoch's VEER (read from
``result/scores.txt``) and the VEER of the mean of its last ``--average_last`` checkpoints
(``spknet.checkpoints.average_checkpoints``, scored by ``spknet.evaluation.runner.evaluate_checkpoint`` with the
same lists and options). The corpus is synthetic unless ``--corpus DIR`` names one (``dataprep.py --synthetic`` layout).

    python -m benchmarks.bench_recipe --trainfunc aamsoftmax --epochs 30 --lr 0.05 --seeds 1,2,3
    python -m benchmarks.bench_recipe --trainfunc mp_balance --arms plain,warmup --ours_args "--model ECAPA_TDNN"
"""

import argparse
import math
import os
import shlex
import statistics
import sys
import tempfile

import torch

import trainSpeakerNet
from benchmarks.bench_learning import add_corpus_and_seeds, comma_list, corpus_for, final_veer
from spknet import checkpoints, plugins
from spknet.evaluation.runner import evaluate_checkpoint
from spknet.margin import has_margin

ARMS = ("constant", "plain", "warmup", "warmup_margin")
DEFAULT_ARMS = ARMS[1:]


def arm_flags(arm: str, options) -> list[str]:
    """The arm's schedule flags: what makes it differ from the others."""
    if arm == "constant":
        return ["--scheduler", "steplr", "--lr_decay", "1"]
    flags = ["--scheduler", "warmup_cosine", "--final_lr", options.final_lr]
    if arm in ("warmup", "warmup_margin"):
        flags += ["--warmup_epochs", options.warmup_epochs]
    if arm == "warmup_margin":
        flags += ["--margin_start_epoch", options.margin_start_epoch,
                  "--margin_rampup_epochs", options.margin_rampup_epochs]
    return [str(flag) for flag in flags]


def common_argv(options, paths: dict, seed: int, save_path: str) -> list[str]:
    """What every arm shares: the lists, the budget, the LR, the seed (and ``--ours_args``)."""
    argv = ["--model", options.model, "--trainfunc", options.trainfunc,
            "--train_list", paths["train_list"], "--train_path", paths["wav"],
            "--test_list", paths["test_list"], "--test_path", paths["wav"], "--save_path", save_path,
            "--max_epoch", options.epochs, "--batch_size", options.batch_size, "--max_frames", options.max_frames,
            "--eval_frames", options.eval_frames, "--optimizer", "sgd", "--lr", options.lr, "--test_interval", 1,
            "--nDataLoaderThread", 0, "--seed", seed, "--device", options.device]
    return [str(arg) for arg in argv] + shlex.split(options.ours_args)


def averaged_veer(options, argv: list[str], save_path: str) -> float:
    """The VEER of the mean of the run's last ``--average_last`` epoch checkpoints, scored as the trainer
    scores its epochs."""
    model_dir = os.path.join(save_path, "model")
    found = checkpoints.epoch_checkpoints(model_dir)[-options.average_last:]
    averaged = os.path.join(model_dir, f"average_last{options.average_last}.model")
    checkpoints.save_averaged(averaged, checkpoints.average_checkpoints([path for _, path in found]))
    spec = trainSpeakerNet.spec_from_argv(argv + ["--eval"])
    outcome, _, _ = evaluate_checkpoint(averaged, spec.evaluation, spec.data, torch.device("cpu"))
    return float(outcome.tests[0].metrics.eer)


def run_arm(options, paths: dict, arm: str, seed: int, workdir: str) -> tuple[float, float]:
    """(last epoch's VEER, averaged VEER) of one arm and seed."""
    save_path = os.path.join(workdir, f"{arm}_seed{seed}")
    argv = common_argv(options, paths, seed, save_path) + arm_flags(arm, options)
    code = trainSpeakerNet.main(argv)
    if code:
        raise RuntimeError(f"trainSpeakerNet exited with {code} ({arm}, seed {seed})")
    return final_veer(save_path), averaged_veer(options, argv, save_path)


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.fmean(values):6.2f} +- {spread:5.2f}"


def report(options, results: dict) -> dict:
    print(f"\n{options.model}, {options.trainfunc}: {options.epochs} epochs, {options.max_frames}-frame crops, "
          f"SGD {options.lr:g} (-> {options.final_lr:g} along a cosine but in arm constant), average of the last "
          f"{options.average_last}, seeds {','.join(map(str, options.seeds))}")
    print(f"{'arm':<14} {'last epoch VEER':>17} {'averaged VEER':>17}   per seed (last / averaged)")
    out = {"seeds": options.seeds}
    for arm, runs in results.items():
        last, averaged = [run[0] for run in runs], [run[1] for run in runs]
        seeds = "  ".join(f"{a:.2f}/{b:.2f}" for a, b in runs)
        print(f"{arm:<14} {summary(last):>17} {summary(averaged):>17}   {seeds}")
        out[arm] = {"last": last, "averaged": averaged,
                    "last_mean": statistics.fmean(last), "averaged_mean": statistics.fmean(averaged)}
    return out


def chosen_arms(options) -> list[str]:
    unknown = [arm for arm in options.arms if arm not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)} (choose from {', '.join(ARMS)})")
    if "warmup_margin" in options.arms and not has_margin(plugins.load("loss", options.trainfunc)):
        print(f"--trainfunc {options.trainfunc} has no margin: arm warmup_margin left out", file=sys.stderr)
        return [arm for arm in options.arms if arm != "warmup_margin"]
    return options.arms


def run_all(options, paths: dict, workdir: str) -> dict:
    results = {}
    for seed in options.seeds:
        for arm in options.arms:
            results.setdefault(arm, []).append(run_arm(options, paths, arm, seed, workdir))
            print(f"seed {seed} {arm}: last {results[arm][-1][0]:.4f}, averaged {results[arm][-1][1]:.4f}")
    return report(options, results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_corpus_and_seeds(parser)
    parser.add_argument("--arms", type=comma_list(str), default=list(DEFAULT_ARMS),
                        help=f"any of {', '.join(ARMS)} (default: all but constant)")
    parser.add_argument("--model", default="ResNetSE34L")
    parser.add_argument("--trainfunc", default="aamsoftmax")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=24, help="speaker groups per batch")
    parser.add_argument("--max_frames", type=int, default=100)
    parser.add_argument("--eval_frames", type=int, default=0, help="0 = whole file")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--final_lr", type=float, default=0.0005)
    parser.add_argument("--warmup_epochs", type=float, default=3)
    parser.add_argument("--margin_start_epoch", type=int, default=4)
    parser.add_argument("--margin_rampup_epochs", type=float, default=6)
    parser.add_argument("--average_last", type=int, default=5)
    parser.add_argument("--ours_args", default="", help="extra trainSpeakerNet flags for every arm (one string)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv=None, corpus_config: dict | None = None) -> dict:
    """Run the arms; ``corpus_config`` overrides fields of the small synthetic corpus (without ``--corpus``)."""
    options = build_parser().parse_args(argv)
    if options.average_last < 1 or options.average_last > options.epochs:
        raise SystemExit(f"--average_last {options.average_last}: must lie between 1 and --epochs {options.epochs}")
    options.arms = chosen_arms(options)         # before the corpus is made
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as workdir:
        return run_all(options, corpus_for(options.corpus, workdir, corpus_config), workdir)


if __name__ == "__main__":
    main()
