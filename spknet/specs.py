"""Typed specs: what a run is, as the command line resolves it from argv, ``--config`` YAML and ``--preset``.

The command line (:mod:`spknet.cli`) builds these once and checks a training run's (:meth:`RunSpec.check`: the
combinations of options, worded with the flags that set them, :func:`flag_name`); the library and the plugins
receive their fields, never the argparse namespace. :class:`ModelSpec` is the one list of model options:
it builds the network, it is what a checkpoint records under ``run["model"]`` (versioned by :data:`SCHEMA`), and
what :func:`spknet.inference.load_embedder` and ``--eval`` rebuild the network from.
"""

from dataclasses import asdict, dataclass, field, fields, replace

import torch

from spknet import plugins
from spknet.data.audio import AUDIO_SCALES, PADS, AudioPipeline
from spknet.data.kaldi import MAX_OVERSHOOT
from spknet.errors import SpeakerNetError
from spknet.margin import has_margin
from spknet.models._frontend import FRONTENDS

# Version of the checkpoint's ``run`` entry. 1 (no ``schema`` key): ``{"options": {flag: value}, "lists": ...}``;
# 2: ``{"schema": 2, "model": ModelSpec fields, "options": other identity fields, "lists": ...}``.
SCHEMA = 2
WINDOWS = ("hann", "hamming", "povey")     # povey: Kaldi's, for the kaldi_fbank front end (3D-Speaker's)
ENCODERS = ("SAP", "ASP", "TSTP", "ECA", "TAP", "MAX")      # ECA: RawNet3; TAP, MAX: VGGVox
ORIGINAL_MODEL = "ResNetSE34L"      # the original's network: whose defaults an unset model shows
SECOND_P_TARGET = 0.01             # the minDCF prior reported beside --dcf_p_target (the literature's other one)
# The fields whose flag has another name (the original's flag names); every other field's flag is ``--field``.
FLAG_NAMES = {"per_speaker": "nPerSpeaker", "classes": "nSpeakers", "loader_workers": "nDataLoaderThread",
              "files_per_batch": "eval_batch_size", "precision": "eval_precision", "p_target": "dcf_p_target",
              "c_miss": "dcf_c_miss", "c_fa": "dcf_c_fa"}


def flag_destination(field_name: str) -> str:
    """The argparse destination of a spec field's flag (``classes`` is ``nSpeakers``)."""
    return FLAG_NAMES.get(field_name, field_name)


def flag_name(field_name: str) -> str:
    """The command line's flag of a spec field (``classes`` is ``--nSpeakers``)."""
    return f"--{flag_destination(field_name)}"


def field_default(spec_class, name: str):
    """The default of a spec class's field."""
    return spec_class.__dataclass_fields__[name].default


