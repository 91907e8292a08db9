"""Score calibration: an affine map from a model's trial scores to log-likelihood ratios, fitted on a labelled
trial list, saved beside the model as a small JSON file, and checked before it is used.

``llr = scale * score + offset`` (natural log). The fit is a logistic regression of the labels on the score with
balanced class weights: each class weighs one half whatever its count, which is the objective of Cllr (the mean
of the two classes' cross-entropies at prior 0.5). The fitted log-odds are then posterior log-odds at prior 0.5,
that is LLRs, independent of the list's proportion of target trials; a decision at any prior and costs is
``llr > -logit(effective prior)``.

Quality measures (WeSpeaker's quality-measure functions): with ``duration``, the logistic regression also takes
the enrolment and test durations (natural log of seconds), ``llr = scale * score + offset + w_e * log(enrol s) +
w_t * log(test s)``: a system whose scores drift with the length of the audio is calibrated per duration. The file
lists the measures it uses, and applying it computes the same features, the durations from the audio files'
headers (:func:`spknet.data.audio.open_audio`). A file with quality measures is format version 2, so a reader
that does not know them refuses it rather than applying half of it; a file without (version 1) still loads.

A calibration holds only for the weights and the scoring it was fitted with: the file records a SHA-256 of the
embedding network's tensors and the options that shape the scores, and :meth:`Calibration.check` refuses any
other model or scoring with an error naming the file.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from spknet import atomic
from spknet.constants import SAMPLE_RATE
from spknet.data.audio import open_audio
from spknet.errors import SpeakerNetError
from spknet.evaluation.metrics import act_dcf, bayes_threshold, cllr, min_cllr
from spknet.files import file_digest

FORMAT = "speakernet-calibration"
VERSION = 1             # the version of a calibration of the score alone
QUALITY_VERSION = 2     # ... and of one with quality measures
# each quality measure and the features it adds to the regression, in order
QUALITY_FEATURES = {"duration": ("log_seconds_enroll", "log_seconds_test")}
SUFFIX = ".calibration.json"
# A weak L2 penalty on the standardised score (scikit-learn's C; the data term sums to the trial count): no
# measurable pull on any real list, and a finite scale on a list that the scores separate perfectly.
REGULARISATION_C = 1e6
FIT_METHOD = "logistic regression of label on score, balanced class weights (prior 0.5), scikit-learn"


def default_path(model_path: str) -> str:
    """Where the calibration of a checkpoint lives: beside it, ``M.calibration.json``."""
    return f"{model_path}{SUFFIX}"


def weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of the embedding network's (``__S__``) tensors, parameters and buffers, in sorted key order: each
    key (with its ``__S__.`` prefix), dtype and shape, then the tensor's bytes. The same weights give the same
    hash whatever the checkpoint's layout (flat, ``module.``-prefixed, SpeakerNet's) or the device."""
    digest = hashlib.sha256()
    state = network.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"__S__.{key} {tensor.dtype} {tuple(state[key].shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def scoring_options(eval_frames: int, scoring: str, score_norm: str, test_normalize: bool, audio_scale: str,
                    pad: str, short_files: str = "pad", cohort_size: int | None = None,
                    cohort_utterances: int | None = None, cohort_list: str | None = None) -> dict:
    """The options that shape the score distribution, as a calibration records them. The AS-norm cohort (its
    sizes and the SHA-256 of the ``cohort_list`` file, so a moved copy is the same cohort) counts only with
    AS-norm. The embedding precision is left out: bf16 moves scores by about 1e-5, far below what moves a
    calibration."""
    options = {"eval_frames": int(eval_frames), "scoring": scoring, "score_norm": score_norm,
               "test_normalize": bool(test_normalize), "audio_scale": audio_scale, "pad": pad,
               "short_files": short_files if eval_frames else "pad"}   # whole files have no short-file policy
    if score_norm == "asnorm":
        options.update(cohort_size=int(cohort_size), cohort_utterances=int(cohort_utterances),
                       cohort_list_sha256=file_digest(cohort_list))
    return options


