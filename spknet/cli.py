"""The command line of ``trainSpeakerNet.py``: its flags, ``--config`` YAML and ``--preset`` resolved into one
namespace, and that namespace into the typed specs of :mod:`spknet.specs` (checked there, :meth:`RunSpec.check`).

A flag that sets a spec field takes the field's default (:func:`build_parser`), so each default is written once,
in the spec. The recipe (:mod:`spknet.recipe`) reads the flags it passes on with this same parser.
"""

import argparse
from dataclasses import fields, replace

import yaml

from spknet import plugins
from spknet.argtypes import at_least, non_negative, read_config, true_or_false
from spknet.data import AUDIO_SCALES, PADS
from spknet.errors import SpeakerNetError
from spknet.evaluation import EVAL_PRECISIONS, SCORE_NORMS, SCORINGS
from spknet.evaluation.extraction import SHORT_FILES
from spknet.specs import (
    ENCODERS,
    FRONTENDS,
    MODEL_FIELDS,
    ORIGINAL_MODEL,
    WINDOWS,
    DataSpec,
    EvalSpec,
    ModelSpec,
    RunSpec,
    TrainingSpec,
    flag_destination,
)

PROG = "trainSpeakerNet.py"
# --preset: a named set of input-pipeline defaults; a flag or a YAML key of its own still wins
PRESETS = {
    "original": {"audio_scale": "int16", "pad": "zero", "window": "hann"},
    "voxceleb_trainer": {"audio_scale": "float", "pad": "wrap", "window": "hamming"},
}
SPECS = (ModelSpec, DataSpec, TrainingSpec, EvalSpec)
# The flags of spec fields whose unset value means something else than the field's default: --model "" (training
# requires it; --eval rebuilds the checkpoint's network), --eval_frames None (--max_frames).
OWN_DEFAULTS = {"model": "", "eval_frames": None}


def spec_flags(spec_class) -> dict[str, str]:
    """Field -> the destination of the flag that sets it, for one spec class."""
    return {item.name: flag_destination(item.name) for item in fields(spec_class)}


def field_defaults() -> dict[str, object]:
    """Flag destination -> the default of the spec field it sets (the first spec's, when two share a flag)."""
    defaults = {}
    for spec_class in SPECS:
        for item in fields(spec_class):
            defaults.setdefault(flag_destination(item.name), item.default)
    return defaults


class FlagError(SpeakerNetError):
    """A flag the parser refuses (unknown, or a value of the wrong type or not among the choices)."""


class FlagParser(argparse.ArgumentParser):
    """The flags' parser; with ``raise_errors``, a bad flag raises :class:`FlagError` instead of printing the usage
    and exiting (for a program that passes the flags on, as the recipe)."""

    def __init__(self, *args, raise_errors: bool = False, **options):
        super().__init__(*args, **options)
        self.raise_errors = raise_errors
        self.flag_actions = {}      # destination -> action, for the YAML reader

    def error(self, message):
        if self.raise_errors:
            raise FlagError(f"{self.prog}: {message}")
        super().error(message)


