#!/usr/bin/env python3
"""SpeakerNet command line: train a speaker-verification model, or evaluate one with ``--eval``.

Flags and defaults are the original's (see README); ``--config FILE.yaml`` sets defaults that explicit flags
override.
"""

import argparse
import glob
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from core import atomic
from core import distributed
from core import evaluation
from core import plugins
from core.augment import Augmenter
from DatasetLoader import (GroupBatchSampler, TrainDataset, check_files_exist, collate_groups, read_train_list,
                           read_trial_list)
from core.errors import SpeakerNetError
from core.evaluation import EmbeddingStore, TrialList, list_names, per_list_path, pick_cohort_files
from core.plots import write_plots
from loss._common import IMBALANCED
from SpeakerNet import ModelTrainer, SpeakerNet, checkpoint_path, latest_checkpoint, read_checkpoint
from tuneThreshold import compute_metrics

SCORE_LINE = "IT %d, LR %f, TEER/T1 %2.2f, TLOSS %f, VEER %2.4f"
TRAIN_LINE = "IT %d, LR %f, TEER %2.2f, TLOSS %f"
RESUME_STATE = "resume.state"  # saved after epochs without evaluation and on interruption


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev stays on: the original README writes ``--encoder SAP`` for ``--encoder_type``, so no other flag
    # may start with "--encoder".
    parser = argparse.ArgumentParser(description="SpeakerNet: train and evaluate speaker verification models")
    add = parser.add_argument
    add("--config", type=str, default=None, help="YAML file of flag values (explicit flags win)")

    # Data loader
    add("--max_frames", type=int, default=200, help="training crop in 10-ms frames")
    add("--eval_frames", type=int, default=None, help="evaluation crop in frames (default --max_frames; 0 = whole file)")
    add("--batch_size", type=int, default=200, help="speaker groups per batch")
    add("--max_seg_per_spk", type=int, default=100, help="utterances per speaker per epoch, at most")
    add("--nDataLoaderThread", type=int, default=5, help="loader worker processes")
    add("--nPerSpeaker", type=int, default=None, help="utterances per speaker group (default: what the loss needs)")
    add("--seed", type=int, default=10, help="random seed (model init, batches, crops)")
    add("--augment", action="store_true", help="MUSAN noise and RIR reverberation in the loader")
    add("--musan_path", type=str, default="data/musan_split", help="MUSAN folder for --augment")
    add("--rir_path", type=str, default="data/RIRS_NOISES/simulated_rirs", help="RIR folder for --augment")

    # Training details
    add("--test_interval", type=int, default=1, help="evaluate and save every N epochs")
    add("--lr_interval", type=int, default=10, help="kept for compatibility (unused, as in the original)")
    add("--max_epoch", type=int, default=500, help="last epoch")
    add("--trainfunc", type=str, default="", help="loss: " + ", ".join(plugins.choices("loss")))
    add("--optimizer", type=str, default="adam", help="optimizer: " + ", ".join(plugins.choices("optimizer")))
    add("--scheduler", type=str, default="plateau", help="LR schedule: " + ", ".join(plugins.choices("scheduler")))
    add("--lr", type=float, default=0.001, help="learning rate")
    add("--lr_decay", type=float, default=0.95, help="steplr: LR factor every --test_interval epochs")
    add("--weight_decay", type=float, default=5e-5, help="weight decay")

    # Loss functions
    add("--hard_prob", type=float, default=0.5, help="triplet: probability of a hard negative")
    add("--hard_rank", type=int, default=10, help="triplet: hard negatives drawn from this many hardest")
    add("--margin", type=float, default=None, help="margin losses (default: the loss's own)")
    add("--scale", type=float, default=None, help="margin losses (default: the loss's own)")
    add("--nSpeakers", "--nClasses", dest="nSpeakers", type=int, default=5994,
        help="training classes (default: the number of speakers in --train_list when not given)")

    # Load and save
    add("--initial_model", type=str, default="", help="weights to start from or to evaluate")
    add("--save_path", type=str, default="./data/exp1", help="run folder (model/ and result/ inside)")

    # Data
    add("--train_list", type=str, default="", help="training list: '<speaker> <path.wav>' per line")
    add("--test_list", type=str, default="",
        help="trial list: '<label> <enroll.wav> <test.wav>' per line; several lists: a.txt,b.txt")
    add("--train_path", type=str, default="voxceleb2", help="root of the training list's paths")
    add("--test_path", type=str, default="voxceleb1", help="root of the trial list's paths")

    # Evaluation
    add("--eval", action="store_true", help="evaluate --initial_model (or the latest checkpoint) and exit")
    add("--val_list", type=str, default="",
        help="held-out validation trial list (audio relative to --test_path): in training its EER drives the LR "
             "schedule and the .eer files instead of the (first) test list's")
    add("--scoring", type=str, default="crops", choices=list(evaluation.SCORINGS),
        help="crops: minus the mean distance over the 10x10 crop pairs (the original); cosine: cosine of the "
             "crop-averaged embeddings")
    add("--score_norm", type=str, default="none", choices=list(evaluation.SCORE_NORMS),
        help="asnorm: adaptive score normalisation against a cohort of --train_list speakers")
    add("--cohort_size", type=int, default=200, help="asnorm: top cohort scores per file (N of AS-norm)")
    add("--cohort_utterances", type=int, default=3,
        help="asnorm: files per training speaker averaged into its cohort embedding (fewer when it has fewer)")
    add("--eval_batch_size", type=int, default=None,
        help="files per forward pass when embedding (default 1 on the CPU, 32 on a GPU)")
    add("--eval_precision", type=str, default="fp32", choices=list(evaluation.EVAL_PRECISIONS),
        help="network precision when embedding: fp32 (the original's), or bf16 / fp16 (GPU) autocast, faster "
             "on a GPU or a CPU with native bfloat16, with embeddings that differ slightly")
    add("--save_scores", type=str, default="",
        help="--eval: write 'score label enroll test' lines here (several lists: FILE_<list stem>.ext each)")
    add("--save_embeddings", type=str, default="",
        help="--eval: write an .npz mapping each trial file name to its (crops, dim) embedding")
    add("--dcf_p_target", type=float, default=0.05, help="minDCF target prior")
    add("--dcf_c_miss", type=float, default=1.0, help="minDCF cost of a miss")
    add("--dcf_c_fa", type=float, default=1.0, help="minDCF cost of a false alarm")

    # Model definition
    add("--model", type=str, default="", help="network: " + ", ".join(plugins.choices("models")))
    add("--encoder_type", type=str, default="SAP", choices=["SAP", "ASP"], help="pooling")
    add("--nOut", type=int, default=512, help="embedding size")
    add("--n_mels", type=int, default=40, help="mel bands")
    add("--log_input", action=argparse.BooleanOptionalAction, default=True, help="log of the mel energies")

    # Hardware
    add("--device", type=str, default=None, help="cuda or cpu (default: cuda when available)")
    add("--distributed", action="store_true", help="one process per GPU (torch.distributed)")
    add("--port", type=str, default="8888", help="--distributed: master port")
    add("--mixedprec", nargs="?", const="fp16", default=None, choices=["fp16", "bf16"],
        help="mixed precision: float16 with a gradient scaler (no value), or --mixedprec bf16")
    add("--gpu_id", type=int, default=0, help="GPU index")
    add("--compile", action="store_true", help="torch.compile the training step (first steps are slow)")
    return parser