def fit_affine(scores, labels, quality=None) -> tuple[float, float] | tuple[float, float, list[float]]:
    """``(scale, offset)`` of the balanced logistic regression (see the module docstring); with ``quality`` (an
    ``(n, k)`` array of quality features) ``(scale, offset, weights)``, a weight per feature. Every input is
    standardised for the solver and the coefficients mapped back to the raw values."""
    from sklearn.linear_model import LogisticRegression
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        raise SpeakerNetError("a calibration needs both target (1) and non-target (0) trials")
    features = scores[:, None] if quality is None else np.column_stack([scores, np.asarray(quality, np.float64)])
    mean, std = features.mean(axis=0), features.std(axis=0)
    if not std[0] > 0:
        raise SpeakerNetError("every trial has the same score: nothing to calibrate")
    std = np.where(std > 0, std, 1.0)        # a quality feature that never varies gets weight 0
    model = LogisticRegression(C=REGULARISATION_C, class_weight="balanced", max_iter=1000)
    model.fit((features - mean) / std, labels)
    slopes = model.coef_[0] / std
    offset = float(model.intercept_[0] - np.dot(slopes, mean))
    if quality is None:
        return float(slopes[0]), offset
    return float(slopes[0]), offset, [float(weight) for weight in slopes[1:]]


def quality_features(measures, enroll_seconds, test_seconds) -> np.ndarray:
    """The ``(n, k)`` features of ``measures`` (names of :data:`QUALITY_FEATURES`) for trials whose enrolment
    and test audio last ``enroll_seconds`` and ``test_seconds``."""
    columns = []
    for measure in measures:
        if measure not in QUALITY_FEATURES:
            raise SpeakerNetError(f"unknown quality measure {measure!r} (known: {', '.join(QUALITY_FEATURES)})")
        if measure == "duration":
            for seconds in (enroll_seconds, test_seconds):
                columns.append(np.log(np.maximum(np.asarray(seconds, dtype=np.float64), 1.0 / SAMPLE_RATE)))
    return np.column_stack(columns) if columns else np.zeros((len(enroll_seconds), 0))


def audio_seconds(path: str) -> float:
    """The duration of an audio file, from its header (the one reader: 16 kHz samples after resampling)."""
    with open_audio(path, min_frames=0) as audio:
        return audio.frames / SAMPLE_RATE


def trial_quality(measures, trials, root: str = "") -> np.ndarray:
    """The quality features of ``measures`` for ``trials`` (objects with ``enroll`` and ``test`` paths relative
    to ``root``); each file's header is read once."""
    if not measures:
        return np.zeros((len(trials), 0))
    files = {path: None for trial in trials for path in (trial.enroll, trial.test)}
    seconds = {path: audio_seconds(os.path.join(root, path)) for path in files}
    return quality_features(measures, [seconds[trial.enroll] for trial in trials],
                            [seconds[trial.test] for trial in trials])


def metrics_of(llrs, labels, scores, p_targets, c_miss: float = 1.0, c_fa: float = 1.0) -> dict:
    """Cllr and actDCF of ``llrs``, minCllr of ``scores`` (the same for any monotonic map of them)."""
    return {"cllr": cllr(llrs, labels), "min_cllr": min_cllr(scores, labels),
            "act_dcf": {f"{p:g}": act_dcf(llrs, labels, p, c_miss, c_fa) for p in p_targets}}


@dataclass(frozen=True)
class Verification:
    """One trial decided: the ``--eval`` score, its LLR and whether it passes the operating point's threshold."""
    score: float
    llr: float
    accept: bool
    threshold: float        # accept when llr > threshold (-logit of the effective prior)
    p_target: float

    @property
    def decision(self) -> str:
        return "accept" if self.accept else "reject"


REQUIRED = {"scale": float, "offset": float, "weights_sha256": str, "scoring": dict, "trial_list": dict,
            "trials": dict}


