"""The helpers of the VoxCeleb recipe (``recipes/voxceleb/run.sh``): the checks of its flags, the flags a stage
derives from the training config, the calibration trials, the records the stages leave, and the report.

    python -m spknet.recipe check --config C --exp EXP --first N --last M --average A --lm_average L
                                  --calib_speakers S --calib_trials T -- EXTRA...
                                                                the recipe's flags against what stages N-M will
                                                                do (epochs averaged, fine-tuning config), before
                                                                any of them runs
    python -m spknet.recipe lm-flags --config C -- EXTRA...     the LM fine-tuning config and the trained run's
                                                                model options it must keep, one word a line
    python -m spknet.recipe eval-flags --config C [--calibrate] -- EXTRA...
                                                                the evaluation flags (crop, loader, device) one
                                                                word a line
    python -m spknet.recipe dev-trials --train_list L --out F   trials among training speakers, to calibrate on
    python -m spknet.recipe note --out F --config C -- EXTRA... the config, commit and machine of a training stage
    python -m spknet.recipe report --exp EXP                    EXP/results.md from the stages' records

The flags after ``--`` are trainSpeakerNet.py's, read with its own parser (:mod:`spknet.cli`). The report reads
machine-readable files only: the ``result/metrics.json`` each evaluating stage's ``--eval`` writes (the model,
the crop, the scoring, and per list EER, minDCF, Cllr and actDCF).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from spknet import atomic
from spknet.errors import SpeakerNetError, exit_status
from spknet.files import file_digest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P_TARGET = 0.01

# The LM fine-tuning config of each trained loss: a margin loss raises its margin, the masked-proxy losses keep
# their learned scale and bias (see the two configs' comments).
LM_CONFIGS = {"aamsoftmax": "lmft_aamsoftmax.yaml", **{loss: "lmft_mp_balance.yaml" for loss in (
    "mp", "mp_balance", "mmp", "mmp_balance", "mmp_balance2")}}
# The trained run's options the fine-tuning must keep (the network, its input pipeline, the loss and its classes);
# the LM config's own values are for the original's ResNetSE34L.
CARRIED = ("model", "encoder_type", "nOut", "n_mels", "channels", "log_input", "window", "frontend", "audio_scale",
           "pad", "preset", "trainfunc", "scale", "speed_perturb", "nSpeakers")
# Flags after ``--`` that also steer an evaluation (the rest are training flags); the crop (--eval_frames, else
# --max_frames) is always passed, as trainSpeakerNet.py resolves it.
EVAL_PASSED = ("nDataLoaderThread", "device", "eval_batch_size", "eval_precision", "cohort_size",
               "cohort_utterances", "short_files", "trust_checkpoint")
CALIBRATE_PASSED = ("nDataLoaderThread", "device", "trust_checkpoint", "cohort_size", "cohort_utterances")

# The report's rows: stage label, the folder (under EXP) of its evaluation, and what it is.
STAGES = (("plain", "extract/plain", "average of the last training epochs, cosine"),
          ("LM", "extract/lm", "average of the last large-margin fine-tuning epochs, cosine"),
          ("AS-norm", "score/asnorm", "final model, cosine, AS-norm against the training speakers"),
          ("calibrated", "calibrate", "final model, cosine, LLRs of the calibration fitted on training-speaker "
                                      "trials"),
          ("calibrated + QMF", "calibrate_quality", "the same, the calibration also using the enrolment and test "
                                                    "durations (log seconds, WeSpeaker's quality-measure functions)"))
METRICS = os.path.join("result", "metrics.json")    # in a stage's folder: what its --eval wrote


# ----------------------------------------------------------------------------------------------------------------
# Configs and flags
# ----------------------------------------------------------------------------------------------------------------

def trainer_args(words: list[str], config: str = "") -> argparse.Namespace:
    """trainSpeakerNet.py's resolved flags for ``--config config`` and the flags after ``--``; a flag it would
    refuse is an error now, naming it."""
    from spknet import cli

    try:
        return cli.parse_args((["--config", config] if config else []) + list(words), raise_errors=True)
    except cli.FlagError as error:
        raise SpeakerNetError(f"the flags after --: {error}") from None


def as_flags(values: dict) -> list[str]:
    """``--key value`` words for flag values; a true switch is ``--key``, a false one ``--no-key`` (log_input) or
    nothing (a switch that is off by default), an unset value (None) nothing."""
    words = []
    for key, value in values.items():
        if isinstance(value, bool):
            words += [f"--{key}"] if value else ([f"--no-{key}"] if key == "log_input" else [])
        elif value is not None:
            words += [f"--{key}", str(value)]
    return words


def lm_flags(config_path: str, extra_words: list[str] = ()) -> list[str]:
    """The LM fine-tuning config of the trained loss (the extra flags' ``--trainfunc``, else the config's), then the
    trained run's options it must keep, as flags (the extra flags follow them in the fine-tuning call)."""
    from spknet import cli

    loss = trainer_args(extra_words, config_path).trainfunc
    if loss not in LM_CONFIGS:
        raise SpeakerNetError(f"{config_path}: no large-margin fine-tuning config for the loss {loss or '(none)'!r} "
                              f"(there are for {', '.join(sorted(LM_CONFIGS))}); stop before stage 5 "
                              f"(--stop_stage 4) and run stages 6-9 on the averaged model")
    config = cli.config_values(config_path)
    carried = {key: config[key] for key in CARRIED if key in config}
    return [os.path.join(REPO, "configs", LM_CONFIGS[loss]), *as_flags(carried)]