def _coerce(action: argparse.Action, key: str, value, source: str):
    """A YAML value converted to the flag's type, or a clear error."""
    if action.const is not None and isinstance(value, bool):     # e.g. "mixedprec: true" -> its flag's value
        return action.const if value else None
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise SpeakerNetError(f"{source}: key '{key}' expects true or false, got {value!r}")
        return value
    if value is None or (action.type is None and not action.choices):
        return value
    if action.type is None:
        if value not in action.choices:
            raise SpeakerNetError(f"{source}: key '{key}' must be one of {list(action.choices)}, got {value!r}")
        return value
    if action.type in (int, float) and isinstance(value, bool):
        raise SpeakerNetError(f"{source}: key '{key}' expects {action.type.__name__}, got {value!r}")
    try:
        converted = action.type(value)
    except (TypeError, ValueError):
        raise SpeakerNetError(f"{source}: key '{key}' expects {action.type.__name__}, got {value!r}") from None
    if action.type is int and isinstance(value, float) and value != converted:
        raise SpeakerNetError(f"{source}: key '{key}' expects int, got {value!r}")
    if action.choices and converted not in action.choices:
        raise SpeakerNetError(f"{source}: key '{key}' must be one of {list(action.choices)}, got {value!r}")
    return converted


def read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """YAML flag values; an unknown key or a wrong type is an error that names it."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SpeakerNetError(f"{path}: config file not found") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise SpeakerNetError(f"{path}: not a valid YAML file ({' '.join(str(error).split())})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SpeakerNetError(f"{path}: expected a mapping of flag names to values, got {type(values).__name__}")
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    aliases = {"nClasses": "nSpeakers"}
    config = {}
    for key, value in values.items():
        dest = aliases.get(key, key)
        if dest not in actions:
            raise SpeakerNetError(f"{path}: unknown key '{key}' (not a flag of trainSpeakerNet.py)")
        config[dest] = _coerce(actions[dest], str(key), value, path)
    return config


def parse_args(argv=None) -> tuple[argparse.Namespace, set]:
    """Flags > YAML > defaults. Also returns the names set explicitly (by flag or YAML)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = read_config(args.config, parser) if args.config else {}
    # Names given on the command line: parse again with every default suppressed.
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    explicit = set(vars(probe.parse_args(argv)))
    for key, value in config.items():
        if key not in explicit:
            setattr(args, key, value)
    if args.eval_frames is None:
        args.eval_frames = args.max_frames
    return args, explicit | set(config)