@dataclass
class Calibration:
    scale: float
    offset: float
    weights_sha256: str
    scoring: dict               # scoring_options() it was fitted with
    trial_list: dict            # {"path", "sha256"} of the list it was fitted on
    trials: dict                # {"target": n, "non_target": n}
    model: str = ""             # the checkpoint's path when fitted (information only: the hash decides)
    fit: str = FIT_METHOD
    metrics: dict | None = None  # {"before": ..., "after": ...} on the fitting list
    quality: list | None = None          # the quality measures it uses (None: the score alone)
    quality_weights: list | None = None  # a weight per feature of the measures (see QUALITY_FEATURES)
    source: str = ""            # the file it was read from (not saved)

    @property
    def features(self) -> list[str]:
        """The names of the quality features, in the order of :attr:`quality_weights`."""
        return [name for measure in self.quality or () for name in QUALITY_FEATURES[measure]]

    def llr(self, scores, quality=None):
        """LLRs of scores (a float, or an array of any shape); a calibration with quality measures also needs the
        trials' features (``(n, k)``, see :func:`quality_features`, :func:`trial_quality`)."""
        llrs = self.scale * np.asarray(scores, dtype=np.float64) + self.offset
        if not self.quality:
            return llrs
        if quality is None:
            raise SpeakerNetError(f"{self.source or 'the calibration'}: uses the quality measures "
                                  f"{', '.join(self.quality)}, and none were given for these scores")
        features = np.asarray(quality, dtype=np.float64).reshape(*np.shape(llrs), len(self.quality_weights))
        return llrs + features @ np.asarray(self.quality_weights, dtype=np.float64)

    def formula(self) -> str:
        """``llr = 8.1605 * score + 3.00652`` (``+ 0.31 * log_seconds_enroll ...``), for the logs."""
        terms = "".join(f" {'-' if weight < 0 else '+'} {abs(weight):.6g} * {name}"
                        for name, weight in zip(self.features, self.quality_weights or ()))
        return f"llr = {self.scale:.6g} * score {'-' if self.offset < 0 else '+'} {abs(self.offset):.6g}{terms}"

    def decide(self, score: float, p_target: float = 0.05, c_miss: float = 1.0, c_fa: float = 1.0,
               quality=None) -> Verification:
        llr = float(np.reshape(self.llr(score, quality), ()))
        threshold = bayes_threshold(p_target, c_miss, c_fa)
        return Verification(float(score), llr, llr > threshold, threshold, p_target)

    def to_json(self) -> dict:
        saved = {key: value for key, value in asdict(self).items() if key != "source"}
        if not self.quality:
            saved = {key: value for key, value in saved.items() if key not in ("quality", "quality_weights")}
        return {"format": FORMAT, "version": QUALITY_VERSION if self.quality else VERSION, **saved}

    def save(self, path: str) -> None:
        """Write atomically (temporary file, fsync, rename): a crash leaves the previous file or none."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic.write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> "Calibration":
        """Read and check a calibration file; anything unreadable, missing or mistyped is an error naming it."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise SpeakerNetError(f"{path}: calibration file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SpeakerNetError(f"{path}: not a readable calibration file ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SpeakerNetError(f"{path}: not a SpeakerNet calibration file (no \"format\": \"{FORMAT}\")")
        if data.get("version") not in (VERSION, QUALITY_VERSION):
            raise SpeakerNetError(f"{path}: calibration format version {data.get('version')!r}, this SpeakerNet "
                                  f"reads versions {VERSION} and {QUALITY_VERSION}")
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise SpeakerNetError(f"{path}: calibration file misses field(s) {', '.join(missing)}; make it again "
                                  f"with python inference.py calibrate")
        for key, kind in REQUIRED.items():
            value = data[key]
            wrong = isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind)
            if wrong or (kind is float and not np.isfinite(value)):
                raise SpeakerNetError(f"{path}: calibration field {key!r} should be a "
                                      f"{'finite number' if kind is float else kind.__name__}, got {value!r}")
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data and key != "source"}
        calibration = cls(**{**known, "scale": float(data["scale"]), "offset": float(data["offset"])}, source=path)
        _check_quality(path, data, calibration)
        return calibration

    def check(self, weights: str, options: dict) -> None:
        """Refuse another model's weights or other scoring options, naming the file and what differs."""
        name = self.source or "the calibration"
        if weights != self.weights_sha256:
            raise SpeakerNetError(f"{name}: calibration made for other model weights (weights sha256 "
                                  f"{self.weights_sha256[:12]}..., this model's {weights[:12]}...); calibrate this "
                                  f"model with python inference.py calibrate")
        differences = [f"{key}: calibrated with {self.scoring.get(key)!r}, now {options.get(key)!r}"
                       for key in sorted(set(self.scoring) | set(options))
                       if self.scoring.get(key) != options.get(key)]
        if differences:
            raise SpeakerNetError(f"{name}: calibration made for other scoring options ({'; '.join(differences)}); "
                                  f"score with its options or calibrate for these")


