"""Typed specs: what a run is, as the command line resolves it from argv, ``--config`` YAML and ``--preset``.

The command line builds these once and checks them (:meth:`RunSpec.check`); the library and the plugins receive
their fields, never the argparse namespace or a flag name. :class:`ModelSpec` is the one list of model options:
it builds the network, it is what a checkpoint records under ``run["model"]`` (versioned by :data:`SCHEMA`), and
what :func:`spknet.inference.load_embedder` and ``--eval`` rebuild the network from.
"""

from dataclasses import asdict, dataclass, field, fields, replace

from spknet import plugins
from spknet.data.audio import AUDIO_SCALES, PADS, AudioPipeline
from spknet.errors import SpeakerNetError

# Version of the checkpoint's ``run`` entry. 1 (no ``schema`` key): ``{"options": {flag: value}, "lists": ...}``;
# 2: ``{"schema": 2, "model": ModelSpec fields, "options": other identity fields, "lists": ...}``.
SCHEMA = 2
WINDOWS = ("hann", "hamming")
ENCODERS = ("SAP", "ASP", "TSTP")
ORIGINAL_MODEL = "ResNetSE34L"      # the original's network: whose defaults an unset model shows
SECOND_P_TARGET = 0.01             # the minDCF prior reported beside --dcf_p_target (the literature's other one)


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
    audio_scale: str = "int16"
    pad: str = "zero"
    trainfunc: str = ""

    # what the network plugin's MainModel receives (the original's keyword names)
    NETWORK_OPTIONS = ("encoder_type", "nOut", "n_mels", "log_input", "window", "channels")

    def check(self) -> "ModelSpec":
        """The named plugins exist and every option is one of its choices; returns itself."""
        if self.model not in plugins.choices("models"):
            raise SpeakerNetError(f"unknown model {self.model!r}; choices: {', '.join(plugins.choices('models'))}")
        if self.trainfunc and self.trainfunc not in plugins.choices("loss"):
            raise SpeakerNetError(f"unknown loss {self.trainfunc!r}; choices: {', '.join(plugins.choices('loss'))}")
        for name, value, allowed in (("audio_scale", self.audio_scale, AUDIO_SCALES), ("pad", self.pad, PADS),
                                     ("window", self.window, (None, *WINDOWS)),
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
    max_bad_files: int = 0                  # unreadable training files skipped before the run stops


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


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run or an evaluation is: the four specs."""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
