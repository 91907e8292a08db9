#!/usr/bin/env python3
"""SpeakerNet command line: train a speaker-verification model, or evaluate one with ``--eval``.

Flags and defaults are the original's (see README); ``--config FILE.yaml`` sets defaults that explicit flags
override. This is the edge: every flag is read and checked here, and the library below gets plain values.
"""

import argparse
import hashlib
import multiprocessing
import os
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import yaml

from spknet import atomic, checkpoints, distributed, logs, plugins
from spknet import calibration as calibrations
from spknet.checkpoints import UnsafeCheckpoint, latest_checkpoint, load_model_state, read_checkpoint
from spknet.data import (
    AUDIO_SCALES,
    PADS,
    AudioPipeline,
    GroupBatchSampler,
    TrainDataset,
    check_files_exist,
    collate_groups,
    ignore_stop_signals,
    read_train_list,
    speed_perturbed,
)
from spknet.data.augment import Augmenter
from spknet.errors import SpeakerNetError
from spknet.evaluation import (
    EVAL_PRECISIONS,
    SCORE_NORMS,
    SCORINGS,
    Cohort,
    EvalOptions,
    EvalOutcome,
    EvalPlan,
    calibration_metrics,
    evaluate,
    per_list_path,
    read_cohort,
    read_plan,
    write_plots,
    write_scores,
)
from spknet.evaluation.extraction import SHORT_FILES
from spknet.lock import RunLock
from spknet.logs import log
from spknet.loss._common import IMBALANCED
from spknet.margin import has_margin
from spknet.model import SpeakerNet
from spknet.scheduler._warmup import DEFAULT_FINAL_LR_RATIO
from spknet.training.trainer import INITIAL_EER, EpochProgress, ModelTrainer, is_per_iteration

SCORE_LINE = "IT %d, LR %f, TEER/T1 %2.2f, TLOSS %f, VEER %2.4f"
TRAIN_LINE = "IT %d, LR %f, TEER %2.2f, TLOSS %f"
# --speed_perturb: WeSpeaker's speeds, 1.0 first so that the first classes are the recorded speakers
SPEED_FACTORS = (1.0, 0.9, 1.1)
CONFIG_FILE = "config.yaml"        # the resolved configuration of a training run, in its --save_path
# Options a resumed run may change: how long, how fast, where files are, and how it is evaluated. Every other
# option changes the model, the loss, the data or the schedule, and a resume refuses a change of it.
SESSION_OPTIONS = frozenset({
    "config", "max_epoch", "nDataLoaderThread", "test_interval", "lr_interval", "save_path", "initial_model",
    "train_path", "test_path", "musan_path", "rir_path", "eval", "eval_frames", "scoring", "score_norm",
    "cohort_size", "cohort_utterances", "eval_batch_size", "eval_precision", "save_scores", "save_embeddings",
    "dcf_p_target", "dcf_c_miss", "dcf_c_fa", "device", "distributed", "port", "gpu_id", "compile",
    "trust_checkpoint", "short_files", "calibration"})
LIST_OPTIONS = ("train_list", "test_list", "val_list")     # compared by content: a moved list is the same list


# --preset: a named set of input-pipeline defaults; a flag or a YAML key of its own still wins
PRESETS = {
    "original": {"audio_scale": "int16", "pad": "zero", "window": "hann"},
    "voxceleb_trainer": {"audio_scale": "float", "pad": "wrap", "window": "hamming"},
}


def at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""
    def parse(text) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "int"          # argparse and the YAML reader name the type by it
    return parse


