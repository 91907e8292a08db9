"""The helpers of the VoxCeleb recipe (``recipes/voxceleb/run.sh``): the flags a stage derives from the training
config, the calibration trials, the records the stages leave, and the report.

    python -m spknet.recipe lm-flags --config C -- EXTRA...     the LM fine-tuning config and the trained run's
                                                                model options it must keep, one word a line
    python -m spknet.recipe eval-flags --config C --record F --model M --lists A,B [--score_norm asnorm]
                                       [--calibration J] -- EXTRA...
                                                                the evaluation flags (crop, loader, device) one
                                                                word a line; F records what was evaluated how
    python -m spknet.recipe dev-trials --train_list L --out F   trials among training speakers, to calibrate on
    python -m spknet.recipe note --out F --config C -- EXTRA... the config, commit and machine of a training stage
    python -m spknet.recipe report --exp EXP                    EXP/results.md from the stages' records

The report reads machine-readable files only: each evaluating stage writes ``settings.json`` (the model, the
lists, the crop, the scoring) beside its score files (``score label enroll test`` lines), and the metrics are
computed from those with :func:`spknet.evaluation.compute_metrics`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np
import yaml

from spknet import atomic
from spknet.errors import SpeakerNetError, exit_status

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MAX_FRAMES = 200          # trainSpeakerNet.py's --max_frames default, and so its --eval_frames default
P_TARGET = 0.01

# The LM fine-tuning config of each trained loss: a margin loss raises its margin, the masked-proxy losses keep
# their learned scale and bias (see the two configs' comments).
LM_CONFIGS = {"aamsoftmax": "lmft_aamsoftmax.yaml", **{loss: "lmft_mp_balance.yaml" for loss in (
    "mp", "mp_balance", "mmp", "mmp_balance", "mmp_balance2")}}
# The trained run's options the fine-tuning must keep (the network, its input pipeline, the loss and its classes);
# the LM config's own values are for the original's ResNetSE34L.
CARRIED = ("model", "encoder_type", "nOut", "n_mels", "channels", "log_input", "window", "audio_scale", "pad",
           "preset", "trainfunc", "scale", "speed_perturb", "nSpeakers")
ALIASES = {"nClasses": "nSpeakers", "encoder": "encoder_type"}
# Flags after ``--`` that also steer an evaluation (the rest are training flags); --trust_checkpoint takes no value.
EVAL_PASSED = ("eval_frames", "nDataLoaderThread", "device", "eval_batch_size", "eval_precision", "cohort_size",
               "cohort_utterances", "short_files", "trust_checkpoint")
SWITCHES = {"trust_checkpoint"}
CALIBRATE_PASSED = ("nDataLoaderThread", "device", "trust_checkpoint", "cohort_size", "cohort_utterances")

# The report's rows: stage label, the folder (under EXP) of its records, and what it is.
STAGES = (("plain", "extract/plain", "average of the last training epochs, cosine"),
          ("LM", "extract/lm", "average of the last large-margin fine-tuning epochs, cosine"),
          ("AS-norm", "score/asnorm", "final model, cosine, AS-norm against the training speakers"),
          ("calibrated", "calibrate", "final model, cosine, LLRs of the calibration fitted on training-speaker "
                                      "trials"),
          ("calibrated + QMF", "calibrate_quality", "the same, the calibration also using the enrolment and test "
                                                    "durations (log seconds, WeSpeaker's quality-measure functions)"))
# what --eval prints per calibrated list (spknet.evaluation.runner.calibration_line)
CALIBRATED_LINE = re.compile(r"^Cllr (\S+), minCllr \S+, .*actDCF\(p=0\.01\) (\S+)")


# ----------------------------------------------------------------------------------------------------------------
# Configs and flags
# ----------------------------------------------------------------------------------------------------------------

def read_config(path: str) -> dict:
    """A trainSpeakerNet.py YAML config as a mapping (aliases resolved); unreadable or not a mapping: an error."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise SpeakerNetError(f"{path}: config file not found") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise SpeakerNetError(f"{path}: not a valid YAML file ({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise SpeakerNetError(f"{path}: expected a mapping of flag names to values")
    return {ALIASES.get(key, key): value for key, value in values.items()}


def as_flags(values: dict) -> list[str]:
    """``--key value`` words for flag values; a true switch is ``--key``, a false one ``--no-key`` (log_input) or
    nothing (a switch that is off by default)."""
    words = []
    for key, value in values.items():
        if isinstance(value, bool):
            words += [f"--{key}"] if value else ([f"--no-{key}"] if key == "log_input" else [])
        else:
            words += [f"--{key}", str(value)]
    return words


def lm_flags(config_path: str, extra_words: list[str] = ()) -> list[str]:
    """The LM fine-tuning config of the trained loss (the extra flags' ``--trainfunc``, else the config's), then the
    trained run's options it must keep, as flags (the extra flags follow them in the fine-tuning call)."""
    config = read_config(config_path)
    loss = parse_extra(list(extra_words)).get("trainfunc") or config.get("trainfunc", "")
    if loss not in LM_CONFIGS:
        raise SpeakerNetError(f"{config_path}: no large-margin fine-tuning config for the loss {loss or '(none)'!r} "
                              f"(there are for {', '.join(sorted(LM_CONFIGS))}); stop before stage 5 "
                              f"(--stop_stage 4) and run stages 6-9 on the averaged model")
    carried = {key: config[key] for key in CARRIED if key in config}
    return [os.path.join(REPO, "configs", LM_CONFIGS[loss]), *as_flags(carried)]


def parse_extra(words: list[str]) -> dict:
    """The flags after ``--`` as {name: value} (the last wins; a switch maps to True)."""
    values, i = {}, 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            i += 1
            continue
        name, _, inline = word[2:].partition("=")
        if "=" in word or name in SWITCHES or i + 1 == len(words) or words[i + 1].startswith("--"):
            values[name] = inline if "=" in word else True
            i += 1
        else:
            values[name] = words[i + 1]
            i += 2
    return values


def eval_frames(config: dict, extra: dict) -> int:
    """The evaluation crop as the trainer resolves it: --eval_frames, else --max_frames (0: whole files)."""
    for source, key in ((extra, "eval_frames"), (config, "eval_frames"), (extra, "max_frames"),
                        (config, "max_frames")):
        if source.get(key) is not None:
            try:
                return int(source[key])
            except (TypeError, ValueError):
                raise SpeakerNetError(f"--{key} {source[key]!r}: expected a whole number of frames") from None
    return DEFAULT_MAX_FRAMES


def eval_flags(config_path: str, extra_words: list[str], calibrate: bool = False) -> tuple[int, list[str]]:
    """The crop and the flags of an evaluation: --eval_frames and the evaluation flags among the extra ones (those
    ``inference.py calibrate`` takes, with ``calibrate``)."""
    extra = parse_extra(extra_words)
    frames = eval_frames(read_config(config_path), extra)
    names = CALIBRATE_PASSED if calibrate else EVAL_PASSED
    passed = {key: value for key, value in extra.items() if key in names and key != "eval_frames"}
    return frames, ["--eval_frames", str(frames), *as_flags(passed)]


def crop_text(frames: int) -> str:
    return "whole files" if frames == 0 else f"10 crops x {frames} frames ({frames / 100:g} s)"


# ----------------------------------------------------------------------------------------------------------------
# Calibration trials
# ----------------------------------------------------------------------------------------------------------------

def read_train_list(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Speakers and paths of a ``speaker path`` list; a malformed line is an error naming it."""
    speakers, paths = [], []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise SpeakerNetError(f"{path}:{number}: expected '<speaker> <path>', got {line.strip()!r}")
                speakers.append(fields[0])
                paths.append(fields[1])
    except FileNotFoundError:
        raise SpeakerNetError(f"{path}: training list not found") from None
    return np.asarray(speakers), np.asarray(paths)


def dev_trials(train_list: str, speakers: int, trials: int, seed: int) -> list[str]:
    """``label enroll test`` lines, half target trials, among ``speakers`` training speakers drawn at random (of
    those with two files or more): labelled scores that none of the test lists contains, to calibrate on."""
    names, paths = read_train_list(train_list)
    order = np.argsort(names, kind="stable")
    names, paths = names[order], paths[order]
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


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def note(config_path: str, extra: list[str]) -> dict:
    """What a training stage ran with: the config (path, hash, text), the extra flags, the commit and machine."""
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    return {"config": os.path.abspath(config_path), "config_sha256": sha256(config_path), "config_text": text,
            "extra": extra, "commit": git_commit(), "machine": machine(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def score_files(record: dict, folder: str) -> dict[str, str]:
    """List path -> its score file, named as ``--save_scores FILE`` names them (``FILE_<stem>`` for several)."""
    from spknet.evaluation.trials import list_names, per_list_path

    lists = record["lists"]
    path = os.path.join(folder, "scores.txt")
    if len(lists) == 1:
        return {lists[0]: path}
    return {trial_list: per_list_path(path, name) for trial_list, name in zip(lists, list_names(lists))}


def read_scores(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of a ``score label enroll test`` file."""
    try:
        with open(path, encoding="utf-8") as handle:
            rows = [line.split()[:2] for line in handle if line.strip()]
        values = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    except FileNotFoundError:
        raise SpeakerNetError(f"{path}: score file not found; run its stage again") from None
    except ValueError:
        raise SpeakerNetError(f"{path}: not a score file of 'score label enroll test' lines") from None
    return values[:, 0], values[:, 1].astype(int)


def stage_rows(label: str, folder: str, record: dict) -> list[dict]:
    """One row per list of an evaluating stage: EER, minDCF(0.01), and Cllr and actDCF(0.01) when the stage is
    calibrated."""
    from spknet.evaluation.metrics import compute_metrics

    calibrated = calibrated_metrics(os.path.join(folder, "eval.log")) if record.get("calibration") else {}
    rows = []
    for trial_list, path in score_files(record, folder).items():
        scores, labels = read_scores(path)
        metrics = compute_metrics(scores, labels, (P_TARGET,))
        llr_cllr, act_dcf = calibrated.get(trial_list, (None, None))
        rows.append({"list": os.path.basename(trial_list), "stage": label, "trials": len(scores),
                     "eer": metrics.eer, "min_dcf": metrics.min_dcf[P_TARGET][0], "cllr": llr_cllr,
                     "act_dcf": act_dcf,
                     "crop": crop_text(record["eval_frames"]), "model": record["model"]})
    return rows


def calibrated_metrics(log_path: str) -> dict[str, tuple[float, float]]:
    """List path -> (Cllr, actDCF(0.01)) of a calibrated ``--eval``, as its log (``EXP/<stage>/eval.log``) says:
    the LLRs of a calibration with quality measures need the trials' durations, which ``--eval`` reads."""
    found, current = {}, None
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("== ") and ": " in line:
                    current = line[3:line.index(": ")]
                match = CALIBRATED_LINE.match(line.strip())
                if match and current is not None:
                    found[current] = (float(match.group(1)), float(match.group(2)))
    except FileNotFoundError:
        raise SpeakerNetError(f"{log_path}: the calibrated evaluation's log is missing; run stage 8 (calibrate) "
                              f"again") from None
    return found


def table(rows: list[dict]) -> list[str]:
    lines = ["| List | Stage | Trials | EER (%) | minDCF(0.01) | Cllr | actDCF(0.01) | Evaluation crop |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    order = {label: i for i, (label, _, _) in enumerate(STAGES)}
    lists = list(dict.fromkeys(row["list"] for row in rows))       # in the stages' list order
    for row in sorted(rows, key=lambda r: (lists.index(r["list"]), order[r["stage"]])):
        cllr_text = "-" if row["cllr"] is None else f"{row['cllr']:.4f}"
        act_text = "-" if row["act_dcf"] is None else f"{row['act_dcf']:.4f}"
        lines.append(f"| {row['list']} | {row['stage']} | {row['trials']} | {row['eer']:.4f} | "
                     f"{row['min_dcf']:.4f} | {cllr_text} | {act_text} | {row['crop']} |")
    return lines


def report(exp: str) -> str:
    """EXP/results.md's text: the table of every evaluating stage that left a record, then what produced it."""
    rows, described = [], []
    for label, folder, what in STAGES:
        record = read_json(os.path.join(exp, folder, "settings.json"))
        if record is None:
            continue
        rows += stage_rows(label, os.path.join(exp, folder), record)
        described.append(f"- **{label}**: {what}; model `{record['model']}`")
    if not rows:
        raise SpeakerNetError(f"{exp}: no evaluation records (extract/plain/settings.json, made by stage 6 "
                              f"(extract)); run stages 6-8 first")
    train = read_json(os.path.join(exp, "train", "recipe.json")) or {}
    lmft = read_json(os.path.join(exp, "lmft", "recipe.json"))
    run_machine = train.get("machine") or machine()
    lines = ["# Results", "", *table(rows), "", "EER and minDCF (p_target 0.01, C_miss = C_fa = 1) from the "
             "stages' score files; Cllr and actDCF(0.01) of the calibrated LLRs (calibrations fitted on trials "
             "among training speakers: calibrate/dev_trials.txt; with and without the durations).", "",
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
    lm = commands.add_parser("lm-flags", help="the LM fine-tuning config and the kept model options")
    lm.add_argument("--config", required=True)
    lm.add_argument("extra", nargs=argparse.REMAINDER)
    ev = commands.add_parser("eval-flags", help="an evaluation's flags; records it")
    ev.add_argument("--config", required=True)
    ev.add_argument("--record", default="", help="settings.json to write")
    ev.add_argument("--model", default="")
    ev.add_argument("--lists", default="", help="the trial lists, comma-separated")
    ev.add_argument("--score_norm", default="none")
    ev.add_argument("--calibration", default="")
    ev.add_argument("--calibrate", action="store_true", help="the flags of inference.py calibrate (no record)")
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
    if args.command == "lm-flags":
        print("\n".join(lm_flags(args.config, extra_words(args.extra))))
    elif args.command == "eval-flags":
        frames, flags = eval_flags(args.config, extra_words(args.extra), args.calibrate)
        if not args.calibrate:
            write_json(args.record, {"model": args.model, "lists": args.lists.split(","), "eval_frames": frames,
                                     "scoring": "cosine", "score_norm": args.score_norm,
                                     "calibration": args.calibration})
        print("\n".join(flags))
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