# ----------------------------------------------------------------------------------------------------------------

def choose_device(requested: str | None, gpu_id: int = 0) -> torch.device:
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise SpeakerNetError(f"--device {requested}: CUDA is not available on this machine")
        return torch.device(requested)
    return torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() else "cpu")


def group_sizes_for(loss_needs, n_per_speaker: int | None) -> tuple[int, ...]:
    """Utterances per speaker group for the batch sampler."""
    if loss_needs == IMBALANCED:
        if n_per_speaker:
            print(f"note: --nPerSpeaker {n_per_speaker} ignored: this loss uses 2-or-3 utterance groups")
        return (2, 3)
    size = n_per_speaker or loss_needs
    if size < loss_needs:
        raise SpeakerNetError(f"--nPerSpeaker {size}: this loss needs at least {loss_needs} utterances per speaker")
    return (size,)


@dataclass
class EvalPlan:
    """What an evaluation scores: the test lists (``--test_list a.txt,b.txt``), the validation list
    (``--val_list``) and the AS-norm cohort (files and speaker labels from ``--train_list``), all checked upfront."""
    tests: list[TrialList]
    val: TrialList | None = None
    cohort: tuple[list[str], np.ndarray] | None = None

    @property
    def lists(self) -> list[TrialList]:
        return self.tests + ([self.val] if self.val is not None else [])


@dataclass
class ListResult:
    trial_list: TrialList
    scores: np.ndarray
    metrics: object | None          # tuneThreshold.Metrics, None for an unlabelled list


@dataclass
class EvalOutcome:
    tests: list[ListResult]
    val: ListResult | None
    store: EmbeddingStore
    seconds: float


def evaluate(trainer: ModelTrainer, args, plan: EvalPlan, show_progress=True) -> EvalOutcome:
    """Scores and (for labelled lists) metrics of every list of ``plan``; files shared by lists are embedded once."""
    started = time.time()
    lists = plan.lists
    store, scores = trainer.evaluate_lists(
        [trial_list.trials for trial_list in lists], args.test_path, args.eval_frames, args.nDataLoaderThread,
        files_per_batch=args.eval_batch_size, precision=args.eval_precision, scoring=args.scoring,
        score_norm=args.score_norm, cohort=plan.cohort, cohort_size=args.cohort_size, show_progress=show_progress)
    p_targets = tuple(dict.fromkeys((args.dcf_p_target, 0.01)))
    results = []
    for trial_list, list_scores in zip(lists, scores):
        labels = [trial.label for trial in trial_list.trials]
        metrics = None
        if labels[0] is not None:
            metrics = compute_metrics(list_scores, labels, p_targets, args.dcf_c_miss, args.dcf_c_fa)
        results.append(ListResult(trial_list, list_scores, metrics))
    val = results.pop() if plan.val is not None else None
    return EvalOutcome(results, val, store, time.time() - started)


