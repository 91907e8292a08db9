"""Does fine-tuning help? Pre-train, fine-tune and train from scratch on the synthetic corpus, over several seeds
(issue "From a trained model to your own speakers", item 2; the tables in docs/training.md come from here).

The corpus's training speakers are split in two halves by sorted name: **A** (the first) and **B** (the other).

1. **New speakers.** ``pre``: trained from scratch on A for the full budget. ``ft``: ``pre``'s network fine-tuned
   on B (a fresh loss head, B's speakers) for a short budget and a longer one; ``scratch``: B from scratch, read at
   the same short budget and at the full one. Fine-tuning variants, each for the short budget: a 4x smaller
   learning rate, the network frozen for the first epoch (``--freeze_epochs 1``), the network's learning rate
   scaled by 0.1 (``--network_lr_scale 0.1``), another loss (AAM-softmax), some of A's utterances mixed into B, and
   the last two together.
2. **A channel never heard.** B and the test files through a telephone channel (8 kHz, 300-3,400 Hz, G.711 mu-law:
   :mod:`spknet.data.telephone`). ``pre`` scored on it before any fine-tuning; ``tel_ft``: ``pre`` fine-tuned on
   B's telephone copy for the short budget, a longer one and the full one, ``tel_scratch``: B's telephone copy from
   scratch; the variants as above; fine-tuned models also scored back on the clean test list (what fine-tuning
   cost on the channel it came from).

Every run is the quickstart's configuration (``configs/quickstart.yaml``: ResNetSE34L + SAP, mp_balance, Adam at
0.002 decayed by 0.8 every 5 epochs, 0.5-s crops, whole-file scoring) with ``--max_epoch`` and the list changed;
the test speakers are the corpus's held-out ones. Budgets are epochs over the run's own list (B: half of the
corpus's utterances). A run already finished under ``--workdir`` is read, not repeated, so an interrupted sweep
resumes, and one seed per process can run beside another.

    python -m benchmarks.bench_finetune --corpus data/synthetic --workdir exps/finetune prepare
    python -m benchmarks.bench_finetune --corpus data/synthetic --workdir exps/finetune run --seeds 1,2,3
    python -m benchmarks.bench_finetune --corpus data/synthetic --workdir exps/finetune report
"""

import argparse
import json
import os
import re
import shlex

import torch

import trainSpeakerNet
from benchmarks.bench_learning import comma_list, summary
from spknet.atomic import write_text
from spknet.data.lists import read_train_list
from spknet.data.telephone import telephone_copy
from spknet.evaluation.trials import read_trial_list

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart.yaml")
CLEAN, TELEPHONE = "clean", "tel"
MIX_PER_SPEAKER = 3             # of each A speaker's utterances, mixed into B ("mix some original data in")
IT_LINE = re.compile(r"^IT (\d+),.*VEER (\d+\.\d+)")


# ------------------------------------------------------------------------------------------------------------
# lists
# ------------------------------------------------------------------------------------------------------------

def read_pairs(path: str) -> tuple[list[list[str]], list[str]]:
    """A training list's ``[speaker, relative path]`` rows (read by the trainer's reader) and its speakers, sorted."""
    train = read_train_list(path, "")
    return [[train.speakers[label], file] for file, label in zip(train.files, train.labels)], train.speakers


def split_speakers(speakers: list[str]) -> tuple[set, set]:
    half = len(speakers) // 2
    return set(speakers[:half]), set(speakers[half:])


def mixed_in(train: list[list[str]], speakers: set) -> list[list[str]]:
    """The first MIX_PER_SPEAKER utterances (list order) of each speaker of ``speakers``."""
    taken: dict[str, int] = {}
    chosen = []
    for speaker, path in train:
        if speaker in speakers and taken.get(speaker, 0) < MIX_PER_SPEAKER:
            taken[speaker] = taken.get(speaker, 0) + 1
            chosen.append([speaker, path])
    return chosen


def write_list(path: str, rows) -> None:
    write_text(path, "".join(" ".join(row) + "\n" for row in rows))