def non_negative(text) -> float:
    """An argparse type: a float no smaller than 0."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {value:g}")
    return value


non_negative.__name__ = "float"


def build_parser() -> argparse.ArgumentParser:
    """The flags, with each flag's action kept in ``parser.flag_actions`` (by destination) for the YAML reader."""
    parser = argparse.ArgumentParser(description="SpeakerNet: train and evaluate speaker verification models")
    parser.flag_actions = {}

    def add(*names, **options):
        action = parser.add_argument(*names, **options)
        parser.flag_actions[action.dest] = action
    add("--config", type=str, default=None, help="YAML file of flag values (explicit flags win)")

    # Data loader
    add("--max_frames", type=int, default=200, help="training crop in 10-ms frames")
    add("--eval_frames", type=int, default=None,
        help="evaluation crop in frames (default --max_frames; 0 = whole file)")
    add("--batch_size", type=at_least(1), default=200, help="speaker groups per batch")
    add("--max_seg_per_spk", type=int, default=100, help="utterances per speaker per epoch, at most")
    add("--nDataLoaderThread", type=int, default=5, help="loader worker processes")
    add("--nPerSpeaker", type=int, default=None, help="utterances per speaker group (default: what the loss needs)")
    add("--seed", type=int, default=10, help="random seed (model init, batches, crops)")
    add("--audio_scale", type=str, default="int16", choices=list(AUDIO_SCALES),
        help="samples in the int16 range (the original) or float in [-1, 1] (voxceleb_trainer)")
    add("--pad", type=str, default="zero", choices=list(PADS),
        help="a file shorter than a crop: zeros on both sides (the original) or wrapped (voxceleb_trainer)")
    add("--preset", type=str, default=None, choices=list(PRESETS),
        help="input pipeline: original (int16 samples, zero padding, Hann window: the defaults) or "
             "voxceleb_trainer (--audio_scale float --pad wrap --window hamming); explicit flags win")
    add("--augment", action="store_true", help="MUSAN noise and RIR reverberation in the loader")
    add("--musan_path", type=str, default="data/musan_split", help="MUSAN folder for --augment")
    add("--rir_path", type=str, default="data/RIRS_NOISES/simulated_rirs", help="RIR folder for --augment")
    add("--speed_perturb", action="store_true",
        help="speed perturbation in the loader: each speaker also at 0.9x and 1.1x speed (tempo and pitch, as "
             "sox speed), each a class of its own (3 x the list's speakers); the epoch keeps its length")

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
    add("--warmup_epochs", type=non_negative, default=0.0,
        help="warmup_exp, warmup_cosine: linear LR warm-up from about 0 to --lr over this many epochs (fractions "
             "allowed; 0 = none)")
    add("--final_lr", type=non_negative, default=None,
        help="warmup_exp, warmup_cosine: the LR at the last iteration of --max_epoch (default --lr / 1000)")

    # Loss functions
    add("--hard_prob", type=float, default=0.5, help="triplet: probability of a hard negative")
    add("--hard_rank", type=int, default=10, help="triplet: hard negatives drawn from this many hardest")
    add("--margin", type=float, default=None, help="margin losses (default: the loss's own)")
    add("--scale", type=float, default=None, help="margin losses (default: the loss's own)")
    add("--margin_start_epoch", type=at_least(1), default=None,
        help="margin losses: margin 0 before this epoch, then rising to --margin (default: the full margin from "
             "the start)")
    add("--margin_rampup_epochs", type=non_negative, default=None,
        help="with --margin_start_epoch: epochs over which the margin rises, exponentially per iteration "
             "(default 0: at once)")
    add("--nSpeakers", "--nClasses", dest="nSpeakers", type=int, default=None,
        help="training classes (default: the number of speakers in --train_list; 5994 for VoxCeleb2)")

    # Load and save
    add("--initial_model", type=str, default="", help="weights to start from or to evaluate")
    add("--trust_checkpoint", action="store_true",
        help="load checkpoints whose pickle holds other objects than tensors: this RUNS CODE from the file, so "
             "use it only for files you trust (by default such files are refused)")
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
    add("--scoring", type=str, default="crops", choices=list(SCORINGS),
        help="crops: minus the mean distance over the 10x10 crop pairs (the original); cosine: cosine of the "
             "crop-averaged embeddings")
    add("--score_norm", type=str, default="none", choices=list(SCORE_NORMS),
        help="asnorm: adaptive score normalisation against a cohort of --train_list speakers")
    add("--cohort_size", type=at_least(2), default=200, help="asnorm: top cohort scores per file (N of AS-norm)")
    add("--cohort_utterances", type=at_least(1), default=3,
        help="asnorm: files per training speaker averaged into its cohort embedding (fewer when it has fewer)")
    add("--eval_batch_size", type=at_least(1), default=None,
        help="files per forward pass when embedding (default 1 on the CPU, 32 on a GPU)")
    add("--eval_precision", type=str, default="fp32", choices=list(EVAL_PRECISIONS),
        help="network precision when embedding: fp32 (the original's), or bf16 / fp16 (GPU) autocast, faster "
             "on a GPU or a CPU with native bfloat16, with embeddings that differ slightly")
    add("--short_files", type=str, default="pad", choices=list(SHORT_FILES),
        help="with crops, a file no longer than one crop: padded (the original) or embedded whole")
    add("--save_scores", type=str, default="",
        help="--eval: write 'score label enroll test' lines here (several lists: FILE_<list stem>.ext each)")
    add("--save_embeddings", type=str, default="",
        help="--eval: write an .npz mapping each trial file name to its (crops, dim) embedding")
    add("--calibration", type=str, default="",
        help="--eval: score -> LLR calibration file (default: the model's M.calibration.json when present) for "
             "Cllr and actDCF; python inference.py calibrate makes one")
    add("--dcf_p_target", type=float, default=0.05, help="minDCF target prior")
    add("--dcf_c_miss", type=float, default=1.0, help="minDCF cost of a miss")
    add("--dcf_c_fa", type=float, default=1.0, help="minDCF cost of a false alarm")

    # Model definition. Left unset (None), nOut, n_mels, encoder_type, window and channels take the network's own
    # defaults (its MainModel's; the original's 512, 40, SAP and hann for ResNetSE34L), filled in by parse_args.
    add("--model", type=str, default="", help="network: " + ", ".join(plugins.choices("models")))
    # --encoder: the original README's spelling of --encoder_type
    add("--encoder_type", "--encoder", dest="encoder_type", type=str, default=None, choices=["SAP", "ASP", "TSTP"],
        help="pooling (default: the model's own; ResNetSE34L SAP, ResNetSE34V2 and ECAPA_TDNN ASP, ResNet34 TSTP)")
    add("--nOut", type=int, default=None, help="embedding size (default: the model's own; ResNetSE34L 512)")
    add("--n_mels", type=int, default=None, help="mel bands (default: the model's own; ResNetSE34L 40)")
    add("--log_input", action=argparse.BooleanOptionalAction, default=True, help="log of the mel energies")
    add("--window", type=str, default=None, choices=["hann", "hamming"],
        help="front-end window of a new model (default: the model's own; the original: hann; voxceleb_trainer: "
             "hamming); a loaded checkpoint keeps its own")
    add("--channels", type=at_least(1), default=None,
        help="width of the network: ECAPA_TDNN's C (512 or 1024, default 512), ResNet34's base channels (32)")

    # Hardware
    add("--device", type=str, default=None, help="cuda or cpu (default: cuda when available)")
    add("--distributed", action="store_true", help="one process per GPU (torch.distributed)")
    add("--port", type=str, default="8888", help="--distributed: master port")
    add("--mixedprec", nargs="?", const="fp16", default=None, choices=["fp16", "bf16"],
        help="mixed precision: float16 with a gradient scaler (no value), or --mixedprec bf16")
    add("--gpu_id", type=int, default=0, help="GPU index")
    add("--compile", action="store_true", help="torch.compile the training step (first steps are slow)")
    parser.flag_actions.pop("help", None)
    return parser