def eval_flags(config_path: str, extra_words: list[str], calibrate: bool = False) -> tuple[int, list[str]]:
    """The crop and the flags of an evaluation: the crop as the trainer resolves it (--eval_frames, else
    --max_frames; 0: whole files) and the evaluation flags among the extra ones (those ``inference.py calibrate``
    takes, with ``calibrate``)."""
    from spknet import cli

    args = trainer_args(extra_words, config_path)
    given = cli.explicit_flags(extra_words)
    passed = {name: getattr(args, name) for name in (CALIBRATE_PASSED if calibrate else EVAL_PASSED)
              if name in given}
    return args.eval_frames, ["--eval_frames", str(args.eval_frames), *as_flags(passed)]


def crop_text(frames: int) -> str:
    return "whole files" if frames == 0 else f"10 crops x {frames} frames ({frames / 100:g} s)"


# ----------------------------------------------------------------------------------------------------------------
# The recipe's flags, before any stage runs
# ----------------------------------------------------------------------------------------------------------------

def saved_epochs(args: argparse.Namespace) -> tuple[int, str]:
    """How many epoch checkpoints a run of these flags leaves, and the flags that decide it."""
    from spknet import cli
    from spknet.specs import TrainingSpec

    training = TrainingSpec(**cli.spec_values(TrainingSpec, args))
    how = f"--max_epoch {training.max_epoch}, --test_interval {training.test_interval}"
    if training.average_epochs > 1:
        how += f", --average_epochs {training.average_epochs}"
    return len(training.saved_epochs()), how


def check_average(flag: str, count: int, stage: str, saved: int, source: str) -> None:
    """``flag count`` (epochs that ``stage`` averages) against the ``saved`` epoch checkpoints (``source`` says
    whose, with the number)."""
    if count < 1:
        raise SpeakerNetError(f"{flag} {count}: {stage} averages at least 1 epoch checkpoint")
    if count > saved:
        advice = f"give {flag} {saved} or fewer, or train more epochs" if saved else "train more epochs"
        raise SpeakerNetError(f"{flag} {count}: {stage} averages the last {count} epoch checkpoints, and {source}; "
                              f"{advice}")


def check(config: str, extra: list[str], stages: range, exp: str, average: int, lm_average: int,
          calib_speakers: int, calib_trials: int) -> None:
    """Whether the recipe's flags can work with the stages about to run and the flags after ``--``, before the
    first of them starts: stage 4 averages no more epochs than stage 3's training saves (or, when stage 3 does
    not run, than its folder holds), stage 5 has a fine-tuning config for the loss and averages no more epochs
    than its fine-tuning saves, stage 8 has speakers and trials to calibrate on."""
    if 4 in stages and 3 in stages:
        saved, how = saved_epochs(trainer_args(extra, config))
        check_average("--average", average, "stage 4 (average)", saved, f"stage 3 (train) saves {saved} ({how})")
    elif 4 in stages and os.path.isdir(os.path.join(exp, "train", "model")):
        from spknet.checkpoints import epoch_checkpoints

        folder = os.path.join(exp, "train", "model")
        held = len(epoch_checkpoints(folder))
        check_average("--average", average, "stage 4 (average)", held, f"{folder} holds {held}")
    if 5 in stages:
        lm = lm_flags(config, extra)
        saved, how = saved_epochs(trainer_args([*lm[1:], *extra], lm[0]))
        check_average("--lm_average", lm_average, "stage 5 (lmft)", saved,
                      f"its fine-tuning ({os.path.basename(lm[0])} and the flags after --) saves {saved} "
                      f"({how})")
    if 8 in stages:
        if calib_speakers < 2:
            raise SpeakerNetError(f"--calib_speakers {calib_speakers}: the calibration trials need 2 speakers or "
                                  f"more")
        if calib_trials < 2:
            raise SpeakerNetError(f"--calib_trials {calib_trials}: the calibration needs 2 trials or more (target "
                                  f"and non-target)")