def prepare(corpus: str, workdir: str) -> None:
    """The lists (paths under ``workdir/root``: ``clean/`` the corpus, ``tel/`` its telephone copy) and the
    telephone copy of B's and the test list's files."""
    train, speakers = read_pairs(os.path.join(corpus, "train_list.txt"))
    trials = read_trial_list(os.path.join(corpus, "veri_test.txt"))
    first, second = split_speakers(speakers)
    half_b = [[speaker, path] for speaker, path in train if speaker in second]
    test_files = sorted({path for trial in trials for path in (trial.enroll, trial.test)})
    root = os.path.join(workdir, "root")
    os.makedirs(root, exist_ok=True)
    if not os.path.islink(os.path.join(root, CLEAN)):
        os.symlink(os.path.abspath(os.path.join(corpus, "wav")), os.path.join(root, CLEAN))
    written = telephone_copy(os.path.join(corpus, "wav"), [path for _, path in half_b] + test_files,
                             os.path.join(root, TELEPHONE))
    print(f"telephone copy: {written} files written under {os.path.join(root, TELEPHONE)}")

    def under(channel, rows):
        return [[speaker, f"{channel}/{path}"] for speaker, path in rows]
    lists = os.path.join(workdir, "lists")
    os.makedirs(lists, exist_ok=True)
    write_list(os.path.join(lists, "A.txt"), under(CLEAN, [row for row in train if row[0] in first]))
    write_list(os.path.join(lists, "B.txt"), under(CLEAN, half_b))
    write_list(os.path.join(lists, "B_mix.txt"), under(CLEAN, half_b + mixed_in(train, first)))
    write_list(os.path.join(lists, "B_tel.txt"), under(TELEPHONE, half_b))
    write_list(os.path.join(lists, "B_tel_mix.txt"),
               under(TELEPHONE, half_b) + under(CLEAN, mixed_in(train, first)))
    for channel in (CLEAN, TELEPHONE):
        write_list(os.path.join(lists, f"test_{channel}.txt"),
                   [[str(trial.label), f"{channel}/{trial.enroll}", f"{channel}/{trial.test}"] for trial in trials])


# ------------------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------------------

def runs(full: int, short: int) -> dict[str, dict]:
    """Each run: its training list, test list, epochs, the run it starts from and extra flags; in the order they
    run (the comparisons the docs need first)."""
    def tuned(train_list, test, epochs=short, **more):
        return {"list": train_list, "test": test, "epochs": epochs, "from": "pre", "flags": [], **more}
    return {
        "pre": {"list": "A", "test": CLEAN, "epochs": full, "from": None, "flags": []},
        "scratch": {"list": "B", "test": CLEAN, "epochs": full, "from": None, "flags": []},
        "ft": tuned("B", CLEAN, epochs=2 * short),
        "tel_scratch": {"list": "B_tel", "test": TELEPHONE, "epochs": full, "from": None, "flags": []},
        "tel_ft": tuned("B_tel", TELEPHONE, epochs=2 * short),
        "ft_lr4": tuned("B", CLEAN, flags=["--lr", "0.0005"]),
        "ft_freeze1": tuned("B", CLEAN, flags=["--freeze_epochs", "1"]),
        "ft_nls01": tuned("B", CLEAN, flags=["--network_lr_scale", "0.1"]),
        "ft_aam": tuned("B", CLEAN, flags=["--trainfunc", "aamsoftmax"]),
        "ft_mix": tuned("B_mix", CLEAN),
        "tel_ft_mix": tuned("B_tel_mix", TELEPHONE),
        "tel_ft_lr4": tuned("B_tel", TELEPHONE, flags=["--lr", "0.0005"]),
        "tel_ft_nls01": tuned("B_tel", TELEPHONE, flags=["--network_lr_scale", "0.1"]),
        "tel_ft_full": tuned("B_tel", TELEPHONE, epochs=full),
        "ft_nls01_mix": tuned("B_mix", CLEAN, flags=["--network_lr_scale", "0.1"]),
        "tel_ft_nls01_mix": tuned("B_tel_mix", TELEPHONE, flags=["--network_lr_scale", "0.1"]),
    }


# Cross-channel scores: (run, its final model, on which test list)
CROSS = {"pre_on_tel": ("pre", TELEPHONE), "tel_ft_on_clean": ("tel_ft", CLEAN),
         "tel_ft_mix_on_clean": ("tel_ft_mix", CLEAN), "ft_on_tel": ("ft", TELEPHONE),
         "tel_ft_nls01_on_clean": ("tel_ft_nls01", CLEAN), "tel_ft_nls01_mix_on_clean": ("tel_ft_nls01_mix", CLEAN)}


def run_folder(workdir: str, seed: int, name: str) -> str:
    return os.path.join(workdir, f"seed{seed}", name)


def final_model(workdir: str, seed: int, name: str, epochs: int) -> str:
    return os.path.join(run_folder(workdir, seed, name), "model", f"model{epochs:09d}.model")


def veers(folder: str) -> dict[int, float]:
    """Epoch -> VEER of the test list, from ``result/scores.txt`` (empty when the run has not evaluated)."""
    path = os.path.join(folder, "result", "scores.txt")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return {int(m.group(1)): float(m.group(2)) for m in map(IT_LINE.match, handle) if m}