def _coerce(action: argparse.Action, key: str, value, source: str):
    """A YAML value converted to the flag's type, or a clear error."""
    if action.nargs == "?" and isinstance(value, bool):     # e.g. "mixedprec: true" -> its flag's value
        return action.const if value else None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):     # switches
        if not isinstance(value, bool):
            raise SpeakerNetError(f"{source}: key '{key}' expects true or false, got {value!r}")
        return value
    if value is None or (action.type is None and not action.choices):
        return value
    if action.type is None:
        if value not in action.choices:
            raise SpeakerNetError(f"{source}: key '{key}' must be one of {list(action.choices)}, got {value!r}")
        return value
    type_name = action.type.__name__
    if type_name in ("int", "float") and isinstance(value, bool):
        raise SpeakerNetError(f"{source}: key '{key}' expects {type_name}, got {value!r}")
    try:
        converted = action.type(value)
    except (TypeError, ValueError):
        raise SpeakerNetError(f"{source}: key '{key}' expects {type_name}, got {value!r}") from None
    except argparse.ArgumentTypeError as error:
        raise SpeakerNetError(f"{source}: key '{key}' {error}") from None
    if type_name == "int" and isinstance(value, float) and value != converted:
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
    actions = {dest: action for dest, action in parser.flag_actions.items() if dest != "config"}
    aliases = {"nClasses": "nSpeakers", "encoder": "encoder_type"}
    config = {}
    for key, value in values.items():
        dest = aliases.get(key, key)
        if dest not in actions:
            raise SpeakerNetError(f"{path}: unknown key '{key}' (not a flag of trainSpeakerNet.py)")
        config[dest] = _coerce(actions[dest], str(key), value, path)
    return config


def parse_args(argv=None) -> argparse.Namespace:
    """Flags > YAML (``--config``) > ``--preset`` > defaults, in one parse: the YAML values and the preset's
    become the parser's defaults."""
    parser = build_parser()
    config_path = vars(parser.parse_known_args(argv)[0])["config"]
    config = read_config(config_path, parser) if config_path else {}
    parser.set_defaults(**config)
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**{**PRESETS[preset], **config})
    args = parser.parse_args(argv)
    if args.eval_frames is None:
        args.eval_frames = args.max_frames
    fill_model_defaults(args)
    return args


MODEL_OPTION_FLAGS = ("nOut", "n_mels", "encoder_type", "window", "channels")
ORIGINAL_MODEL = "ResNetSE34L"      # whose defaults an unset --model shows (the original's 512, 40, SAP, hann)


def fill_model_defaults(args) -> None:
    """Model options left None become the named network's own defaults, so that the run's config.yaml and its
    checkpoints record the values it was built with. An unknown --model is left for check_plugins to report."""
    model = args.model if args.model in plugins.choices("models") else ORIGINAL_MODEL
    options = plugins.with_model_defaults(model, {key: getattr(args, key) for key in MODEL_OPTION_FLAGS})
    for key in MODEL_OPTION_FLAGS:
        setattr(args, key, options.get(key))


def resolved_config(args) -> dict:
    """The run's options as YAML values that ``--config`` reads back unchanged."""
    return {key: value for key, value in vars(args).items() if key != "config"}


# ----------------------------------------------------------------------------------------------------------------
# From flags to values
# ----------------------------------------------------------------------------------------------------------------