# ----------------------------------------------------------------------------------------------------------------
# Calibration trials
# ----------------------------------------------------------------------------------------------------------------

def dev_trials(train_list: str, speakers: int, trials: int, seed: int) -> list[str]:
    """``label enroll test`` lines, half target trials, among ``speakers`` training speakers drawn at random (of
    those with two files or more): labelled scores that none of the test lists contains, to calibrate on."""
    from spknet.data.lists import read_train_list

    listed = read_train_list(train_list, "")
    order = np.argsort(listed.labels, kind="stable")
    names, paths = listed.labels[order], np.asarray(listed.files)[order]
    unique, starts, counts = np.unique(names, return_index=True, return_counts=True)
    usable = np.flatnonzero(counts >= 2)
    if len(usable) < 2:
        raise SpeakerNetError(f"{train_list}: calibration trials need two speakers with two files or more")
    generator = np.random.default_rng(seed)
    chosen = generator.permutation(usable)[:speakers]
    n_target = trials // 2
    spk = generator.choice(chosen, n_target)
    first = generator.integers(0, counts[spk])
    second = (first + 1 + generator.integers(0, counts[spk] - 1)) % counts[spk]
    enroll_t, test_t = starts[spk] + first, starts[spk] + second
    n_non = trials - n_target
    first_speaker = generator.integers(0, len(chosen), n_non)       # two different chosen speakers per trial
    a = chosen[first_speaker]
    b = chosen[(first_speaker + generator.integers(1, len(chosen), n_non)) % len(chosen)]
    enroll_n = starts[a] + generator.integers(0, counts[a])
    test_n = starts[b] + generator.integers(0, counts[b])
    labels = np.concatenate([np.ones(n_target, int), np.zeros(n_non, int)])
    enroll, test = np.concatenate([enroll_t, enroll_n]), np.concatenate([test_t, test_n])
    shuffle = generator.permutation(len(labels))
    return [f"{labels[i]} {paths[enroll[i]]} {paths[test[i]]}" for i in shuffle]


# ----------------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------------