def write_scores(path: str, scores, trials) -> None:
    """``score label enroll test`` per trial, in list order (label ``-`` for an unlabelled list)."""
    lines = [f"{score:.6f} {'-' if trial.label is None else trial.label} {trial.enroll} {trial.test}\n"
             for score, trial in zip(scores, trials)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_text(path, "".join(lines))


def _read_trials(list_path: str, test_path: str, name: str, need_labels: str = "") -> TrialList:
    trials = read_trial_list(list_path)
    check_files_exist([os.path.join(test_path, p) for t in trials for p in (t.enroll, t.test)], list_path)
    if need_labels and trials[0].label is None:
        raise SpeakerNetError(f"{list_path}: {need_labels} needs a labelled trial list ('<label> <enroll> <test>')")
    return TrialList(list_path, name, trials)


def load_cohort(args) -> tuple[list[str], np.ndarray]:
    """AS-norm cohort: up to ``--cohort_utterances`` files of each speaker of ``--train_list``."""
    if not args.train_list:
        raise SpeakerNetError("--score_norm asnorm needs --train_list (and --train_path): its speakers are the cohort")
    train_list = read_train_list(args.train_list, args.train_path)
    if len(train_list.speakers) < 2:
        raise SpeakerNetError(f"{args.train_list}: AS-norm needs at least 2 cohort speakers, the list has "
                              f"{len(train_list.speakers)}")
    picked = pick_cohort_files(train_list.labels, args.cohort_utterances)
    files = [train_list.files[i] for i in picked]
    check_files_exist(files, args.train_list)
    return files, train_list.labels[picked]


def load_trials(args) -> EvalPlan:
    """The lists to evaluate (``--test_list``, comma-separated for several; ``--val_list`` in training) and the
    AS-norm cohort, read and checked before anything is written."""
    paths = [path.strip() for path in args.test_list.split(",") if path.strip()] or [args.test_list]
    if len(set(paths)) < len(paths):
        raise SpeakerNetError(f"--test_list names a list twice: {args.test_list}")
    if args.cohort_size < 2:
        raise SpeakerNetError(f"--cohort_size must be at least 2, got {args.cohort_size}")
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise SpeakerNetError(f"--eval_batch_size must be at least 1, got {args.eval_batch_size}")
    training = not args.eval
    tests = [_read_trials(path, args.test_path, name, "training (VEER)" if training and i == 0 else "")
             for i, (path, name) in enumerate(zip(paths, list_names(paths)))]
    val = None
    if args.val_list:
        if training:
            val = _read_trials(args.val_list, args.test_path, "val", "--val_list")
        else:
            print(f"note: --val_list {args.val_list} is used in training only; --eval scores the --test_list lists")
    cohort = load_cohort(args) if args.score_norm == "asnorm" else None
    return EvalPlan(tests, val, cohort)


def make_trainer(args) -> ModelTrainer:
    device = distributed.local_device(args.device) if distributed.is_active() else choose_device(args.device,
                                                                                                 args.gpu_id)
    evaluation.eval_autocast_dtype(args.eval_precision, device)     # fp16 on a CPU: an error before any work
    settings = {**vars(args), "device": device}
    return ModelTrainer(SpeakerNet(**settings), **settings)


def run_eval(args) -> None:
    trainer = make_trainer(args)
    model_dir = os.path.join(args.save_path, "model")
    source = args.initial_model or (latest_checkpoint(model_dir) or (None,))[0]
    if not source:
        raise SpeakerNetError("--eval needs --initial_model, or a checkpoint in --save_path/model")
    plan = load_trials(args)
    trainer.load_weights(source)
    print(f"Model {source} loaded!")
    outcome = evaluate(trainer, args, plan)
    several = len(outcome.tests) > 1
    files = len(outcome.store.files)
    print(f"{files} files embedded once for {len(outcome.tests)} list(s); evaluation {outcome.seconds:.1f} s")
    for result in outcome.tests:
        trial_list = result.trial_list
        print(f"== {trial_list.path}: {len(trial_list.trials)} trials ({args.scoring} scoring"
              f"{', AS-norm' if args.score_norm == 'asnorm' else ''})")
        if result.metrics is not None:
            print("EER %2.4f" % result.metrics.eer)
            print(result.metrics.report())
            if distributed.is_main():
                plots = write_plots(result.scores, [t.label for t in trial_list.trials],
                                    os.path.join(args.save_path, "result"),
                                    "_eval" + (f"_{trial_list.name}" if several else ""), eer=result.metrics.eer)
                print(f"DET curve and score histogram: {', '.join(plots)}")
        else:
            print(f"{len(trial_list.trials)} unlabelled trials scored (no EER without labels)")
        if args.save_scores and distributed.is_main():
            path = per_list_path(args.save_scores, trial_list.name) if several else args.save_scores
            write_scores(path, result.scores, trial_list.trials)
            print(f"scores written to {path}")
    if args.save_embeddings and distributed.is_main():
        outcome.store.save_npz(args.save_embeddings)
        print(f"{files} embeddings written to {args.save_embeddings}")


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process, which finishes its step and saves first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(args, train_list, loss_needs, device):
    sampler = GroupBatchSampler(train_list.labels, group_sizes_for(loss_needs, args.nPerSpeaker), args.batch_size,
                                args.max_seg_per_spk, seed=args.seed, rank=distributed.rank(),
                                world_size=distributed.world_size())
    workers = args.nDataLoaderThread
    # built here, before any output is written: a missing or empty MUSAN/RIR folder fails the run at once
    augmenter = Augmenter(args.musan_path, args.rir_path, args.max_frames) if args.augment else None
    loader = torch.utils.data.DataLoader(
        TrainDataset(train_list, args.max_frames, augmenter=augmenter), batch_sampler=sampler,
        collate_fn=collate_groups, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        generator=torch.Generator().manual_seed(args.seed))  # its own generator: the global RNG stays untouched
    return loader, sampler


class StopRequest:
    """SIGINT/SIGTERM ask the trainer to stop after the current step; a second SIGINT stops at once."""

    def __init__(self, trainer: ModelTrainer):
        self.trainer = trainer
        self.signal_number = None

    def __enter__(self):
        self.previous = {number: signal.signal(number, self._handle) for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, number, frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        self.trainer.stop_requested = True
        print(f"\n{signal.Signals(number).name} received: finishing the current step, then saving", file=sys.stderr)

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False


def resume_point(model_dir: str):
    """The furthest saved state: the newest ``model%09d.model`` or ``resume.state`` (mid-interval / interrupted)."""
    candidates = []
    newest = latest_checkpoint(model_dir)
    if newest:
        candidates.append(((newest[1], 0), newest[0], newest[1]))
    state = os.path.join(model_dir, RESUME_STATE)
    if os.path.isfile(state):
        checkpoint = read_checkpoint(state)
        batches = (checkpoint.get("progress") or {}).get("batches", 0)
        candidates.append(((int(checkpoint["epoch"]), batches), state, int(checkpoint["epoch"])))
    return max(candidates)[1:] if candidates else None


def remove_stale_temporaries(folder: str) -> None:
    """Temporary files of saves that a killed run never finished (the complete files they would replace remain)."""
    for path in glob.glob(os.path.join(folder, ".*.tmp")):
        os.unlink(path)


def run_train(args, explicit: set) -> int:
    if not args.trainfunc:
        raise SpeakerNetError(f"--trainfunc is required for training; choices: {', '.join(plugins.choices('loss'))}")
    plugins.load("loss", args.trainfunc)        # an unknown name fails before any file is read
    train_list = read_train_list(args.train_list, args.train_path)
    check_files_exist(train_list.files, args.train_list)
    trials = load_trials(args)
    if "nSpeakers" not in explicit:
        args.nSpeakers = len(train_list.speakers)
    elif args.nSpeakers < len(train_list.speakers):
        raise SpeakerNetError(f"--nSpeakers {args.nSpeakers} is smaller than the {len(train_list.speakers)} speakers "
                              f"of {args.train_list}")

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    trainer = make_trainer(args)
    loader, sampler = build_loader(args, train_list, trainer.net.utterances_per_speaker, trainer.device)

    model_dir = os.path.join(args.save_path, "model")
    result_dir = os.path.join(args.save_path, "result")
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(result_dir, exist_ok=True)
    remove_stale_temporaries(model_dir)
    previous = resume_point(model_dir)
    if previous:
        trainer.resume(*previous)
        where = f"epoch {trainer.progress.epoch}, batch {trainer.progress.batches}" if trainer.progress else \
            f"after epoch {trainer.epoch}"
        print(f"Model {previous[0]} loaded from previous state! Resuming {where}")
    elif args.initial_model:
        trainer.load_weights(args.initial_model)
        print(f"Model {args.initial_model} loaded!")

    scores_path = os.path.join(result_dir, "scores.txt") if distributed.is_main() else os.devnull
    with open(scores_path, "a+") as scorefile, StopRequest(trainer) as stop:
        for key, value in vars(args).items():
            scorefile.write(f"{key} {value}\n")
        scorefile.flush()
        for epoch in range(trainer.epoch + 1, args.max_epoch + 1):
            if not train_one_epoch(trainer, args, epoch, loader, sampler, trials, scorefile, model_dir):
                save_on_main(trainer, os.path.join(model_dir, RESUME_STATE), trainer.epoch)
                print(f"Stopped during epoch {epoch} after {trainer.progress.batches} batches; state saved to "
                      f"{os.path.join(model_dir, RESUME_STATE)}. Run the same command again to resume.",
                      file=sys.stderr)
                return 128 + stop.signal_number
    return 0


def save_on_main(trainer, path: str, epoch: int, eer: float | None = None) -> None:
    """Rank 0 writes the checkpoint (and its ``.eer``); a complete epoch checkpoint retires ``resume.state``."""
    if distributed.is_main():
        trainer.save(path, epoch)
        if eer is not None:
            atomic.write_text(path[:-len(".model")] + ".eer", "%.4f" % eer)
            stale = os.path.join(os.path.dirname(path), RESUME_STATE)
            if os.path.exists(stale):
                os.unlink(stale)
    distributed.barrier()


def train_one_epoch(trainer, args, epoch, loader, sampler, trials, scorefile, model_dir) -> bool:
    """Train, evaluate when due, save, log. False when a stop was requested during the epoch."""
    sampler.set_epoch(epoch)
    lr = trainer.lr
    print(time.strftime("%Y-%m-%d %H:%M:%S"), epoch, f"Training {args.model} with LR {lr:f}...")
    started = time.time()
    result = trainer.train_network(loader, epoch)
    if result is None:
        return False
    loss, accuracy = result
    train_seconds = time.time() - started
    trainer.epoch = epoch
    if epoch % args.test_interval == 0:
        outcome = evaluate(trainer, args, trials)       # ``trials`` is load_trials' EvalPlan
        first = outcome.tests[0]
        # the validation list, when given, steers the schedule and the .eer files; the test list is only reported
        steering = outcome.val if outcome.val is not None else first
        trainer.last_eer = steering.metrics.eer
        several = len(outcome.tests) > 1
        if distributed.is_main():
            for result in outcome.tests:
                if result.metrics is not None:
                    write_plots(result.scores, [t.label for t in result.trial_list.trials],
                                os.path.join(args.save_path, "result"),
                                f"_{result.trial_list.name}" if several else "", eer=result.metrics.eer)
        line = SCORE_LINE % (epoch, lr, accuracy, loss, first.metrics.eer)
        val = f", val EER {outcome.val.metrics.eer:2.4f}" if outcome.val is not None else ""
        extra = (f"INFO epoch {epoch}: {first.metrics.summary()}{val}, train {train_seconds:.1f} s, "
                 f"eval {outcome.seconds:.1f} s")
        for result in outcome.tests[1:] + ([outcome.val] if outcome.val is not None else []):
            role = "val" if result is outcome.val else "list"
            summary = result.metrics.summary() if result.metrics is not None else \
                f"{len(result.trial_list.trials)} unlabelled trials scored"
            extra += f"\nINFO epoch {epoch} {role} {result.trial_list.path}: {summary}"
        path = checkpoint_path(model_dir, epoch)
        save_on_main(trainer, path, epoch, eer=steering.metrics.eer)
    else:
        line = TRAIN_LINE % (epoch, lr, accuracy, loss)
        extra = f"INFO epoch {epoch}: train {train_seconds:.1f} s"
        save_on_main(trainer, os.path.join(model_dir, RESUME_STATE), epoch)
    print(time.strftime("%Y-%m-%d %H:%M:%S"), line)
    print(extra)
    scorefile.write(line + "\n" + extra + "\n")
    scorefile.flush()
    return True


def run(args, explicit: set) -> int:
    """This process's work; under --distributed it joins the process group first (torchrun or spawned)."""
    if args.distributed:
        distributed.init_process_group(distributed.local_device(args.device))
        if not distributed.is_main():
            sys.stdout = open(os.devnull, "w")      # rank 0 alone reports; errors still reach stderr
    try:
        if args.eval:
            run_eval(args)
            return 0
        return run_train(args, explicit)
    finally:
        distributed.shutdown()


def _spawned(local_rank: int, processes: int, argv) -> None:
    """One of the processes of the one-machine launch (``--distributed`` without torchrun)."""
    os.environ.update(distributed.spawn_environment(parse_args(argv)[0].port, local_rank, processes))
    code = main(argv)
    if code:
        sys.exit(code)


def main(argv=None) -> int:
    try:
        args, explicit = parse_args(argv)
        if args.distributed and not distributed.launched_by_torchrun():
            processes = distributed.gpus_to_spawn()
            torch.multiprocessing.spawn(_spawned, args=(processes, argv), nprocs=processes)
            return 0
        return run(args, explicit)
    except SpeakerNetError as error:
        print(f"error{f' (rank {distributed.rank()})' if distributed.is_active() else ''}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