PLUGIN_FLAGS = {"models": "model", "loss": "trainfunc", "optimizer": "optimizer", "scheduler": "scheduler"}


def check_plugins(args, packages) -> None:
    """Every named plugin exists (``--model``, ``--trainfunc``, ...), before any file is read."""
    for package in packages:
        flag = PLUGIN_FLAGS[package]
        name = getattr(args, flag)
        if not name:
            raise SpeakerNetError(f"--{flag} is required; choices: {', '.join(plugins.choices(package))}")
        if name not in plugins.choices(package):
            raise SpeakerNetError(f"unknown --{flag} {name!r}; choices: {', '.join(plugins.choices(package))}")


def check_schedule_flags(args) -> None:
    """The warm-up and margin-schedule flags fit the chosen schedule and loss (before any file is read)."""
    per_iteration = is_per_iteration(plugins.load("scheduler", args.scheduler))
    if not per_iteration:
        given = [flag for flag, unset in (("warmup_epochs", 0.0), ("final_lr", None)) if getattr(args, flag) != unset]
        if given:
            raise SpeakerNetError(f"--{given[0]} applies to the per-iteration schedules ("
                                  f"{', '.join(per_iteration_schedules())}), not to --scheduler {args.scheduler}")
    else:
        if args.warmup_epochs >= args.max_epoch:
            raise SpeakerNetError(f"--warmup_epochs {args.warmup_epochs:g} must be shorter than --max_epoch "
                                  f"{args.max_epoch}: the decay needs steps")
        final_lr = args.lr * DEFAULT_FINAL_LR_RATIO if args.final_lr is None else args.final_lr
        positive = plugins.load("scheduler", args.scheduler).final_must_be_positive   # exp: a log of the ratio
        if final_lr > args.lr or (positive and final_lr <= 0):
            raise SpeakerNetError(f"--final_lr {final_lr:g} must be {'above 0 and ' if positive else ''}at most "
                                  f"--lr {args.lr:g} with --scheduler {args.scheduler}")
    if args.margin_rampup_epochs is not None and args.margin_start_epoch is None:
        raise SpeakerNetError("--margin_rampup_epochs needs --margin_start_epoch (the epoch the margin starts "
                              "rising)")
    if args.margin_start_epoch is not None and not has_margin(plugins.load("loss", args.trainfunc)):
        raise SpeakerNetError(f"--margin_start_epoch: --trainfunc {args.trainfunc} has no margin to schedule; the "
                              f"losses with a margin are {', '.join(losses_with_margin())}")


def losses_with_margin() -> list[str]:
    """The loss plugins whose margin the schedule can drive (named in the errors and warnings about margins)."""
    return [name for name in plugins.choices("loss") if has_margin(plugins.load("loss", name))]


LOSS_TUNING_OPTIONS = ("margin", "scale")     # None: the loss's own; the original passed them to every loss


def warn_unused_loss_options(args) -> None:
    """A ``--margin`` or ``--scale`` given to a loss without it is ignored, as the original ignored it (sweep
    scripts pass one command line to every loss), but said, so a typo in a loss name does not pass as a result."""
    unused = [f"--{flag} {getattr(args, flag):g}" for flag in LOSS_TUNING_OPTIONS
              if getattr(args, flag) is not None and not plugins.takes_option("loss", args.trainfunc, flag)]
    if unused and distributed.is_main():
        log.warning(f"{' and '.join(unused)}: --trainfunc {args.trainfunc} has no such option, ignored (the losses "
                    f"with a margin: {', '.join(losses_with_margin())})")


def per_iteration_schedules() -> list[str]:
    return [name for name in plugins.choices("scheduler") if is_per_iteration(plugins.load("scheduler", name))]


def choose_device(args) -> torch.device:
    """``--device`` (or CUDA when present); checked against what this machine and ``--eval_precision`` allow."""
    if distributed.is_active():
        device = distributed.local_device(args.device)
    elif args.device:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise SpeakerNetError(f"--device {args.device}: CUDA is not available on this machine")
        device = torch.device(args.device)
    else:
        device = torch.device(f"cuda:{args.gpu_id}" if torch.cuda.is_available() else "cpu")
    if args.eval_precision == "fp16" and device.type != "cuda":
        raise SpeakerNetError("--eval_precision fp16 needs a GPU; on the CPU use bf16")
    return device


def group_sizes_for(loss_needs, n_per_speaker: int | None) -> tuple[int, ...]:
    """Utterances per speaker group for the batch sampler."""
    if loss_needs == IMBALANCED:
        if n_per_speaker:
            log.info(f"note: --nPerSpeaker {n_per_speaker} ignored: this loss uses 2-or-3 utterance groups")
        return (2, 3)
    size = n_per_speaker or loss_needs
    if size < loss_needs:
        raise SpeakerNetError(f"--nPerSpeaker {size}: this loss needs at least {loss_needs} utterances per speaker")
    return (size,)