def build_parser(raise_errors: bool = False) -> FlagParser:
    """The flags, with each flag's action kept in ``parser.flag_actions`` (by destination) for the YAML reader; a
    flag of a spec field without a ``default=`` here takes the field's."""
    parser = FlagParser(prog=PROG, description="SpeakerNet: train and evaluate speaker verification models",
                        raise_errors=raise_errors)
    defaults = field_defaults()

    def add(*names, **options):
        action = parser.add_argument(*names, **options)
        if "default" not in options and action.dest in defaults:
            action.default = defaults[action.dest]
        parser.flag_actions[action.dest] = action
    add("--config", type=str, default=None, help="YAML file of flag values (explicit flags win)")

    # Data loader
    add("--max_frames", type=int, help="training crop in 10-ms frames")
    add("--eval_frames", type=int, default=OWN_DEFAULTS["eval_frames"],
        help="evaluation crop in frames (default --max_frames; 0 = whole file)")
    add("--batch_size", type=at_least(1), help="speaker groups per batch")
    add("--max_seg_per_spk", type=int, help="utterances per speaker per epoch, at most")
    add("--nDataLoaderThread", type=int, help="loader worker processes")
    add("--nPerSpeaker", type=int, help="utterances per speaker group (default: what the loss needs)")
    add("--seed", type=int, help="random seed (model init, batches, crops)")
    add("--audio_scale", type=str, choices=list(AUDIO_SCALES),
        help="samples in the int16 range (the original) or float in [-1, 1] (voxceleb_trainer)")
    add("--pad", type=str, choices=list(PADS),
        help="a file shorter than a crop: zeros on both sides (the original) or wrapped (voxceleb_trainer)")
    add("--preset", type=str, default=None, choices=list(PRESETS),
        help="input pipeline: original (int16 samples, zero padding, Hann window: the defaults) or "
             "voxceleb_trainer (--audio_scale float --pad wrap --window hamming); explicit flags win")
    add("--augment", action="store_true", help="MUSAN noise and RIR reverberation in the loader")
    add("--musan_path", type=str, help="MUSAN folder for --augment")
    add("--rir_path", type=str, help="RIR folder for --augment")
    add("--speed_perturb", action="store_true",
        help="speed perturbation in the loader: each speaker also at 0.9x and 1.1x speed (tempo and pitch, as "
             "sox speed), each a class of its own (3 x the list's speakers); the epoch keeps its length")

    # Training details
    add("--test_interval", type=int, help="evaluate and save every N epochs")
    add("--average_epochs", type=at_least(0),
        help="after the last epoch, also score the mean weights of the last N epochs (each of them saved as an "
             "epoch checkpoint; evaluated or not) and save them as model/average_lastN.model (default 0: none)")
    add("--lr_interval", type=int, default=10, help="kept for compatibility (unused, as in the original)")
    add("--max_epoch", type=int, help="last epoch")
    add("--trainfunc", type=str, help="loss: " + ", ".join(plugins.choices("loss")))
    add("--optimizer", type=str, help="optimizer: " + ", ".join(plugins.choices("optimizer")))
    add("--scheduler", type=str, help="LR schedule: " + ", ".join(plugins.choices("scheduler")))
    add("--lr", type=float, help="learning rate")
    add("--lr_decay", type=float, help="steplr: LR factor every --test_interval epochs")
    add("--weight_decay", type=float, help="weight decay")
    add("--warmup_epochs", type=non_negative,
        help="warmup_exp, warmup_cosine: linear LR warm-up from about 0 to --lr over this many epochs (fractions "
             "allowed; 0 = none)")
    add("--final_lr", type=non_negative,
        help="warmup_exp, warmup_cosine: the LR at the last iteration of --max_epoch (default --lr / 1000)")

    # Loss functions
    add("--hard_prob", type=float, help="triplet: probability of a hard negative")
    add("--hard_rank", type=int, help="triplet: hard negatives drawn from this many hardest")
    add("--margin", type=float, help="margin losses (default: the loss's own)")
    add("--scale", type=float, help="margin losses (default: the loss's own)")
    add("--margin_start_epoch", type=at_least(1),
        help="margin losses: margin 0 before this epoch, then rising to --margin (default: the full margin from "
             "the start)")
    add("--margin_rampup_epochs", type=non_negative,
        help="with --margin_start_epoch: epochs over which the margin rises, exponentially per iteration "
             "(default 0: at once)")
    add("--nSpeakers", "--nClasses", dest="nSpeakers", type=int,
        help="training classes (default: the number of speakers in --train_list; 5994 for VoxCeleb2)")

    # Load and save
    add("--initial_model", type=str,
        help="weights to start from or to evaluate; a new run loads its network (whose options must be the run's) "
             "and its loss head when the loss and classes are the run's, else the head starts fresh")
    add("--freeze_epochs", type=at_least(0),
        help="fine-tuning: epochs 1..N train the loss head alone, the network frozen (its BatchNorm statistics "
             "too), then everything trains (default 0)")
    add("--network_lr_scale", type=float,
        help="fine-tuning: the network's LR is --lr times this, the loss head's --lr (default 1)")
    add("--trust_checkpoint", action="store_true",
        help="load checkpoints whose pickle holds other objects than tensors: this RUNS CODE from the file, so "
             "use it only for files you trust (by default such files are refused)")
    add("--save_path", type=str, help="run folder (model/ and result/ inside)")
    add("--tensorboard", type=true_or_false, metavar="{true,false}",
        help="TensorBoard event files of training in SAVE_PATH/tensorboard/ (tensorboard --logdir SAVE_PATH); "
             "needs the tensorboard package")

    # Data
    add("--train_list", type=str, help="training list: '<speaker> <path.wav>' per line")
    add("--test_list", type=str,
        help="trial list: '<label> <enroll.wav> <test.wav>' per line; several lists: a.txt,b.txt")
    add("--train_path", type=str, help="root of the training list's paths")
    add("--train_shards", type=str,
        help="train from tar shards (dataprep.py --make_shards) instead of --train_list: a brace pattern "
             "'dir/shard-{000000..000123}.tar' or the shards' manifest.json (local paths or URLs), streamed")
    add("--test_path", type=str, help="root of the trial list's paths")
    add("--train_data", type=str,
        help="Kaldi data directory (wav.scp, utt2spk or spk2utt, optional segments) to train on, instead of "
             "--train_list")
    add("--test_data", type=str,
        help="Kaldi data directory of the test audio: the trial keys (a Kaldi trials file) are its utterance ids")
    add("--max_overshoot", type=non_negative,
        help="seconds a Kaldi segment may end past its recording and be cut at the recording's end (segment times "
             "written with 2-3 decimals round past it); one ending further is an error (default 0.5, as Kaldi's "
             "extract-segments; 0: none may)")
    add("--allow_pipes", action="store_true",
        help="run the shell commands of wav.scp entries ending in '|' and of 'pipe:COMMAND' shards (refused "
             "without it: they run as you)")
    add("--max_bad_files", type=at_least(0),
        help="training files that cannot be read (or are too short) skipped, each once with a warning and in "
             "result/bad_files.txt, before the run stops on the next (default 0: the first stops it)")

    # Evaluation
    add("--eval", action="store_true", help="evaluate --initial_model (or the latest checkpoint) and exit")
    add("--val_list", type=str,
        help="held-out validation trial list (audio relative to --test_path): in training its EER drives the LR "
             "schedule and the .eer files instead of the (first) test list's")
    add("--scoring", type=str, choices=list(SCORINGS),
        help="crops: minus the mean distance over the 10x10 crop pairs (the original); cosine: cosine of the "
             "crop-averaged embeddings")
    add("--score_norm", type=str, choices=list(SCORE_NORMS),
        help="asnorm: adaptive score normalisation against a cohort of --train_list speakers")
    add("--cohort_size", type=at_least(2), help="asnorm: top cohort scores per file (N of AS-norm)")
    add("--cohort_utterances", type=at_least(1),
        help="asnorm: files per training speaker averaged into its cohort embedding (fewer when it has fewer)")
    add("--eval_batch_size", type=at_least(1),
        help="files per forward pass when embedding (default 1 on the CPU, 32 on a GPU)")
    add("--eval_precision", type=str, choices=list(EVAL_PRECISIONS),
        help="network precision when embedding: fp32 (the original's), or bf16 / fp16 (GPU) autocast, faster "
             "on a GPU or a CPU with native bfloat16, with embeddings that differ slightly")
    add("--short_files", type=str, choices=list(SHORT_FILES),
        help="with crops, a file no longer than one crop: padded (the original) or embedded whole")
    add("--save_scores", type=str,
        help="--eval: write 'score label enroll test' lines here (several lists: FILE_<list stem>.ext each)")
    add("--save_embeddings", type=str,
        help="--eval: write an .npz mapping each trial file name to its (crops, dim) embedding")
    add("--calibration", type=str,
        help="--eval: score -> LLR calibration file (default: the model's M.calibration.json when present) for "
             "Cllr and actDCF; python inference.py calibrate makes one")
    add("--dcf_p_target", type=float, help="minDCF target prior")
    add("--dcf_c_miss", type=float, help="minDCF cost of a miss")
    add("--dcf_c_fa", type=float, help="minDCF cost of a false alarm")

    # Model definition. Left unset (None), nOut, n_mels, encoder_type, window and channels take the network's own
    # defaults (its MainModel's; the original's 512, 40, SAP and hann for ResNetSE34L), filled in by the specs.
    add("--model", type=str, default=OWN_DEFAULTS["model"],
        help="network: " + ", ".join(plugins.choices("models")))
    # --encoder: the original README's spelling of --encoder_type
    add("--encoder_type", "--encoder", dest="encoder_type", type=str,
        choices=list(ENCODERS),
        help="pooling (default: the model's own; ResNetSE34L SAP, ResNetSE34V2 and ECAPA_TDNN ASP, ResNet34 TSTP)")
    add("--nOut", type=int, help="embedding size (default: the model's own; ResNetSE34L 512)")
    add("--n_mels", type=int, help="mel bands (default: the model's own; ResNetSE34L 40)")
    add("--log_input", action=argparse.BooleanOptionalAction, help="log of the mel energies")
    add("--window", type=str, choices=list(WINDOWS),
        help="front-end window of a new model (default: the model's own; the original: hann; voxceleb_trainer: "
             "hamming; povey: Kaldi's, for --frontend kaldi_fbank); a loaded checkpoint keeps its own")
    add("--frontend", type=str, choices=list(FRONTENDS),
        help="features the network computes from the waveform (default: the model's own; logmel for the four "
             "original networks; docs/networks.md, Front ends); a loaded checkpoint keeps its own")
    add("--channels", type=at_least(1),
        help="width of the network: ECAPA_TDNN's C (512 or 1024, default 512), ResNet34's base channels (32)")

    # Hardware
    add("--device", type=str, help="cuda or cpu (default: cuda when available)")
    add("--distributed", action="store_true", help="one process per GPU (torch.distributed)")
    add("--port", type=str, default="8888", help="--distributed: master port")
    add("--mixedprec", nargs="?", const="fp16", choices=["fp16", "bf16"],
        help="mixed precision: float16 with a gradient scaler (no value), or --mixedprec bf16")
    add("--gpu_id", type=int, help="GPU index")
    add("--compile", action="store_true", help="torch.compile the training step (first steps are slow)")
    parser.flag_actions.pop("help", None)
    return parser