def check(code: int, what: str) -> None:
    if code:
        raise SystemExit(f"{what}: trainSpeakerNet exited with {code}")


def train(workdir: str, seed: int, name: str, run: dict, full: int, options) -> None:
    folder = run_folder(workdir, seed, name)
    if run["epochs"] in veers(folder):
        return
    lists = os.path.join(workdir, "lists")
    argv = ["--config", CONFIG, "--save_path", folder, "--seed", str(seed), "--max_epoch", str(run["epochs"]),
            "--train_list", os.path.join(lists, f"{run['list']}.txt"), "--train_path", os.path.join(workdir, "root"),
            "--test_list", os.path.join(lists, f"test_{run['test']}.txt"), "--test_path",
            os.path.join(workdir, "root"), "--tensorboard", "false", "--average_epochs", "0",
            "--test_interval", str(options.test_interval), *shlex.split(options.args), *run["flags"]]
    if run["from"]:
        argv += ["--initial_model", final_model(workdir, seed, run["from"], full)]
    check(trainSpeakerNet.main(argv), f"seed {seed} {name}")


def cross_score(workdir: str, seed: int, name: str, source: str, channel: str, epochs: int) -> None:
    folder = run_folder(workdir, seed, name)
    if os.path.exists(os.path.join(folder, "result", "metrics.json")):
        return
    lists = os.path.join(workdir, "lists")
    argv = ["--eval", "--initial_model", final_model(workdir, seed, source, epochs), "--save_path", folder,
            "--test_list", os.path.join(lists, f"test_{channel}.txt"), "--test_path", os.path.join(workdir, "root"),
            "--eval_frames", "0"]
    check(trainSpeakerNet.main(argv), f"seed {seed} {name}")


def run_seed(workdir: str, seed: int, options) -> None:
    plan = runs(options.full, options.short)
    for name, run in plan.items():
        if options.only and name not in options.only:
            continue
        train(workdir, seed, name, run, options.full, options)
        for cross, (source, channel) in CROSS.items():
            if source == name:
                cross_score(workdir, seed, cross, source, channel, plan[source]["epochs"])


# ------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------

def cross_eer(folder: str) -> float | None:
    path = os.path.join(folder, "result", "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["lists"][0]["eer"]


def results(workdir: str, seeds: list[int], full: int, short: int) -> dict[str, list[float]]:
    """``name@epochs`` -> one EER per seed that has it (training runs at each evaluated epoch; cross scores)."""
    table: dict[str, list[float]] = {}
    for seed in seeds:
        for name in runs(full, short):
            for epoch, eer in sorted(veers(run_folder(workdir, seed, name)).items()):
                table.setdefault(f"{name}@{epoch}", []).append(eer)
        for name in CROSS:
            eer = cross_eer(run_folder(workdir, seed, name))
            if eer is not None:
                table.setdefault(name, []).append(eer)
    return table


def mean_sd(values: list[float]) -> str:
    return "{:.2f} ± {:.2f}".format(*summary(values))


def report(workdir: str, seeds: list[int], full: int, short: int) -> dict[str, list[float]]:
    table = results(workdir, seeds, full, short)
    print("| run @ epochs | EER % per seed | mean ± sd |\n| --- | --- | --- |")
    for key, values in table.items():
        print(f"| {key} | {', '.join(f'{v:.2f}' for v in values)} | {mean_sd(values)} |")
    write_text(os.path.join(workdir, "results.json"), json.dumps({"seeds": seeds, "eer": table}, indent=1) + "\n")
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["prepare", "run", "report"])
    parser.add_argument("--corpus", default="data/synthetic", help="a dataprep.py --synthetic folder")
    parser.add_argument("--workdir", default="exps/finetune")
    parser.add_argument("--seeds", type=comma_list(int), default=[1, 2, 3])
    parser.add_argument("--full", type=int, default=25, help="the full budget, in epochs")
    parser.add_argument("--short", type=int, default=5, help="the short budget, in epochs")
    parser.add_argument("--test_interval", type=int, default=5,
                        help="evaluate (and, steplr, decay the LR) every N epochs; budgets should be multiples")
    parser.add_argument("--only", type=comma_list(str), default=[], help="these runs only (names in runs())")
    parser.add_argument("--args", default="", help="more trainSpeakerNet flags for every run (one string)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser


def main(argv=None) -> dict | None:
    options = build_parser().parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.step == "prepare":
        prepare(options.corpus, options.workdir)
    elif options.step == "run":
        for seed in options.seeds:
            run_seed(options.workdir, seed, options)
    else:
        return report(options.workdir, options.seeds, options.full, options.short)
    return None


if __name__ == "__main__":
    main()
