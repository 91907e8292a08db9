#!/usr/bin/env python3
"""SpeakerNet command line: train a speaker-verification model, or evaluate one with ``--eval``.

Flags and defaults are the original's (see README); ``--config FILE.yaml`` and ``--preset`` set defaults that
explicit flags override. This is the edge: flags become the typed specs of :mod:`spknet.specs` here, are checked
once, and the library (:func:`spknet.training.train`, :mod:`spknet.evaluation.runner`) gets the specs.
"""

import argparse
import os
import sys

import torch
import yaml

from spknet import distributed, logs, plugins
from spknet.argtypes import at_least, non_negative, read_config, true_or_false
from spknet.checkpoints import UnsafeCheckpoint
from spknet.data import AUDIO_SCALES, PADS
from spknet.errors import SpeakerNetError, worker_message
from spknet.evaluation import EVAL_PRECISIONS, SCORE_NORMS, SCORINGS
from spknet.evaluation.extraction import SHORT_FILES
from spknet.evaluation.runner import checkpoint_to_evaluate, evaluate_checkpoint, report
from spknet.logs import log
from spknet.margin import has_margin
from spknet.scheduler._warmup import DEFAULT_FINAL_LR_RATIO
from spknet.specs import MODEL_FIELDS, ORIGINAL_MODEL, DataSpec, EvalSpec, ModelSpec, RunSpec, TrainingSpec
from spknet.training import run as training_run
from spknet.training.run import RunMismatch
from spknet.training.trainer import is_per_iteration

# --preset: a named set of input-pipeline defaults; a flag or a YAML key of its own still wins
PRESETS = {
    "original": {"audio_scale": "int16", "pad": "zero", "window": "hann"},
    "voxceleb_trainer": {"audio_scale": "float", "pad": "wrap", "window": "hamming"},
}


def build_parser() -> argparse.ArgumentParser:
    """The flags, with each flag's action kept in ``parser.flag_actions`` (by destination) for the YAML reader."""
    parser = argparse.ArgumentParser(prog="trainSpeakerNet.py",
                                     description="SpeakerNet: train and evaluate speaker verification models")
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
    add("--average_epochs", type=at_least(0), default=0,
        help="after the last epoch, also score the mean weights of the last N epochs (each of them saved as an "
             "epoch checkpoint; evaluated or not) and save them as model/average_lastN.model (default 0: none)")
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
    add("--tensorboard", type=true_or_false, default=True, metavar="{true,false}",
        help="TensorBoard event files of training in SAVE_PATH/tensorboard/ (tensorboard --logdir SAVE_PATH); "
             "needs the tensorboard package")

    # Data
    add("--train_list", type=str, default="", help="training list: '<speaker> <path.wav>' per line")
    add("--test_list", type=str, default="",
        help="trial list: '<label> <enroll.wav> <test.wav>' per line; several lists: a.txt,b.txt")
    add("--train_path", type=str, default="voxceleb2", help="root of the training list's paths")
    add("--train_shards", type=str, default="",
        help="train from tar shards (dataprep.py --make_shards) instead of --train_list: a brace pattern "
             "'dir/shard-{000000..000123}.tar' or the shards' manifest.json (local paths or URLs), streamed")
    add("--test_path", type=str, default="voxceleb1", help="root of the trial list's paths")
    add("--train_data", type=str, default="",
        help="Kaldi data directory (wav.scp, utt2spk or spk2utt, optional segments) to train on, instead of "
             "--train_list")
    add("--test_data", type=str, default="",
        help="Kaldi data directory of the test audio: the trial keys (a Kaldi trials file) are its utterance ids")
    add("--allow_pipes", action="store_true",
        help="run the shell commands of wav.scp entries ending in '|' and of 'pipe:COMMAND' shards (refused "
             "without it: they run as you)")
    add("--max_bad_files", type=at_least(0), default=0,
        help="training files that cannot be read (or are too short) skipped, each once with a warning and in "
             "result/bad_files.txt, before the run stops on the next (default 0: the first stops it)")

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


# ----------------------------------------------------------------------------------------------------------------
# argv, YAML and presets -> one namespace
# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    """Flags > YAML (``--config``) > ``--preset`` > defaults, in one parse: the YAML values and the preset's
    become the parser's defaults. ``args.given`` holds the options set by a flag, the YAML or the preset."""
    parser = build_parser()
    config_path = vars(parser.parse_known_args(argv)[0])["config"]
    config = read_config(config_path, parser) if config_path else {}
    parser.set_defaults(**config)
    preset = parser.parse_known_args(argv)[0].preset
    preset_values = PRESETS[preset] if preset else {}
    parser.set_defaults(**{**preset_values, **config})
    args = parser.parse_args(argv)
    args.given = set(config) | set(preset_values) | explicit_flags(argv)
    if args.eval_frames is None:
        args.eval_frames = args.max_frames
    return args