@dataclass(frozen=True)
class ModelSpec:
    """The embedding network, the input pipeline it was trained with, and the objective that decides how its
    embeddings are scored (``trainfunc``: a loss's ``test_normalize``). None means the network's own default
    (``resolved()`` fills them in, so a checkpoint records the values the network was built with)."""
    model: str = ORIGINAL_MODEL
    encoder_type: str | None = None
    nOut: int | None = None
    n_mels: int | None = None
    log_input: bool = True
    window: str | None = None
    channels: int | None = None
    frontend: str | None = None            # models._frontend.FRONTENDS; None: the network's own (logmel)
    audio_scale: str = "int16"
    pad: str = "zero"
    trainfunc: str = ""

    # what the network plugin's MainModel receives (the original's keyword names)
    NETWORK_OPTIONS = ("encoder_type", "nOut", "n_mels", "log_input", "window", "channels", "frontend")

    def check(self) -> "ModelSpec":
        """The named plugins exist and every option is one of its choices; returns itself."""
        if self.model not in plugins.choices("models"):
            raise SpeakerNetError(f"unknown model {self.model!r}; choices: {', '.join(plugins.choices('models'))}")
        if self.trainfunc and self.trainfunc not in plugins.choices("loss"):
            raise SpeakerNetError(f"unknown loss {self.trainfunc!r}; choices: {', '.join(plugins.choices('loss'))}")
        for name, value, allowed in (("audio_scale", self.audio_scale, AUDIO_SCALES), ("pad", self.pad, PADS),
                                     ("window", self.window, (None, *WINDOWS)),
                                     ("frontend", self.frontend, (None, *FRONTENDS)),
                                     ("encoder_type", self.encoder_type, (None, *ENCODERS))):
            if value not in allowed:
                raise SpeakerNetError(f"model option {name} {value!r}: choose one of "
                                      f"{', '.join(str(choice) for choice in allowed if choice is not None)}")
        for name in ("nOut", "n_mels", "channels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise SpeakerNetError(f"model option {name} must be a positive integer, got {value!r}")
        return self

    def resolved(self) -> "ModelSpec":
        """Every option left None set to the network's own default; an option the network lacks (``channels``
        for ResNetSE34L) given a value is an error."""
        options = plugins.with_model_defaults(self.model, {key: getattr(self, key) for key in self.NETWORK_OPTIONS})
        return replace(self, **{key: options.get(key) for key in self.NETWORK_OPTIONS})

    def network_options(self) -> dict:
        """The keywords of the network plugin (those it has: a None option it lacks is left out)."""
        return {key: getattr(self, key) for key in self.NETWORK_OPTIONS if getattr(self, key) is not None}

    def overridden(self, **overrides) -> "ModelSpec":
        """This spec with the ``overrides`` that are not None; an unknown option is an error naming it."""
        unknown = sorted(set(overrides) - set(MODEL_FIELDS))
        if unknown:
            raise SpeakerNetError(f"unknown model option(s) {', '.join(unknown)}; the model options are "
                                  f"{', '.join(MODEL_FIELDS)}")
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})

    def pipeline(self) -> AudioPipeline:
        """How the network's input is read: the sample scale and the padding of short files."""
        return AudioPipeline(scale=self.audio_scale, pad=self.pad)

    def record(self) -> dict:
        """What a checkpoint keeps (``run["model"]``)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "ModelSpec | None":
        """The spec a checkpoint's ``run`` entry holds: schema 2's ``model``, or schema 1's flat ``options``
        (the command line's names of the same options); None when it names no model (the keys must tell). A None
        value says nothing (the field's default)."""
        if record.get("schema", 1) > SCHEMA:
            raise SpeakerNetError(f"the checkpoint's run entry has schema {record['schema']}, newer than this "
                                  f"SpeakerNet's {SCHEMA}: update SpeakerNet to read it")
        values = (record.get("model") if record.get("schema", 1) >= 2 else record.get("options")) or {}
        if not values.get("model"):
            return None
        return cls(**{key: values[key] for key in MODEL_FIELDS if values.get(key) is not None})


MODEL_FIELDS = tuple(item.name for item in fields(ModelSpec))


@dataclass(frozen=True)
class LossSpec:
    """What a loss plugin receives beside the embedding size: its classes and the options of the losses with
    them (None: the loss's own default)."""
    classes: int
    margin: float | None = None
    scale: float | None = None
    hard_prob: float = 0.5
    hard_rank: int = 10

    def plugin_options(self, embedding_size: int) -> dict:
        """The loss plugin's keywords (the original's names: ``nOut``, ``nSpeakers``)."""
        tuning = {key: getattr(self, key) for key in ("margin", "scale") if getattr(self, key) is not None}
        return {"nOut": embedding_size, "nSpeakers": self.classes, "hard_prob": self.hard_prob,
                "hard_rank": self.hard_rank, **tuning}


@dataclass(frozen=True)
class DataSpec:
    """The training data and how batches are drawn from it."""
    train_list: str = ""
    train_path: str = "voxceleb2"
    max_frames: int = 200
    batch_size: int = 200
    max_seg_per_spk: int = 100
    loader_workers: int = 5
    per_speaker: int | None = None          # utterances per speaker group (None: what the loss needs)
    seed: int = 10
    augment: bool = False
    musan_path: str = "data/musan_split"
    rir_path: str = "data/RIRS_NOISES/simulated_rirs"
    speed_perturb: bool = False
    train_data: str = ""                    # a Kaldi data directory, instead of train_list
    train_shards: str = ""                  # tar shards streamed instead of the list (spknet.data.shards)
    allow_pipes: bool = False               # run the shell commands of wav.scp 'cmd |' entries and 'pipe:' shards
    max_overshoot: float = MAX_OVERSHOOT    # seconds a Kaldi segment may end past its recording (cut there)
    max_bad_files: int = 0                  # unreadable training files skipped before the run stops

    def check(self) -> "DataSpec":
        """One source of training data: a list, a Kaldi data directory or shards."""
        sources = [name for name in ("train_list", "train_data", "train_shards") if getattr(self, name)]
        if not sources:
            raise SpeakerNetError("--train_list (or --train_data, a Kaldi data directory, or --train_shards) is "
                                  "required for training")
        if len(sources) > 1:
            raise SpeakerNetError(f"{' and '.join(flag_name(name) for name in sources)}: give one of them")
        return self


@dataclass(frozen=True)
class TrainingSpec:
    """The optimisation: optimizer, schedule, loss options, where the run lives, and the hardware."""
    optimizer: str = "adam"
    scheduler: str = "plateau"
    lr: float = 0.001
    lr_decay: float = 0.95
    weight_decay: float = 5e-5
    warmup_epochs: float = 0.0
    final_lr: float | None = None
    max_epoch: int = 500
    test_interval: int = 1
    classes: int | None = None              # None: the training list's classes
    margin: float | None = None
    scale: float | None = None
    margin_start_epoch: int | None = None
    margin_rampup_epochs: float | None = None
    hard_prob: float = 0.5
    hard_rank: int = 10
    initial_model: str = ""
    save_path: str = "./data/exp1"
    trust_checkpoint: bool = False
    mixedprec: str | None = None
    compile: bool = False
    device: str | None = None
    gpu_id: int = 0
    tensorboard: bool = True                # TensorBoard event files in save_path/tensorboard/ (rank 0)
    average_epochs: int = 0                 # the run's end also scores the mean weights of its last N epochs
    freeze_epochs: int = 0                  # epochs 1..N train the loss head alone (the network frozen)
    network_lr_scale: float = 1.0           # the network's LR over the loss head's (--lr)

    def check(self, trainfunc: str) -> "TrainingSpec":
        """The warm-up and margin-schedule options fit the schedule and the loss ``trainfunc``."""
        schedule = plugins.load("scheduler", self.scheduler)
        if not plugins.is_per_iteration(schedule):
            given = [name for name in ("warmup_epochs", "final_lr")
                     if getattr(self, name) != field_default(TrainingSpec, name)]
            if given:
                raise SpeakerNetError(f"--{given[0]} applies to the per-iteration schedules ("
                                      f"{', '.join(per_iteration_schedules())}), not to --scheduler {self.scheduler}")
        else:
            if self.warmup_epochs >= self.max_epoch:
                raise SpeakerNetError(f"--warmup_epochs {self.warmup_epochs:g} must be shorter than --max_epoch "
                                      f"{self.max_epoch}: the decay needs steps")
            final_lr = self.lr * schedule.default_final_ratio if self.final_lr is None else self.final_lr
            positive = schedule.final_must_be_positive   # exp: a log of the ratio
            if final_lr > self.lr or (positive and final_lr <= 0):
                raise SpeakerNetError(f"--final_lr {final_lr:g} must be {'above 0 and ' if positive else ''}at most "
                                      f"--lr {self.lr:g} with --scheduler {self.scheduler}")
        if self.margin_rampup_epochs is not None and self.margin_start_epoch is None:
            raise SpeakerNetError("--margin_rampup_epochs needs --margin_start_epoch (the epoch the margin starts "
                                  "rising)")
        if self.margin_start_epoch is not None and not has_margin(plugins.load("loss", trainfunc)):
            raise SpeakerNetError(f"--margin_start_epoch: --trainfunc {trainfunc} has no margin to schedule; the "
                                  f"losses with a margin are {', '.join(losses_with_margin())}")
        self.check_fine_tuning(trainfunc)
        return self

    def check_fine_tuning(self, trainfunc: str) -> None:
        """``freeze_epochs`` needs a loss with per-class parameters (a classifier or proxies: what the frozen
        epochs train), ``network_lr_scale`` other than 1 a loss with parameters of its own (the second group)."""
        if self.freeze_epochs < 0:
            raise SpeakerNetError(f"--freeze_epochs {self.freeze_epochs} must be at least 0")
        if not 0 < self.network_lr_scale < float("inf"):
            raise SpeakerNetError(f"--network_lr_scale {self.network_lr_scale:g} must be above 0")
        if self.freeze_epochs > 0 and not loss_has_class_parameters(trainfunc):
            raise SpeakerNetError(f"--freeze_epochs {self.freeze_epochs}: --trainfunc {trainfunc} has no class "
                                  f"weights to train while the network is frozen (nothing to train); the losses "
                                  f"with them are {', '.join(losses_with_class_parameters())}")
        if self.network_lr_scale != 1.0 and not loss_parameter_counts(trainfunc)[0]:
            raise SpeakerNetError(f"--network_lr_scale {self.network_lr_scale:g}: --trainfunc {trainfunc} has no "
                                  f"parameters of its own, so the network's LR is --lr's; set --lr instead")

    def unused_loss_options(self, trainfunc: str) -> list[str]:
        """``--margin X``, ``--scale Y``: those given to a loss without such an option (ignored, as the original
        ignored them)."""
        return [f"--{name} {getattr(self, name):g}" for name in ("margin", "scale")
                if getattr(self, name) is not None and not plugins.takes_option("loss", trainfunc, name)]

    def averaged_epochs(self) -> range:
        """The last epochs whose mean weights the run scores at its end (``average_epochs``; none below 2)."""
        count, last = self.average_epochs, self.max_epoch
        return range(max(last - count, 0) + 1, last + 1) if count > 1 else range(0)

    def saved_epochs(self) -> list[int]:
        """The epochs a run from epoch 1 leaves an epoch checkpoint of: the evaluated ones (every
        ``test_interval``) and those the final average takes."""
        averaged = self.averaged_epochs()
        return [epoch for epoch in range(1, self.max_epoch + 1)
                if epoch % self.test_interval == 0 or epoch in averaged]

    def loss(self, classes: int) -> LossSpec:
        return LossSpec(classes, self.margin, self.scale, self.hard_prob, self.hard_rank)

    def optimizer_options(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def scheduler_options(self, steps_per_epoch: int | None) -> dict:
        """The schedule plugin's keywords (every schedule takes what it needs of them)."""
        return {"lr": self.lr, "lr_decay": self.lr_decay, "test_interval": self.test_interval,
                "max_epoch": self.max_epoch, "warmup_epochs": self.warmup_epochs, "final_lr": self.final_lr,
                "steps_per_epoch": steps_per_epoch}


@dataclass(frozen=True)
class EvalSpec:
    """How files are embedded and trials scored, and what an evaluation writes."""
    test_list: str = ""
    test_path: str = "voxceleb1"
    val_list: str = ""
    eval_frames: int = 200
    scoring: str = "crops"
    score_norm: str = "none"
    cohort_size: int = 200
    cohort_utterances: int = 3
    files_per_batch: int | None = None
    precision: str = "fp32"
    short_files: str = "pad"
    save_scores: str = ""
    save_embeddings: str = ""
    calibration: str = ""
    p_target: float = 0.05
    c_miss: float = 1.0
    c_fa: float = 1.0
    loader_workers: int = 5
    test_data: str = ""                     # a Kaldi data directory whose utterance ids the trial keys are

    @property
    def p_targets(self) -> tuple[float, ...]:
        """The minDCF priors reported: ``p_target`` and :data:`SECOND_P_TARGET` (once when equal)."""
        return tuple(dict.fromkeys((self.p_target, SECOND_P_TARGET)))

    def test_lists(self) -> list[str]:
        """The (comma-separated) test lists."""
        return [path.strip() for path in self.test_list.split(",") if path.strip()] or [self.test_list]

    def check(self) -> "EvalSpec":
        """What a training run's evaluations need: a test list."""
        if not self.test_list:
            raise SpeakerNetError("--test_list is required for training")
        return self

    def check_device(self, device_type: str) -> "EvalSpec":
        """The embedding precision runs on the device (``cuda`` or ``cpu``) of the evaluation."""
        if self.precision == "fp16" and device_type != "cuda":
            raise SpeakerNetError("--eval_precision fp16 needs a GPU; on the CPU use bf16")
        return self


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run or an evaluation is: the four specs."""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    evaluation: EvalSpec = field(default_factory=EvalSpec)

    # the plugins a training run names: (plugin package, the field that names one)
    PLUGINS = (("loss", "trainfunc"), ("models", "model"), ("optimizer", "optimizer"), ("scheduler", "scheduler"))

    def check(self, warn=None) -> "RunSpec":
        """A training run's combinations of options, before any file is read: the plugins are named and exist,
        the schedule options fit the schedule and the loss (:meth:`TrainingSpec.check`), the data has one source
        (:meth:`DataSpec.check`), the evaluations a test list (:meth:`EvalSpec.check`), the model options are
        valid (:meth:`ModelSpec.check`); returns itself. ``warn(message)``, when given, hears the loss options the
        loss has not (they are ignored). The model spec may be unresolved (its network defaults still None)."""
        for package, name in self.PLUGINS:
            value = getattr(self.model if name in MODEL_FIELDS else self.training, name)
            choices = ", ".join(plugins.choices(package))
            if not value:
                raise SpeakerNetError(f"--{name} is required; choices: {choices}")
            if value not in plugins.choices(package):
                raise SpeakerNetError(f"unknown --{name} {value!r}; choices: {choices}")
        self.training.check(self.model.trainfunc)
        unused = self.training.unused_loss_options(self.model.trainfunc)
        if unused and warn is not None:
            warn(f"{' and '.join(unused)}: --trainfunc {self.model.trainfunc} has no such option, ignored (the "
                 f"losses with a margin: {', '.join(losses_with_margin())})")
        self.data.check()
        self.evaluation.check()
        self.model.check()
        return self


def per_iteration_schedules() -> list[str]:
    return [name for name in plugins.choices("scheduler") if plugins.is_per_iteration(plugins.load("scheduler", name))]


def loss_parameter_counts(trainfunc: str) -> tuple[int, int]:
    """How many parameters the loss ``trainfunc`` has for 2 and for 3 classes (of 8-dimensional embeddings)."""
    loss = plugins.load("loss", trainfunc)
    with torch.random.fork_rng(devices=[]):        # building them draws initial weights: the run's RNG is not touched
        return tuple(sum(parameter.numel() for parameter in loss(**LossSpec(classes).plugin_options(8)).parameters())
                     for classes in (2, 3))


def loss_has_class_parameters(trainfunc: str) -> bool:
    """Whether the loss has parameters per class (a classifier or proxies), beside a learned scale, if any."""
    two, three = loss_parameter_counts(trainfunc)
    return two != three


def losses_with_class_parameters() -> list[str]:
    """The losses whose head ``--freeze_epochs`` can train alone (named in its error)."""
    return [name for name in plugins.choices("loss") if loss_has_class_parameters(name)]


def losses_with_margin() -> list[str]:
    """The loss plugins whose margin the schedule can drive (named in the errors and warnings about margins)."""
    return [name for name in plugins.choices("loss") if has_margin(plugins.load("loss", name))]