# ----------------------------------------------------------------------------------------------------------------
# argv, YAML and presets -> one namespace
# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv=None, raise_errors: bool = False) -> argparse.Namespace:
    """Flags > YAML (``--config``) > ``--preset`` > defaults, in one parse: the YAML values and the preset's
    become the parser's defaults. ``args.given`` holds the options set by a flag, the YAML or the preset."""
    parser = build_parser(raise_errors)
    config_path = vars(parser.parse_known_args(argv)[0])["config"]
    config = read_config(config_path, parser) if config_path else {}
    parser.set_defaults(**config)
    preset = parser.parse_known_args(argv)[0].preset
    preset_values = PRESETS[preset] if preset else {}
    parser.set_defaults(**{**preset_values, **config})
    args = parser.parse_args(argv)
    args.given = set(config) | set(preset_values) | explicit_flags(argv, raise_errors)
    if args.eval_frames is None:
        args.eval_frames = args.max_frames
    return args


def explicit_flags(argv, raise_errors: bool = False) -> set[str]:
    """The destinations of the flags on the command line itself."""
    parser = build_parser(raise_errors)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def config_values(path: str) -> dict:
    """A ``--config`` YAML file's flag values by destination (aliases resolved, types checked)."""
    return read_config(path, build_parser())


# ----------------------------------------------------------------------------------------------------------------
# One namespace -> the specs
# ----------------------------------------------------------------------------------------------------------------