def explicit_flags(argv) -> set[str]:
    """The destinations of the flags on the command line itself."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


# ----------------------------------------------------------------------------------------------------------------
# One namespace -> the specs
# ----------------------------------------------------------------------------------------------------------------

def model_spec(args, given_only: bool = False) -> ModelSpec | dict:
    """The model options; with ``given_only`` only those set explicitly (``--eval``'s overrides), as a mapping."""
    if given_only:
        return {key: getattr(args, key) for key in MODEL_FIELDS if key in args.given and getattr(args, key)}
    return ModelSpec(**{key: getattr(args, key) for key in MODEL_FIELDS if key != "model"},
                     model=args.model or ORIGINAL_MODEL).check().resolved()


def spec_from_argv(argv) -> RunSpec:
    """What a command line means: the four specs of its run (flags, YAML and preset resolved)."""
    return run_spec(parse_args(argv))


def run_spec(args) -> RunSpec:
    """The four specs of a run, from the resolved namespace."""
    data = DataSpec(train_list=args.train_list, train_path=args.train_path, max_frames=args.max_frames,
                    batch_size=args.batch_size, max_seg_per_spk=args.max_seg_per_spk,
                    loader_workers=args.nDataLoaderThread, per_speaker=args.nPerSpeaker, seed=args.seed,
                    augment=args.augment, musan_path=args.musan_path, rir_path=args.rir_path,
                    speed_perturb=args.speed_perturb, train_data=args.train_data, train_shards=args.train_shards,
                    allow_pipes=args.allow_pipes, max_bad_files=args.max_bad_files)
    training = TrainingSpec(
        optimizer=args.optimizer, scheduler=args.scheduler, lr=args.lr, lr_decay=args.lr_decay,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, final_lr=args.final_lr,
        max_epoch=args.max_epoch, test_interval=args.test_interval, classes=args.nSpeakers, margin=args.margin,
        scale=args.scale, margin_start_epoch=args.margin_start_epoch, margin_rampup_epochs=args.margin_rampup_epochs,
        hard_prob=args.hard_prob, hard_rank=args.hard_rank, initial_model=args.initial_model,
        save_path=args.save_path, trust_checkpoint=args.trust_checkpoint, mixedprec=args.mixedprec,
        compile=args.compile, device=args.device, gpu_id=args.gpu_id, tensorboard=args.tensorboard,
        average_epochs=args.average_epochs)
    evaluation = EvalSpec(
        test_list=args.test_list, test_path=args.test_path, val_list=args.val_list, eval_frames=args.eval_frames,
        scoring=args.scoring, score_norm=args.score_norm, cohort_size=args.cohort_size,
        cohort_utterances=args.cohort_utterances, files_per_batch=args.eval_batch_size,
        precision=args.eval_precision, short_files=args.short_files, save_scores=args.save_scores,
        save_embeddings=args.save_embeddings, calibration=args.calibration, p_target=args.dcf_p_target,
        c_miss=args.dcf_c_miss, c_fa=args.dcf_c_fa, loader_workers=args.nDataLoaderThread, test_data=args.test_data)
    return RunSpec(model_spec(args), data, training, evaluation)


# the spec fields whose flag has another name, for messages that name a field
FLAG_NAMES = {"per_speaker": "--nPerSpeaker", "classes": "--nSpeakers", "loader_workers": "--nDataLoaderThread"}
PLUGIN_FLAGS = {"models": "model", "loss": "trainfunc", "optimizer": "optimizer", "scheduler": "scheduler"}


def flag_name(field: str) -> str:
    return FLAG_NAMES.get(field, f"--{field}")


# ----------------------------------------------------------------------------------------------------------------
# Checks of flag combinations, before any file is read
# ----------------------------------------------------------------------------------------------------------------

def check_plugins(args, packages) -> None:
    """Every named plugin exists (``--model``, ``--trainfunc``, ...)."""
    for package in packages:
        flag = PLUGIN_FLAGS[package]
        name = getattr(args, flag)
        if not name:
            raise SpeakerNetError(f"--{flag} is required; choices: {', '.join(plugins.choices(package))}")
        if name not in plugins.choices(package):
            raise SpeakerNetError(f"unknown --{flag} {name!r}; choices: {', '.join(plugins.choices(package))}")


def check_schedule_flags(args) -> None:
    """The warm-up and margin-schedule flags fit the chosen schedule and loss."""
    schedule = plugins.load("scheduler", args.scheduler)
    if not is_per_iteration(schedule):
        given = [flag for flag, unset in (("warmup_epochs", 0.0), ("final_lr", None)) if getattr(args, flag) != unset]
        if given:
            raise SpeakerNetError(f"--{given[0]} applies to the per-iteration schedules ("
                                  f"{', '.join(per_iteration_schedules())}), not to --scheduler {args.scheduler}")
    else:
        if args.warmup_epochs >= args.max_epoch:
            raise SpeakerNetError(f"--warmup_epochs {args.warmup_epochs:g} must be shorter than --max_epoch "
                                  f"{args.max_epoch}: the decay needs steps")
        final_lr = args.lr * DEFAULT_FINAL_LR_RATIO if args.final_lr is None else args.final_lr
        positive = schedule.final_must_be_positive   # exp: a log of the ratio
        if final_lr > args.lr or (positive and final_lr <= 0):
            raise SpeakerNetError(f"--final_lr {final_lr:g} must be {'above 0 and ' if positive else ''}at most "
                                  f"--lr {args.lr:g} with --scheduler {args.scheduler}")
    if args.margin_rampup_epochs is not None and args.margin_start_epoch is None:
        raise SpeakerNetError("--margin_rampup_epochs needs --margin_start_epoch (the epoch the margin starts "
                              "rising)")
    if args.margin_start_epoch is not None and not has_margin(plugins.load("loss", args.trainfunc)):
        raise SpeakerNetError(f"--margin_start_epoch: --trainfunc {args.trainfunc} has no margin to schedule; the "
                              f"losses with a margin are {', '.join(losses_with_margin())}")


def per_iteration_schedules() -> list[str]:
    return [name for name in plugins.choices("scheduler") if is_per_iteration(plugins.load("scheduler", name))]


def losses_with_margin() -> list[str]:
    """The loss plugins whose margin the schedule can drive (named in the errors and warnings about margins)."""
    return [name for name in plugins.choices("loss") if has_margin(plugins.load("loss", name))]


def warn_unused_loss_options(args) -> None:
    """A ``--margin`` or ``--scale`` given to a loss without it is ignored, as the original ignored it (sweep
    scripts pass one command line to every loss), but said, so a typo in a loss name does not pass as a result."""
    unused = [f"--{flag} {getattr(args, flag):g}" for flag in ("margin", "scale")
              if getattr(args, flag) is not None and not plugins.takes_option("loss", args.trainfunc, flag)]
    if unused and distributed.is_main():
        log.warning(f"{' and '.join(unused)}: --trainfunc {args.trainfunc} has no such option, ignored (the losses "
                    f"with a margin: {', '.join(losses_with_margin())})")


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------

def run_train(args) -> int:
    check_plugins(args, ["loss", "models", "optimizer", "scheduler"])
    check_schedule_flags(args)
    warn_unused_loss_options(args)
    sources = [flag for flag in ("train_list", "train_data", "train_shards") if getattr(args, flag)]
    if not sources:
        raise SpeakerNetError("--train_list (or --train_data, a Kaldi data directory, or --train_shards) is required "
                              "for training")
    if len(sources) > 1:
        raise SpeakerNetError(f"{' and '.join('--' + flag for flag in sources)}: give one of them")
    if not args.test_list:
        raise SpeakerNetError("--test_list is required for training")
    spec = run_spec(args)
    resolved = spec.model

    def describe(classes: int) -> tuple[str, str]:
        """config.yaml (read back by --config) and the scores.txt header: the flags with what the run resolved."""
        values = {**vars(args), **resolved.record(), "nSpeakers": classes}
        values = {key: value for key, value in values.items() if key not in ("config", "given")}
        return yaml.safe_dump(values, sort_keys=False), "\n".join(f"{key} {value}" for key, value in values.items())

    device = distributed.choose_device(args.device, args.gpu_id, args.eval_precision)
    try:
        return training_run.train(spec, device, describe)
    except RunMismatch as mismatch:
        fields = [field for field, _, _ in mismatch.differences] + ["save_path", "initial_model"]
        raise SpeakerNetError(mismatch.describe({field: flag_name(field) for field in fields})) from None


def run_eval(args) -> None:
    """Score a checkpoint, rebuilt from the options it records; model flags given override them."""
    device = distributed.choose_device(args.device, args.gpu_id, args.eval_precision)  # before any file is read
    source = checkpoint_to_evaluate(args.initial_model, args.save_path)
    spec = run_spec(args)
    outcome, calibration, _ = evaluate_checkpoint(source, spec.evaluation, spec.data, device,
                                                  overrides=model_spec(args, given_only=True),
                                                  trust=args.trust_checkpoint)
    report(outcome, spec.evaluation, os.path.join(args.save_path, "result"), calibration)


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
        print(f"error{f' (rank {distributed.rank()})' if distributed.is_active() else ''}: "
              f"{worker_message(error)}{hint}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