def eval_options(args) -> EvalOptions:
    return EvalOptions(eval_frames=args.eval_frames, num_workers=args.nDataLoaderThread,
                       files_per_batch=args.eval_batch_size, precision=args.eval_precision, scoring=args.scoring,
                       score_norm=args.score_norm, cohort_size=args.cohort_size,
                       p_targets=(args.dcf_p_target, 0.01), c_miss=args.dcf_c_miss, c_fa=args.dcf_c_fa,
                       show_progress=distributed.is_main(), pipeline=audio_pipeline(args),
                       short_files=args.short_files)


def audio_pipeline(args) -> AudioPipeline:
    return AudioPipeline(scale=args.audio_scale, pad=args.pad)


def asnorm_cohort(args) -> Cohort | None:
    """The AS-norm cohort (``--cohort_utterances`` per speaker of ``--train_list``) under ``--score_norm asnorm``,
    else None; shared by ``--eval``, training and ``inference.py calibrate``."""
    if args.score_norm != "asnorm":
        return None
    if not args.train_list:
        raise SpeakerNetError("--score_norm asnorm needs --train_list (and --train_path): its speakers are the "
                              "cohort")
    return read_cohort(args.train_list, args.train_path, args.cohort_utterances)


def load_plan(args) -> EvalPlan:
    """The lists to evaluate (``--test_list``, comma-separated for several; ``--val_list`` in training) and the
    AS-norm cohort, read and checked before anything is written."""
    paths = [path.strip() for path in args.test_list.split(",") if path.strip()] or [args.test_list]
    training = not args.eval
    cohort = asnorm_cohort(args)
    val_list = args.val_list if training else ""
    if args.val_list and not training:
        log.info(f"note: --val_list {args.val_list} is used in training only; --eval scores the --test_list lists")
    return read_plan(paths, args.test_path, "training (VEER)" if training else "", val_list, cohort)


# ----------------------------------------------------------------------------------------------------------------
# --eval
# ----------------------------------------------------------------------------------------------------------------

def eval_calibration(args, net: SpeakerNet, source: str):
    """The calibration ``--eval`` uses (``--calibration``, else the one beside the model, else None), checked
    against the loaded weights and this evaluation's scoring options before anything is scored or written."""
    calibration = calibrations.resolve(source, args.calibration)
    if calibration is None:
        return None
    options = calibrations.scoring_options(args.eval_frames, args.scoring, args.score_norm, net.test_normalize,
                                           args.audio_scale, args.pad, args.short_files, args.cohort_size,
                                           args.cohort_utterances, args.train_list)
    calibration.check(calibrations.weights_sha256(net.__S__), options)
    log.info(f"Calibration {calibration.source} loaded: {calibration.formula()}")
    return calibration


def calibration_line(args, scores, labels, calibration) -> str:
    """minCllr always (it needs no calibration: it is what the best monotonic calibration would reach); Cllr
    and actDCF at each p_target of the calibrated LLRs when there is a calibration."""
    p_targets = tuple(dict.fromkeys((args.dcf_p_target, 0.01)))
    llrs = calibration.llr(scores) if calibration is not None else None
    return calibration_metrics(scores, labels, llrs, p_targets, args.dcf_c_miss, args.dcf_c_fa).summary()


def report_eval(args, outcome: EvalOutcome, calibration=None) -> None:
    several = len(outcome.tests) > 1
    files = len(outcome.store.files)
    log.info(f"{files} files embedded once for {len(outcome.tests)} list(s); evaluation {outcome.seconds:.1f} s")
    for result in outcome.tests:
        trial_list = result.trial_list
        log.info(f"== {trial_list.path}: {len(trial_list.trials)} trials ({args.scoring} scoring"
                 f"{', AS-norm' if args.score_norm == 'asnorm' else ''})")
        if result.metrics is not None:
            log.info("EER %2.4f" % result.metrics.eer)
            log.info(result.metrics.report())
            log.info(calibration_line(args, result.scores, trial_list.labels, calibration))
            if distributed.is_main():
                plots = write_plots(result.scores, trial_list.labels, os.path.join(args.save_path, "result"),
                                    "_eval" + (f"_{trial_list.name}" if several else ""), eer=result.metrics.eer)
                log.info(f"DET curve and score histogram: {', '.join(plots)}")
        else:
            log.info(f"{len(trial_list.trials)} unlabelled trials scored (no EER without labels)")
        if args.save_scores and distributed.is_main():
            path = per_list_path(args.save_scores, trial_list.name) if several else args.save_scores
            write_scores(path, result.scores, trial_list.trials)
            log.info(f"scores written to {path}")
    if args.save_embeddings and distributed.is_main():
        outcome.store.save_npz(args.save_embeddings)
        log.info(f"{files} embeddings written to {args.save_embeddings}")


def eval_source(args) -> str:
    """The checkpoint ``--eval`` scores: ``--initial_model``, else the newest in ``--save_path/model``."""
    source = args.initial_model or (latest_checkpoint(os.path.join(args.save_path, "model")) or (None,))[0]
    if not source:
        raise SpeakerNetError("--eval needs --initial_model, or a checkpoint in --save_path/model")
    return source