def write_json(path: str, values: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_text(path, json.dumps(values, indent=2) + "\n")


def read_json(path: str) -> dict | None:
    """A record, or None when there is none; an unreadable one is an error naming it."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpeakerNetError(f"{path}: unreadable record ({error}); run its stage again") from None


def git_commit() -> str:
    """The repository's commit (``-dirty`` when it has uncommitted changes), or ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The CPU (and core count), the GPU when there is one, torch's version."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": f"{cpu_name()} ({os.cpu_count()} cores)", "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


def note(config_path: str, extra: list[str]) -> dict:
    """What a training stage ran with: the config (path, hash, text), the extra flags, the commit and machine."""
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    return {"config": os.path.abspath(config_path), "config_sha256": file_digest(config_path), "config_text": text,
            "extra": extra, "commit": git_commit(), "machine": machine(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def stage_rows(label: str, metrics: dict) -> list[dict]:
    """One row per list of an evaluating stage, from the ``metrics.json`` its ``--eval`` wrote: EER,
    minDCF(0.01), and Cllr and actDCF(0.01) when the stage is calibrated."""
    prior = f"{P_TARGET:g}"
    return [{"list": os.path.basename(entry["path"]), "stage": label, "trials": entry["trials"],
             "eer": entry["eer"], "min_dcf": (entry["min_dcf"] or {}).get(prior), "cllr": entry["cllr"],
             "act_dcf": (entry["act_dcf"] or {}).get(prior), "crop": crop_text(metrics["eval_frames"]),
             "model": metrics["model"]} for entry in metrics["lists"]]


def table(rows: list[dict]) -> list[str]:
    lines = ["| List | Stage | Trials | EER (%) | minDCF(0.01) | Cllr | actDCF(0.01) | Evaluation crop |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    order = {label: i for i, (label, _, _) in enumerate(STAGES)}
    lists = list(dict.fromkeys(row["list"] for row in rows))       # in the stages' list order

    def cell(value) -> str:
        return "-" if value is None else f"{value:.4f}"
    for row in sorted(rows, key=lambda r: (lists.index(r["list"]), order[r["stage"]])):
        lines.append(f"| {row['list']} | {row['stage']} | {row['trials']} | {cell(row['eer'])} | "
                     f"{cell(row['min_dcf'])} | {cell(row['cllr'])} | {cell(row['act_dcf'])} | {row['crop']} |")
    return lines


def report(exp: str) -> str:
    """EXP/results.md's text: the table of every evaluating stage that left a record, then what produced it."""
    rows, described = [], []
    for label, folder, what in STAGES:
        metrics = read_json(os.path.join(exp, folder, METRICS))
        if metrics is None:
            continue
        rows += stage_rows(label, metrics)
        described.append(f"- **{label}**: {what}; model `{metrics['model']}`")
    if not rows:
        raise SpeakerNetError(f"{exp}: no evaluation records ({os.path.join('extract/plain', METRICS)}, made by "
                              f"stage 6 (extract)); run stages 6-8 first")
    train = read_json(os.path.join(exp, "train", "recipe.json")) or {}
    lmft = read_json(os.path.join(exp, "lmft", "recipe.json"))
    run_machine = train.get("machine") or machine()
    lines = ["# Results", "", *table(rows), "", "EER and minDCF (p_target 0.01, C_miss = C_fa = 1) as each stage's "
             "evaluation wrote them (result/metrics.json); Cllr and actDCF(0.01) of the calibrated LLRs "
             "(calibrations fitted on trials among training speakers: calibrate/dev_trials.txt; with and without "
             "the durations).", "",
             "## Stages", "", *described, "",
             "## Run", "",
             f"- config: `{train.get('config', 'unknown')}` (sha256 {train.get('config_sha256', 'unknown')[:12]})",
             f"- fine-tuning config: `{lmft['config']}`" if lmft else "- fine-tuning: not run",
             f"- extra training flags: `{' '.join(train.get('extra', [])) or 'none'}`",
             f"- commit: `{train.get('commit') or git_commit()}`",
             f"- machine: CPU {run_machine['cpu']}, GPU {run_machine['gpu']}, torch {run_machine['torch']}, "
             f"Python {run_machine['python']}", ""]
    if train.get("config_text"):
        lines += ["## Config", "", "```yaml", train["config_text"].rstrip(), "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spknet.recipe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ck = commands.add_parser("check", help="the recipe's flags against the stages about to run")
    ck.add_argument("--config", required=True)
    ck.add_argument("--exp", required=True)
    for name in ("first", "last", "average", "lm_average", "calib_speakers", "calib_trials"):
        ck.add_argument(f"--{name}", type=int, required=True)
    ck.add_argument("extra", nargs=argparse.REMAINDER)
    lm = commands.add_parser("lm-flags", help="the LM fine-tuning config and the kept model options")
    lm.add_argument("--config", required=True)
    lm.add_argument("extra", nargs=argparse.REMAINDER)
    ev = commands.add_parser("eval-flags", help="an evaluation's flags")
    ev.add_argument("--config", required=True)
    ev.add_argument("--calibrate", action="store_true", help="the flags of inference.py calibrate")
    ev.add_argument("extra", nargs=argparse.REMAINDER)
    dev = commands.add_parser("dev-trials", help="calibration trials among training speakers")
    dev.add_argument("--train_list", required=True)
    dev.add_argument("--out", required=True)
    dev.add_argument("--speakers", type=int, default=200, help="speakers drawn (default: %(default)s)")
    dev.add_argument("--trials", type=int, default=20000, help="trials, half target (default: %(default)s)")
    dev.add_argument("--seed", type=int, default=0)
    nt = commands.add_parser("note", help="record a training stage's config, commit and machine")
    nt.add_argument("--out", required=True)
    nt.add_argument("--config", required=True)
    nt.add_argument("extra", nargs=argparse.REMAINDER)
    rp = commands.add_parser("report", help="write EXP/results.md")
    rp.add_argument("--exp", required=True)
    return parser


def extra_words(words: list[str]) -> list[str]:
    return words[1:] if words[:1] == ["--"] else words


def run(args) -> None:
    if args.command == "check":
        check(args.config, extra_words(args.extra), range(args.first, args.last + 1), args.exp, args.average,
              args.lm_average, args.calib_speakers, args.calib_trials)
    elif args.command == "lm-flags":
        print("\n".join(lm_flags(args.config, extra_words(args.extra))))
    elif args.command == "eval-flags":
        print("\n".join(eval_flags(args.config, extra_words(args.extra), args.calibrate)[1]))
    elif args.command == "dev-trials":
        lines = dev_trials(args.train_list, args.speakers, args.trials, args.seed)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic.write_text(args.out, "\n".join(lines) + "\n")
        print(f"{len(lines)} calibration trials written to {args.out}", file=sys.stderr)
    elif args.command == "note":
        write_json(args.out, note(args.config, extra_words(args.extra)))
    elif args.command == "report":
        path = os.path.join(args.exp, "results.md")
        atomic.write_text(path, report(args.exp))
        print(f"report written to {path}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(run, args)


if __name__ == "__main__":
    sys.exit(main())