def _check_quality(path: str, data: dict, calibration: Calibration) -> None:
    """A version-2 file names known quality measures and holds one finite weight per feature; version 1 none."""
    if data["version"] == VERSION:
        if data.get("quality"):
            raise SpeakerNetError(f"{path}: a version {VERSION} calibration file with quality measures; make it "
                                  f"again with python inference.py calibrate")
        calibration.quality = calibration.quality_weights = None
        return
    measures, weights = data.get("quality"), data.get("quality_weights")
    if not isinstance(measures, list) or not measures or any(m not in QUALITY_FEATURES for m in measures):
        raise SpeakerNetError(f"{path}: calibration field 'quality' should list quality measures of "
                              f"{', '.join(QUALITY_FEATURES)}, got {measures!r}")
    count = len(calibration.features)
    if not isinstance(weights, list) or len(weights) != count or any(
            isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) for w in weights):
        raise SpeakerNetError(f"{path}: calibration field 'quality_weights' should hold {count} finite numbers "
                              f"({', '.join(calibration.features)}), got {weights!r}")
    calibration.quality_weights = [float(w) for w in weights]


def calibrate(scores, labels, weights: str, options: dict, list_path: str, model: str = "",
              p_targets=(0.05, 0.01), c_miss: float = 1.0, c_fa: float = 1.0, quality_measures=(),
              quality=None) -> Calibration:
    """Fit a :class:`Calibration` to a labelled list's scores (and, with ``quality_measures``, the trials'
    ``quality`` features, see :func:`trial_quality`); its metrics before (the raw scores read as LLRs) and after
    are kept in it."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    measures = list(dict.fromkeys(quality_measures))
    if measures:
        scale, offset, quality_weights = fit_affine(scores, labels, quality)
    else:
        (scale, offset), quality_weights, quality = fit_affine(scores, labels), None, None
    calibration = Calibration(scale, offset, weights, dict(options),
                              {"path": os.path.abspath(list_path), "sha256": file_digest(list_path)},
                              {"target": int(np.sum(labels == 1)), "non_target": int(np.sum(labels == 0))},
                              model=os.path.abspath(model) if model else "", quality=measures or None,
                              quality_weights=quality_weights)
    calibration.metrics = {"before": metrics_of(scores, labels, scores, p_targets, c_miss, c_fa),
                           "after": metrics_of(calibration.llr(scores, quality), labels, scores, p_targets,
                                               c_miss, c_fa)}
    return calibration


def resolve(model_path: str, explicit: str | None) -> Calibration | None:
    """The calibration to use with a checkpoint: ``explicit`` (a file that must exist), else the file beside the
    model if there is one, else None."""
    if explicit:
        return Calibration.load(explicit)
    beside = default_path(model_path)
    return Calibration.load(beside) if os.path.exists(beside) else None


def describe(metrics: dict) -> str:
    """One line of :func:`metrics_of`'s values."""
    dcfs = ", ".join(f"actDCF(p={p}) {value:.4f}" for p, value in metrics["act_dcf"].items())
    return f"Cllr {metrics['cllr']:.4f}, minCllr {metrics['min_cllr']:.4f}, {dcfs}"