def evaluate_checkpoint(args, source: str | None = None) -> tuple[EvalOutcome, object]:
    """Score checkpoint ``source`` (default :func:`eval_source`) on the run's lists with its evaluation options:
    the outcome and the calibration (``--calibration``, or None). Embedding network and scoring only: no loss,
    optimizer, scheduler or scaler is built."""
    device = choose_device(args)            # first: a device that cannot run the options fails before any read
    source = source or eval_source(args)
    check_plugins(args, ["models"] + (["loss"] if args.trainfunc else []))
    plan = load_plan(args)
    net = SpeakerNet(**{**vars(args), "with_loss": False}).to(device)
    checkpoint = read_checkpoint(source, args.trust_checkpoint)
    load_model_state(net, checkpoint["model_state_dict"], source, prefixes=("__S__.",))
    log.info(f"Model {source} loaded!")
    calibration = eval_calibration(args, net, source)
    return evaluation_of(net, args, plan, device), calibration


def run_eval(args) -> None:
    report_eval(args, *evaluate_checkpoint(args))


def evaluation_of(net: SpeakerNet, args, plan: EvalPlan, device: torch.device) -> EvalOutcome:
    return evaluate(net.__S__, net.test_normalize, plan, args.test_path, eval_options(args), device)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------

def build_loader(args, train_list, loss_needs, device):
    try:
        sampler = GroupBatchSampler(train_list.labels, group_sizes_for(loss_needs, args.nPerSpeaker),
                                    args.batch_size, args.max_seg_per_spk, seed=args.seed, rank=distributed.rank(),
                                    world_size=distributed.world_size(), copies=train_list.copies)
    except SpeakerNetError as error:
        raise SpeakerNetError(f"--batch_size {args.batch_size}: {error}") from None
    workers = args.nDataLoaderThread
    # built here, before any output is written: a missing or empty MUSAN/RIR folder fails the run at once
    try:
        augmenter = Augmenter(args.musan_path, args.rir_path, args.max_frames) if args.augment else None
    except SpeakerNetError as error:
        raise SpeakerNetError(f"--augment --musan_path {args.musan_path} --rir_path {args.rir_path}: {error}") from None
    loader = torch.utils.data.DataLoader(
        TrainDataset(train_list, args.max_frames, augmenter=augmenter, pipeline=audio_pipeline(args)),
        batch_sampler=sampler,
        collate_fn=collate_groups, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        generator=torch.Generator().manual_seed(args.seed))  # its own generator: the global RNG stays untouched
    return loader, sampler