def spec_values(spec_class, args) -> dict:
    """The fields of ``spec_class`` from the namespace (a field without a flag keeps its default: the test of
    the flags, tests/test_cli.py, says which lack one)."""
    return {name: getattr(args, dest) for name, dest in spec_flags(spec_class).items() if hasattr(args, dest)}


def model_spec(args, given_only: bool = False) -> ModelSpec | dict:
    """The model options; with ``given_only`` only those set explicitly (``--eval``'s overrides), as a mapping."""
    if given_only:
        return {key: getattr(args, key) for key in MODEL_FIELDS if key in args.given and getattr(args, key)}
    return ModelSpec(**{**spec_values(ModelSpec, args), "model": args.model or ORIGINAL_MODEL}).check().resolved()


def run_spec(args) -> RunSpec:
    """The four specs of a run, from the resolved namespace (the model's options resolved)."""
    return RunSpec(model_spec(args), *(spec_class(**spec_values(spec_class, args))
                                       for spec_class in (DataSpec, TrainingSpec, EvalSpec)))


def spec_from_argv(argv) -> RunSpec:
    """What a command line means: the four specs of its run (flags, YAML and preset resolved)."""
    return run_spec(parse_args(argv))


def training_spec(args, warn=None) -> RunSpec:
    """A training run's specs, checked (:meth:`RunSpec.check`; ``warn`` hears the ignored options), the model's
    options then resolved."""
    spec = RunSpec(ModelSpec(**spec_values(ModelSpec, args)),
                   *(spec_class(**spec_values(spec_class, args)) for spec_class in (DataSpec, TrainingSpec, EvalSpec)))
    spec.check(warn)
    return replace(spec, model=spec.model.resolved())


def describe(args, model: ModelSpec, classes: int) -> tuple[str, str]:
    """A training run's config.yaml (read back by ``--config``) and its scores.txt header: the flags with what the
    run resolved (the model's options, the classes)."""
    values = {**vars(args), **model.record(), "nSpeakers": classes}
    values = {key: value for key, value in values.items() if key not in ("config", "given")}
    return yaml.safe_dump(values, sort_keys=False), "\n".join(f"{key} {value}" for key, value in values.items())