class StopRequest:
    """SIGINT/SIGTERM ask training to stop after the current step; a second SIGINT stops at once."""

    def __init__(self):
        self.signal_number = None

    def __enter__(self):
        self.previous = {number: signal.signal(number, self._handle) for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, number, frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        print(f"\n{signal.Signals(number).name} received: finishing the current step, then saving", file=sys.stderr)

    def requested(self) -> bool:
        return self.signal_number is not None

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False


def list_digest(paths: str) -> str:
    """SHA-256 of the contents of a (comma-separated) list flag's files."""
    digest = hashlib.sha256()
    for path in (part.strip() for part in paths.split(",") if part.strip()):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def run_identity(args) -> dict:
    """What a resume must find unchanged: the options outside :data:`SESSION_OPTIONS`, lists by content, and
    ``--max_epoch`` under a per-iteration schedule (its decay ends at the last epoch, so a longer run would jump
    to another LR)."""
    options = {key: value for key, value in resolved_config(args).items() if key not in SESSION_OPTIONS}
    if is_per_iteration(plugins.load("scheduler", args.scheduler)):
        options["max_epoch"] = args.max_epoch
    lists = {key: list_digest(options.pop(key)) if options.get(key) else "" for key in LIST_OPTIONS}
    return {"options": options, "lists": lists}


def run_differences(saved: dict, given: dict) -> list[str]:
    """``--flag: saved X, given Y`` for every option of ``given`` that differs from the saved run's."""
    differences = [f"--{key}: saved {saved['options'].get(key)}, given {value}"
                   for key, value in given["options"].items()
                   if key in saved["options"] and saved["options"][key] != value]
    differences += [f"--{key}: other contents than the saved run's list" for key, digest in given["lists"].items()
                    if key in saved["lists"] and saved["lists"][key] != digest]
    return differences


class TrainingRun:
    """The epoch driver: where the run stands (last completed epoch, the epoch in progress, the last EER), what
    each epoch does (train, evaluate when due, step the schedule, save, log), and resuming."""

    def __init__(self, args, trainer: ModelTrainer, plan: EvalPlan, loader, sampler):
        self.args, self.trainer, self.plan, self.loader, self.sampler = args, trainer, plan, loader, sampler
        self.model_dir = os.path.join(args.save_path, "model")
        self.result_dir = os.path.join(args.save_path, "result")
        self.identity = run_identity(args)
        self.completed = 0                       # last completed epoch
        self.progress: EpochProgress | None = None
        self.last_eer = INITIAL_EER

    def resume(self) -> bool:
        """Continue from the furthest good saved state of ``--save_path``, if any, and only the same run."""
        previous = checkpoints.resume_point(self.model_dir, self.args.trust_checkpoint)
        if not previous:
            return False
        path, checkpoint = previous
        if checkpoint.get("run"):
            differences = run_differences(checkpoint["run"], self.identity)
            if differences:
                raise SpeakerNetError(f"{self.args.save_path} holds a run with other options; resuming it would "
                                      f"mix two runs:\n  " + "\n  ".join(differences) + "\nGive the saved options "
                                      f"({os.path.join(self.args.save_path, CONFIG_FILE)}) or another --save_path "
                                      f"(--initial_model {path} starts a new run from its weights)")
        load_model_state(self.trainer.net, checkpoint["model_state_dict"], path, strict=True)
        self.completed = int(checkpoint["epoch"])
        self.last_eer = float(checkpoint.get("last_eer", self.last_eer))
        self.progress = EpochProgress(**checkpoint["progress"]) if checkpoint.get("progress") else None
        try:
            self.trainer.load_state_dict(checkpoint, None if self.progress else self.completed, self.last_eer)
        except (ValueError, KeyError, RuntimeError) as error:
            raise SpeakerNetError(f"{path}: its optimizer or schedule state does not fit this run's "
                                  f"(--optimizer, --scheduler, --trainfunc?): {error}") from None
        checkpoints.restore_random_state(checkpoint)
        where = f"epoch {self.progress.epoch}, batch {self.progress.batches}" if self.progress else \
            f"after epoch {self.completed}"
        log.info(f"Model {path} loaded from previous state! Resuming {where}")
        return True

    def save(self, eer: float | None = None) -> None:
        """Rank 0 writes an epoch checkpoint (evaluated epochs) or ``resume.state``."""
        if distributed.is_main():
            state = self.trainer.state_dict()
            if eer is not None:
                checkpoints.save_epoch(self.model_dir, state, self.completed, eer, self.identity)
            else:
                checkpoints.save_resume_state(self.model_dir, state, self.completed, self.last_eer,
                                              self.progress.state() if self.progress else None, self.identity)
        distributed.barrier()

    def run(self, stop: StopRequest, scores) -> int:
        for epoch in range(self.completed + 1, self.args.max_epoch + 1):
            if not self.epoch(epoch, stop, scores):
                self.save()
                state = os.path.join(self.model_dir, checkpoints.RESUME_STATE)
                print(f"Stopped during epoch {epoch} after {self.progress.batches} batches; state saved to "
                      f"{state}. Run the same command again to resume.", file=sys.stderr)
                return 128 + stop.signal_number
        return 0

    def epoch(self, epoch: int, stop: StopRequest, scores) -> bool:
        """Train, evaluate when due, step the schedule, save, log. False when a stop was requested."""
        args = self.args
        self.sampler.set_epoch(epoch)
        progress = self.progress if self.progress is not None and self.progress.epoch == epoch else None
        # the LR at the epoch's start, also when resuming inside it (a per-iteration schedule has moved since)
        lr = progress.start_lr if progress is not None and progress.start_lr is not None else self.trainer.lr
        log.info(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {epoch} Training {args.model} with LR {lr:f}...")
        started = time.time()
        self.progress = self.trainer.train_network(self.loader, epoch, progress, stop.requested)
        if not self.progress.finished:
            return False
        loss, accuracy = self.progress.mean_loss, self.progress.mean_accuracy
        train_seconds = time.time() - started
        self.completed, self.progress = epoch, None
        if epoch % args.test_interval == 0:
            line, extra, eer = self.evaluate(epoch, lr, loss, accuracy, train_seconds)
            self.last_eer = eer
            self.trainer.step_schedule(eer)
            self.save(eer)
        else:
            line = TRAIN_LINE % (epoch, lr, accuracy, loss)
            extra = f"INFO epoch {epoch}: train {train_seconds:.1f} s"
            self.trainer.step_schedule(self.last_eer)
            self.save()
        log.info(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}")
        log.info(extra)
        scores.info(line + "\n" + extra)
        return True

    def evaluate(self, epoch: int, lr: float, loss: float, accuracy: float, train_seconds: float):
        """The evaluated epoch's score line, its INFO lines and the EER that steers (``--val_list``'s if given)."""
        outcome = evaluation_of(self.trainer.net, self.args, self.plan, self.trainer.device)
        first = outcome.tests[0]
        steering = outcome.val if outcome.val is not None else first
        several = len(outcome.tests) > 1
        if distributed.is_main():
            for result in outcome.tests:
                if result.metrics is not None:
                    write_plots(result.scores, result.trial_list.labels, self.result_dir,
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
        return line, extra, steering.metrics.eer


def check_classes(args, classes: int, speakers: int) -> None:
    """``--nSpeakers`` defaults to the training classes (the list's speakers, times the speeds with
    ``--speed_perturb``); fewer is an error, since some labels would have no class."""
    if args.nSpeakers is None:
        args.nSpeakers = classes
    elif args.nSpeakers < classes:
        what = f"{speakers} speakers of {args.train_list}"
        if classes != speakers:
            what = f"{classes} classes of --speed_perturb ({what} x {classes // speakers} speeds)"
        raise SpeakerNetError(f"--nSpeakers {args.nSpeakers} is smaller than the {what}")


def run_train(args) -> int:
    check_plugins(args, ["loss", "models", "optimizer", "scheduler"])
    check_schedule_flags(args)
    warn_unused_loss_options(args)
    for flag in ("train_list", "test_list"):
        if not getattr(args, flag):
            raise SpeakerNetError(f"--{flag} is required for training")
    train_list = read_train_list(args.train_list, args.train_path)
    check_files_exist(train_list.files, args.train_list)
    plan = load_plan(args)
    recorded = len(train_list.speakers)
    if args.speed_perturb:
        train_list = speed_perturbed(train_list, SPEED_FACTORS)
    check_classes(args, len(train_list.speakers), recorded)
    device = choose_device(args)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    net = SpeakerNet(**vars(args))
    loader, sampler = build_loader(args, train_list, net.utterances_per_speaker, device)
    sampler.set_epoch(1)        # the first epoch's length stands for every epoch's in per-iteration schedules
    trainer = ModelTrainer(net, **{**vars(args), "device": device, "steps_per_epoch": len(sampler)})
    run = TrainingRun(args, trainer, plan, loader, sampler)
    if distributed.is_main():
        os.makedirs(args.save_path, exist_ok=True)
    # rank 0 holds the folder for the whole run; a second run on it stops here, having written nothing
    with RunLock(args.save_path) if distributed.is_main() else nullcontext():
        return train(args, run)


def train(args, run: TrainingRun) -> int:
    """Resume (or start from --initial_model) and run the epochs."""
    main_process = distributed.is_main()
    # rank 0 first: it sets damaged files aside, and the other ranks then read what it read
    resumed = run.resume() if main_process else False
    distributed.barrier()
    resumed = resumed if main_process else run.resume()
    if not resumed and args.initial_model:
        initial = read_checkpoint(args.initial_model, args.trust_checkpoint)
        load_model_state(run.trainer.net, initial["model_state_dict"], args.initial_model)
        log.info(f"Model {args.initial_model} loaded!")
    if main_process:
        os.makedirs(run.model_dir, exist_ok=True)
        os.makedirs(run.result_dir, exist_ok=True)
        checkpoints.remove_stale_temporaries(run.model_dir)
        atomic.write_text(os.path.join(args.save_path, CONFIG_FILE),
                          yaml.safe_dump(resolved_config(args), sort_keys=False))
    scores_path = os.path.join(run.result_dir, "scores.txt") if main_process else None
    with logs.scores_file(scores_path) as scores, StopRequest() as stop:
        scores.info("\n".join(f"{key} {value}" for key, value in vars(args).items()))
        return run.run(stop, scores)


def run(args) -> int:
    """This process's work; under --distributed it joins the process group first (torchrun or spawned)."""
    if args.distributed:
        distributed.init_process_group(distributed.local_device(args.device))
    logs.setup(main_process=distributed.is_main())
    try:
        if args.eval:
            run_eval(args)
            return 0
        return run_train(args)
    finally:
        distributed.shutdown()


def _spawned(local_rank: int, processes: int, argv) -> None:
    """One of the processes of the one-machine launch (``--distributed`` without torchrun)."""
    os.environ.update(distributed.spawn_environment(parse_args(argv).port, local_rank, processes))
    code = main(argv)
    if code:
        sys.exit(code)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        if args.distributed and not distributed.launched_by_torchrun():
            try:
                processes = distributed.gpus_to_spawn()
            except SpeakerNetError as error:
                raise SpeakerNetError(f"--distributed without torchrun: {error}: torchrun --nproc_per_node N "
                                      f"trainSpeakerNet.py --distributed ...") from None
            torch.multiprocessing.spawn(_spawned, args=(processes, argv), nprocs=processes)
            return 0
        return run(args)
    except SpeakerNetError as error:
        hint = ("; if you trust the file, --trust_checkpoint loads it (and runs its code)"
                if isinstance(error, UnsafeCheckpoint) else "")
        print(f"error{f' (rank {distributed.rank()})' if distributed.is_active() else ''}: {error}{hint}",
              file=sys.stderr)
        return 2
    finally:
        stop_loader_workers()


def stop_loader_workers() -> None:
    """End the loader workers still running when the run ends, with an error too.

    The workers ignore SIGTERM (the main process finishes its step and saves first), so the interpreter's exit,
    which terminates and then joins them, would wait forever for workers an exception left behind. The
    DataLoader's SIGCHLD handler, which reports a worker's death as an error, is set back to the default first.
    """
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
